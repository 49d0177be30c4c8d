"""lens-eval: per layer, KL to the final distribution and next-token cross-entropy on held-out
text, through the logit lens and a tuned lens (the tuned lens paper's figure 2)."""

from __future__ import annotations

from ..base import Analysis
from .cli import command
from .compute import lens_eval
from .options import OPTIONS, LensEvalOptions
from .result import LensEvalResult

__all__ = ["SPEC", "LensEvalOptions", "LensEvalResult", "lens_eval"]

SPEC = Analysis(
    name="lens_eval",
    command="lens-eval",
    run=lens_eval,
    result=LensEvalResult,
    help="evaluate a tuned lens against the logit lens: KL and cross-entropy per layer",
    description="On held-out --data (packed into --seq-len sequences, up to --tokens tokens), decode "
    "every layer through the logit lens and through the tuned lens in --lens, and measure KL(final || "
    "layer) and next-token cross-entropy per layer. Writes lens_eval.parquet (one row per lens x layer), "
    "lens_eval.png (a line plot per measure) and meta.json.",
    options=OPTIONS,
    cli=command,
    groups=["lens", "data"],
    oom_advice="lower --memory-mb or --seq-len",
)
