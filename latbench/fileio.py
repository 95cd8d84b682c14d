"""Atomic writes, output checks, an exclusive lock file and a crash-tolerant JSON-lines journal.

Every output of latbench and nas goes through this module:

- :func:`check_writable` (a file) and :func:`check_output_dir` (a folder) check an output path
  *before* any work starts: a folder where a file is wanted (or the reverse), a path under a
  regular file, a read-only or full disk and missing permissions are refused with one line.
- :func:`atomic_write` writes through a temporary file and ``os.replace``; a disk that refuses a
  write half-way (:func:`is_storage_error`: full, read-only, no permission, quota...) becomes an
  :class:`~latbench.errors.OutputError` naming the file, and the temporary file is removed.
  Temporaries left by a process that was killed mid-write (``.NAME.PID@HOST-XXXXXXXX.tmp``) are
  removed by the next write of the same file.
- :class:`FileLock` keeps two writers off one output; a lock left by a dead process is taken over
  atomically (see its docstring).
- :class:`Journal` appends whole lines or nothing (a failed append is cut back).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from latbench.errors import OutputError, UserError

try:  # POSIX: the stale-lock takeover is serialised with flock (see FileLock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# errno values that say "the storage refused" rather than "the program is wrong"
STORAGE_ERRNOS = frozenset(e for e in (
    errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
    errno.EIO, errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.ETXTBSY,
) if e is not None)
# free space below which an output folder is refused up front
MIN_FREE_BYTES = 64 * 1024


def is_storage_error(exc: BaseException) -> bool:
    """Is ``exc`` an ``OSError`` in which the storage refused (full, read-only, no permission,
    quota, I/O error...)? Libraries that lose the errno (pyarrow) still name its text."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in STORAGE_ERRNOS:
        return True
    text = str(exc)
    return exc.errno is None and any(os.strerror(e) in text for e in STORAGE_ERRNOS)


def _reason(exc: OSError) -> str:
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
    return OutputError(f"{doing} {str(where)!r}: {_reason(exc)}" if where is not None else f"{doing}: {_reason(exc)}")


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - a write of 0 bytes to a regular file means no space
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


# ---- temporaries ----------------------------------------------------------------------------------
_TMP_SUFFIX = ".tmp"
_MKSTEMP_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")
STALE_TMP_OTHER_HOST_S = 24 * 3600.0  # a temporary of another host (shared folder) counts as stale after this


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _tmp_prefix(path: Path) -> str:
    """``.NAME.PID@HOST-``: whoever finds the file later can tell whether its writer is alive."""
    return f".{path.name}.{os.getpid()}@{_host_tag()}-"


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
    me = _host_tag()
    for entry in entries:
        n = entry.name
        if not (n.startswith(head) and n.endswith(_TMP_SUFFIX)):
            continue
        mid = n[len(head):-len(_TMP_SUFFIX)]
        owner, sep, rand = mid.rpartition("-")
        pid_s, at, host = owner.partition("@")
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if sep and at and pid_s.isdigit() and set(rand) <= _MKSTEMP_CHARS and rand:
            if host == me:
                if _pid_alive(int(pid_s)):
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
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=_TMP_SUFFIX, dir=str(path.parent))
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
            _write_all(fd, data)
        finally:
            os.close(fd)

    atomic_write(path, w)


# ---- output checks (before any work) --------------------------------------------------------------
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
        fd, tmp = tempfile.mkstemp(prefix=f".probe.{os.getpid()}@{_host_tag()}-", suffix=_TMP_SUFFIX, dir=str(folder))
    except OSError as exc:
        raise OutputError(f"{what} {label!r} is not writable: {_reason(exc)}") from None
    try:
        _write_all(fd, b"\0")
        os.fsync(fd)
    except OSError as exc:
        raise OutputError(f"{what} {label!r} is not writable: {_reason(exc)}") from None
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
        raise OutputError(f"cannot create the folder of {what} {label!r}: {_reason(exc)}") from None
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


LOCK_SUFFIX = ".lock"


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file that keeps two writers (builds, merges, calibrations) off one LUT at once."""
    return Path(str(output) + LOCK_SUFFIX)


def _pid_alive(pid: int) -> bool:
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


class FileLock:
    """An exclusive lock file (``O_CREAT | O_EXCL``) holding ``{"pid", "host", "since"}``.

    A second holder is refused with a :class:`UserError` naming the first one. A lock left by a
    dead process on this host (or an empty / unreadable lock file older than
    :attr:`STALE_EMPTY_S`: a writer killed or out of disk between creating and filling it) is
    taken over, ``on_stale`` being called with a message.

    The takeover is atomic: the taker opens the stale lock file and holds ``flock`` on it (its
    inode) while it checks that the path still names that inode and that its owner is still dead,
    removes it and creates its own lock. A second process that found the same stale lock waits
    for that ``flock``, then sees that the path names another inode (the new, live lock) and is
    refused. Without ``flock`` (not POSIX) the takeover falls back to the unserialised one.
    """

    STALE_EMPTY_S = 10.0
    # Tests widen the race window between "its owner is dead" and the takeover with this (seconds).
    takeover_pause_s = 0.0

    def __init__(self, path: str | os.PathLike, purpose: str = "a build",
                 on_stale: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.purpose = purpose
        self.on_stale = on_stale
        self._held = False
        self._since: float | None = None

    def _try_create(self) -> bool:
        try:
            fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            if is_storage_error(exc):
                raise output_error(exc, self.path, "cannot create the lock file") from None
            raise
        since = time.time()
        try:
            if fcntl is not None:  # a taker waits (flock) until the owner is written
                fcntl.flock(fd, fcntl.LOCK_EX)
            data = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode()
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException as exc:
            os.close(fd)
            with contextlib.suppress(OSError):  # never leave an empty lock behind (e.g. a full disk)
                os.unlink(self.path)
            if is_storage_error(exc):
                raise output_error(exc, self.path, "cannot write the lock file") from None  # type: ignore[arg-type]
            raise
        os.close(fd)
        self._since = since
        return True

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any] | None:
        try:
            owner = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _stale_reason(self, owner: dict[str, Any] | None, mtime: float) -> str | None:
        """Why the lock with this content is stale, or None if it may belong to a live process."""
        if owner is None:
            if time.time() - mtime > self.STALE_EMPTY_S:
                return "a writer that died while creating it (empty or unreadable lock file)"
            return None
        pid, host = owner.get("pid"), owner.get("host")
        if isinstance(pid, int) and not isinstance(pid, bool) and host == socket.gethostname() \
                and not _pid_alive(pid):
            return f"dead process {pid}"
        return None

    def _take_over(self) -> bool:
        """Replace the stale lock at :attr:`path` by ours; False if the situation changed (the caller
        looks again)."""
        try:
            fd = os.open(str(self.path), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # held by another taker (or a creator) only briefly
            st_fd = os.fstat(fd)
            try:
                st_path = os.stat(self.path)
            except FileNotFoundError:
                return False
            if (st_fd.st_dev, st_fd.st_ino) != (st_path.st_dev, st_path.st_ino):
                return False  # taken over (or released and re-created) while we waited
            raw = b""
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                raw += chunk
            reason = self._stale_reason(self._parse(raw) if raw.strip() else None, st_fd.st_mtime)
            if reason is None:
                return False
            if self.takeover_pause_s:
                time.sleep(self.takeover_pause_s)
            if self.on_stale:
                self.on_stale(f"taking over stale lock {self.path} left by {reason}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return self._try_create()
        finally:
            os.close(fd)  # releases the flock

    def _read_settled(self) -> tuple[os.stat_result, bytes]:
        """The lock file's status and content, after waiting for a creator that is writing its
        owner into it right now (it holds ``flock`` while it writes; a file found empty a moment
        after its creation is read again, up to half a second)."""
        deadline = time.monotonic() + 0.5
        while True:
            fd = os.open(str(self.path), os.O_RDONLY)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_SH)  # a creator holds LOCK_EX until its owner is written
                raw = b""
                while True:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        break
                    raw += chunk
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if raw.strip() or time.monotonic() > deadline or time.time() - st.st_mtime > 1.0:
                return st, raw
            time.sleep(0.005)

    def acquire(self) -> "FileLock":
        for _ in range(5):
            if self._try_create():
                self._held = True
                return self
            try:
                st, raw = self._read_settled()
            except FileNotFoundError:
                continue  # released between our attempts
            except OSError as exc:
                raise UserError(f"cannot read lock file {self.path}: {_reason(exc)}") from None
            owner = self._parse(raw) if raw.strip() else None
            if self._stale_reason(owner, st.st_mtime) is not None:
                if self._take_over():
                    self._held = True
                    return self
                continue
            pid, host = (owner or {}).get("pid"), (owner or {}).get("host")
            who = f"process {pid} on {host}" if pid else "another process"
            raise UserError(f"{self.path.name} is held by {who}: {self.purpose} is already writing this "
                            f"output; wait for it, or delete {self.path} if that process is gone")
        raise UserError(f"could not acquire lock {self.path}: it keeps changing hands")

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            owner = self._parse(self.path.read_bytes())
        except OSError:
            return
        # remove only our own lock (never one that another process holds now)
        if owner is not None and owner.get("pid") == os.getpid() and owner.get("since") == self._since:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Journal:
    """Append-only JSON lines; each line is written whole and fsynced before :meth:`append`
    returns. An append the disk refuses half-way is cut back to the previous line end (and raised
    as an :class:`~latbench.errors.OutputError`), so the file never holds a torn line of ours."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._fd: int | None = os.open(str(self.path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            if is_storage_error(exc):
                raise output_error(exc, self.path) from None
            raise
        size = os.fstat(self._fd).st_size
        if size > 0:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
            if torn:  # a kill mid-line (an older version): end it so the next record starts on its own line
                self._append_bytes(b"\n")

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _append_bytes(self, data: bytes) -> None:
        assert self._fd is not None, "journal is closed"
        start = os.fstat(self._fd).st_size
        try:
            _write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            if is_storage_error(exc):
                raise output_error(exc, self.path) from None
            raise

    def append(self, record: dict[str, Any]) -> None:
        self._append_bytes((json.dumps(record, allow_nan=False, default=str) + "\n").encode("utf-8"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_journal(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of a journal; a torn or garbled line (a kill mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec


def truncate_journal(path: str | os.PathLike, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Rewrite the journal at ``path`` (atomically) with only the records for which ``keep`` is
    true, e.g. the records up to the step a resumed run restarts from; returns them. A missing
    journal becomes an empty file. Close any :class:`Journal` open on ``path`` first."""
    records = [r for r in read_journal(path) if keep(r)]
    atomic_write_text(path, "".join(json.dumps(r, allow_nan=False, default=str) + "\n" for r in records))
    return records


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_png(fig, path: str | os.PathLike, dpi: int = 120, **savefig_kwargs: Any) -> Path:
    """Write a matplotlib figure as PNG atomically (creating the folder) and close it."""
    out = Path(path)
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", **savefig_kwargs))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return out
