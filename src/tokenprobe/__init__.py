"""tokenprobe: token-level analysis of transformer language models (the public API)."""

__version__ = "0.1.0"

from .analyses.lens import logit_lens  # noqa: E402
from .errors import TokenprobeError  # noqa: E402
from .model import Adapter, LoadedModel, load  # noqa: E402
from .results import LensResult, Result  # noqa: E402
from .text import PreparedInput, prepare  # noqa: E402

__all__ = [
    "Adapter",
    "LensResult",
    "LoadedModel",
    "PreparedInput",
    "Result",
    "TokenprobeError",
    "__version__",
    "load",
    "logit_lens",
    "prepare",
]
