"""What counts as the storage refusing a write, and the low-level pieces every writer shares.

- :func:`is_storage_error`: an ``OSError`` in which the storage refused (full, read-only, no
  permission, quota, I/O error...); :func:`output_error` turns one into the one-line
  :class:`~latbench.errors.OutputError` naming the file;
- :func:`write_all`, :func:`fsync_dir`: whole writes and durable renames;
- :func:`pid_alive`, :func:`host_tag`: whether a writer that left a file behind still runs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from pathlib import Path

from latbench.errors import OutputError

# errno values that say "the storage refused" rather than "the program is wrong"
STORAGE_ERRNOS = frozenset(e for e in (
    errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
    errno.EIO, errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.ETXTBSY,
) if e is not None)


def is_storage_error(exc: BaseException) -> bool:
    """Is ``exc`` an ``OSError`` in which the storage refused (full, read-only, no permission,
    quota, I/O error...)? Libraries that lose the errno (pyarrow) still name its text."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in STORAGE_ERRNOS:
        return True
    text = str(exc)
    return exc.errno is None and any(os.strerror(e) in text for e in STORAGE_ERRNOS)


def os_error_reason(exc: OSError) -> str:
    if exc.errno in STORAGE_ERRNOS and exc.strerror:
        return exc.strerror
    for e in STORAGE_ERRNOS:
        if os.strerror(e) in str(exc):
            return os.strerror(e)
    if exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def output_error(exc: OSError, path: str | os.PathLike | None = None, doing: str = "cannot write") -> OutputError:
    """The one-line :class:`OutputError` for a storage error while writing ``path``."""
    where = path if path is not None else exc.filename
    why = os_error_reason(exc)
    return OutputError(f"{doing} {str(where)!r}: {why}" if where is not None else f"{doing}: {why}")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - a write of 0 bytes to a regular file means no space
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def host_tag() -> str:
    """A short tag of this host for file names (a shared folder tells its writers apart)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True
