"""tokenprobe: token-level analysis of transformer language models (the public API)."""

__version__ = "0.1.0"

from .analyses import ANALYSES, Analysis, Option, register  # noqa: E402, I001
from .analyses.lens import LensResult, logit_lens  # noqa: E402
from .errors import TokenprobeError  # noqa: E402
from .model import Adapter, LoadedModel, load  # noqa: E402
from .results import Result  # noqa: E402
from .text import PreparedInput, prepare  # noqa: E402

from .analyses.attribution import AttributionResult, attribute  # noqa: E402
from .analyses.flips import FlipResult, PromptedClassifier, SequenceClassifier, flip_rates  # noqa: E402
from .analyses.similarity import SimilarityResult, past_similarity  # noqa: E402

__all__ = [
    "ANALYSES",
    "Adapter",
    "Analysis",
    "AttributionResult",
    "FlipResult",
    "LensResult",
    "LoadedModel",
    "Option",
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
    "register",
]
