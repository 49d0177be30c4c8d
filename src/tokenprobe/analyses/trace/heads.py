"""The sites of attention heads: a query head's output is its columns of the output projection's
input (`head`); a key or value head is its columns of the separate key or value projection's
output (`head-k`, `head-v`; grouped-query models have fewer of them than query heads).

A head component's rows are (block, head) pairs laid out block by block (row = block x heads +
head), with None where a block has no such head (Jamba's state-space blocks, or a block with
fewer heads than the most any block has). Families that compute queries, keys and values in one
fused projection (GPT-2's c_attn, GPT-NeoX's query_key_value, ...) have no key or value head
output of their own: `head-k` and `head-v` are refused there, in one line naming it.
"""

from __future__ import annotations

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
    path = f"{layout.path}.{name} output"
    return [
        Site(
            component,
            layout.block,
            layout.block,
            proj,
            path,
            cols=slice(h * d, (h + 1) * d),
            head=h,
        )
        for h in range(layout.kv_heads)
    ]


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
    }
