"""Attribution's options: the one source of their flags, help, choices and defaults' meaning
(the defaults themselves are `attribute`'s)."""

from __future__ import annotations

from collections.abc import Iterable

from ..base import Option, prompt_options, ray_options, rows_options
from .gradients import IG_BASELINES
from .methods import DEFAULT_METHOD, METHODS
from .problem import BASELINES, DEFAULT_BASELINE, SCORES


def _listing(names: Iterable[str], default: str) -> str:
    """The names, the default marked: "a (default), b, c"."""
    return ", ".join(f"{n} (default)" if n == default else n for n in names)


OPTIONS = [
    *prompt_options(several=False),
    *rows_options(),
    *ray_options(),
    Option("target", "the continuation to attribute (scored by teacher forcing)", group="input"),
    Option(
        "generate",
        "attribute the model's greedy continuation of N tokens",
        type=int,
        metavar="N",
        group="input",
    ),
    Option(
        "features",
        "a substring of the prompt to use as one feature (repeatable; default: every prompt token)",
        flag="--span",
        action="append",
        metavar="TEXT",
        group="input",
    ),
    Option(
        "target_spans",
        "a substring of the target to use as one row (repeatable; default: every target token)",
        flag="--target-span",
        action="append",
        metavar="TEXT",
        group="input",
    ),
    Option("method", _listing(METHODS, DEFAULT_METHOD), metavar="NAME", group="method"),
    Option(
        "baseline",
        f"what replaces an ablated feature: {_listing(BASELINES, DEFAULT_BASELINE)}, or any text",
        group="method",
    ),
    Option(
        "samples", "shapley: permutations sampled (default {default})", type=int, group="method"
    ),
    Option("seed", "shapley: random seed (default {default})", type=int, group="method"),
    Option("window", "occlusion: window in tokens (default {default})", type=int, group="method"),
    Option("stride", "occlusion: stride in tokens (default {default})", type=int, group="method"),
    Option(
        "steps",
        "integrated_gradients: Gauss-Legendre steps (default {default})",
        type=int,
        group="method",
    ),
    Option(
        "ig_baseline",
        "integrated_gradients: embedding the path starts from (default {default}; zero rarely "
        "converges in RMSNorm models)",
        choices=list(IG_BASELINES),
        group="method",
    ),
    Option(
        "score",
        "a row's score: log-probability (default) or probability",
        choices=list(SCORES),
        group="method",
    ),
    Option(
        "foil",
        "contrastive: a row's score becomes log p(target) - log p(TEXT) at the row's first "
        "position (inseq's contrastive attribution; a foil of several tokens counts its first)",
        metavar="TEXT",
        group="method",
    ),
    Option(
        "resume",
        "continue an interrupted run in --out (its scored inputs and steps are kept there)",
        action="store_true",
        group="method",
    ),
]
