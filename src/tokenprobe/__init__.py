"""tokenprobe: token-level analysis of transformer language models (the public API)."""

__version__ = "0.1.0"

from .analyses.attribution import attribute  # noqa: E402
from .analyses.lens import logit_lens  # noqa: E402
from .analyses.similarity import past_similarity  # noqa: E402
from .errors import TokenprobeError  # noqa: E402
from .model import Adapter, LoadedModel, load  # noqa: E402
from .results import AttributionResult, LensResult, Result, SimilarityResult  # noqa: E402
from .text import PreparedInput, prepare  # noqa: E402

__all__ = [
    "Adapter",
    "AttributionResult",
    "LensResult",
    "LoadedModel",
    "PreparedInput",
    "Result",
    "SimilarityResult",
    "TokenprobeError",
    "__version__",
    "attribute",
    "load",
    "logit_lens",
    "past_similarity",
    "prepare",
]
