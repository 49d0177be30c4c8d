"""Attention weights recorded without changing the model's numbers.

sdpa and flash kernels return no weights. Every family that calls
`ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, query, key, value, mask, ...)`
(rotary applied, keys before grouped-query repetition) gets that entry wrapped while
recording: the model's own implementation still gives the output, and the family's own
`eager_attention_forward` (scaling, `repeat_kv`, soft-capping, sink tokens, the mask with its
sliding window) is called with the same arguments for the weights alone. Families whose
attention is written inline (Bloom, MPT, GPT-Neo) are eager-only: their own forward with
`output_attentions=True` gives the weights (`own_forward`).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ...errors import TokenprobeError
from ...model import LoadedModel
from ...model.parts import find_heads

# keep(layer, weights (heads, queries, keys) of batch row 0, on the model's device and in its
# dtype) -> what to store for that layer (None: nothing)
Keep = Callable[[int, torch.Tensor], torch.Tensor | None]


def _on_cpu(layer: int, weights: torch.Tensor) -> torch.Tensor:
    return weights.float().cpu()


class Recording:
    """What `recording` fills: block -> kept weights, and block -> its attention module."""

    def __init__(self) -> None:
        self.weights: dict[int, torch.Tensor] = {}
        self.modules: dict[int, nn.Module] = {}


_LOCK = threading.RLock()  # one recording at a time: the interface tables are process-wide


def attention_layers(lm: LoadedModel) -> list[int | None]:
    """Each block's query head count, None for a block without softmax attention heads
    (state-space and recurrent blocks); a model with none is one clear error."""
    adapter = lm.require_adapter()
    try:
        layouts = find_heads(adapter)
    except TokenprobeError as exc:
        raise TokenprobeError(
            f"{type(lm.model).__name__} has no softmax attention to show: {_first_clause(exc)}"
        ) from None
    return [None if layout is None else layout.heads for layout in layouts]


def _first_clause(exc: Exception) -> str:
    return str(exc).split(":")[0]


def _tables(model: nn.Module) -> list[Any]:
    """The attention-function tables (`AttentionInterface` instances) the model's modules
    read: the shared one, and any a family keeps for itself (Doge's)."""
    found: dict[int, Any] = {}
    for module in model.modules():
        table = getattr(sys.modules.get(type(module).__module__), "ALL_ATTENTION_FUNCTIONS", None)
        if table is not None and hasattr(table, "get_interface"):
            found[id(table)] = table
    return list(found.values())


def uses_interface(lm: LoadedModel) -> bool:
    """Whether the model's attention goes through the `AttentionInterface` tables."""
    return bool(_tables(lm.model))


def family_eager(module: nn.Module) -> Callable[..., Any]:
    """The `eager_attention_forward` of the module's family (or of a family it derives from)."""
    for cls in type(module).__mro__:
        found = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None)
        if found is not None:
            return found
    raise TokenprobeError(
        f"{type(module).__name__} has no eager_attention_forward in its family's module to "
        "compute attention weights with: load the model with attn_implementation='eager'"
    )


def eager_mask(
    mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor, module: nn.Module, **kw: Any
) -> torch.Tensor | None:
    """The additive float mask eager attention expects, from what the running kernel got:
    sdpa's boolean mask (True = attend), a float mask as it is, or none / flash's 2-D padding
    mask (the causal mask, with the sliding window the call names)."""
    dtype = query.dtype
    low = torch.finfo(dtype).min
    if isinstance(mask, torch.Tensor) and mask.dim() == 4:
        if mask.dtype == torch.bool:
            return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, low)
        return mask
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise TokenprobeError(
            f"the attention mask is a {type(mask).__name__} (flex attention?): load the model "
            "with attn_implementation='sdpa' or 'eager' to read its attention weights"
        )
    q, k = query.shape[-2], key.shape[-2]
    if not getattr(module, "is_causal", True) and mask is None:
        return None
    rows = torch.arange(q, device=query.device)[:, None] + (k - q)
    cols = torch.arange(k, device=query.device)[None, :]
    allowed = cols <= rows
    window = kw.get("sliding_window")
    if isinstance(window, int) and window > 0:
        allowed &= rows - cols < window
    if mask is not None:  # flash's (batch, keys) padding mask
        allowed = allowed[None] & mask[:, None, :].bool()
    out = torch.zeros(allowed.shape, dtype=dtype, device=query.device).masked_fill(~allowed, low)
    return out.reshape(-1, 1, q, k) if out.dim() == 3 else out[None, None]


def _owners(lm: LoadedModel) -> dict[int, int]:
    """id(module) -> the block it sits in, for every module inside a block."""
    out = {}
    for b, block in enumerate(lm.require_adapter().blocks):
        for module in block.modules():
            out[id(module)] = b
    return out


def _recorder(
    original: Callable[..., Any] | None, owners: dict[int, int], keep: Keep, store: Recording
) -> Callable[..., Any]:
    """An attention function that runs `original` (None: the family's eager one) for the
    output and keeps the family's eager weights of batch row 0 for the blocks in `owners`."""

    def attend(
        module: nn.Module,
        query: Any,
        key: Any,
        value: Any,
        attention_mask: Any = None,
        *a: Any,
        **kw: Any,
    ) -> Any:
        mask = attention_mask  # by name: Doge passes it as a keyword
        eager = family_eager(module) if original is None or id(module) in owners else None
        out = (original or eager)(module, query, key, value, mask, *a, **kw)  # type: ignore[misc]
        layer = owners.get(id(module))
        if layer is None:
            return out
        weights = out[1] if original is None else None
        if weights is None:
            assert eager is not None
            one = eager_mask(mask, query, key, module, **kw)
            if one is not None and one.shape[0] > 1:
                one = one[:1]
            with torch.no_grad():
                weights = eager(module, query[:1], key[:1], value[:1], one, *a, **kw)[1]
        store.modules.setdefault(layer, module)
        kept = keep(layer, weights[0].detach())
        if kept is not None:
            store.weights[layer] = kept
        return out

    return attend


@contextmanager
def recording(
    lm: LoadedModel, keep: Keep | None = None, owners: dict[int, int] | None = None
) -> Iterator[Recording]:
    """While inside, every forward of `lm` fills the yielded `Recording`: block ->
    `keep(block, weights)` (default: the weights (heads, queries, keys) of batch row 0,
    float32 on CPU). The model's outputs are those it computes without recording. `owners`
    (id(module) -> block) picks the attention modules recorded (default: every block's)."""
    store = Recording()
    owners = _owners(lm) if owners is None else owners
    chosen: Keep = keep or _on_cpu
    with _LOCK:
        saved = []
        try:
            for table in _tables(lm.model):
                local = table._local_mapping  # the instance's own entries, to put back as found
                for name in {*table.keys(), "eager"}:
                    before = local.get(name)
                    original = None if name == "eager" else table[name]
                    saved.append((local, name, before))
                    local[name] = _recorder(original, owners, chosen, store)
            yield store
        finally:
            for local, name, before in reversed(saved):
                if before is None:
                    local.pop(name, None)
                else:
                    local[name] = before


def own_forward(lm: LoadedModel, ids: torch.Tensor, keep: Keep | None = None) -> dict:
    """The weights of a family whose attention is written inline (eager-only: Bloom, MPT,
    GPT-Neo): its own forward with `output_attentions=True`, block -> kept weights."""
    chosen: Keep = keep or _on_cpu
    with torch.inference_mode():
        found = lm.model(input_ids=ids, use_cache=False, output_attentions=True).attentions
    store = {}
    for b, weights in enumerate(found or ()):
        if isinstance(weights, torch.Tensor):
            kept = chosen(b, weights[0])
            if kept is not None:
                store[b] = kept
    return store
