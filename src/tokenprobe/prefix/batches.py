"""Copies in batches that share one prefix length: tiles chosen by a cost model, batches
continued from a cache (or run whole), and the logits of each right-padded row's last positions."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ..model.kvcache import cache_of
from ..runner import keep_last, run_with_backoff

if TYPE_CHECKING:
    from .cache import Prefix

T = TypeVar("T")
CACHED_COST = 8  # a cached position costs ~1/8 of a run one (SmolLM2 on CPU: the cache's copies)
TILE_UNITS = 24  # the most first-change positions one tile spans (bounds the planning's work)
FORWARD_TOKENS = {"cpu": 32.0, "other": 1024.0}  # a forward's fixed cost, in positions (SmolLM2)


def first_change(base: Sequence[int], seq: Sequence[int]) -> int:
    """The first position where `seq` differs from `base` (the shorter length where one is the
    other's start)."""
    n = min(len(base), len(seq))
    return next((i for i in range(n) if base[i] != seq[i]), n)


def continue_copies(
    prefix: Prefix | None,
    seqs: Sequence[list[int]],
    bases: Sequence[int],
    max_tokens: int,
    whole: Callable[[list[int]], T],
    read: Callable[[torch.Tensor], T],
) -> Iterator[tuple[list[int], T]]:
    """`fn` over token-budget batches of copies that share one prefix length (`Prefix.plan`),
    each split in halves on out-of-memory: continued from their bases' caches where they can
    (`read` turns the continued logits into the caller's outputs), else `whole(indices)`. Once
    the shortcut is off, the copies left run whole, batched by their whole lengths."""
    starts = prefix.plan(seqs, bases, max_tokens) if prefix is not None else [0] * len(seqs)
    ragged = prefix is not None and prefix.ragged
    groups: dict[int, list[int]] = {}  # by prefix length (one group of all where ragged)
    for i, p in enumerate(starts):
        groups.setdefault(min(p, 1) if ragged else p, []).append(i)

    def run(batch: list[int]) -> T:
        got = None
        if prefix is not None and prefix.on and starts[batch[0]]:
            rows, rbases = [seqs[i] for i in batch], [bases[i] for i in batch]
            with torch.inference_mode():
                got = prefix.continued(rows, rbases, [starts[i] for i in batch])
        return whole(batch) if got is None else read(got)

    def batches(idx: list[int], cont: bool) -> Iterator[tuple[list[int], T]]:
        widths = [len(seqs[i]) - (starts[i] - starts[i] // CACHED_COST) * cont for i in idx]
        forward = prefix.forward if prefix is not None else 0.0
        for part in split(widths, max_tokens, forward):
            for batch, out in run_with_backoff(part, lambda b: run([idx[j] for j in b])):
                yield [idx[j] for j in batch], out

    keys = sorted(groups)  # the whole copies first, then by prefix length
    for n, key in enumerate(keys):
        if key and prefix is not None and not prefix.on:  # switched off: the rest whole
            yield from batches([i for k in keys[n:] for i in groups[k]], False)
            return
        yield from batches(groups[key], bool(key))


def split(widths: Sequence[int], max_tokens: int, forward: float) -> list[list[int]]:
    """Rows (by index) in batches, widest first: a batch is closed where the next row would take
    it over the token budget or pad it by more than a forward's fixed cost."""
    out: list[list[int]] = []
    cur: list[int] = []
    top = waste = 0
    for i in sorted(range(len(widths)), key=lambda i: -widths[i]):
        if cur and ((len(cur) + 1) * top > max_tokens or waste + top - widths[i] > forward):
            out.append(cur)
            cur, waste = [], 0
        top = top if cur else widths[i]
        cur.append(i)
        waste += top - widths[i]
    return [*out, cur] if cur else out


def _split_cost(desc: Sequence[int], shift: int, max_tokens: int, forward: float) -> float:
    """`split`'s cost in positions for widths `desc` (sorted, widest first) less `shift`."""
    cost, rows, top, waste = 0.0, 0, 0, 0
    for n in desc:
        w = n - shift
        if rows and ((rows + 1) * top > max_tokens or waste + top - w > forward):
            cost += rows * top + forward
            rows, waste = 0, 0
        top = top if rows else w
        rows, waste = rows + 1, waste + top - w
    return cost + (rows * top + forward if rows else 0.0)


def tiles(
    starts: Sequence[int], lengths: Sequence[int], max_tokens: int, forward: float
) -> tuple[list[int], float]:
    """Each copy's prefix length after grouping neighbouring first changes into tiles that run
    from their lowest one, and the cost in positions: the grouping of least cost, each tile's
    copies batched as `split` batches them (a batch costing `forward` positions besides its
    rows'; a tile's first batch carries its check row). A tile spans at most `TILE_UNITS`."""
    units = sorted(set(starts))
    by_unit: dict[int, list[int]] = {u: [] for u in units}
    for p, n in zip(starts, lengths, strict=True):
        by_unit[p].append(-n)
    best, cut = [0.0] + [math.inf] * len(units), [0] * (len(units) + 1)
    for j in range(len(units)):
        neg: list[int] = []  # the tile's lengths, negated and sorted (widest first)
        for i in range(j, max(-1, j - TILE_UNITS - 1), -1):  # the tile of units i..j
            for n in by_unit[units[i]]:
                bisect.insort(neg, n)
            p = units[i]
            desc = [-n for n in ([neg[0]] if p else []) + neg]  # with the tile's check row
            cost = best[i] + _split_cost(desc, p - p // CACHED_COST, max_tokens, forward)
            if cost < best[j + 1]:
                best[j + 1], cut[j + 1] = cost, i
    tile: dict[int, int] = {}
    j = len(units)
    while j > 0:
        i = cut[j]
        tile.update(dict.fromkeys(units[i:j], units[i]))
        j = i
    return [tile[p] for p in starts], best[-1]


def last_positions(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, keep: int, **kwargs: Any
) -> tuple[torch.Tensor, Any]:
    """(B, keep, V) logits of each right-padded row's last `keep` positions (`mask` the
    attention mask, a cache's columns first), and the returned cache: only the columns from the
    shortest row's first kept one on are unembedded."""
    width = ids.shape[1]
    last = mask[:, -width:].sum(dim=1) - 1
    k = width - int(last.min()) + keep - 1
    out = model(input_ids=ids, attention_mask=mask, **kwargs, **keep_last(model, k))
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None]
    cols = last[:, None] - keep + 1 + torch.arange(keep, device=ids.device)
    return out.logits[:, -k:][rows, cols - (width - k)], cache_of(out)
