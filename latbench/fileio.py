"""Atomic writes, an exclusive lock file and a crash-tolerant JSON-lines journal."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from latbench.errors import UserError


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


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` to write a temporary file next to ``path``, fsync it, then
    ``os.replace`` it onto ``path``: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, w)


def check_writable(path: str | os.PathLike) -> Path:
    """Make ``path``'s folder if needed and check a file can be created there (UserError if not)."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise UserError(f"output {str(path)!r} is a directory; give a file path such as luts/NAME.parquet")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder of output {str(path)!r}: {exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"output {str(path)!r} is not writable")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=str(path.parent))
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UserError(f"output {str(path)!r} is not writable: {exc.strerror or exc}") from None
    return path


LOCK_SUFFIX = ".lock"


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file that keeps two writers (builds, merges, calibrations) off one LUT at once."""
    return Path(str(output) + LOCK_SUFFIX)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileLock:
    """An exclusive lock file (``O_CREAT | O_EXCL``) holding ``{"pid", "host", "since"}``.

    A second holder is refused with a :class:`UserError` naming the first one. A lock left by a
    dead process on this host is taken over (``on_stale`` is called with a message).
    """

    def __init__(self, path: str | os.PathLike, purpose: str = "a build",
                 on_stale: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.purpose = purpose
        self.on_stale = on_stale
        self._held = False

    def _try_create(self) -> bool:
        try:
            fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def acquire(self) -> "FileLock":
        for _ in range(3):
            if self._try_create():
                self._held = True
                return self
            try:
                owner = json.loads(self.path.read_text(encoding="utf-8") or "{}")
            except (OSError, ValueError):
                owner = {}
            pid, host = owner.get("pid"), owner.get("host")
            if isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid):
                if self.on_stale:
                    self.on_stale(f"taking over stale lock {self.path} left by dead process {pid}")
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            if not owner and not self.path.exists():
                continue  # released between our attempts
            who = f"process {pid} on {host}" if pid else "another process"
            raise UserError(f"{self.path.name} is held by {who}: {self.purpose} is already writing this "
                            f"output; wait for it, or delete {self.path} if that process is gone")
        raise UserError(f"could not acquire lock {self.path}")

    def release(self) -> None:
        if self._held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._held = False

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Journal:
    """Append-only JSON lines; each line is flushed and fsynced before :meth:`append` returns."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        torn = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
        self._fh = open(self.path, "a", encoding="utf-8")
        if torn:  # a kill mid-line: end it so the next record starts on its own line
            self._fh.write("\n")

    def append(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, allow_nan=False, default=str) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

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
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", **savefig_kwargs))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return out
