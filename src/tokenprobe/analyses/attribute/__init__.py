"""Attribution: which input features (prompt tokens or spans) drive each output token, by
ablation, Shapley values, occlusion or gradients (saliency, input x gradient, integrated
gradients); on an encoder-decoder, source tokens and earlier decoder inputs (`seq2seq.py`)."""

from __future__ import annotations

from ..base import Analysis
from .cli import command, demo
from .compute import attribute
from .features import AttributionInput, Feature, build_features, prepare_attribution
from .gradients import GRADIENT_METHODS, IG_BASELINES
from .methods import METHODS
from .options import OPTIONS, AttributionFigure, AttributionOptions
from .problem import BASELINES, PARTIAL, SCORES, Problem, ScoreStore
from .result import AttributionResult

__all__ = [
    "BASELINES",
    "GRADIENT_METHODS",
    "IG_BASELINES",
    "METHODS",
    "PARTIAL",
    "SCORES",
    "SPEC",
    "AttributionFigure",
    "AttributionInput",
    "AttributionOptions",
    "AttributionResult",
    "Feature",
    "Problem",
    "ScoreStore",
    "attribute",
    "build_features",
    "prepare_attribution",
]

SPEC = Analysis(
    name="attribute",
    command="attribute",
    run=attribute,
    result=AttributionResult,
    help="attribution: which input tokens or spans drive each output token",
    description="Attributes each target row's score (its log-probability under teacher forcing) to input "
    "features: the prompt's tokens, or the --span substrings. The target is --target (given) or the "
    "model's greedy continuation (--generate N). Methods: ablation and occlusion give f(x) - f(x without "
    "the feature); shapley averages marginal contributions over sampled permutations (antithetic pairs; "
    "exact enumeration when --samples >= features!); saliency, input_x_gradient and integrated_gradients "
    "act on the prompt's embedding-layer output and are summed over a feature's tokens. On an "
    "encoder-decoder the prompt is the source and each target token is attributed to every source "
    "token and every earlier decoder input (start and --target-lang tokens included; the table's "
    "side column says which). Writes attribute.parquet, attribute.png and meta.json.",
    options=OPTIONS,
    cli=command,
    demo=demo,
    default_out="out/attr",
    dtype_auto="float32 everywhere (bfloat16 rounding is a sizeable part of small attributions)",
    dtype=lambda d: "float32" if d == "auto" else d,
    # the gradient methods keep every block's activations for the backward pass
    gradients=lambda args: getattr(args, "method", "") in GRADIENT_METHODS,
    oom_advice="lower --samples (shapley)",
    demo_help="attribution (a few-shot arithmetic prompt)",
    seq2seq=True,
)
