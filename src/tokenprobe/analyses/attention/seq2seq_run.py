"""`attention` on an encoder-decoder model: one forward recording the chosen stack's weights
(see `seq2seq`), what is kept of them (`AttentionOptions.max_cells`), the `to` table and the
check against the model's own `output_attentions` under eager attention."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...errors import TokenprobeError
from ...model import LoadedModel
from ...provenance import provenance
from .options import AttentionOptions
from .result import AttentionResult, Pattern
from .seq2seq import CHECK_ROWS, Sides, eager_check, key_positions, prepare, record, refuse_shape

ROWS = {
    "encoder": "encoder self-attention: query and key = source token positions",
    "decoder": "decoder self-attention: query and key = decoder input positions (start token, "
    "forced token, decoder text; key <= query)",
    "cross": "cross-attention: query = decoder input position (start token, forced token, "
    "decoder text), key = source token position",
}


class Keeper:
    """What `keep` stores of each block's weights (heads, queries, keys): the `query` row of
    every block, the whole pattern of the blocks and heads planned once the head count is
    known (`max_cells`), the first block's last rows for the check, a shape that is wrong."""

    def __init__(self, o: AttentionOptions, n_blocks: int, sides: Sides, query: int) -> None:
        self.o, self.n_blocks, self.query, self.causal = o, n_blocks, query, sides.causal
        self.want = (len(sides.queries), len(sides.keys))
        self.rows: dict[int, torch.Tensor] = {}
        self.patterns: dict[int, torch.Tensor] = {}
        self.first: dict[int, torch.Tensor] = {}
        self.bad: tuple[int, ...] | None = None
        self.heads = 0
        self.layers: list[int] | None = None
        self.kept: list[int] | None = None
        self.stored = ""

    def keep(self, layer: int, w: torch.Tensor) -> None:
        if tuple(w.shape[1:]) != self.want:
            self.bad = tuple(w.shape)
            return None
        if self.layers is None:
            self._plan(int(w.shape[0]))
        self.rows[layer] = w[:, self.query, :].float().cpu()
        if self.layers is not None and layer in self.layers:
            self.patterns[layer] = (w if self.kept is None else w[self.kept]).float().cpu()
        if not self.first:
            n = self.want[0]
            self.first[layer] = w[:, max(0, n - CHECK_ROWS) :, :].float().cpu()
        return None

    def _plan(self, heads: int) -> None:
        """Every block and head while they fit `max_cells`; else --layer (and --head); else
        with --to only the query row; else one line saying what to give."""
        o, (n, m) = self.o, self.want
        if o.head is not None and o.head >= heads:
            raise TokenprobeError(
                f"--head {o.head} is out of range: the layer has heads 0 to {heads - 1}"
            )
        self.heads = heads
        cells = n * (n + 1) // 2 if self.causal else n * m
        if self.n_blocks * heads * cells <= o.max_cells:
            self.layers, self.stored = list(range(self.n_blocks)), "every layer and head"
        elif o.layer is not None and (o.head is not None or heads * cells <= o.max_cells):
            self.layers, self.stored = [o.layer], "the layer and head asked for"
            self.kept = [o.head] if o.head is not None else None
        elif o.to is not None:
            self.layers, self.stored = [], "the --from query's row only"
        else:
            what = "every layer and head" if o.layer is None else f"every head of layer {o.layer}"
            weights = (self.n_blocks if o.layer is None else 1) * heads * cells
            raise TokenprobeError(
                f"{what} of {n} queries x {m} keys is {weights:,} weights, over --max-cells "
                f"{o.max_cells:,}: give --layer and --head, --to, or a larger --max-cells"
            )

    def pattern(self) -> Pattern:
        if self.layers:
            return Pattern.from_dense(self.patterns, self.kept, self.causal)
        return Pattern.from_rows(self.rows, self.query, self.causal)


def attention_seq2seq(lm: LoadedModel, prompt: str, o: AttentionOptions) -> AttentionResult:
    """The chosen stack's weights on the source `prompt` and the decoder's input (see
    `seq2seq`), and with `o.to` the attention from `o.from_position` to that text's tokens."""
    sides, inputs = prepare(lm, prompt, o)
    adapter = lm.require_seq2seq()
    n_blocks = adapter.n_encoder_blocks if sides.stack == "encoder" else adapter.n_blocks
    if o.layer is not None and o.layer >= n_blocks:
        raise TokenprobeError(
            f"--layer {o.layer} is out of range: this model's {sides.stack} attention has "
            f"blocks 0 to {n_blocks - 1}"
        )
    n = len(sides.queries)
    if not -n <= o.from_position < n:
        raise TokenprobeError(
            f"--from {o.from_position} is outside the {n} query positions: give -{n} to {n - 1}"
        )
    query = o.from_position % n
    keys = key_positions(lm, sides, o.to, query) if o.to is not None else None
    keeper = Keeper(o, n_blocks, sides, query)
    every = _all_weights(lm, sides)
    checked = o.eager_check and every <= o.max_cells
    kernel, found = record(lm, inputs, sides.stack, keeper.keep, checked)
    if keeper.bad is not None or len(keeper.rows) != n_blocks:
        refuse_shape(lm, sides.stack, keeper.bad, keeper.want)
    check: dict[str, Any] = {"skipped": "the weights come from output_attentions itself"}
    if not o.eager_check:
        check = {"skipped": "not asked"}
    elif not checked:
        check = {"skipped": f"output_attentions would hold ~{every:,} weights, over --max-cells"}
    elif found is not None:
        check = eager_check(found, keeper.first, keeper.rows, query, lm.dtype)
    return _result(lm, o, sides, keeper, keys, kernel, check)


def _all_weights(lm: LoadedModel, sides: Sides) -> int:
    """About how many weights the model's `output_attentions` holds (every stack, every
    layer; the config's largest head count, 64 where it names none): the check asks for
    them only while that is within `max_cells`."""
    adapter = lm.require_seq2seq()
    config = lm.model.config
    names = ("num_attention_heads", "encoder_attention_heads", "decoder_attention_heads")
    found = [
        getattr(c, name, None)
        for c in (config, getattr(config, "encoder", None), getattr(config, "decoder", None))
        for name in (*names, "num_heads")
    ]
    heads = max((h for h in found if isinstance(h, int)), default=64)
    s, t = len(sides.inp.input_ids), len(sides.inp.decoder_ids)
    return heads * (adapter.n_encoder_blocks * s * s + adapter.n_blocks * (t * t + t * s))


def _result(
    lm: LoadedModel,
    o: AttentionOptions,
    sides: Sides,
    keeper: Keeper,
    keys: list[int] | None,
    kernel: str,
    check: dict,
) -> AttentionResult:
    layers = sorted(keeper.rows)
    to_table = None
    if keys is not None:
        to_table = np.stack([keeper.rows[b][:, keys].sum(-1).numpy() for b in layers])
    inp = sides.inp
    return AttentionResult(
        tokens=sides.queries,
        layers=layers,
        heads=keeper.heads,
        pattern=keeper.pattern(),
        to_table=to_table,
        stack=sides.stack,
        key_tokens=sides.keys if sides.stack == "cross" else None,
        meta={
            "analysis": "attention weights",
            **provenance(lm, o).meta(),
            "prompt": inp.source,
            "text": inp.source,
            "stack": sides.stack,
            "tokens": sides.queries,
            "key_tokens": sides.keys if sides.stack == "cross" else None,
            "input_ids": inp.input_ids,
            "source_tokens": inp.tokens,
            "decoder_ids": inp.decoder_ids,
            "decoder_tokens": inp.decoder_tokens,
            "forced": inp.forced,
            "attention_layers": layers,
            "kernel": kernel,
            "eager_check": check,
            "stored": keeper.stored,
            "from": keeper.query,
            "to_keys": keys,
            "rows": f"layer = {'encoder' if sides.stack == 'encoder' else 'decoder'} block "
            f"index, head = query head, {ROWS[sides.stack]}; weight = softmax attention weight; "
            "attention_to: the weights from query `from` summed over the key positions `to_keys`",
        },
    )
