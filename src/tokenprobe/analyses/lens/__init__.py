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
    "own logits. Writes lens.parquet (one row per layer x position), lens.png and meta.json. "
    "An encoder-decoder model (T5, BART, Marian, ...): --prompt is the source the encoder "
    "reads; the decoder reads its start token, the --target-lang token and --decoder-text, and "
    "the rows are the decoder's layers at the decoder's positions (the table's side column "
    "says decoder); encoder layers are left out, since no head reads them: they predict no "
    "next token. It takes no --lens (a tuned lens is trained on a causal model), --chat or "
    "--dummy.",
    options=OPTIONS,
    cli=command,
    demo=demo,
    oom_advice="lower --memory-mb",
    seq2seq=True,
    demo_help="logit lens (two prompts, the first as an overview + detail figure with a foil, and "
    "that one again through the tuned lens shipped for the built-in model)",
)
