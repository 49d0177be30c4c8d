"""How a trace's patched runs are grouped into batches: tiles of (lowest patched block, first
patched position) bands. A batch runs the blocks from its lowest patched one and the positions
from its first patched one, so rows of nearby cells share a batch; the band sizes are those that
minimise a cost model of the device (a forward pass's fixed cost against its cost per token).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A forward pass's fixed cost (Python, kernel launches), in tokens' worth of compute, by device
# type: on a CPU about 16 tokens of a SmolLM2 pass (45 ms against 2.7 ms a token, one thread);
# an accelerator is cheap per token until it is full, so there it is much larger.
FORWARD_TOKENS = {"cpu": 16.0, "other": 1024.0}


def plan_tiles(
    start: Sequence[int],
    first: Sequence[int],
    *,
    n_blocks: int,
    n_pos: int,
    prefix_rows: int,
    batch_tokens: int,
    forward_tokens: float,
) -> list[tuple[list[int], int]]:
    """Row indices grouped into tiles, each with the input length its batches run (n_pos less
    its first patched position). `start[r]` / `first[r]`: row r's lowest patched block and first
    patched position (all 0 where that shortcut is off); `prefix_rows`: rows of the cache run
    once per distinct first position."""
    starts, firsts = sorted(set(start)), sorted(set(first))
    s_at = {v: i for i, v in enumerate(starts)}
    f_at = {v: i for i, v in enumerate(firsts)}
    row_s, row_f = [s_at[v] for v in start], [f_at[v] for v in first]
    counts = np.zeros((len(starts), len(firsts)))
    np.add.at(counts, (row_s, row_f), 1)

    def cost(h: int, w: int) -> float:
        """Per batch, the blocks it runs x (its tokens + a pass's fixed cost), and the cache runs."""
        n = np.add.reduceat(
            np.add.reduceat(counts, range(0, len(starts), h), 0), range(0, len(firsts), w), 1
        )
        blocks = n_blocks + 1 - np.array(starts[::h], dtype=float)[:, None]
        length = n_pos - np.array(firsts[::w], dtype=float)[None, :]
        batches = np.ceil(n / np.maximum(1, batch_tokens // length))
        prefix = sum(f * prefix_rows + forward_tokens for f in firsts[::w] if f) * (n_blocks + 1)
        return float((blocks * (n * length + batches * forward_tokens)).sum() + prefix)

    h, w = min(
        ((h, w) for h in band_sizes(len(starts)) for w in band_sizes(len(firsts))),
        key=lambda hw: cost(*hw),
    )
    groups: dict[tuple[int, int], list[int]] = {}
    for r in sorted(
        range(len(start)), key=lambda r: (row_f[r] // w, row_s[r] // h, first[r], start[r])
    ):
        groups.setdefault((row_f[r] // w, row_s[r] // h), []).append(r)
    return [(rows, n_pos - min(first[r] for r in rows)) for rows in groups.values()]


def band_sizes(n: int) -> list[int]:
    """Candidate band sizes for n values: 1, 2, 3, 4, 6, 8, 12, ... below n, and n itself."""
    sizes, k = {1, n}, 2
    while k < n:
        sizes |= {k, k + k // 2}
        k *= 2
    return sorted(x for x in sizes if x <= n)
