"""A click group whose commands are imported only when used, so ``--help`` starts fast
and each command lives in its own module (``"name": "package.module:function"``)."""

from __future__ import annotations

import importlib
import sys

import click


class LazyGroup(click.Group):
    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx, name):
        if name in self.lazy_commands:
            module_name, attr = self.lazy_commands[name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        # Short help without importing heavy modules: use the docstring's first line lazily.
        rows = []
        for name in self.list_commands(ctx):
            try:
                cmd = self.get_command(ctx, name)
            except ImportError as exc:  # a broken optional module must not break --help
                rows.append((name, f"(unavailable: {exc})"))
                continue
            if cmd is None or cmd.hidden:
                continue
            rows.append((name, cmd.get_short_help_str(limit=formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def run_cli(group: click.Group) -> None:
    """Run a click group; KeyboardInterrupt ends with 130 and a short message, not a traceback."""
    try:
        group.main(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        click.echo("interrupted", err=True)
        sys.exit(130)
