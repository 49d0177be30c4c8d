"""tokenprobe: token-level analysis of transformer language models (the public API)."""

__version__ = "0.1.0"

from .analyses.attribution import attribute  # noqa: E402
from .analyses.flips import PromptedClassifier, SequenceClassifier, flip_rates  # noqa: E402
from .analyses.lens import logit_lens  # noqa: E402
from .analyses.similarity import past_similarity  # noqa: E402
from .errors import TokenprobeError  # noqa: E402
from .model import Adapter, LoadedModel, load  # noqa: E402
from .results import AttributionResult, FlipResult, LensResult, Result, SimilarityResult  # noqa: E402
from .text import PreparedInput, prepare  # noqa: E402

__all__ = [
    "Adapter",
    "AttributionResult",
    "FlipResult",
    "LensResult",
    "LoadedModel",
    "PreparedInput",
    "PromptedClassifier",
    "Result",
    "SequenceClassifier",
    "SimilarityResult",
    "TokenprobeError",
    "__version__",
    "attribute",
    "flip_rates",
    "load",
    "logit_lens",
    "past_similarity",
    "prepare",
]
