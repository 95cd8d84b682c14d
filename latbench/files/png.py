"""Figures as PNG files, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from latbench.files.atomic import atomic_write


def save_png(fig, path: str | os.PathLike, dpi: int = 120, **savefig_kwargs: Any) -> Path:
    """Write a matplotlib figure as PNG atomically (creating the folder) and close it."""
    out = Path(path)
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", **savefig_kwargs))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return out
