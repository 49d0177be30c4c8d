"""Where an encoder-decoder trace reads and writes its states, and the hooks that do it.

Three grids, each a (layer, position) map:

- `encoder`: the encoder's residual stream at source positions (layer 0 = its first block's
  input, the embeddings; layer k = block k's output). Restoring one changes what every decoder
  position reads through cross-attention;
- `decoder`: the decoder's residual stream at decoder positions (layer 0 = its first block's
  input; layer k = block k's output), with the encoder's output left as the base run's;
- `cross`: the output of decoder block b's cross-attention module at a decoder position (what
  it adds to that position's stream, before any residual add or norm of the block).

FSMT's blocks pass (positions, batch, width) states: they are read and written transposed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...model.parts import first_output
from ...model.seq2seq import Seq2SeqAdapter, cross_attentions
from .options import GRIDS, STACKS

__all__ = ["GRIDS", "STACKS", "Seq2SeqSite", "at_seq2seq_sites", "seq2seq_sites"]

# an edit of a state (batch, positions, width): returns the new state
StateEdit = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Seq2SeqSite:
    """One row of a grid: the state is `module`'s output, or its input where `pre` (layer 0
    of a stack: its first block's input)."""

    grid: str
    layer: int
    module: nn.Module
    pre: bool
    path: str


def seq2seq_sites(adapter: Seq2SeqAdapter, grid: str) -> list[Seq2SeqSite]:
    """The rows of one grid: L + 1 residual-stream layers of a stack, or L cross-attentions."""
    if grid == "cross":
        found = cross_attentions(adapter)
        return [Seq2SeqSite(grid, b, m, False, path) for b, (path, m) in enumerate(found)]
    stack = adapter.encoder if grid == "encoder" else adapter.decoder
    blocks = list(stack.blocks)
    first = Seq2SeqSite(grid, 0, blocks[0], True, f"{stack.blocks_path} layer 0")
    return [first] + [
        Seq2SeqSite(grid, k, blocks[k - 1], False, f"{stack.blocks_path} layer {k}")
        for k in range(1, len(blocks) + 1)
    ]


def _with_first(out: Any, state: torch.Tensor) -> Any:
    if isinstance(out, tuple):
        return (state, *out[1:])
    if isinstance(out, list):
        return [state, *out[1:]]
    return state


@contextmanager
def at_seq2seq_sites(
    sites: list[Seq2SeqSite], edits: dict[int, StateEdit], time_major: bool
) -> Iterator[None]:
    """Apply `edits[i]` to the state at `sites[i]` in every forward pass run inside."""

    def shaped(edit: StateEdit) -> StateEdit:
        if not time_major:
            return edit
        return lambda x: edit(x.transpose(0, 1)).transpose(0, 1)

    handles = []
    try:
        for i, raw in edits.items():
            site, edit = sites[i], shaped(raw)
            if site.pre:
                handles.append(site.module.register_forward_pre_hook(_pre(edit), with_kwargs=True))
            else:
                handles.append(site.module.register_forward_hook(_post(edit)))
        yield
    finally:
        for h in handles:
            h.remove()


def _pre(edit: StateEdit) -> Callable[..., Any]:
    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

    return hook


def _post(edit: StateEdit) -> Callable[..., Any]:
    def hook(_m: nn.Module, _args: tuple, out: Any) -> Any:
        return _with_first(out, edit(first_output(out)))

    return hook


def encoder_embedding(model: nn.Module) -> nn.Module:
    """The token embedding the encoder runs (`encoder.embed_tokens`, else the model's input
    embedding); several families share it with the decoder."""
    encoder = model.get_encoder()  # type: ignore[operator]
    found = getattr(encoder, "embed_tokens", None)
    return found if isinstance(found, nn.Module) else model.get_input_embeddings()  # type: ignore[operator]


@contextmanager
def on_encoder_embeddings(
    model: nn.Module, change: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """`change` the output of the encoder's token embedding while the encoder runs (not the
    decoder's, where the two share the module): before any scale the family applies after it
    (Marian, FSMT, T5Gemma), so that scale multiplies the change and the embedding alike."""
    encoder = model.get_encoder()  # type: ignore[operator]
    inside = [False]

    def enter(*_a: Any) -> None:
        inside[0] = True

    def leave(*_a: Any) -> None:
        inside[0] = False

    def hook(_m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        return change(out) if inside[0] else out

    with ExitStack() as stack:
        for h in (
            encoder.register_forward_pre_hook(enter),
            encoder.register_forward_hook(leave),
            encoder_embedding(model).register_forward_hook(hook),
        ):
            stack.callback(h.remove)
        yield
