"""The one progress bar of latbench and nas: a rich bar on stderr with one row per phase (e.g.
``timing``, ``prepare``, ``measure``, ``epoch 3/10``), each with done/total, elapsed time, ETA and
a short text (the current op, the latest loss), or nothing at all when disabled. Messages are
printed above it (:meth:`PhaseProgress.event`).

Used by ``latbench build-lut`` (:mod:`latbench.build.builder`), ``latbench fit`` and
``validate-lut``, and through :func:`nas.runtime.progress_bar` by every nas trainer.
"""

from __future__ import annotations

from typing import Any

import click


class PhaseProgress:
    """``enabled``: draw anything at all; ``transient``: erase the bar when it stops;
    ``terminal_only``: draw only when stderr is an interactive terminal."""

    def __init__(self, enabled: bool, *, transient: bool = True, terminal_only: bool = False) -> None:
        self._p: Any = None
        self._tasks: dict[str, Any] = {}
        if not enabled:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if terminal_only and not console.is_terminal:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self._p = Progress(TextColumn("[bold]{task.fields[phase]}[/]"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                           TextColumn("{task.description}"), console=console, transient=transient)

    @property
    def drawing(self) -> bool:
        return self._p is not None

    def _task(self, phase: str, total: int | None, done: int = 0) -> Any:
        if phase not in self._tasks:
            self._tasks[phase] = self._p.add_task("", total=total, completed=done, phase=phase)
        return self._tasks[phase]

    def update(self, phase: str, done: int, total: int, what: str) -> None:
        """``phase`` has ``done`` of ``total`` steps finished, working on ``what``."""
        if self._p is not None:
            self._p.update(self._task(phase, total, done), completed=done, total=total, description=str(what)[:50])

    def start_phase(self, phase: str, total: int, done: int = 0) -> None:
        if self._p is not None:
            self._task(phase, total, done)

    def advance(self, phase: str, n: int = 1, what: str | None = None) -> None:
        """``n`` more steps of ``phase`` finished (``what``: a new text, or keep the old one)."""
        if self._p is not None:
            extra = {} if what is None else {"description": str(what)[:70]}
            self._p.update(self._task(phase, None), advance=n, **extra)

    def grow(self, phase: str, n: int) -> None:
        """``n`` more steps to do in ``phase`` (e.g. entries timed again after a drift)."""
        if self._p is not None and n:
            task = self._task(phase, None)
            total = next(t.total for t in self._p.tasks if t.id == task)
            self._p.update(task, total=(total or 0) + n)

    def event(self, msg: str) -> None:
        if self._p is not None:
            self._p.console.print(f"[yellow]{msg}[/]")
        else:
            click.echo(msg, err=True)

    def start(self) -> "PhaseProgress":
        if self._p is not None:
            self._p.start()
        return self

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()

    def __enter__(self) -> "PhaseProgress":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
