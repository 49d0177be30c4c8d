"""tokenprobe: token-level analysis of transformer language models (the public API).

The names below are imported on first use (PEP 562), so `import tokenprobe` and the start of
the `tokenprobe` command do not wait for torch and transformers before they are needed (a
Ctrl-C while the command starts is then one line, not a traceback from inside an import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module (relative to this package) that defines it
_WHERE = {
    **dict.fromkeys(("ANALYSES", "Analysis", "Option", "register"), ".analyses"),
    **dict.fromkeys(("LensResult", "LensOptions", "LensFigure", "logit_lens"), ".analyses.lens"),
    "Settings": ".analyses.settings",
    **dict.fromkeys(("TokenprobeError", "TokenprobeWarning"), ".errors"),
    "RowSet": ".rowset",
    **dict.fromkeys(("Adapter", "LoadedModel", "load"), ".model"),
    "Result": ".results",
    "load_result": ".loading",
    **dict.fromkeys(("PreparedInput", "prepare"), ".text"),
    **dict.fromkeys(
        ("AttributionResult", "AttributionOptions", "AttributionFigure", "attribute"),
        ".analyses.attribute",
    ),
    "attribute_rows": ".analyses.attribute.rows",
    "lens_rows": ".analyses.lens.rows",
    **dict.fromkeys(
        (
            "FlipResult",
            "FlipOptions",
            "FlipFigure",
            "PromptedClassifier",
            "SequenceClassifier",
            "flip_rates",
        ),
        ".analyses.flips",
    ),
    **dict.fromkeys(
        ("SimilarityResult", "SimilarityOptions", "SimilarityFigure", "past_similarity"),
        ".analyses.similarity",
    ),
    **dict.fromkeys(
        ("TraceResult", "TraceOptions", "TraceFigure", "causal_trace"), ".analyses.trace"
    ),
    **dict.fromkeys(("LensEvalResult", "LensEvalOptions", "lens_eval"), ".analyses.lens_eval"),
    **dict.fromkeys(
        (
            "LogitAttributionResult",
            "LogitAttributionOptions",
            "LogitAttributionFigure",
            "logit_attribution",
        ),
        ".analyses.logit_attribution",
    ),
    **dict.fromkeys(("AttentionResult", "AttentionOptions", "attention"), ".analyses.attention"),
    **dict.fromkeys(
        ("FeaturesResult", "FeaturesOptions", "FeaturesFigure", "features"), ".analyses.features"
    ),
    **dict.fromkeys(("Dictionary", "SaeSite", "load_sae"), ".sae"),
    **dict.fromkeys(("TrainSaeResult", "TrainSaeOptions", "train_sae"), ".analyses.train_sae"),
    **dict.fromkeys(("TuneLensResult", "TuneLensOptions", "tune_lens"), ".analyses.tune_lens"),
    **dict.fromkeys(("TunedDecoder", "TunedLens", "load_lens", "save_lens"), ".tuned"),
}

__all__ = [
    "__version__",
    "ANALYSES",
    "Analysis",
    "Option",
    "register",
    "Settings",
    "LensResult",
    "LensOptions",
    "LensFigure",
    "logit_lens",
    "TokenprobeError",
    "TokenprobeWarning",
    "RowSet",
    "Adapter",
    "LoadedModel",
    "load",
    "Result",
    "load_result",
    "FeaturesResult",
    "FeaturesOptions",
    "FeaturesFigure",
    "features",
    "Dictionary",
    "SaeSite",
    "load_sae",
    "TrainSaeResult",
    "TrainSaeOptions",
    "train_sae",
    "PreparedInput",
    "prepare",
    "AttributionResult",
    "AttributionOptions",
    "AttributionFigure",
    "attribute",
    "attribute_rows",
    "lens_rows",
    "FlipResult",
    "FlipOptions",
    "FlipFigure",
    "PromptedClassifier",
    "SequenceClassifier",
    "flip_rates",
    "SimilarityResult",
    "SimilarityOptions",
    "SimilarityFigure",
    "past_similarity",
    "TraceResult",
    "TraceOptions",
    "TraceFigure",
    "causal_trace",
    "LensEvalResult",
    "LensEvalOptions",
    "lens_eval",
    "LogitAttributionResult",
    "LogitAttributionOptions",
    "LogitAttributionFigure",
    "logit_attribution",
    "AttentionResult",
    "AttentionOptions",
    "attention",
    "TuneLensResult",
    "TuneLensOptions",
    "tune_lens",
    "TunedDecoder",
    "TunedLens",
    "load_lens",
    "save_lens",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is asked for (the built-in
    analyses first, so that they are registered whichever name comes first)."""
    if name not in _WHERE:
        raise AttributeError(f"module 'tokenprobe' has no attribute {name!r}")
    importlib.import_module(".analyses", __name__)
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if TYPE_CHECKING:  # the same names, for type checkers and editors
    from .analyses import ANALYSES, Analysis, Option, register
    from .analyses.attention import AttentionOptions, AttentionResult, attention
    from .analyses.attribute import (
        AttributionFigure,
        AttributionOptions,
        AttributionResult,
        attribute,
    )
    from .analyses.attribute.rows import attribute_rows
    from .analyses.features import FeaturesFigure, FeaturesOptions, FeaturesResult, features
    from .analyses.flips import (
        FlipFigure,
        FlipOptions,
        FlipResult,
        PromptedClassifier,
        SequenceClassifier,
        flip_rates,
    )
    from .analyses.lens import LensFigure, LensOptions, LensResult, logit_lens
    from .analyses.lens.rows import lens_rows
    from .analyses.lens_eval import LensEvalOptions, LensEvalResult, lens_eval
    from .analyses.logit_attribution import (
        LogitAttributionFigure,
        LogitAttributionOptions,
        LogitAttributionResult,
        logit_attribution,
    )
    from .analyses.settings import Settings
    from .analyses.similarity import (
        SimilarityFigure,
        SimilarityOptions,
        SimilarityResult,
        past_similarity,
    )
    from .analyses.trace import TraceFigure, TraceOptions, TraceResult, causal_trace
    from .analyses.train_sae import TrainSaeOptions, TrainSaeResult, train_sae
    from .analyses.tune_lens import TuneLensOptions, TuneLensResult, tune_lens
    from .errors import TokenprobeError, TokenprobeWarning
    from .loading import load_result
    from .model import Adapter, LoadedModel, load
    from .results import Result
    from .rowset import RowSet
    from .sae import Dictionary, SaeSite, load_sae
    from .text import PreparedInput, prepare
    from .tuned import TunedDecoder, TunedLens, load_lens, save_lens
