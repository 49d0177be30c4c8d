"""How a result was made, the same in every meta.json: the model, the settings, the versions
that decide the numbers and when; built by one helper (`provenance`) for every analysis."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .model import LoadedModel


def versions() -> dict[str, str]:
    """Versions that decide the numbers, recorded in every meta.json."""
    import torch
    import transformers

    from . import __version__

    return {
        "tokenprobe": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def now() -> str:
    """The local time, as meta.json's `created` says it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def json_default(obj: Any) -> Any:
    """What json.dumps writes for numpy values, tuples, sets, paths and anything else (its str)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


@dataclass(frozen=True)
class Provenance:
    """The part of meta.json every analysis writes alike."""

    model: dict[str, Any]  # `LoadedModel.describe()`: name, source, class, device, dtype, ...
    options: dict[str, Any]  # the settings the result was computed with
    versions: dict[str, str]  # tokenprobe, torch, transformers, python
    created: str  # local time, ISO 8601

    def meta(self) -> dict[str, Any]:
        """As meta.json's keys."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def provenance(lm: LoadedModel, options: Any) -> Provenance:
    """The provenance of a result computed now on `lm` with `options` (a settings dataclass,
    whose every setting is recorded, or a dict)."""
    if is_dataclass(options) and not isinstance(options, type):
        options = {f.name: getattr(options, f.name) for f in fields(options)}
    return Provenance(lm.describe(), dict(options), versions(), now())
