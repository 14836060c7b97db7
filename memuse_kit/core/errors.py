"""The one exception type users see: its message is a single line that says what to do."""

from __future__ import annotations


class KitError(Exception):
    """A failure the user can act on; printed as one line, exit status 1."""
