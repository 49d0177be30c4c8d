"""One forward pass with hooks that keep, at every position, what the decomposition needs:
each block's input and output, its branches' outputs (attention, MLP, a state-space mixer),
the inputs and outputs of its norm children (the post-norms some families put on each branch),
the attention output projections' inputs (the heads side by side), the final norm's input and
output, and the unembedding's output (the model's own raw logits). Every tensor is copied
(float64, CPU): some blocks add into a branch's output in place (Falcon's `mlp_output +=
attention_output`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import TokenprobeError
from ...model import Adapter
from ...model.parts import (
    HeadLayout,
    adds_residual,
    find_module,
    first_output,
    is_norm,
    residual_argument,
)

Tensors = dict[str, torch.Tensor]


@dataclass
class Branch:
    """A block's child whose output the block adds to the residual stream: `name` attn, mlp
    or mixer; `residual`: the module adds the residual itself (BLOOM, MPT), its part is
    output - residual."""

    name: str
    child: str
    module: nn.Module
    residual: bool


def branches(block: nn.Module) -> list[Branch]:
    """The block's attention and MLP modules (`parts.find_module`); a block without attention
    (Mamba's, Jamba's state-space layers) has its one other non-norm child as a "mixer"."""
    found = {c: find_module(block, c) for c in ("attn", "mlp")}
    out = [Branch(c, f[0], f[1], adds_residual(f[1])) for c, f in found.items() if f is not None]
    if found["attn"] is None:
        taken = {f[0] for f in found.values() if f is not None}
        rest = [
            (n, m)
            for n, m in block.named_children()
            if n not in taken and not is_norm(n, m) and "dropout" not in type(m).__name__.lower()
        ]
        if len(rest) == 1:
            out.insert(0, Branch("mixer", rest[0][0], rest[0][1], adds_residual(rest[0][1])))
    return out


@dataclass
class Captured:
    """What one forward pass of one prompt left, each (positions, width) or (positions, vocab)."""

    inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    parts: dict[int, Tensors] = field(default_factory=dict)  # block -> branch -> output
    norms: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    heads: dict[int, torch.Tensor] = field(default_factory=dict)  # block -> out-proj input
    final: tuple[torch.Tensor, torch.Tensor] | None = None  # the final norm's (input, output)
    raw_logits: torch.Tensor | None = None  # (positions, len(vocab_ids))
    calls: dict[str, int] = field(default_factory=dict)


def _rows(t: torch.Tensor, n_pos: int) -> torch.Tensor:
    """A hooked tensor of one prompt as (positions, last dim), cloned: (1, T, D), or the
    tokens flattened (T, D) as OPT's fc2 sees them."""
    if t.dim() == 3:
        t = t[0]
    if t.dim() != 2 or t.shape[0] != n_pos:
        raise TokenprobeError(
            f"logit attribution: a hooked state has shape {tuple(t.shape)}, not (1, {n_pos}, "
            "width): blocks that carry several streams cannot be split into components"
        )
    return t.detach().to("cpu", torch.float64)  # a copy: the model may add into it in place


@contextmanager
def capture(
    adapter: Adapter,
    blocks: list[list[Branch]],
    layouts: list[HeadLayout | None],
    n_pos: int,
    vocab_ids: list[int],
) -> Iterator[Captured]:
    """Hooks that fill a `Captured` during the forward passes run inside (one prompt), every
    tensor float64 on the CPU; of the raw logits only the columns `vocab_ids`."""
    got = Captured()
    handles = []

    def counted(key: str, fn: Callable[..., None]) -> Callable[..., None]:
        def hook(*args: Any) -> None:
            got.calls[key] = got.calls.get(key, 0) + 1
            fn(*args)

        return hook

    def arg0(args: tuple, kwargs: dict) -> torch.Tensor:
        return args[0] if args else kwargs["hidden_states"]

    try:
        for b, block in enumerate(adapter.blocks):
            handles += _block_hooks(got, b, block, blocks[b], layouts[b], n_pos, counted, arg0)
        norm = adapter.final_norm
        if not isinstance(norm, nn.Identity):
            handles.append(
                norm.register_forward_hook(
                    counted("final norm", lambda _m, a, o: _keep_final(got, a, o, n_pos))
                )
            )

        def logits(_m: nn.Module, _a: tuple, out: Any) -> None:
            got.raw_logits = _rows(first_output(out)[..., vocab_ids], n_pos)

        handles.append(adapter.unembed.register_forward_hook(counted("unembedding", logits)))
        yield got
    finally:
        for h in handles:
            h.remove()


def _keep_final(got: Captured, args: tuple, out: Any, n_pos: int) -> None:
    got.final = (_rows(args[0], n_pos), _rows(first_output(out), n_pos))


def _block_hooks(
    got: Captured,
    b: int,
    block: nn.Module,
    found: list[Branch],
    layout: HeadLayout | None,
    n_pos: int,
    counted: Callable[[str, Callable[..., None]], Callable[..., None]],
    arg0: Callable[[tuple, dict], torch.Tensor],
) -> list[Any]:
    """The hooks of one block: its input and output, each branch, each norm child, the heads."""
    got.parts[b], got.norms[b] = {}, {}

    def block_in(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        got.inputs[b] = _rows(arg0(args, kwargs), n_pos)

    def block_out(_m: nn.Module, _a: tuple, out: Any) -> None:
        got.outputs[b] = _rows(first_output(out), n_pos)

    handles = [
        block.register_forward_pre_hook(counted(f"block {b}", block_in), with_kwargs=True),
        block.register_forward_hook(block_out),
    ]
    for br in found:

        def part(_m: nn.Module, args: tuple, kwargs: dict, out: Any, br: Branch = br) -> None:
            value = _rows(first_output(out), n_pos)
            if br.residual:
                value = value - _rows(residual_argument(br.module, args, kwargs), n_pos)
            got.parts[b][br.name] = value

        key = f"block {b} {br.name}"
        handles.append(br.module.register_forward_hook(counted(key, part), with_kwargs=True))
    for name, child in block.named_children():
        if is_norm(name, child):

            def norm(_m: nn.Module, args: tuple, out: Any, name: str = name) -> None:
                x, y = (args[0] if args else None), first_output(out)
                if not isinstance(x, torch.Tensor) or x.shape != y.shape or x.dim() not in (2, 3):
                    return  # not a norm of the residual stream (a per-head or stacked one)
                if x.shape[-2] == n_pos and x.numel() == n_pos * x.shape[-1]:
                    got.norms[b][name] = (_rows(x, n_pos), _rows(y, n_pos))

            handles.append(child.register_forward_hook(norm))
    if layout is not None:

        def heads(_m: nn.Module, args: tuple) -> None:
            got.heads[b] = _rows(args[0], n_pos)

        handles.append(layout.out.register_forward_pre_hook(heads))
    return handles
