"""A rich progress bar on stderr with one task per phase (e.g. ``prepare``, ``measure``), or
nothing; messages printed above it. Used by the commands that measure many networks."""

from __future__ import annotations

import click


class PhaseProgress:
    def __init__(self, enabled: bool) -> None:
        self._p = None
        self._tasks: dict[str, int] = {}
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("[bold]{task.fields[phase]}[/]"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                               console=Console(stderr=True), transient=True)

    def update(self, phase: str, done: int, total: int, what: str) -> None:
        if self._p is None:
            return
        if phase not in self._tasks:
            self._tasks[phase] = self._p.add_task("", total=total, phase=phase)
        self._p.update(self._tasks[phase], completed=done, total=total, description=str(what)[:50])

    def event(self, msg: str) -> None:
        if self._p is not None:
            self._p.console.print(f"[yellow]{msg}[/]")
        else:
            click.echo(msg, err=True)

    def __enter__(self) -> "PhaseProgress":
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.stop()
