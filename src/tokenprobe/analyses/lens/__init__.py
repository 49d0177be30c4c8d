"""Logit lens: every layer's residual stream at every position decoded through the model's
own head, keeping entropy, top-k and target statistics."""

from __future__ import annotations

from ..base import Analysis
from .cli import command, demo
from .compute import logit_lens
from .decoders import Decoder, LogitDecoder
from .options import MAX_TOP_K, OPTIONS, LensFigure, LensOptions
from .result import LensResult

__all__ = [
    "SPEC",
    "Decoder",
    "LensFigure",
    "LensOptions",
    "LensResult",
    "LogitDecoder",
    "MAX_TOP_K",
    "logit_lens",
]

SPEC = Analysis(
    name="lens",
    command="lens",
    run=logit_lens,
    result=LensResult,
    help="logit lens: entropy and top tokens of every layer at every position",
    description="Decode every layer's hidden state at every position through the final norm and "
    "unembedding. Rows: layer 0 = embeddings, layer i = output of block i, 'output' = the model's "
    "own logits. Writes lens.parquet (one row per layer x position), lens.png and meta.json.",
    options=OPTIONS,
    cli=command,
    demo=demo,
    oom_advice="lower --memory-mb",
    demo_help="logit lens (two prompts, the first as an overview + detail figure with a foil, and "
    "that one again through the tuned lens shipped for the built-in model)",
)
