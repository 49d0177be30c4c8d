"""Sparse features per token: a sparse autoencoder's or transcoder's latents on a prompt, the
reconstruction error per position, and with a target each kept feature's effect (activation x
gradient, and the exact change when it is removed)."""

from __future__ import annotations

from ..base import Analysis
from .cli import command, demo, demo_files
from .compute import features
from .contexts import FeatureContextsResult
from .dataset import feature_contexts
from .options import OPTIONS, FeaturesFigure, FeaturesOptions
from .result import FeaturesResult

__all__ = [
    "SPEC",
    "FeatureContextsResult",
    "FeaturesFigure",
    "FeaturesOptions",
    "FeaturesResult",
    "feature_contexts",
    "features",
]

SPEC = Analysis(
    name="features",
    command="features",
    run=features,
    result=FeaturesResult,
    help="sparse features: a sparse autoencoder's or transcoder's latents per token",
    description="One forward pass of --prompt records the state --sae reads (a SAELens, sparsify "
    "or Gemma Scope dictionary; its site is checked against the model); its latents give the "
    "--top most active features per position and the reconstruction error (|state - "
    "reconstruction| / |state|, and the next-token KL with every position reconstructed). With "
    "--target (and --foil): each feature's activation x gradient of log p(target) (or target - "
    "foil) and, unless --no-ablate, its exact effect: the score lost when the feature is removed "
    "at its position (its decoder row times its activation taken from the state, the "
    "reconstruction error kept), batched, one row per (position, feature). Writes "
    "features.parquet (position, token, feature, activation, rank, top, attribution, ablation), "
    "features_positions.parquet (l0, norm, error_ratio, kl, splice_effect per position), "
    "meta.json, features.png, features_effects.png and features_error.png. With --data instead "
    "of a prompt (resumable with --resume, on Ray with --ray): the texts in right-padded "
    "batches, the forward stopped at the dictionary's site, and per feature the tokens it fired "
    "on, its frequency, mean activation when active, largest activation and its --top-examples "
    "top contexts (--context tokens each side): feature_contexts.parquet, "
    "feature_contexts_top.parquet (feature, rank, activation, text, position, left, token, "
    "right and the window's tokens and activations), meta.json, feature_contexts.png and "
    "feature_contexts_tokens.png.",
    options=OPTIONS,
    cli=command,
    demo=demo,
    demo_files=demo_files,
    demo_help="sparse features (the built-in sparse autoencoder on the Eiffel Tower prompt, each "
    "feature's effect on ' Paris' minus ' Rome', and its top contexts over 200 sample texts)",
    batch_tokens=False,
    groups=["input", "dictionary", "data", "figure", "Ray (a data set over a cluster)"],
    oom_advice="give a shorter prompt, a smaller --top or (with --data) fewer --top-examples",
)
