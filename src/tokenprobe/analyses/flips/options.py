"""The flip-rate options: the one source of their defaults' meaning, limits, flags and help."""

from __future__ import annotations

from ..base import Option, positive_int, ray_options
from .classifiers import DEFAULT_TEMPLATE
from .compute import GROUPS
from .views import RANKINGS

FIGURE = "perturbation and figure"

OPTIONS = [
    Option(
        None,
        "a data set (.csv, .jsonl, .parquet) or sample:emotion",
        flag="--data",
        role="input",
        group="data",
        required=True,
    ),
    Option(
        "texts",
        "column holding the texts (default: text)",
        flag="--text-column",
        role="input",
        group="data",
        default="text",
    ),
    Option(
        "gold",
        "column holding gold labels (default: label, when present)",
        flag="--label-column",
        role="input",
        group="data",
    ),
    Option(
        None,
        "use only the first N texts (at least 1)",
        flag="--limit",
        role="input",
        group="data",
        type=positive_int,
        metavar="N",
    ),
    Option(
        "labels",
        "at least two label names, or label=verbaliser pairs for a prompted classifier (default: "
        "the model's labels, or the labels found in --label-column)",
        role="input",
        group="classifier",
        nargs="+",
        metavar="LABEL",
    ),
    Option(
        "template",
        "prompted classifier template with {text} once (and optionally {labels}); default: "
        + repr(DEFAULT_TEMPLATE),
        role="input",
        group="classifier",
    ),
    Option(
        "chat",
        "render the template as a user turn of the chat template",
        role="input",
        group="classifier",
        action="store_true",
    ),
    Option(
        "reuse_prefix",
        "run the whole prompt for every input instead of reusing the cached prefix (slower; same result)",
        flag="--no-prefix-cache",
        role="input",
        group="classifier",
        action="store_true",
        invert=True,
    ),
    Option(
        "perturbation",
        "delete (default), mask (the mask or unk token), or filler WORD",
        flag="--perturb",
        role="input",
        group=FIGURE,
        nargs="+",
        default=["delete"],
        metavar="KIND",
    ),
    Option(
        "buckets",
        "relative position buckets, at least 1 (default {default})",
        group=FIGURE,
        type=positive_int,
        minimum=1,
    ),
    Option(
        "group",
        "group texts by the prediction on the unperturbed text (default) or by gold label",
        group=FIGURE,
        choices=list(GROUPS),
    ),
    Option(
        "top",
        "words per heatmap, at least 1 (default {default})",
        role="figure",
        group=FIGURE,
        type=positive_int,
        minimum=1,
    ),
    Option(
        "rank",
        "support: Wilson lower bound of the word's flip rate (default); rate: flip rate of words with "
        "at least --min-count occurrences; frequency: occurrences",
        role="figure",
        group=FIGURE,
        choices=list(RANKINGS),
    ),
    Option(
        "min_count",
        "cells with fewer occurrences are masked; at least 1 (default {default})",
        role="figure",
        group=FIGURE,
        type=positive_int,
        minimum=1,
    ),
    Option(
        "resume",
        "continue an interrupted run in --out (its finished texts are kept there)",
        group=FIGURE,
        action="store_true",
    ),
    *ray_options(),
]
