"""The causal trace's options: the one source of their flags, help, choices and limits (the
defaults themselves are `causal_trace`'s)."""

from __future__ import annotations

from ..base import Option, finite_float, positive_int, prompt_options

COMPONENTS = ("resid", "attn", "mlp")  # residual stream, attention output, MLP output
CORRUPTIONS = ("prompt", "noise")
DIRECTIONS = ("restore", "corrupt")  # clean into corrupted (denoising), corrupted into clean
METRICS = ("prob", "logprob", "diff")
METHODS = ("exact", "estimate", "both")
SHOW = ("score", "normalised")


def positive_float(text: str) -> float:
    """argparse type for a noise scale: a number above 0."""
    import argparse

    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {value:g}")
    return value


OPTIONS = [
    *prompt_options(several=False),
    Option(
        "target", "the next token to score, e.g. ' Paris' (required)", metavar="TEXT", group="input"
    ),
    Option(
        "foil",
        "a contrasting token: the metric becomes the logit difference target - foil",
        metavar="TEXT",
        group="input",
    ),
    Option(
        "corrupted",
        "the corrupted prompt: the same number of tokens as --prompt, e.g. another country",
        metavar="TEXT",
        group="corruption",
    ),
    Option(
        "corrupt",
        "how to corrupt: prompt (--corrupted) or noise (Gaussian noise on --subject's input "
        "embeddings); default: prompt with --corrupted, else noise",
        choices=list(CORRUPTIONS),
        group="corruption",
    ),
    Option(
        "subject",
        "the prompt's subject, e.g. 'Eiffel Tower': its tokens get the noise and are marked in the figures",
        metavar="TEXT",
        group="corruption",
    ),
    Option(
        "noise",
        "noise scale, a multiple of the embeddings' standard deviation (default {default})",
        type=positive_float,
        metavar="X",
        group="corruption",
    ),
    Option(
        "samples",
        "noise draws averaged (default {default}); they share the batches",
        type=positive_int,
        minimum=1,
        group="corruption",
    ),
    Option("seed", "seed of the noise (default {default})", type=int, group="corruption"),
    Option(
        "components",
        "what to restore: resid (residual stream: embeddings and each block's output), attn "
        "(each block's attention output), mlp (each block's MLP output); several allowed "
        "(default resid)",
        flag="--component",
        nargs="+",
        action="extend",
        choices=list(COMPONENTS),
        metavar="NAME",
        group="trace",
    ),
    Option(
        "window",
        "restore W consecutive layers around each layer at once (ROME uses 10 for attn and mlp; "
        "default {default})",
        type=positive_int,
        minimum=1,
        metavar="W",
        group="trace",
    ),
    Option(
        "direction",
        "restore: clean states into the corrupted run (default); corrupt: corrupted states into "
        "the clean run",
        choices=list(DIRECTIONS),
        group="trace",
    ),
    Option(
        "metric",
        "each cell's score: prob, logprob of the target, or diff (logit target - foil); default "
        "diff with --foil, else prob",
        choices=list(METRICS),
        group="trace",
    ),
    Option(
        "method",
        "exact (one patched run per cell, batched; default), estimate (attribution patching: a "
        "first-order estimate from one forward and backward), or both (exact, plus the estimate "
        "and its correlation with it)",
        choices=list(METHODS),
        group="trace",
    ),
    Option(
        "resume",
        "continue an interrupted run in --out (its finished cells are kept there)",
        action="store_true",
        group="trace",
    ),
    Option(
        "show",
        "what the figures draw: score (the metric, default) or normalised (0 = corrupted, 1 = clean)",
        role="figure",
        choices=list(SHOW),
        group="figure",
    ),
]
