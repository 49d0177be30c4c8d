"""tune-lens: train a tuned lens (one affine translator per layer, Belrose et al. 2023) on a
text data set, written in tokenprobe's and the tuned-lens package's formats."""

from __future__ import annotations

from ..base import Analysis
from .cli import command
from .compute import tune_lens
from .options import OPTIONS, TuneLensOptions
from .result import TuneLensResult

__all__ = ["SPEC", "TuneLensOptions", "TuneLensResult", "tune_lens"]

SPEC = Analysis(
    name="tune_lens",
    command="tune-lens",
    run=tune_lens,
    result=TuneLensResult,
    help="train a tuned lens: one affine translator per layer, for lens --lens and lens-eval",
    description="Train one affine translator per layer (identity at the start) so that each layer, "
    "translated and decoded through the final norm and unembedding, matches the model's final "
    "distribution (KL), on --tokens tokens of --data packed into --seq-len sequences. SGD with "
    "Nesterov momentum and a linear decay, as the tuned-lens package trains. Writes the lens "
    "(tuned-lens.json + tuned-lens.safetensors, and the package's config.json + params.pt), "
    "tuned_lens.parquet (KL per step and layer), tuned_lens.png and meta.json; --resume goes on "
    "from the last checkpoint.",
    options=OPTIONS,
    cli=command,
    default_out="lenses/tuned",
    groups=["data", "training", "checkpoints and files"],
    oom_advice="lower --memory-mb, --batch or --seq-len",
)
