"""Attention patterns: every attention layer's softmax weights on a prompt, read while the
model runs with its own kernel (its numbers unchanged) and checked against its eager
implementation; with --to, how much each layer x head attends from a query to a text. On an
encoder-decoder: its encoder, decoder or cross-attention (see `seq2seq`)."""

from __future__ import annotations

from ..base import Analysis
from .capture import recording
from .cli import command, demo
from .compute import attention
from .options import OPTIONS, AttentionOptions
from .result import AttentionResult

__all__ = ["SPEC", "AttentionOptions", "AttentionResult", "attention", "recording"]

SPEC = Analysis(
    name="attention",
    command="attention",
    run=attention,
    result=AttentionResult,
    help="attention patterns: every layer's and head's softmax weights on a prompt",
    description="Record the attention weights of every attention layer and head on one prompt "
    "while the model runs with its own attention kernel (sdpa, flash: the weights come from the "
    "family's eager attention on the same queries and keys), checked once against the eager "
    "implementation. Writes attention.parquet (layer, head, query, key, weight for key <= query: "
    "every layer and head while layers x heads x the prompt's triangle is at most --max-cells "
    "weights, else only --layer/--head, or with --to only the --from query's row), meta.json with "
    "the tokens, attention_head.png (one head), attention_layer.png (every head of --layer, "
    "default the last) and with --to attention_to.parquet/.png (layer x head attention from "
    "--from to the text's tokens). State-space and recurrent models have no softmax attention "
    "and are refused; hybrids show their attention layers. An encoder-decoder (the prompt is the "
    "source; the decoder reads its start and forced tokens, then --decoder-text) shows the "
    "--stack asked for: cross (decoder positions x source tokens, the default), encoder (source "
    "x source) or decoder (causal, decoder x decoder), read from the family's eager attention "
    "with the model switched to eager for that forward; its table has a stack column.",
    options=OPTIONS,
    cli=command,
    demo=demo,
    demo_help="attention patterns (the Eiffel Tower prompt: layer 23's heads, and every head's attention from the last position to ' Tower')",
    batch_tokens=False,
    groups=["input", "attention", "encoder-decoder"],
    oom_advice="give --layer and --head, or a shorter prompt",
    seq2seq=True,
)
