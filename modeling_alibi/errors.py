"""Errors the user can fix. The `alibi-lm` command prints their one-line message and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, files or environment; the message names it and says how to fix it."""
