"""Output checks before any work starts: a folder where a file is wanted (or the reverse), a path
under a regular file, a read-only or full disk and missing permissions are refused with one line
(:class:`~latbench.errors.OutputError`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from latbench.errors import OutputError
from latbench.files.atomic import TMP_SUFFIX
from latbench.files.storage import host_tag, os_error_reason, write_all

# free space below which an output folder is refused up front
MIN_FREE_BYTES = 64 * 1024


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p):
        if p.parent == p:
            break
        p = p.parent
    return p


def _probe(folder: Path, label: str, what: str) -> None:
    """Write one byte into ``folder`` and fsync it (then remove it): a read-only, full or
    permission-less folder fails here rather than after the work."""
    try:
        st = os.statvfs(folder)
        free = st.f_frsize * (st.f_bfree if os.geteuid() == 0 else st.f_bavail)
    except (OSError, AttributeError):
        free = None
    if free is not None and free < MIN_FREE_BYTES:
        raise OutputError(f"{what} {label!r}: no space left on the disk of {str(folder)!r} "
                          f"({free // 1024} KiB free)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".probe.{os.getpid()}@{host_tag()}-", suffix=TMP_SUFFIX, dir=str(folder))
    except OSError as exc:
        raise OutputError(f"{what} {label!r} is not writable: {os_error_reason(exc)}") from None
    try:
        write_all(fd, b"\0")
        os.fsync(fd)
    except OSError as exc:
        raise OutputError(f"{what} {label!r} is not writable: {os_error_reason(exc)}") from None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _check_folder_chain(folder: Path, label: str, what: str) -> Path:
    """The nearest existing ancestor of ``folder`` (``folder`` itself if it exists), which must be
    a directory."""
    anc = _nearest_existing(folder)
    if not anc.is_dir():
        raise OutputError(f"{what} {label!r} cannot be created: {str(anc)!r} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {label!r} is not writable (no write permission in {str(anc)!r}, "
                          "or a read-only disk)")
    return anc


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Check, before any work, that the file ``path`` can be written: not a folder, not under a
    regular file, on a writable disk with space left. Makes ``path``'s folder if needed.
    :class:`~latbench.errors.OutputError` (one line) if not."""
    path = Path(path)
    label = str(path)
    if path.is_dir():
        raise OutputError(f"{what} {label!r} is a directory; give a file path")
    if path.exists() and not path.is_file():
        raise OutputError(f"{what} {label!r} is not a regular file")
    anc = _check_folder_chain(path.parent, label, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {label!r} is not writable")
    _probe(anc, label, what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder of {what} {label!r}: {os_error_reason(exc)}") from None
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check, before any work, that files can be written into the folder ``path``: not an existing
    file, not under a regular file, on a writable disk with space left. Creates nothing.
    :class:`~latbench.errors.OutputError` (one line) if not."""
    path = Path(path)
    label = str(path)
    if os.path.lexists(path) and not path.is_dir():
        raise OutputError(f"{what} {label!r} is a file, not a folder; give a folder path")
    anc = _check_folder_chain(path, label, what)
    _probe(anc, label, what)
    return path


def check_outputs(files: dict[str, Any] | None = None, folders: dict[str, Any] | None = None) -> None:
    """The up-front output check of a command: ``files`` / ``folders`` map an option's name to the
    path it names (``None``: not written this time). Each file path goes through
    :func:`check_writable`, each folder through :func:`check_output_dir`; two options naming the
    same file are refused."""
    seen: dict[str, str] = {}
    for label, p in (files or {}).items():
        if p is None:
            continue
        key = os.path.abspath(os.fspath(p))
        if key in seen:
            raise OutputError(f"{seen[key]} and {label} name the same file {str(p)!r}")
        seen[key] = label
        check_writable(p, label)
    for label, p in (folders or {}).items():
        if p is not None:
            check_output_dir(p, label)
