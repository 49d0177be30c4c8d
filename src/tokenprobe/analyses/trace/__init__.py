"""Causal tracing (activation patching): restore one (layer, position) state of the residual
stream, an attention output, an MLP output or one attention head from one run into another, and
score the answer; in an encoder-decoder, the encoder's and decoder's residual streams and the
cross-attention outputs."""

from __future__ import annotations

from ..base import Analysis
from .cli import command, demo
from .compute import causal_trace, embedding_std
from .options import (
    COMPONENTS,
    CORRUPTIONS,
    DIRECTIONS,
    METHODS,
    METRICS,
    OPTIONS,
    TraceFigure,
    TraceOptions,
)
from .result import TraceResult
from .sites import Site, find_sites
from .tracer import Comparison, Tracer

__all__ = [
    "COMPONENTS",
    "CORRUPTIONS",
    "DIRECTIONS",
    "METHODS",
    "METRICS",
    "SPEC",
    "Comparison",
    "Site",
    "TraceFigure",
    "TraceOptions",
    "TraceResult",
    "Tracer",
    "causal_trace",
    "embedding_std",
    "find_sites",
]

SPEC = Analysis(
    name="trace",
    command="trace",
    run=causal_trace,
    result=TraceResult,
    help="causal trace: which (layer, position) state carries the answer (activation patching)",
    description="Runs a clean prompt and a corrupted one (--corrupted, a prompt of the same token length, "
    "or --corrupt noise: Gaussian noise on --subject's input embeddings, --samples draws averaged), then "
    "restores each (layer, position) state of each --component from the clean run into the corrupted "
    "one (--direction corrupt: the other way round) and scores --target at the last position: its "
    "probability, log-probability, or the logit difference to --foil; also normalised (0 = corrupted, "
    "1 = clean). resid rows: layer 0 = embeddings, layer i = output of block i; attn and mlp rows: the "
    "block's attention or MLP output; head rows: (block, head), one query head's output before the output "
    "projection (head-k, head-v: one key or value head of a separate key/value projection). --positions all "
    "restores every position of a row at once (one cell per row: for heads a block x head map). --method estimate gives attribution patching's first-order "
    "estimate from one forward and backward pass; both gives the two and their correlation. Writes "
    "trace.parquet, trace_<component>.png and meta.json (with the clean and corrupted scores). "
    "An encoder-decoder (T5, BART, Marian, ...): --prompt is the source (noise goes on its subject's "
    "token embeddings, or --corrupted is another source), the decoder reads its start and forced "
    "tokens then --decoder-text, and --target is scored at its last position; resid restores the "
    "encoder's residual stream (encoder layer x source position: through cross-attention it "
    "reaches every decoder position) and the decoder's (decoder layer x decoder position), cross "
    "each decoder block's cross-attention output (default: all three; trace_encoder.png, "
    "trace_decoder.png, trace_cross.png; the table's stack column names them).",
    options=OPTIONS,
    cli=command,
    demo=demo,
    # the estimate keeps every block's activations for the backward pass
    gradients=lambda args: getattr(args, "method", "") in ("estimate", "both"),
    oom_advice="lower --samples",
    seq2seq=True,
    demo_help="two causal traces (the Eiffel Tower prompt, noise on its subject: residual stream "
    "and MLPs; then every attention head, all positions at once)",
)
