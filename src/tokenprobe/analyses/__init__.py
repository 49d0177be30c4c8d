"""The analyses, one folder each, registered here in the order the command line lists them.

`ANALYSES` (name -> `base.Analysis`) is the one registry: the command line, the demo, the
report and loading a saved result all read it. A new analysis is a folder with a `SPEC` and
one line below (or a `register(SPEC)` call from anywhere, e.g. a test or a plug-in).
"""

from __future__ import annotations

import importlib

from ..registry import ANALYSES, by_command, by_kind, register, unregister
from .base import Analysis, Option

__all__ = ["ANALYSES", "Analysis", "Option", "by_command", "by_kind", "register", "unregister"]

BUILT_IN = (
    "lens",
    "similarity",
    "attribute",
    "logit_attribution",
    "flips",
    "tune_lens",
    "lens_eval",
    "trace",
    "attention",
    "features",
    "train_sae",
)

for _name in BUILT_IN:
    register(importlib.import_module(f".{_name}", __name__).SPEC)
