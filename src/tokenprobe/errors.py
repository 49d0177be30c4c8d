"""The one error type users see: a message that names the problem and the fix.

A message names the library's parameters in backticks (`` `top_k` must be at least 1``): a
Python caller reads the parameter name, and the command line shows the flag that sets it
(``--top-k``), so neither sees names the other never typed.

Warnings raised where the user cannot see them (a Ray worker) are caught there
(`caught_warnings`) and shown again here (`warn_again`), once, as a local run shows them.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

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
        return _render(self.template, name_of)


class TokenprobeWarning(UserWarning):
    """A warning whose message names parameters in backticks, like `TokenprobeError`: the
    command line shows the flags, a Python caller the parameter names."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.template = message

    def __str__(self) -> str:
        return self.render()

    def render(self, name_of: Mapping[str, str] | Callable[[str], str] | None = None) -> str:
        """The message with each `name` shown as `name_of` says, as `TokenprobeError.render`."""
        return _render(self.template, name_of)


def _render(template: str, name_of: Mapping[str, str] | Callable[[str], str] | None) -> str:
    """`template` with each `name` shown as `name_of` says, else as the bare name."""
    if name_of is None:
        return _NAME.sub(lambda m: m.group(1), template)
    lookup = name_of.get if isinstance(name_of, Mapping) else name_of
    return _NAME.sub(lambda m: lookup(m.group(1)) or m.group(1), template)


def warn(message: str, stacklevel: int = 2) -> None:
    """Warn with a `TokenprobeWarning` (stacklevel as for `warnings.warn`, counted from the caller)."""
    warnings.warn(TokenprobeWarning(message), stacklevel=stacklevel + 1)


@dataclass
class CaughtWarning:
    """A warning raised elsewhere (on a Ray worker), kept to be shown here: picklable."""

    message: Warning
    filename: str
    lineno: int


@contextmanager
def caught_warnings() -> Iterator[list[CaughtWarning]]:
    """Keep the warnings raised inside (each distinct one once) instead of showing them; the
    list fills as the block ends. A Ray worker sends them back with its chunk's result, since
    what it would print never reaches the user's terminal."""
    caught: list[CaughtWarning] = []
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")  # the driver's filters decide what is shown
        yield caught
    seen = set()
    for w in log:
        key = (w.category, str(w.message), w.filename, w.lineno)
        if key not in seen:
            seen.add(key)
            caught.append(CaughtWarning(_picklable(w.message), w.filename, w.lineno))


def _picklable(message: Warning | str) -> Warning:
    """The warning as it is where it pickles and unpickles, else a UserWarning of its text."""
    import pickle

    if isinstance(message, Warning):
        try:
            pickle.loads(pickle.dumps(message))
            return message
        except Exception:  # noqa: BLE001 - any warning class that does not travel
            pass
    return UserWarning(str(message))


_MODULES: dict[str, str] = {}  # a source file -> the name of the module loaded from it
_REGISTRIES: dict[str, dict] = {}  # once-per-place registries of files no module here is from


def _registry_of(filename: str) -> tuple[str | None, dict]:
    """The module loaded here from `filename` (its name) and the registry `warnings.warn` keeps
    in it of what was shown; a registry of its own where no module here came from that file."""
    if filename not in _MODULES:
        for name, module in list(sys.modules.items()):
            if getattr(module, "__file__", None) == filename:
                _MODULES[filename] = name
                break
    found = _MODULES.get(filename)
    loaded = sys.modules.get(found) if found else None
    if loaded is None:
        return None, _REGISTRIES.setdefault(filename, {})
    return found, vars(loaded).setdefault("__warningregistry__", {})


def warn_again(caught: Iterable[CaughtWarning]) -> None:
    """Show warnings caught elsewhere as if raised here, at their own file and line: the
    filters and the once-per-place registry of that module decide, as for a local run, so a
    warning every worker raised is shown once."""
    for w in caught:
        name, registry = _registry_of(w.filename)
        warnings.warn_explicit(
            w.message, type(w.message), w.filename, w.lineno, module=name, registry=registry
        )


def text_list(value: object, name: str) -> list[str] | None:
    """A parameter that takes several texts, as a list; one string is refused, since iterating
    it would give one-character texts (`targets=" Paris"` tracking " ", "P", "a", ...)."""
    if value is None:
        return None
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise TokenprobeError(f"`{name}` takes a list of texts, not one string: write [{shown!r}]")
    return [v for v in value]  # type: ignore[attr-defined]
