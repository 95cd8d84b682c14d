"""A crash-tolerant JSON-lines journal: whole lines or nothing, a torn line is skipped on reading."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from latbench.files.atomic import atomic_write_text
from latbench.files.storage import is_storage_error, output_error, write_all


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
            write_all(self._fd, data)
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
