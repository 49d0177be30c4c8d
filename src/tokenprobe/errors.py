"""The one error type users see: a message that names the problem and the fix.

A message names the library's parameters in backticks (`` `top_k` must be at least 1``): a
Python caller reads the parameter name, and the command line shows the flag that sets it
(``--top-k``), so neither sees names the other never typed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


class TokenprobeError(Exception):
    """Bad input or an unusable model; the CLI prints its message as one line, no traceback."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.template = message

    def __str__(self) -> str:
        return self.render()

    def render(self, name_of: Mapping[str, str] | Callable[[str], str] | None = None) -> str:
        """The message with each `name` shown as `name_of` says (a parameter's flag on the
        command line), else as the bare parameter name."""
        if name_of is None:
            return _NAME.sub(lambda m: m.group(1), self.template)
        lookup = name_of.get if isinstance(name_of, Mapping) else name_of
        return _NAME.sub(lambda m: lookup(m.group(1)) or m.group(1), self.template)


class TokenprobeWarning(UserWarning):
    """A warning whose message names parameters in backticks, like `TokenprobeError`: the
    command line shows the flags, a Python caller the parameter names."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.template = message

    __str__ = TokenprobeError.__str__
    render = TokenprobeError.render


def warn(message: str, stacklevel: int = 2) -> None:
    """Warn with a `TokenprobeWarning` (stacklevel as for `warnings.warn`, counted from the caller)."""
    import warnings

    warnings.warn(TokenprobeWarning(message), stacklevel=stacklevel + 1)


def text_list(value: object, name: str) -> list[str] | None:
    """A parameter that takes several texts, as a list; one string is refused, since iterating
    it would give one-character texts (`targets=" Paris"` tracking " ", "P", "a", ...)."""
    if value is None:
        return None
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise TokenprobeError(f"`{name}` takes a list of texts, not one string: write [{shown!r}]")
    return [v for v in value]  # type: ignore[attr-defined]
