"""`attention`: every attention layer's weights (heads, queries, keys) on one prompt, recorded
while the model runs with its own kernel (numbers unchanged; see `capture`), checked once
against the eager implementation, kept whole while small enough (`AttentionOptions.max_cells`)
and otherwise as asked; with `to`, a layer x head table of the attention from one query to
the key tokens of a text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...errors import TokenprobeError
from ...model import LoadedModel
from ...provenance import provenance
from ...text import PreparedInput, encode, prepare
from ..settings import with_options
from . import capture
from .check import compare, eager_weights
from .options import AttentionOptions
from .result import AttentionResult, Pattern
from .seq2seq import check_options
from .seq2seq_run import attention_seq2seq

CHECK_ROWS = 256  # the last query rows of the first attention layer compared with eager


@dataclass
class Plan:
    """What is kept: the blocks and heads whose whole pattern is stored (none: only the query
    row `query` of every layer x head, for `to`), and why."""

    layers: list[int]
    heads: list[int] | None
    stored: str


@with_options(AttentionOptions)
def attention(lm: LoadedModel, prompt: str, *, options: AttentionOptions) -> AttentionResult:
    """The attention weights of `prompt` in every attention layer and head (or those asked
    for), and with `options.to` the attention from `options.from_position` to that text's
    tokens per layer x head; on an encoder-decoder, the `stack` asked for (see `seq2seq`).
    `options` (or its settings as keyword arguments): see `AttentionOptions`."""
    check_options(lm, options)
    if lm.is_seq2seq:
        return attention_seq2seq(lm, prompt, options)
    heads_of = capture.attention_layers(lm)
    _check_choice(options, heads_of)
    inp = prepare(lm, prompt, chat=options.chat, system=options.system)
    n = len(inp)
    query = _query(options.from_position, n)
    keys = _key_positions(lm, inp, options.to, query) if options.to is not None else None
    plan = _plan(options, heads_of, n)
    ids = torch.tensor([inp.input_ids], device=lm.device)
    pattern, rows, kernel, check = _record(lm, ids, plan, query, options.eager_check)
    layers = sorted(rows)
    if options.layer is not None and options.layer not in rows:
        raise TokenprobeError(
            f"block {options.layer} has no softmax attention: give --layer one of {layers}"
        )
    to_table = None
    if keys is not None:
        most = max(rows[b].shape[0] for b in layers)  # layers may differ in head count
        to_table = np.full((len(layers), most), np.nan)
        for i, b in enumerate(layers):
            to_table[i, : rows[b].shape[0]] = rows[b][:, keys].sum(-1).numpy()
    return AttentionResult(
        tokens=inp.tokens,
        layers=layers,
        heads=max(h for h in heads_of if h is not None),
        pattern=pattern,
        to_table=to_table,
        meta={
            "analysis": "attention weights",
            **provenance(lm, options).meta(),
            "prompt": inp.prompt,
            "text": inp.text,
            "tokens": inp.tokens,
            "input_ids": inp.input_ids,
            "attention_layers": layers,
            "kernel": kernel,
            "eager_check": check,
            "stored": plan.stored,
            "from": query,
            "to_keys": keys,
            "rows": "layer = block index, head = query head, query and key = token positions "
            "(key <= query), weight = softmax attention weight; attention_to: the weights "
            "from query `from` summed over the key positions `to_keys`",
        },
    )


def _check_choice(o: AttentionOptions, heads_of: list[int | None]) -> None:
    """--layer within the blocks and an attention one, --head within its heads: one line."""
    n_blocks = len(heads_of)
    with_attn = [b for b, h in enumerate(heads_of) if h is not None]
    if o.layer is not None and o.layer >= n_blocks:
        raise TokenprobeError(
            f"--layer {o.layer} is out of range: this model has blocks 0 to {n_blocks - 1}"
        )
    if o.layer is not None and heads_of[o.layer] is None:
        raise TokenprobeError(
            f"block {o.layer} has no softmax attention: give --layer one of {with_attn}"
        )
    if o.head is not None:
        most = heads_of[o.layer] if o.layer is not None else max(h or 0 for h in heads_of)
        assert most is not None
        if o.head >= most:
            raise TokenprobeError(
                f"--head {o.head} is out of range: the layer has heads 0 to {most - 1}"
            )


def _query(position: int, n: int) -> int:
    """--from as a position of the prompt's n tokens (negative: from the end)."""
    if not -n <= position < n:
        raise TokenprobeError(
            f"--from {position} is outside the prompt's {n} tokens: give -{n} to {n - 1}"
        )
    return position % n


def _key_positions(lm: LoadedModel, inp: PreparedInput, text: str, query: int) -> list[int]:
    """The positions of the tokens covering the last occurrence of `text` in the prompt that
    ends at or before `query`; one line when it is not there."""
    _, offsets = encode(lm.tokenizer, inp.text, chat=inp.chat)
    if offsets is None or len(offsets) != len(inp):
        raise TokenprobeError("--to needs a fast tokenizer (character offsets) for this model")
    found: list[int] = []
    start = inp.text.find(text)
    while text and start >= 0:
        end = start + len(text)
        span = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
        if span and span[-1] <= query:
            found = span
        start = inp.text.find(text, start + 1)
    if not found:
        raise TokenprobeError(
            f"--to {text!r} is not in the prompt at or before position {query}: give text "
            "that the prompt holds (mind the leading space)"
        )
    return found


def _plan(o: AttentionOptions, heads_of: list[int | None], n: int) -> Plan:
    """Every layer and head while they fit `max_cells`; else what --layer/--head ask for;
    else, with --to, only the query row; else one line saying what to give."""
    triangle = n * (n + 1) // 2
    every = [b for b, h in enumerate(heads_of) if h is not None]
    if sum(h or 0 for h in heads_of) * triangle <= o.max_cells:
        return Plan(every, None, "every layer and head")
    if o.layer is not None:
        heads = [o.head] if o.head is not None else None
        asked = (1 if o.head is not None else heads_of[o.layer] or 0) * triangle
        if asked <= o.max_cells or o.head is not None:  # one head asked for: kept whole
            return Plan([o.layer], heads, "the layer and head asked for")
    if o.to is not None:
        return Plan([], None, "the --from query's row only")
    what = "every layer and head" if o.layer is None else f"every head of layer {o.layer}"
    weights = sum(h or 0 for h in heads_of) if o.layer is None else heads_of[o.layer] or 0
    raise TokenprobeError(
        f"{what} of {n} tokens is {weights * triangle:,} weights, over --max-cells "
        f"{o.max_cells:,}: give --layer and --head, --to, or a larger --max-cells"
    )


def _record(
    lm: LoadedModel, ids: torch.Tensor, plan: Plan, query: int, check: bool
) -> tuple[Pattern, dict[int, torch.Tensor], str, dict]:
    """One forward: the kept patterns, every layer's query row (heads, keys), the kernel
    that gave the weights, and the eager check."""
    patterns: dict[int, torch.Tensor] = {}
    rows: dict[int, torch.Tensor] = {}
    first: dict[int, torch.Tensor] = {}
    n = ids.shape[1]
    tail = slice(max(0, n - CHECK_ROWS), n)

    def keep(layer: int, w: torch.Tensor) -> None:
        rows[layer] = w[:, query, :].float().cpu()
        if layer in plan.layers:
            patterns[layer] = (w if plan.heads is None else w[plan.heads]).float().cpu()
        if not first:
            first[layer] = w[:, tail, :].float().cpu()
        return None

    if capture.uses_interface(lm):
        with capture.recording(lm, keep) as rec, torch.inference_mode():
            lm.model(input_ids=ids, use_cache=False)
        own = lm.model.config._attn_implementation
        kernel = f"{own} (weights: the family's eager_attention_forward)"
        result: dict[str, Any] = {"skipped": "not asked"}
        if check and first:
            layer, ours = next(iter(first.items()))
            theirs = eager_weights(lm, ids, rec.modules[layer])
            result = {"layer": layer, **compare(ours, theirs, tail, lm.dtype)}
    else:
        capture.own_forward(lm, ids, keep)
        kernel = "the model's own eager forward with output_attentions=True"
        result = {"skipped": "the weights come from the eager implementation itself"}
    if not rows:
        raise TokenprobeError(
            f"{type(lm.model).__name__} ran without any softmax attention call to record: "
            "its attention is not one tokenprobe can read"
        )
    kept = (
        Pattern.from_dense(patterns, plan.heads) if plan.layers else Pattern.from_rows(rows, query)
    )
    return kept, rows, kernel, result
