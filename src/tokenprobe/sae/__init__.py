"""Sparse dictionaries of a model's states (sparse autoencoders and transcoders), shared by the
commands that use and train them: the dictionary and its activation functions (`dictionary`)
and the formats it is read from (`formats`)."""

from __future__ import annotations

from .dictionary import ACTIVATIONS, KINDS, Dictionary, SaeSite
from .formats import load_sae

__all__ = ["ACTIVATIONS", "KINDS", "Dictionary", "SaeSite", "load_sae"]
