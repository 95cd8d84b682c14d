"""A ``--lut`` that names no file: the one-line error says how to build it.

``nas search``, ``nas sample`` and ``nas fps`` call :func:`require_lut_file` before they read the LUT,
so a path that does not exist yet (the docs' ``luts/titanxp.parquet`` on a fresh checkout) is
answered with the exact ``latbench build-lut`` command that writes that file, instead of only "does
not exist".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from latbench.errors import UserError


def build_lut_command(path: str | os.PathLike, resolutions: Sequence[str] = (), device: str | None = None) -> str:
    """``latbench build-lut --gpu NAME [--device cpu] --resolution R ... --output PATH``: the build
    that writes the LUT at ``path`` (latbench's one generator of build-lut command lines)."""
    from latbench.lut.coverage import new_lut_command

    return new_lut_command(path, resolutions, device)


def require_lut_file(path: str | os.PathLike, resolutions: Sequence[str] = (), device: str | None = None) -> None:
    """Nothing when ``path`` is a file; else a one-line :class:`UserError` naming the build command."""
    p = Path(path)
    if p.is_file():
        return
    if p.is_dir():
        raise UserError(f"--lut {str(p)!r} is a directory, not a LUT file")
    raise UserError(f"LUT {str(p)!r} does not exist; build it with: {build_lut_command(p, resolutions, device)}")
