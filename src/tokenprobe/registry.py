"""The registry of analyses: name -> spec (see `analyses/base.py` for what a spec holds).

It lives apart from the analyses so that the layers below them (saving and loading results,
the report, the command line) can look an analysis up without importing any of them. It is
filled when `tokenprobe.analyses` is imported; a lookup that finds nothing imports it first
(by name, as a plug-in would be found), so `load_result` works before anything else is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import TokenprobeError

if TYPE_CHECKING:
    from .analyses.base import Analysis

ANALYSES: dict[str, Analysis] = {}
BUILT_IN = "tokenprobe.analyses"  # the package that registers the built-in analyses


def _load_built_in() -> None:
    """Register the built-in analyses if nothing has imported them yet."""
    importlib.import_module(BUILT_IN)


def register(spec: Analysis) -> Analysis:
    """Add an analysis; its name, command and result kind must be new."""
    for other in ANALYSES.values():
        if other is spec:
            continue
        clash = (
            (other.name == spec.name and "name")
            or (other.command == spec.command and "command")
            or (other.result.kind == spec.result.kind and "result kind")
        )
        if clash:
            raise ValueError(f"analysis {spec.name!r}: its {clash} is taken by {other.name!r}")
    ANALYSES[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove an analysis (tests register toy ones)."""
    ANALYSES.pop(name, None)


def by_kind(kind: object) -> Analysis:
    """The analysis whose results are saved with `kind` in their meta.json."""
    _load_built_in()
    for spec in ANALYSES.values():
        if kind == spec.result.kind or kind in spec.result.old_kinds:
            return spec
    raise TokenprobeError(f"unknown result kind {kind!r}")


def by_command(command: str) -> Analysis:
    """The analysis behind a command-line subcommand."""
    _load_built_in()
    for spec in ANALYSES.values():
        if spec.command == command:
            return spec
    raise TokenprobeError(f"unknown command {command!r}")
