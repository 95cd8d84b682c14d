"""Atomic writes: through a temporary file and ``os.replace``, so readers see the old file or the
new one, never half of one.

A disk that refuses a write half-way becomes an :class:`~latbench.errors.OutputError` naming the
file, and the temporary file is removed. Temporaries left by a process that was killed mid-write
(``.NAME.PID@HOST-XXXXXXXX.tmp``) are removed by the next write of the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from latbench.files.storage import fsync_dir, host_tag, is_storage_error, output_error, pid_alive, write_all

TMP_SUFFIX = ".tmp"
_MKSTEMP_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")
STALE_TMP_OTHER_HOST_S = 24 * 3600.0  # a temporary of another host (shared folder) counts as stale after this


def _tmp_prefix(path: Path) -> str:
    """``.NAME.PID@HOST-``: whoever finds the file later can tell whether its writer is alive."""
    return f".{path.name}.{os.getpid()}@{host_tag()}-"


def clean_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporaries of ``path`` (``.NAME.PID@HOST-XXXXXXXX.tmp``) whose writer is dead: a
    process of this host that no longer runs, or (a shared folder) a file of another host untouched
    for a day. Files of this naming written by old versions (``.NAME.XXXXXXXX.tmp``) count as
    stale after a day too. Returns what was removed; never raises."""
    path = Path(path)
    head = f".{path.name}."
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    me = host_tag()
    for entry in entries:
        n = entry.name
        if not (n.startswith(head) and n.endswith(TMP_SUFFIX)):
            continue
        mid = n[len(head):-len(TMP_SUFFIX)]
        owner, sep, rand = mid.rpartition("-")
        pid_s, at, host = owner.partition("@")
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if sep and at and pid_s.isdigit() and set(rand) <= _MKSTEMP_CHARS and rand:
            if host == me:
                if pid_alive(int(pid_s)):
                    continue
            elif age < STALE_TMP_OTHER_HOST_S:
                continue
        elif len(mid) == 8 and set(mid) <= _MKSTEMP_CHARS:  # an older version's mkstemp name
            if age < STALE_TMP_OTHER_HOST_S:
                continue
        else:
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` to write a temporary file next to ``path``, fsync it, then
    ``os.replace`` it onto ``path``: readers see the old file or the new one, never half of one.

    A storage error (full or read-only disk, no permission...) becomes one
    :class:`~latbench.errors.OutputError`; the temporary is removed whatever happens, and stale
    temporaries of ``path`` left by killed writers are removed first."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=TMP_SUFFIX, dir=str(path.parent))
    except OSError as exc:
        if is_storage_error(exc):
            raise output_error(exc, path) from None
        raise
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if is_storage_error(exc):
            raise output_error(exc, path) from None  # type: ignore[arg-type]
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, w)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def w(tmp: str) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)

    atomic_write(path, w)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
