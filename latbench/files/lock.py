"""An exclusive lock file that keeps two writers (builds, merges, fits, searches) off one output."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from latbench.errors import UserError
from latbench.files.storage import is_storage_error, output_error, pid_alive, os_error_reason, write_all

try:  # POSIX: the stale-lock takeover is serialised with flock (see FileLock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".lock"


def _read_all(fd: int) -> bytes:
    raw = b""
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return raw
        raw += chunk


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file that keeps two writers (builds, merges, calibrations) off one LUT at once."""
    return Path(str(output) + LOCK_SUFFIX)


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
            write_all(fd, data)
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
                and not pid_alive(pid):
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
            raw = _read_all(fd)
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
                raw = _read_all(fd)
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
                raise UserError(f"cannot read lock file {self.path}: {os_error_reason(exc)}") from None
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
