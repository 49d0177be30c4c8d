"""tokenprobe: token-level analysis of transformer language models (the public API)."""

__version__ = "0.1.0"

from .analyses import ANALYSES, Analysis, Option, register  # noqa: E402, I001
from .analyses.lens import LensResult, logit_lens  # noqa: E402
from .errors import TokenprobeError, TokenprobeWarning  # noqa: E402
from .rowset import RowSet  # noqa: E402
from .model import Adapter, LoadedModel, load  # noqa: E402
from .results import Result  # noqa: E402
from .text import PreparedInput, prepare  # noqa: E402

from .analyses.attribution import AttributionResult, attribute  # noqa: E402
from .analyses.attribution.rows import attribute_rows  # noqa: E402
from .analyses.lens.rows import lens_rows  # noqa: E402
from .analyses.flips import FlipResult, PromptedClassifier, SequenceClassifier, flip_rates  # noqa: E402
from .analyses.similarity import SimilarityResult, past_similarity  # noqa: E402
from .analyses.trace import TraceResult, causal_trace  # noqa: E402
from .analyses.lens_eval import LensEvalResult, lens_eval  # noqa: E402
from .analyses.tune_lens import TuneLensResult, tune_lens  # noqa: E402
from .tuned import TunedDecoder, TunedLens, load_lens, save_lens, train_lens  # noqa: E402

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
    "TokenprobeWarning",
    "RowSet",
    "attribute_rows",
    "lens_rows",
    "__version__",
    "attribute",
    "flip_rates",
    "load",
    "logit_lens",
    "past_similarity",
    "prepare",
    "register",
    "LensEvalResult",
    "TuneLensResult",
    "TunedDecoder",
    "TunedLens",
    "lens_eval",
    "load_lens",
    "save_lens",
    "train_lens",
    "tune_lens",
    "TraceResult",
    "causal_trace",
]
