"""Direct logit attribution: the target's logit (or target - foil) at every position, split
exactly into what the embeddings, each block's attention and MLP (or state-space mixer), each
attention head and the biases write into the last layer's residual stream, each read through
the final norm frozen at that position's own scale, the output projection and the unembedding
(TransformerLens's `decompose_resid` / `stack_head_results` + `apply_ln_to_stack`).

One forward pass with hooks; every split is checked against the model's own numbers (each
block's change, each attention output, the model's own logit) and refused where it fails."""

from __future__ import annotations

from typing import Any

import torch

from ...errors import TokenprobeError
from ...model import LoadedModel
from ...model.adapter import weight_of
from ...model.parts import HeadLayout, find_heads
from ...text import PreparedInput, first_token, prepare
from ..settings import with_options
from .capture import Branch, Captured, branches, capture
from .decompose import BlockParts, HeadParts, head_parts, split_block
from .meta import describe
from .options import LogitAttributionOptions
from .readout import Readout, build_readout
from .result import LogitAttributionResult, Rows


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of every check: float32 rounding, or half precision's."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


@with_options(LogitAttributionOptions)
def logit_attribution(
    lm: LoadedModel, prompt: str | PreparedInput, *, options: LogitAttributionOptions
) -> LogitAttributionResult:
    """The logit of `target` (minus that of `foil`) at every position of `prompt`, split into
    embed, attn, mlp (or mixer) per block, bias, and per head (head, attn_bias) where the
    attention has readable heads; the parts add up to the model's own logit before any
    soft-cap. `options` (or its settings as keyword arguments): see
    `LogitAttributionOptions`."""
    o = options
    adapter = lm.require_adapter()
    if adapter.merge is not None:
        raise TokenprobeError(
            f"logit attribution: the blocks of {type(lm.model).__name__} carry "
            f"{adapter.streams} streams (AltUp) merged nonlinearly before the final norm, so the "
            "logit is not a sum of block outputs; use lens or trace on this model"
        )
    given = (
        prompt
        if isinstance(prompt, PreparedInput)
        else prepare(lm, prompt, chat=o.chat, system=o.system)
    )
    ids = _token_ids(lm, o)
    found = [branches(block) for block in adapter.blocks]
    layouts = _layouts(lm)
    tol = tolerance(lm.dtype)
    got, logits = _forward(lm, given, found, layouts, ids)
    last = got.outputs[adapter.n_blocks - 1]
    check = adapter.check_head(
        last.to(weight_of(adapter.unembed).device, lm.dtype),
        logits,
        tol=10 * tol,
        name=type(lm.model).__name__,
    )
    with torch.no_grad():  # the weights are parameters: nothing here is for gradients
        split = [split_block(adapter, b, got, found[b], tol) for b in range(adapter.n_blocks)]
        readout = build_readout(adapter, got, last, ids, tol)
        heads, why = _heads(layouts, got, split, readout, tol)
        rows = _rows(got, split, heads, readout)
    exact = _exactness(rows, got, adapter.logit_multiplier, len(ids) > 1, tol)
    meta = describe(lm, given, o, ids, adapter, found, split, readout, heads, why, exact, check)
    return LogitAttributionResult(
        tokens=list(given.tokens), frame=rows.frame(given.tokens), meta=meta
    )


def _token_ids(lm: LoadedModel, o: LogitAttributionOptions) -> list[int]:
    """[target] or [target, foil], each a token of the model's vocabulary."""
    doing = "logit attribution attributes"
    ids = [first_token(lm.tokenizer, o.target or "", "target", doing)]
    if o.foil is not None:
        ids.append(first_token(lm.tokenizer, o.foil, "foil", doing))
        if ids[1] == ids[0]:
            raise TokenprobeError(
                f"`foil` {o.foil!r} is the same token as `target` {o.target!r} (their first "
                "tokens are the same): give another foil"
            )
    vocab = int(weight_of(lm.require_adapter().unembed).shape[0])
    if max(ids) >= vocab:
        raise TokenprobeError(
            f"token id {max(ids)} is outside the model's {vocab}-row unembedding: the tokenizer "
            "does not match the model"
        )
    return ids


def _layouts(lm: LoadedModel) -> list[HeadLayout | None]:
    """Each block's heads, or None for every block when the model has no readable heads."""
    adapter = lm.require_adapter()
    try:
        return find_heads(adapter)
    except TokenprobeError:
        return [None] * adapter.n_blocks


def _forward(
    lm: LoadedModel,
    given: PreparedInput,
    found: list[list[Branch]],
    layouts: list[HeadLayout | None],
    ids: list[int],
) -> tuple[Captured, torch.Tensor]:
    """One forward pass of the prompt with the capturing hooks; (what they kept, the logits)."""
    adapter = lm.require_adapter()
    n = len(given.input_ids)
    inputs = torch.tensor([given.input_ids], device=lm.device)
    with torch.inference_mode(), capture(adapter, found, layouts, n, ids) as got:
        logits = lm.model(input_ids=inputs, use_cache=False).logits[0]
    for b in range(adapter.n_blocks):
        if b not in got.inputs or b not in got.outputs:
            raise TokenprobeError(f"logit attribution: block {b} did not run in the forward pass")
        for br in found[b]:
            calls = got.calls.get(f"block {b} {br.name}", 0)
            if calls != 1:
                raise TokenprobeError(
                    f"logit attribution: block {b}'s {br.name} ({br.child}) ran {calls} times in "
                    "one forward pass, so its output is not one part of the residual stream"
                )
    if got.raw_logits is None:
        raise TokenprobeError("logit attribution: the unembedding did not run in the forward pass")
    return got, logits


def _heads(
    layouts: list[HeadLayout | None],
    got: Captured,
    split: list[BlockParts],
    readout: Readout,
    tol: float,
) -> tuple[dict[int, HeadParts], dict[int, str]]:
    """Each block's head values where they can be split, and why not where they cannot."""
    heads: dict[int, HeadParts] = {}
    why: dict[int, str] = {}
    for b, layout in enumerate(layouts):
        if layout is None or b not in got.heads:
            continue
        found = head_parts(layout, got.heads[b], split[b], readout.pair, tol)
        if isinstance(found, str):
            why[b] = found
            continue
        attn = readout.value(split[b].parts["attn"])
        gap = float((found.values.sum(1) + found.bias - attn).abs().max())
        if gap > tol * max(1.0, float(found.values.abs().sum(1).max())):
            why[b] = f"the heads' values add up to the attention's within {gap:.3g} only"
        else:
            heads[b] = found
    return heads, why


def _rows(
    got: Captured, split: list[BlockParts], heads: dict[int, HeadParts], readout: Readout
) -> Rows:
    """The long table's values: embed, each block's parts, bias; heads and their bias."""
    n = got.outputs[0].shape[0]
    rows = Rows()
    rows.add("embed", None, None, readout.value(got.inputs[0]))
    for part in split:
        for name, vector in part.parts.items():
            rows.add(name, part.block, None, readout.value(vector))
        if part.block in heads:
            hp = heads[part.block]
            for h in range(hp.values.shape[1]):
                rows.add("head", part.block, h, hp.values[:, h])
            rows.add("attn_bias", part.block, None, hp.bias)
    rows.add("bias", None, None, torch.full((n,), readout.bias, dtype=torch.float64))
    return rows


def _exactness(
    rows: Rows, got: Captured, multiplier: float, foil: bool, tol: float
) -> dict[str, Any]:
    """The parts' sum against the model's own logit (before any soft-cap) at every position;
    a TokenprobeError where they differ by more than the tolerance at that position's scale
    (`tol` x the sum of its parts' sizes)."""
    raw = got.raw_logits
    assert raw is not None
    own = (raw[:, 0] - raw[:, 1] if foil else raw[:, 0]) * multiplier
    total, magnitude = rows.total(), rows.magnitude()
    error = (total - own).abs()
    limits = tol * magnitude.clamp(min=1.0)  # each position's own scale
    worst = int((error / limits).argmax())
    if float(error[worst]) > float(limits[worst]):
        raise TokenprobeError(
            f"logit attribution: the parts add up to {float(total[worst]):.6g} at position "
            f"{worst} but the model's own logit is {float(own[worst]):.6g} (error "
            f"{float(error[worst]):.3g}, tolerance {float(limits[worst]):.2g}): this model's "
            "read-out is not the frozen final norm, projection and unembedding found"
        )
    return {
        "max_abs_error": float(error.max()),
        "tolerance": float(limits.max()),
        "relative_tolerance": tol,
        "error_per_position": [float(e) for e in error],
        "tolerance_per_position": [float(v) for v in limits],
        "model_logit": [float(v) for v in own],
    }
