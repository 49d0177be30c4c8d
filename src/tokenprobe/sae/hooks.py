"""Where a dictionary's site lives in a loaded model, and a hook that reads or rewrites its state:
the residual stream at layer L (block 0's input for L = 0, else block L-1's output), a block's
attention or MLP output (what it adds to the stream; BLOOM/MPT modules that add the residual
themselves are read as output - residual) or the MLP's input."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import TokenprobeError
from ..model import Adapter
from ..model.parts import (
    adds_residual,
    find_module,
    first_output,
    linear_shape,
    residual_argument,
)
from .dictionary import Dictionary, SaeSite

# rewrites a (batch, positions, width) state; returning the same tensor changes nothing
Rewrite = Callable[[torch.Tensor], torch.Tensor]


def site_module(adapter: Adapter, site: SaeSite) -> tuple[nn.Module, str]:
    """The module whose input or output holds the site's state, and its path; refused in one
    line where the model has no such site."""
    n = adapter.n_blocks
    if site.kind == "resid":
        if not 0 <= site.layer <= n:
            raise TokenprobeError(
                f"the dictionary reads resid {site.layer}, but this model has residual layers "
                f"0 to {n}: it was trained on another model (or give --sae-site)"
            )
        block = adapter.blocks[max(0, site.layer - 1)]
        return block, f"{adapter.blocks_path}.{max(0, site.layer - 1)}"
    if not 0 <= site.layer < n:
        raise TokenprobeError(
            f"the dictionary reads {site}, but this model has blocks 0 to {n - 1}: it was "
            "trained on another model (or give --sae-site)"
        )
    kind = "attn" if site.kind == "attn" else "mlp"
    found = find_module(adapter.blocks[site.layer], kind)
    if found is None:
        what = "attention" if kind == "attn" else "MLP"
        raise TokenprobeError(
            f"block {site.layer} has no {what} module for the dictionary's site {site}: "
            "give --sae-site another site"
        )
    name, module = found
    return module, f"{adapter.blocks_path}.{site.layer}.{name}"


def check_fits(adapter: Adapter, dictionary: Dictionary) -> None:
    """The dictionary's input and output widths against the model's at its sites (one line)."""
    if adapter.merge is not None:
        raise TokenprobeError(
            "sparse dictionaries: this model's blocks carry several streams (AltUp), not one "
            "residual stream a dictionary could read"
        )
    for site, width, what in (
        (dictionary.site, dictionary.d_in, "reads"),
        (dictionary.writes, dictionary.d_out, "writes"),
    ):
        site_module(adapter, site)
        _check_post_norm(adapter, site)
        want = _width(adapter, site)
        if want is not None and width != want:
            raise TokenprobeError(
                f"the dictionary {what} {width} values at {site}, but this model's state there "
                f"has {want}: it was trained on another model or site (give --sae-site)"
            )


# children of a block that norm an attention or MLP output before it is added (Gemma 2/3,
# OLMo 2/3, GLM-4): there the module's output is not what the stream receives
POST_NORMS = {
    "mlp": ("post_feedforward_layernorm", "post_mlp_layernorm"),
    "attn": ("post_self_attn_layernorm", "post_feedforward_layernorm"),
}


def _check_post_norm(adapter: Adapter, site: SaeSite) -> None:
    """Refuse an attention or MLP site in a block that norms that output before adding it: a
    dictionary trained on the normed output (TransformerLens's hook_mlp_out for Gemma 2) would
    read the wrong state, silently."""
    if site.kind not in POST_NORMS:
        return
    names = {n for n, _ in adapter.blocks[site.layer].named_children()}
    found = sorted(names & set(POST_NORMS[site.kind]))
    if found:
        raise TokenprobeError(
            f"the dictionary reads {site}, but this family norms that output "
            f"({found[0]}) before adding it to the stream, so which of the two the dictionary "
            "was trained on is ambiguous; use a residual-stream dictionary (--sae-site resid N)"
        )


def _width(adapter: Adapter, site: SaeSite) -> int | None:
    """The state's width at a site: the residual stream's, or for an MLP's input what its
    first linear map takes (OPT's MLP site is its bare fc2, whose input is the hidden layer)."""
    if site.kind in ("resid", "attn", "mlp"):
        return adapter.width
    module, _ = site_module(adapter, site)
    shapes = [shape for m in module.modules() if (shape := linear_shape(m)) is not None]
    return shapes[0][0] if shapes else None


@contextmanager
def at_site(
    adapter: Adapter, site: SaeSite, rewrite: Rewrite, n_pos: int | None = None
) -> Iterator[None]:
    """Apply `rewrite` to the site's (batch, positions, width) state in every forward pass run
    inside (inputs of `n_pos` positions, for modules that see the batch's tokens flattened to
    (batch x positions, width), such as OPT's fc2)."""
    module, _ = site_module(adapter, site)
    rewrite = _shaped(rewrite, n_pos)
    if site.kind == "mlp-in" or (site.kind == "resid" and site.layer == 0):
        handle = module.register_forward_pre_hook(_input_hook(rewrite), with_kwargs=True)
    elif site.kind != "resid" and adds_residual(module):
        handle = module.register_forward_hook(_residual_hook(module, rewrite), with_kwargs=True)
    else:
        handle = module.register_forward_hook(_output_hook(rewrite))
    try:
        yield
    finally:
        handle.remove()


def _shaped(rewrite: Rewrite, n_pos: int | None) -> Rewrite:
    def apply(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            return rewrite(x)
        if n_pos is None:
            raise TokenprobeError("this model's site state is flattened: give n_pos")
        flat = x.reshape(-1, n_pos, x.shape[-1])
        new = rewrite(flat)
        return x if new is flat else new.reshape(x.shape)

    return apply


def _input_hook(rewrite: Rewrite) -> Callable[..., Any]:
    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (rewrite(args[0]), *args[1:]), kwargs
        key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
        return args, {**kwargs, key: rewrite(kwargs[key])}

    return hook


def _output_hook(rewrite: Rewrite) -> Callable[..., Any]:
    def hook(_m: nn.Module, _args: tuple, out: Any) -> Any:
        return _with_first(out, rewrite(first_output(out)))

    return hook


def _residual_hook(module: nn.Module, rewrite: Rewrite) -> Callable[..., Any]:
    def hook(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        first = first_output(out)
        residual = residual_argument(module, args, kwargs)
        state = first - residual
        new = rewrite(state)
        return out if new is state else _with_first(out, new + residual)

    return hook


def _with_first(out: Any, first: torch.Tensor) -> Any:
    """`out` with its main output replaced (a tuple's first item, or the output itself)."""
    if isinstance(out, tuple):
        return (first, *out[1:])
    if isinstance(out, list):
        return [first, *out[1:]]
    return first
