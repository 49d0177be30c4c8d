"""train-sae: train a TopK sparse autoencoder on one site of a model over a text data set,
written as a SAELens folder that `features --sae` and sae-lens read."""

from __future__ import annotations

from ..base import Analysis
from .cli import command
from .compute import train_sae
from .options import OPTIONS, TrainSaeOptions
from .result import TrainSaeResult

__all__ = ["SPEC", "TrainSaeOptions", "TrainSaeResult", "train_sae"]

SPEC = Analysis(
    name="train_sae",
    command="train-sae",
    run=train_sae,
    result=TrainSaeResult,
    help="train a TopK sparse autoencoder on a layer, for features --sae",
    description="Train a TopK sparse autoencoder (Gao et al. 2024, as sparsify trains it: Adam, "
    "unit-norm decoder rows, AuxK loss for dead latents) on the residual stream at --layer (or "
    "--site), with the states streamed from the model over --tokens tokens of --data (the "
    "forward stops at the site; nothing is stored). Then measures it on held-out text: FVE, "
    "L0, dead latents and the cross-entropy loss recovered with the reconstruction spliced in "
    "(against zero ablation). Writes the SAE as a SAELens folder (cfg.json + "
    "sae_weights.safetensors), train_sae.parquet (one row per step), train_sae.png and "
    "meta.json; --resume goes on from the last checkpoint.",
    options=OPTIONS,
    cli=command,
    default_out="saes/sae",
    batch_tokens=False,
    groups=["site", "data", "training", "checkpoints and files"],
    oom_advice="lower --batch, --seq-len or --latents",
)
