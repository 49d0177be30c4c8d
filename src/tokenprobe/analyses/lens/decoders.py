"""Decoders turn a layer's hidden state into logits over the vocabulary.

The logit lens decodes every layer the way the model decodes its last one (final norm,
output projection, unembedding, soft-cap). A per-layer translator (a tuned lens) plugs in as
another `Decoder`, without touching the lens's computation.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ...model import Adapter


class Decoder(Protocol):
    """`decode(hidden, layer)`: (n, width) hidden states of layer `layer` (0 = embeddings) to
    (n, vocabulary) logits. `shared` says the map is the same for every layer, so rows of
    several layers may be decoded together (`layer` is then None)."""

    shared: bool

    def decode(self, hidden: torch.Tensor, layer: int | None) -> torch.Tensor: ...


class LogitDecoder:
    """The model's own head: final norm, projection, unembedding and soft-cap, for every layer."""

    shared = True

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    def decode(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return self.adapter.logits(hidden)
