"""meta.json of a logit attribution: the inputs, what each component is in this family (which
module's output, which post-norm, the final norm's form found), which blocks' heads could not
be split and why, the soft-cap, and the exactness check."""

from __future__ import annotations

from typing import Any

from ...model import Adapter, LoadedModel
from ...provenance import provenance
from ...text import PreparedInput, token_texts
from .capture import Branch
from .decompose import BlockParts, HeadParts
from .options import LogitAttributionOptions
from .readout import Readout

COMPONENTS = (
    "embed (the first block's input: embeddings, with position embeddings and any scaling), "
    "attn / mlp / mixer per block (what the block adds), bias (what no component carries) "
    "add up to the logit at each position; head rows (one per head) and attn_bias add up to "
    "their block's attn"
)


def attributed(target: str, foil: str | None) -> str:
    """What the values are, e.g. logit(' Paris') - logit(' Rome')."""
    return f"logit({target!r})" + (f" - logit({foil!r})" if foil is not None else "")


def describe(
    lm: LoadedModel,
    given: PreparedInput,
    o: LogitAttributionOptions,
    ids: list[int],
    adapter: Adapter,
    found: list[list[Branch]],
    split: list[BlockParts],
    readout: Readout,
    heads: dict[int, HeadParts],
    why: dict[int, str],
    exact: dict[str, Any],
    check: str,
) -> dict[str, Any]:
    """The whole meta.json (the result's own keys; saving adds the files written)."""
    texts = token_texts(lm.tokenizer, ids)
    settings = {"chat": o.chat, "system": o.system, "target": o.target, "foil": o.foil}
    return {
        "analysis": "direct logit attribution",
        **provenance(lm, settings).meta(),
        "prompt": given.prompt,
        "text": given.text,
        "token_ids": list(given.input_ids),
        "target": o.target,
        "target_id": ids[0],
        "target_token": texts[0],
        "foil": o.foil,
        "foil_id": ids[1] if len(ids) > 1 else None,
        "foil_token": texts[1] if len(ids) > 1 else None,
        "attributed": attributed(texts[0], texts[1] if len(ids) > 1 else None),
        "components": COMPONENTS,
        "decomposition": _decomposition(adapter, found, split, readout, heads, why, check),
        "exactness": exact,
    }


def _decomposition(
    adapter: Adapter,
    found: list[list[Branch]],
    split: list[BlockParts],
    readout: Readout,
    heads: dict[int, HeadParts],
    why: dict[int, str],
    check: str,
) -> dict[str, Any]:
    """How each component is defined for this model, as one dict of short sentences."""
    how: dict[str, list[str]] = {}
    for part in split:
        for name, text in part.how.items():
            how.setdefault(name, [])
            if text not in how[name]:
                how[name].append(text)
    post = sorted({name for part in split for name in part.post})
    softcap = adapter.softcap
    return {
        "embed": f"input of {adapter.blocks_path}.0",
        **{name: "; ".join(texts) for name, texts in how.items()},
        "post_norms": (
            f"{', '.join(post)} part(s) are post-norm outputs; per head, that norm is frozen at "
            "its own scale per position too (as the final norm), so the heads add up exactly"
            if post
            else None
        ),
        "blocks": _by_parts(split),
        "block_check_max_error": max((p.error for p in split), default=0.0),
        "heads": sorted(heads),
        "heads_not_split": {str(b): text for b, text in why.items()},
        "heads_check_max_error": max((h.error for h in heads.values()), default=0.0),
        "final_norm": f"{adapter.final_norm_path or 'none'}: {readout.form.what}, frozen at "
        "each position's own scale",
        "projection": adapter.projection_path,
        "logit_multiplier": float(adapter.logit_multiplier),
        "bias": readout.bias_parts or "none (no final norm, projection or unembedding bias)",
        "soft_cap": (
            f"the model soft-caps its logits at {softcap:g} (tanh(x / c) * c, not linear): the "
            "logit before the cap is attributed"
            if softcap
            else None
        ),
        "head_check": check,
        "branches": sorted({br.name for brs in found for br in brs}),
    }


def _by_parts(split: list[BlockParts]) -> dict[str, list[int]]:
    """The blocks of each set of parts, e.g. {"attn, mlp": [1, 3], "mixer, mlp": [0, 2]}."""
    out: dict[str, list[int]] = {}
    for part in split:
        out.setdefault(", ".join(sorted(part.parts)), []).append(part.block)
    return out
