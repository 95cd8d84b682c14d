"""A ``--lut`` that names no file: the one-line error says how to build it.

``nas search``, ``nas sample`` and ``nas fps`` call :func:`require_lut_file` before they read the LUT,
so a path that does not exist yet (the docs' ``luts/titanxp.parquet`` on a fresh checkout) is
answered with the exact ``latbench build-lut`` command that writes that file, instead of only "does
not exist".
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Sequence

from latbench.errors import UserError


def build_lut_command(path: str | os.PathLike, resolutions: Sequence[str] = (), device: str | None = None) -> str:
    """``latbench build-lut --gpu NAME [--device cpu] --resolution R ... --output PATH``: the build
    that writes the LUT at ``path`` for these resolutions (NAME: the file's stem, the name build-lut
    checks against the device; build-lut's defaults for everything else)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).stem).strip("-") or "gpu"
    argv = ["latbench", "build-lut", "--gpu", name]
    if device is not None and str(device).strip().lower() == "cpu":
        argv += ["--device", "cpu"]
    for r in dict.fromkeys(str(r) for r in resolutions if r):
        argv += ["--resolution", r]
    argv += ["--output", str(path)]
    return shlex.join(argv)


def require_lut_file(path: str | os.PathLike, resolutions: Sequence[str] = (), device: str | None = None) -> None:
    """Nothing when ``path`` is a file; else a one-line :class:`UserError` naming the build command."""
    p = Path(path)
    if p.is_file():
        return
    if p.is_dir():
        raise UserError(f"--lut {str(p)!r} is a directory, not a LUT file")
    raise UserError(f"LUT {str(p)!r} does not exist; build it with: {build_lut_command(p, resolutions, device)}")
