"""The parts inside a block: its attention and MLP modules, and an attention module's heads
(output projection, head count and width, separate query/key/value projections), found from
the modules' own names, attributes and shapes rather than from a table of model classes.

A block's attention module is the child named like one (`self_attn`, `attn`, ...) or whose
class name says attention; its heads are readable where the module (or one inside it, GPT-Neo's
`attention.attention`) has an output projection from heads x head width to the residual
stream's width and a head count in its attributes or the config. State-space and recurrent
mixers (Mamba, RWKV, xLSTM) have no softmax heads: their blocks have no `HeadLayout`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import TokenprobeError
from .adapter import Adapter

ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe")
# output projections of attention modules, by the names families give them
OUT_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "wo", "o")
Q_NAMES, K_NAMES, V_NAMES = (
    ("q_proj", "query", "wq"),
    ("k_proj", "key", "wk"),
    ("v_proj", "value", "wv"),
)


def is_norm(name: str, module: nn.Module) -> bool:
    """Whether a block's child `name` is a norm, by its class name or its own name."""
    kind = type(module).__name__.lower()
    return "norm" in kind or "norm" in name or name.startswith("ln")


def _is_norm_or_dropout(name: str, module: nn.Module) -> bool:
    return is_norm(name, module) or "dropout" in type(module).__name__.lower()


def adds_residual(module: nn.Module) -> bool:
    """Whether a module's forward takes the residual and adds it itself (BLOOM, MPT)."""
    try:
        return "residual" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def residual_argument(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    """The `residual` argument of a call of a module that adds the residual itself."""
    bound = inspect.signature(module.forward).bind_partial(*args, **kwargs)
    return bound.arguments["residual"]


def first_output(out: Any) -> torch.Tensor:
    """A module's main output: the first item of a tuple or list, else the output itself."""
    return out[0] if isinstance(out, (tuple, list)) else out


def find_module(block: nn.Module, component: str) -> tuple[str, nn.Module] | None:
    """The attention (`component` "attn") or MLP ("mlp") module among a block's children, as
    (child name, module), else None."""
    children = [(n, m) for n, m in block.named_children() if not _is_norm_or_dropout(n, m)]
    names, words = (
        (ATTN_NAMES, ("attention",))
        if component == "attn"
        else (MLP_NAMES, ("mlp", "moe", "feedforward"))
    )
    for name, module in children:
        if name in names:
            return name, module
    for name, module in children:
        if any(w in type(module).__name__.lower() for w in words):
            return name, module
    if component == "mlp":  # OPT: fc1, activation, fc2 directly in the block
        for name, module in children:
            if name == "fc2" and isinstance(module, nn.Linear):
                return name, module
    return None


def linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear map: `nn.Linear` and its subclasses (Falcon's), or GPT-2's
    `Conv1D` (weight stored (in, out)); None for anything else."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    if isinstance(module, nn.Linear):
        return int(module.in_features), int(module.out_features)
    if type(module).__name__ == "Conv1D":
        return int(weight.shape[0]), int(weight.shape[1])
    return None


def linear_weight(module: nn.Module) -> torch.Tensor:
    """A linear map's weight as (out, in), whatever way the module stores it."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight.t() if type(module).__name__ == "Conv1D" else weight


@dataclass
class HeadLayout:
    """One block's attention heads. The attention output is `out` applied to the heads'
    outputs laid side by side (batch, positions, heads x head_dim): head h's share of the
    output is its slice through its columns of `out`'s weight (the bias is no head's)."""

    block: int
    module: nn.Module  # the attention module (the block's child)
    path: str
    out: nn.Module  # the output projection, heads x head_dim -> width
    out_path: str
    heads: int  # query heads
    kv_heads: int  # key/value heads (fewer under grouped-query attention)
    head_dim: int
    q: nn.Module | None = None  # separate query/key/value projections, where the family has them
    k: nn.Module | None = None
    v: nn.Module | None = None

    def out_weight(self) -> torch.Tensor:
        """The output projection's weight, (width, heads x head_dim)."""
        return linear_weight(self.out)

    def out_bias(self) -> torch.Tensor | None:
        bias = getattr(self.out, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    def head_slice(self, head: int) -> slice:
        """Head `head`'s columns of the output projection's input."""
        return slice(head * self.head_dim, (head + 1) * self.head_dim)


def _number(config: Any, module: nn.Module, names: tuple[str, ...]) -> int | None:
    for owner in (module, config):
        for name in names:
            value = getattr(owner, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _named_linear(module: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    """The first linear map inside `module` (at any depth) whose own name is one of `names`."""
    found = [
        (p, m)
        for p, m in module.named_modules()
        if p and p.rpartition(".")[2] in names and linear_shape(m) is not None
    ]
    for name in names:
        for p, m in found:
            if p.rpartition(".")[2] == name:
                return p, m
    return None


def _layout(b: int, path: str, attn: nn.Module, config: Any, width: int) -> HeadLayout | None:
    found = _named_linear(attn, OUT_NAMES)
    if found is None:
        return None
    out_name, out = found
    shape = linear_shape(out)
    assert shape is not None
    inner, out_width = shape
    heads = _number(config, attn, ("num_heads", "num_attention_heads", "n_head", "n_heads"))
    if heads is None or out_width != width:
        return None
    owner = attn.get_submodule(out_name.rpartition(".")[0]) if "." in out_name else attn
    head_dim = _number(config, owner, ("head_dim", "head_size")) or inner // heads
    if heads * head_dim != inner:
        return None
    kv = _number(config, owner, ("num_key_value_heads", "num_kv_heads", "n_head_kv")) or heads
    projections = [_named_linear(attn, names) for names in (Q_NAMES, K_NAMES, V_NAMES)]
    q, k, v = (p[1] if p is not None else None for p in projections)
    return HeadLayout(b, attn, path, out, f"{path}.{out_name}", heads, kv, head_dim, q, k, v)


def find_heads(adapter: Adapter) -> list[HeadLayout | None]:
    """Each block's attention heads (None for a block without softmax attention heads, e.g.
    Jamba's state-space blocks); a model with none is one clear error."""
    config = adapter.config
    width = int(adapter.width)
    layouts: list[HeadLayout | None] = []
    for b, block in enumerate(adapter.blocks):
        found = find_module(block, "attn")
        if found is None:
            layouts.append(None)
            continue
        name, attn = found
        layouts.append(_layout(b, f"{adapter.blocks_path}.{b}.{name}", attn, config, width))
    if all(layout is None for layout in layouts):
        kind = type(adapter.blocks[0]).__name__
        raise TokenprobeError(
            f"the blocks of this model ({kind}) have no attention heads that can be read: no "
            "attention module with an output projection from heads x head width to the "
            "residual stream (state-space and recurrent models have none)"
        )
    return layouts
