"""Perturbed copies of a token sequence run from their first changed position on.

A copy that first differs from its unperturbed sequence (its base) at position P is the base's
positions 0..P-1 followed by its own tokens from P on; in a causal model those first P
positions are exactly the base's. So the bases run once, in batches, keeping a key/value cache
(and their own logits), and each copy runs only from P on after the cache of its base's first
P positions, at positions P, P+1, ... (a deletion simply continues with what follows it: no
position after the change is taken from the base, so nothing shifts). Where the forward takes
position ids, copies of different prefix lengths share a batch (each cache right-aligned,
left-padded and masked; explicit positions; the continuations left-padded after it where no
layer attends through a window, so that only the kept positions are unembedded); otherwise a
batch's copies share one prefix length. First changes are tiled by a cost model (a copy may run from a little before its own),
batches cut by width, and copies run whole where the model says continuing saves no work.

Checked on the model in hand, as the trace's shortcut is: a base's batched run against its run
alone; at every prefix length used, the base itself continued against its own run (once with
a left-padded cache); once, a copy cut short (padded the most) against its full forward. Where
a check fails, the forward takes no key/value cache, or its cache is not one of attention keys
and values (state-space and hybrid layers), it switches off, says why once, and `note` says
why for meta.json.
"""

from __future__ import annotations

from .batches import (
    CACHED_COST,
    FORWARD_TOKENS,
    continue_copies,
    first_change,
    last_positions,
    split,
    tiles,
)
from .cache import CONTINUED, Prefix

__all__ = [
    "CACHED_COST",
    "CONTINUED",
    "FORWARD_TOKENS",
    "Prefix",
    "continue_copies",
    "first_change",
    "last_positions",
    "split",
    "tiles",
]
