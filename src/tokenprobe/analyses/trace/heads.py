"""The sites of attention heads: a query head's output is its columns of the output projection's
input (`head`); a key or value head is its columns of the separate key or value projection's
output (`head-k`, `head-v`; grouped-query models have fewer of them than query heads).
Where the key (value) projection's output goes through a norm over all key heads together
(OLMo 2/3, OLMoE, FlexOlmo: `k_norm` of width key heads x head width), restoring one head's
columns of the projection would rescale every head's keys: the site is that norm's output
instead (one head's normalised key, before rotary). A per-head norm (Qwen3, Gemma 3: width
head_dim) keeps the projection's output; a norm of any other width is refused.

A head component's rows are (block, head) pairs laid out block by block (row = block x heads +
head), with None where a block has no such head (Jamba's state-space blocks, or a block with
fewer heads than the most any block has). Families that compute queries, keys and values in one
fused projection (GPT-2's c_attn, GPT-NeoX's query_key_value, ...) have no key or value head
output of their own: `head-k` and `head-v` are refused there, in one line naming it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import TokenprobeError
from ...model import Adapter
from ...model.parts import HeadLayout, find_heads, linear_shape
from .options import HEAD_COMPONENTS
from .sites import Site

WHAT = {"head": "query head", "head-k": "key head", "head-v": "value head"}


def is_head(component: str) -> bool:
    return component in HEAD_COMPONENTS


def head_sites(adapter: Adapter, component: str) -> list[Site | None]:
    """The sites of `component` (head, head-k or head-v), by row = block x heads + head."""
    try:
        layouts = find_heads(adapter)
    except TokenprobeError as exc:
        raise TokenprobeError(f"`components` {component}: {exc}; trace resid instead") from None
    per_block = [_block_sites(layout, component) if layout else [] for layout in layouts]
    width = max(len(s) for s in per_block)
    rows: list[Site | None] = []
    for sites in per_block:
        rows.extend([*sites, *[None] * (width - len(sites))])
    return rows


def _block_sites(layout: HeadLayout, component: str) -> list[Site]:
    """One block's sites of `component`."""
    d = layout.head_dim
    if component == "head":
        return [
            Site(
                "head",
                layout.block,
                layout.block,
                layout.out,
                f"{layout.out_path} input",
                cols=layout.head_slice(h),
                hook="input",
                head=h,
            )
            for h in range(layout.heads)
        ]
    proj = layout.k if component == "head-k" else layout.v
    if proj is None:
        raise TokenprobeError(_fused(layout, component))
    shape = linear_shape(proj)
    name = _name_in(layout.module, proj)
    if shape is None or shape[1] != layout.kv_heads * d:
        raise TokenprobeError(
            f"`components` {component}: {layout.path}.{name} gives {shape[1] if shape else '?'} "
            f"values, not {layout.kv_heads} key/value heads x {d}: its heads cannot be told "
            "apart; trace head or attn instead"
        )
    module, name = _after_norm(layout, component, proj, name)
    return [
        Site(
            component,
            layout.block,
            layout.block,
            module,
            f"{layout.path}.{name} output",
            cols=slice(h * d, (h + 1) * d),
            head=h,
        )
        for h in range(layout.kv_heads)
    ]


def _after_norm(
    layout: HeadLayout, component: str, proj: nn.Module, name: str
) -> tuple[nn.Module, str]:
    """The module whose output holds the key (value) heads, and its name: the projection, or
    the norm after it where that norm normalises all the heads together."""
    found = _head_norm(layout.module, component)
    if found is None:
        return proj, name
    norm_name, norm = found
    width, d, kv = _norm_width(norm), layout.head_dim, layout.kv_heads
    if width is None or width == d:  # per head (a norm without weights: all known are)
        return proj, name
    if width == kv * d and not _joint_layer_norm(norm):
        return norm, norm_name
    raise TokenprobeError(
        f"`components` {component}: {layout.path}.{norm_name} normalises {width} values "
        f"together (not one head's {d}) and its output is not {kv} heads x {d} columns, so "
        f"one {WHAT[component]} cannot be restored alone; trace head or attn instead"
    )


def _head_norm(attn: nn.Module, component: str) -> tuple[str, nn.Module] | None:
    """The attention module's norm of its keys (`k_norm`, `key_layernorm`, ...) or values."""
    prefixes = ("k_", "key_") if component == "head-k" else ("v_", "value_")
    for n, m in attn.named_children():
        if n.startswith(prefixes) and "norm" in n and not isinstance(m, nn.Identity):
            return n, m
    return None


def _norm_width(norm: nn.Module) -> int | None:
    """How many values a norm normalises together: its weight's last dimension (a norm of
    shape (heads, head_dim) normalises each head), a plain LayerNorm's normalized_shape; None
    for a norm without weights."""
    shape = _torch_norm_shape(norm)
    if shape is not None:
        return math.prod(shape)
    weight = getattr(norm, "weight", None)
    return int(weight.shape[-1]) if isinstance(weight, torch.Tensor) else None


def _joint_layer_norm(norm: nn.Module) -> bool:
    """A torch norm over several dimensions at once (its output is not heads x width)."""
    shape = _torch_norm_shape(norm)
    return shape is not None and len(shape) > 1


def _torch_norm_shape(norm: nn.Module) -> tuple[int, ...] | None:
    """The normalized_shape of torch's own LayerNorm or RMSNorm (not a subclass, which may
    normalise otherwise), else None."""
    if type(norm) in (nn.LayerNorm, nn.RMSNorm):
        return tuple(getattr(norm, "normalized_shape"))  # noqa: B009
    return None


def _name_in(owner: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in owner.named_modules() if m is module)


def _fused(layout: HeadLayout, component: str) -> str:
    """The refusal of key or value heads on a family whose projection is fused."""
    fused = [
        n
        for n, m in layout.module.named_modules()
        if n and m is not layout.out and linear_shape(m) is not None
    ]
    where = f"{layout.path}.{fused[0]}" if fused else f"{layout.path} (no separate projection)"
    return (
        f"`components` {component}: this model computes queries, keys and values in one fused "
        f"projection ({where}), so a {WHAT[component]} has no output of its own to patch; "
        "trace head (the query heads' outputs) or attn instead"
    )


def heads_meta(sites: list[Site | None], n_blocks: int) -> dict:
    """For meta.json: the heads per block of a head component, their width, and where each
    block's heads are read (None: a block without them)."""
    per = len(sites) // n_blocks
    blocks = [sites[b * per : (b + 1) * per] for b in range(n_blocks)]
    widths = [s.cols.stop - s.cols.start for s in sites if s is not None and s.cols is not None]
    return {
        "heads": per,
        "head_dim": widths[0] if widths else None,
        "heads_per_block": [sum(s is not None for s in blk) for blk in blocks],
        "paths": [next((s.path for s in blk if s is not None), None) for blk in blocks],
        "site": " / ".join(dict.fromkeys(_what_site(s) for s in sites if s is not None)),
    }


def _what_site(site: Site) -> str:
    """What a head's site is, in words, for meta.json."""
    if site.hook == "input":
        return "its columns of the output projection's input (before it mixes the heads)"
    what = "key" if site.component == "head-k" else "value"
    if site.module is not None and "norm" in type(site.module).__name__.lower():
        return (
            f"its columns of the {what} norm's output (the norm spans all {what} heads, so "
            f"the projection's columns would rescale every head): one normalised {what}, "
            "before rotary"
        )
    after = "any per-head norm and rotary" if what == "key" else "any per-head norm"
    return f"its columns of the {what} projection's output (before {after})"
