"""Decoders turn a layer's hidden state into logits over the vocabulary.

The logit lens decodes every layer the way the model decodes its last one (final norm,
output projection, unembedding, soft-cap). A per-layer translator (a tuned lens) plugs in as
another `Decoder`, without touching the lens's computation.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import torch

from ...errors import TokenprobeError
from ...model import Adapter, LoadedModel
from ...model.seq2seq import Seq2SeqAdapter


class Decoder(Protocol):
    """`decode(hidden, layer)`: (n, width) hidden states of layer `layer` (0 = embeddings) to
    (n, vocabulary) logits. `shared` says the map is the same for every layer, so rows of
    several layers may be decoded together (`layer` is then None)."""

    shared: bool

    def decode(self, hidden: torch.Tensor, layer: int | None) -> torch.Tensor: ...


class LogitDecoder:
    """The model's own head: final norm, projection, unembedding and soft-cap, for every layer
    (an encoder-decoder's: its decoder's final norm, output scale, head, bias and soft-cap)."""

    shared = True

    def __init__(self, adapter: Adapter | Seq2SeqAdapter) -> None:
        self.adapter = adapter

    def decode(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return self.adapter.logits(hidden)


def tuned_decoder(
    lm: LoadedModel, lens: str | os.PathLike[str] | Any, decoder: Decoder | None
) -> tuple[Decoder, dict[str, Any]]:
    """The decoder of a tuned lens (a folder in tokenprobe's or the tuned-lens package's
    format, or a loaded `tokenprobe.tuned.TunedLens`), and what meta.json says of it."""
    from ...tuned import TunedDecoder, TunedLens, load_lens

    if decoder is not None:
        raise TokenprobeError("give a `lens` or a `decoder`, not both")
    tuned = lens if isinstance(lens, TunedLens) else load_lens(lens, lm)
    info = {
        "kind": "tuned lens",
        "path": None if isinstance(lens, TunedLens) else str(lens),
        "format": tuned.info.get("format"),
        "trained_for": tuned.info.get("model") or tuned.info.get("model_path"),
        "training": {
            k: v for k, v in tuned.info.items() if k not in ("model", "model_path", "format")
        },
    }
    return TunedDecoder(tuned, lm.require_adapter()), info
