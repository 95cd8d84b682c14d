"""A click group whose commands are imported only when used, so ``--help`` starts fast
and each command lives in its own module (``"name": "package.module:function"``).

The group is also where failures the user's machine causes become one line: a disk that refuses
a write (:func:`latbench.files.is_storage_error`: full, read-only, no permission...) and memory
that runs out end as one ``Error:`` line with exit status 2 (a :class:`~latbench.errors.UserError`),
whichever command hit them. Every other exception still shows its traceback: it is a bug.
"""

from __future__ import annotations

import importlib
import sys

import click

OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """``MemoryError``, ``torch.OutOfMemoryError`` or a torch allocator failure (CPU or CUDA)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(m in text for m in OOM_MARKERS) and ("alloc" in text or "memory" in text)
    return False


def describe_out_of_memory(exc: BaseException) -> str:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    for cut in ("See documentation for Memory Management", "If reserved but unallocated"):
        first = first.split(cut)[0].strip()
    return (f"out of memory: {first[:240]}; lower --batch-size, the resolution or the network's width "
            "(or use a device with more memory)")


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

    def invoke(self, ctx):
        from latbench.errors import ResourceError
        from latbench.files import is_storage_error, output_error

        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except OSError as exc:
            if is_storage_error(exc):
                raise output_error(exc) from None
            raise
        except (MemoryError, RuntimeError) as exc:
            if is_out_of_memory(exc):
                raise ResourceError(describe_out_of_memory(exc)) from None
            raise

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
