"""Where a component's state lives in each block, and hooks that read it, overwrite it at
chosen (row, position) cells, or skip the blocks below a batch's lowest patched layer.

A site is one row of a trace: the residual stream at layer k (0 = the input of block 0, k =
the output of block k), or the output of block b's attention or MLP module. Modules are found
from the blocks' own children (attention and MLP modules by their class and attribute names,
OPT's bare `fc2` as its MLP output), not from a table of model classes. A module that adds the
residual itself (BLOOM's attention and MLP, MPT's MLP: a `residual` argument) is read and
written as its own contribution, output - residual.

Blocks that carry several streams (Gemma 3n's AltUp: (streams, batch, positions, width)) are
read and written in full: a residual-stream site holds all the streams of a position, laid out
as (batch, positions, streams x width), so a restored cell carries everything the block above
reads of that position (the state the model decodes is a function of it: restoring every
position of the last layer restores the model's output exactly). Patching only the merged
stream the lens decodes would not be a state of the model: the next block reads the streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...errors import TokenprobeError
from ...model import Adapter, execution_device
from ...model.parts import adds_residual, find_module, first_output, residual_argument


@dataclass
class Site:
    """One patchable state: `component` at row `layer`; `start` is the lowest block a run must
    compute when this site is patched (the blocks below it keep the cached states)."""

    component: str
    layer: int
    start: int
    module: nn.Module | None = None  # attn/mlp: the module whose output is the state
    path: str = ""  # where it is, for meta.json
    residual: bool = False  # the module adds the residual itself: its state is output - residual
    # a head's site: its columns of `module`'s input ("input": a query head before the output
    # projection) or output ("output": a key or value head of its projection); `head` its number
    cols: slice | None = None
    hook: str = "output"
    head: int | None = None


def find_sites(adapter: Adapter, component: str) -> list[Site | None]:
    """The sites of one component, by row: L + 1 for the residual stream, L for attn and mlp
    (None for a block without such a module, e.g. Jamba's state-space blocks for attn)."""
    n = adapter.n_blocks
    if component == "resid":
        return [Site("resid", k, k, path=f"{adapter.blocks_path} layer {k}") for k in range(n + 1)]
    sites: list[Site | None] = []
    for b, block in enumerate(adapter.blocks):
        found = find_module(block, component)
        if found is None:
            sites.append(None)
            continue
        name, module = found
        path = f"{adapter.blocks_path}.{b}.{name}"
        sites.append(Site(component, b, b, module, path, adds_residual(module)))
    if all(s is None for s in sites):
        what = "attention" if component == "attn" else "MLP"
        raise TokenprobeError(
            f"`components` {component}: the blocks of this model have no {what} module "
            f"({type(adapter.blocks[0]).__name__}: {', '.join(n for n, _ in adapter.blocks[0].named_children())}); "
            "trace resid instead"
        )
    return sites


def _with_first(out: Any, state: torch.Tensor) -> Any:
    if isinstance(out, tuple):
        return (state, *out[1:])
    if isinstance(out, list):
        return [state, *out[1:]]
    return state


# A hook's edit: given the output at a site (batch, positions, width) and, for a module that
# adds the residual itself, that residual (else None), return the new output.
Edit = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def streams_flat(state: torch.Tensor) -> torch.Tensor:
    """A multi-stream state (streams, batch, positions, width) as (batch, positions, streams x
    width): each position's streams side by side."""
    s, b, t, d = state.shape
    return state.permute(1, 2, 0, 3).reshape(b, t, s * d)


def streams_unflat(flat: torch.Tensor, streams: int) -> torch.Tensor:
    """The inverse of `streams_flat`, contiguous like the blocks' own outputs."""
    b, t, sd = flat.shape
    return flat.reshape(b, t, streams, sd // streams).permute(2, 0, 1, 3).contiguous()


def _shaped(edit: Edit, n_pos: int) -> Edit:
    """The edit of (batch, positions, width) states, also for modules that see the batch's
    tokens flattened to (batch x positions, width) (OPT's fc2), and for blocks that carry
    several streams (streams, batch, positions, width), edited as (batch, positions, streams x
    width)."""

    def apply(out: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        if out.dim() == 4:
            flat = streams_flat(out)
            new = edit(flat, None if residual is None else streams_flat(residual))
            if new is flat and not flat.requires_grad:
                return out  # read, not changed: the model goes on with its own tensor
            # (a recorded tensor that gradients must reach goes on through the flat one)
            return streams_unflat(new, out.shape[0])
        if out.dim() != 2:
            return edit(out, residual)
        width = out.shape[-1]
        res3 = None if residual is None else residual.reshape(-1, n_pos, width)
        return edit(out.reshape(-1, n_pos, width), res3).reshape(out.shape)

    return apply


@contextmanager
def at_sites(
    blocks: nn.ModuleList, edits: dict[int, Edit], sites: list[Site], n_pos: int
) -> Iterator[None]:
    """Apply `edits[i]` to the state of `sites[i]` in every forward pass run inside (inputs of
    `n_pos` positions).

    A residual-stream site k is the input of block 0 (k = 0) or the output of block k - 1; an
    attn/mlp site the output of its module (as output - residual for a module that adds it)."""
    handles = []
    try:
        for i, raw in edits.items():
            site = sites[i]
            edit = _shaped(raw if site.cols is None else _sliced(raw, site.cols), n_pos)
            if site.cols is not None:
                assert site.module is not None
                handles.append(_slice_hook(site.module, site.hook, edit))
            elif site.component == "resid" and site.layer == 0:
                handles.append(
                    blocks[0].register_forward_pre_hook(_input_hook(edit), with_kwargs=True)
                )
            elif site.component == "resid":
                handles.append(blocks[site.layer - 1].register_forward_hook(_output_hook(edit)))
            else:
                assert site.module is not None
                hook = _residual_hook(site.module, edit) if site.residual else _output_hook(edit)
                handles.append(site.module.register_forward_hook(hook, with_kwargs=site.residual))
        yield
    finally:
        for h in handles:
            h.remove()


def _sliced(edit: Edit, cols: slice) -> Edit:
    """The edit of a head's columns of a module's input or output (batch, positions, heads x
    head width): the rest of it is left as it is. Under autograd the columns are handed on
    through a new tensor, so that the gradient reaches the state that `edit` saw."""

    def apply(x: torch.Tensor, _residual: torch.Tensor | None) -> torch.Tensor:
        part = x[..., cols].contiguous()
        new = edit(part, None)
        if new is part:
            if not x.requires_grad:
                return x
            return torch.cat([x[..., : cols.start], part, x[..., cols.stop :]], dim=-1)
        out = x.clone()
        out[..., cols] = new
        return out

    return apply


def _slice_hook(module: nn.Module, where: str, edit: Edit) -> Any:
    """A hook handing `module`'s input (`where` "input") or output to `edit`."""
    if where == "output":
        return module.register_forward_hook(_output_hook(edit))

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (edit(args[0], None), *args[1:]), kwargs
        return args, {**kwargs, "input": edit(kwargs["input"], None)}

    return module.register_forward_pre_hook(pre, with_kwargs=True)


def _input_hook(edit: Edit) -> Callable[..., Any]:
    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (edit(args[0], None), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"], None)}

    return hook


def _output_hook(edit: Edit) -> Callable[..., Any]:
    def hook(_m: nn.Module, _args: tuple, out: Any) -> Any:
        return _with_first(out, edit(first_output(out), None))

    return hook


def _residual_hook(module: nn.Module, edit: Edit) -> Callable[..., Any]:
    def hook(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        return _with_first(out, edit(first_output(out), residual_argument(module, args, kwargs)))

    return hook


def recorder(store: dict[int, tuple[torch.Tensor, torch.Tensor]], i: int) -> Edit:
    """An edit that changes nothing and keeps (the state, the output tensor itself): the state
    is output - residual for a module that adds it; the output is what gradients reach (the
    gradient with respect to a module's contribution is the one with respect to its output)."""

    def keep(out: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        store[i] = (out if residual is None else out - residual, out)
        return out

    return keep


class Skipper:
    """Runs a forward pass from block `start` up: the blocks below return the cached states
    instead of computing them. The model's own forward still builds the masks, position ids and
    rotary or ALiBi terms for the batch, so the blocks that run get exactly their usual inputs.

    `structure` is learned from one plain forward pass: what a block returns besides its state
    (a tensor, or a tuple whose other entries are kept, batch-expanded)."""

    def __init__(self, adapter: Adapter) -> None:
        self.blocks = list(adapter.blocks)
        self.others: list[tuple | None] = [None] * len(self.blocks)
        self.streams: list[int] = [1] * len(self.blocks)  # >1: the block returns several streams

    def learn(self, run: Callable[[], Any]) -> None:
        """Record each block's output structure during `run()` (a plain forward pass)."""
        handles = []

        def note(b: int) -> Callable[..., None]:
            def hook(_m: nn.Module, _args: tuple, out: Any) -> None:
                self.others[b] = tuple(out[1:]) if isinstance(out, (tuple, list)) else None
                state = first_output(out)
                self.streams[b] = int(state.shape[0]) if state.dim() == 4 else 1

            return hook

        try:
            handles = [blk.register_forward_hook(note(b)) for b, blk in enumerate(self.blocks)]
            run()
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def skip_below(self, start: int, states: Callable[[int], torch.Tensor]) -> Iterator[None]:
        """Blocks 0..start-1 return `states(k)` (the residual stream at layer k = their
        output) without running."""
        with ExitStack() as stack:
            for b in range(min(start, len(self.blocks))):
                stack.enter_context(_replaced_forward(self.blocks[b], self._fake(b, states)))
            yield

    def _fake(self, b: int, states: Callable[[int], torch.Tensor]) -> Callable[..., Any]:
        others, streams = self.others[b], self.streams[b]
        device = execution_device(self.blocks[b])  # an offloaded block's weights are on "meta"

        def forward(*_args: Any, **_kwargs: Any) -> Any:
            state = states(b + 1)
            if streams > 1:  # recorded as (batch, positions, streams x width)
                state = streams_unflat(state, streams)
            if device is not None:
                state = state.to(device)
            if others is None:
                return state
            rest = tuple(
                o.expand(state.shape[0], *o.shape[1:])
                if torch.is_tensor(o) and o.shape[0] == 1
                else o
                for o in others
            )
            return (state, *rest)

        return forward


@contextmanager
def _replaced_forward(module: nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    had = "forward" in module.__dict__
    old = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if had:  # put back exactly what the instance held (`forward` is a plain attribute)
            module.__dict__["forward"] = old
        else:
            del module.forward
