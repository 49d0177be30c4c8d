"""The key/value caches a causal trace continues from: which caches qualify (attention keys
and values only, whose entries a later position cannot change), and a copy with chosen rows."""

from __future__ import annotations

import copy
from typing import Any

import torch


def is_key_value_cache(cache: Any) -> bool:
    """A transformers cache whose every layer holds attention keys and values only."""
    from transformers import cache_utils

    recurrent = getattr(cache_utils, "LinearAttentionCacheLayerMixin", ())
    layers = getattr(cache, "layers", None)
    return (
        isinstance(cache, cache_utils.Cache)
        and bool(layers)
        and all(isinstance(x, cache_utils.DynamicLayer) and not isinstance(x, recurrent) for x in layers)
    )


def rows_of(cache: Any, rows: torch.Tensor) -> Any:
    """A copy of a key/value cache with these batch rows (the original's tensors untouched:
    the copy's layers get new tensors, and a forward pass concatenates into new ones)."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.reorder_cache(rows)
    return out
