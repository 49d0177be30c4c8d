"""The tuned lens (Belrose et al. 2023): one affine translator per layer, and the decoder that
reads each layer through its translator and then the model's own head.

A translator maps layer l's residual stream to `h + W h + b`, with W and b starting at zero,
exactly as the `tuned-lens` package parametrises it: an untrained lens is the identity (the
logit lens), weight decay pulls towards the identity, and the package's `params.pt` holds the
same W and b, so files move between the two without conversion. The model's last layer needs
no translator: its output is decoded as the model decodes it.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from ..errors import TokenprobeError
from ..model import Adapter, LoadedModel, weight_of
from ..model.adapter import text_config


class TunedLens(nn.Module):
    """Translators for layers 0..L-1 (0 = embeddings, i = output of block i) of a model with
    L blocks of width `width`; `info` says which model it was trained for and how."""

    def __init__(self, n_blocks: int, width: int, info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.n_blocks, self.width = int(n_blocks), int(width)
        self.info: dict[str, Any] = dict(info or {})
        self.translators = nn.ModuleList(
            nn.Linear(width, width, bias=True) for _ in range(n_blocks)
        )
        self.reset()

    def reset(self) -> None:
        """Every translator back to the identity (W = 0, b = 0)."""
        with torch.no_grad():
            for p in self.translators.parameters():  # each translator's weight and bias
                p.zero_()

    def translator(self, layer: int) -> nn.Linear:
        """Layer `layer`'s translator (`nn.ModuleList` types its items as `Module`)."""
        return cast(nn.Linear, self.translators[layer])

    def transform(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer `layer`'s states (..., width) moved towards the last layer's basis, in the
        translators' dtype."""
        translator = self.translator(layer)
        h = hidden.to(translator.weight.dtype)
        return h + translator(h)

    def forward(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        return self.transform(hidden, layer)


class TunedDecoder:
    """The lens's `Decoder` for a tuned lens: layer l (< L) decodes as
    `adapter.logits(translator_l(h))`; layer L (and `layer=None`) as the model itself does."""

    shared = False

    def __init__(self, lens: TunedLens, adapter: Adapter) -> None:
        self.lens = lens
        self.adapter = adapter

    def decode(self, hidden: torch.Tensor, layer: int | None) -> torch.Tensor:
        if layer is None or layer >= self.lens.n_blocks:
            return self.adapter.logits(hidden)
        return self.adapter.logits(self.lens.transform(hidden, layer).to(hidden.dtype))


def unembed_hash(adapter: Adapter, rows: int | None = None) -> str:
    """The tuned-lens package's fingerprint of the unembedding matrix (its `unembed_hash`):
    sha256 of numpy's one-decimal summary of the float32 weights; `rows` leaves out rows
    added after loading (a marker token's), which the lens was not trained with."""
    import hashlib

    import numpy as np

    weight = weight_of(adapter.unembed).detach()[:rows].cpu().float().numpy()
    return hashlib.sha256(str.encode(np.array_str(weight, precision=1))).hexdigest()


def residual_width(lm: LoadedModel) -> int:
    """The residual stream's width: the config's hidden size, else the embeddings' width."""
    width = getattr(text_config(lm.model.config), "hidden_size", None)
    return (
        int(width)
        if isinstance(width, int)
        else int(weight_of(lm.model.get_input_embeddings()).shape[-1])
    )


def check_finite(lens: TunedLens, what: str) -> None:
    """One error when any translator weight is inf or NaN (a diverged training, a damaged
    file): such a lens decodes every state to the same token without a word."""
    bad = [
        name for name, p in lens.translators.named_parameters() if not bool(torch.isfinite(p).all())
    ]
    if bad:
        layers = sorted({int(name.split(".")[0]) for name in bad})
        raise TokenprobeError(
            f"{what} has weights that are not finite (inf or NaN) in the translators of layers "
            f"{', '.join(map(str, layers[:8]))}{' ...' if len(layers) > 8 else ''}: train it again with a lower `lr`"
        )


def check_fits(n_blocks: int, width: int, lm: LoadedModel, what: str) -> None:
    """One error when a lens of `n_blocks` translators of `width` was trained for another model
    than `lm`: which of blocks, width differ (`what`: the lens, as the error names it)."""
    adapter = lm.require_adapter()
    model_width = residual_width(lm)
    if n_blocks != adapter.n_blocks:
        raise TokenprobeError(
            f"{what} was trained for a model with {n_blocks} blocks; {lm.name} has "
            f"{adapter.n_blocks}: train one for this model with tune-lens"
        )
    if width != model_width:
        raise TokenprobeError(
            f"{what} was trained for a model of hidden size {width}; {lm.name}'s is "
            f"{model_width}: train one for this model with tune-lens"
        )


def _shapes(translator: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """A translator's weight shape and bias shape (None: no bias); its bias, as an
    `nn.Linear`'s, is a parameter or None."""
    bias = cast("torch.Tensor | None", translator.bias)
    return tuple(weight_of(translator).shape), None if bias is None else tuple(bias.shape)


def check_lens(lens: Any, lm: LoadedModel, what: str) -> None:
    """The one check of a lens before it decodes `lm`'s layers, loaded or built in memory: a
    `TunedLens` with one square translator of the model's width per block, all finite."""
    if not isinstance(lens, TunedLens):
        raise TokenprobeError(
            f"{what} is of type {type(lens).__name__}: give a tuned lens folder or a "
            "tokenprobe.tuned.TunedLens"
        )
    square = ((lens.width, lens.width), (lens.width,))
    shapes = [_shapes(t) for t in lens.translators]
    odd = [i for i, shape in enumerate(shapes) if shape != square]
    if not shapes or len(shapes) != lens.n_blocks or odd:
        raise TokenprobeError(
            f"{what} holds {len(shapes)} translators for n_blocks {lens.n_blocks} of width "
            f"{lens.width}{f' (translator {odd[0]} is {shapes[odd[0]]})' if odd else ''}: build it "
            "with TunedLens(n_blocks, width), or read it with load_lens"
        )
    check_fits(lens.n_blocks, lens.width, lm, what)
    check_finite(lens, what)
