"""Direct logit attribution: the target's logit (or target - foil) at every position split
exactly into the embeddings, each block's attention and MLP, each attention head and the
biases, read through the final norm frozen at each position's scale."""

from __future__ import annotations

from ..base import Analysis
from .cli import command, demo
from .compute import logit_attribution
from .options import OPTIONS, SHOW, LogitAttributionFigure, LogitAttributionOptions
from .result import LogitAttributionResult

__all__ = [
    "SHOW",
    "SPEC",
    "LogitAttributionFigure",
    "LogitAttributionOptions",
    "LogitAttributionResult",
    "logit_attribution",
]

SPEC = Analysis(
    name="logit_attribution",
    command="logit-attribution",
    run=logit_attribution,
    result=LogitAttributionResult,
    help="direct logit attribution: what each block, head and the embeddings add to a logit",
    description="One forward pass of --prompt. The last layer's residual stream at each position "
    "is the embeddings plus what each block's attention and MLP (a state-space block's mixer) add; "
    "each part, and each attention head's share, is read through the final norm frozen at that "
    "position's own scale, the output projection and --target's unembedding row (minus --foil's): "
    "the parts add up to the model's own logit (before any soft-cap), checked at every position. "
    "Post-norm families (Gemma 2/3, OLMo 2/3, GLM-4) count each branch's post-norm output. Writes "
    "logit_attribution.parquet (position, token, layer, component, head, value), meta.json (what "
    "each component is in this family, the exactness check), logit_attribution.png (components "
    "per block at --position), logit_attribution_heads.png (heads per block) and "
    "logit_attribution_positions.png (--show per block and position).",
    options=OPTIONS,
    cli=command,
    demo=demo,
    demo_help="direct logit attribution (the Eiffel Tower prompt: ' Paris' minus ' Rome', per block and head)",
    batch_tokens=False,
)
