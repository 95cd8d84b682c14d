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
