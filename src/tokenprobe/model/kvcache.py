"""Key/value caches across transformers versions: the forward's keyword for a cache and the
output field holding it (`past_key_values` until 5.24, `cache` from 5.25, whose old name warns
until 5.40), which caches a continuation may reuse (attention keys and values only, whose
entries a later position cannot change), and a copy with chosen rows."""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch

_NAMES = ("cache", "past_key_values")  # the newer name first


def cache_keyword(model: torch.nn.Module) -> str | None:
    """The keyword this model's forward takes a cache under (None: it takes none)."""
    params = inspect.signature(model.forward).parameters
    return next((name for name in _NAMES if name in params), None)


def with_cache(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """Forward keywords that continue from `cache` (and return the grown cache), under the
    name this model's transformers takes, so that no deprecation warning is printed."""
    name = cache_keyword(model) or "past_key_values"
    return {name: cache, "use_cache": True}


def cache_of(output: Any) -> Any:
    """The cache a forward returned, whichever name its transformers gives the field (None
    where there is none); reads no deprecated attribute."""
    fields = getattr(output, "__dataclass_fields__", {})
    for name in _NAMES:
        if name in fields:
            return getattr(output, name, None)
    return None


def is_key_value_cache(cache: Any) -> bool:
    """A plain `DynamicCache` whose every layer holds attention keys and values only. A
    subclass may keep more state beside its layers, which `rows_of` would not copy (MiniMax's
    keeps its linear-attention states in a list: continuing from a copy changed the original,
    and every later batch started from a wrong state)."""
    from transformers import cache_utils

    recurrent = getattr(cache_utils, "LinearAttentionCacheLayerMixin", ())
    layers = getattr(cache, "layers", None) or ()
    return (
        type(cache) is cache_utils.DynamicCache
        and bool(layers)
        and all(
            isinstance(x, cache_utils.DynamicLayer) and not isinstance(x, recurrent) for x in layers
        )
    )


def rows_of(cache: Any, rows: torch.Tensor) -> Any:
    """A copy of a key/value cache with these batch rows (the original's tensors untouched:
    the copy's layers get new tensors, and a forward pass concatenates into new ones)."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.reorder_cache(rows)
    return out
