"""Errors a user can cause. The CLI turns them into one line and exit status 2, never a traceback."""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A mistake in the user's input (bad option, unreadable file, mismatched LUT...).

    Raised anywhere in latbench or nas; the CLI prints ``Error: <message>`` and exits with 2.
    """

    exit_code = 2


class LUTError(UserError):
    """A LUT file that cannot be used: unreadable, corrupt, unknown schema, wrong configuration."""


class OutputError(UserError):
    """An output that cannot be written: a read-only or full disk, no permission, a file where a
    folder is wanted (or the reverse). Raised up front by the output checks of
    :mod:`latbench.files`, and by its writers when the disk refuses a write half-way."""


class ResourceError(UserError):
    """A request that cannot fit the machine (memory), refused before the work starts or caught
    when the allocator gives up."""
