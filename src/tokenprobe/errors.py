"""The one error type users see: a message that names the problem and the fix."""

from __future__ import annotations


class TokenprobeError(Exception):
    """Bad input or an unusable model; the CLI prints its message as one line, no traceback."""
