"""The flip-rate settings, declared once: `FlipOptions` (what `flip_rates` computes) and
`FlipFigure` (how each class's heatmap is drawn); the command-line options come from their
fields. The classifier's flags (--labels, --template, ...) build the classifier object."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import TokenprobeError
from ..base import Option, positive_int, ray_options
from ..settings import Settings, setting
from .classifiers import DEFAULT_TEMPLATE
from .words import PERTURBATIONS

FIGURE = "perturbation and figure"
GROUPS = ("predicted", "gold")  # texts grouped by the prediction or by the gold label
RANKINGS = ("support", "rate", "frequency")  # how a class's words are ranked for its heatmap


@dataclass(frozen=True)
class FlipOptions(Settings):
    """What `flip_rates` perturbs, and how it buckets and groups the flips. `perturbation` and
    `filler` come from --perturb KIND [WORD] on the command line."""

    perturbation: str = setting("delete", cli=False)  # one of PERTURBATIONS: `check`
    filler: str | None = setting(None, cli=False)  # the word put in place (perturbation filler)
    buckets: int = setting(
        10, "relative position buckets, at least 1 (default {default})", minimum=1, group=FIGURE
    )
    group: str = setting(
        "predicted",
        "group texts by the prediction on the unperturbed text (default) or by gold label",
        choices=GROUPS,
        group=FIGURE,
    )
    # library only (the command line's --batch-tokens fills `batch_tokens`; a chunk is also
    # one Ray task)
    batch_tokens: int = setting(4096, cli=False, minimum=1)  # padded tokens per forward pass
    chunk_texts: int = setting(32, cli=False, minimum=1)  # texts per checkpointed chunk

    def check(self) -> None:
        if self.perturbation not in PERTURBATIONS:
            raise TokenprobeError(
                f"unknown `perturbation` {self.perturbation!r}: use {', '.join(PERTURBATIONS)}"
            )
        if self.perturbation == "filler" and not (self.filler or "").strip():
            raise TokenprobeError(
                "`perturbation` filler needs a word: give `filler`, the word put in place of each word"
            )


@dataclass(frozen=True)
class FlipFigure(Settings):
    """How each class's (word x bucket) heatmap is drawn (see `views.flip_view`)."""

    role = "figure"

    top: int = setting(
        40, "words per heatmap, at least 1 (default {default})", minimum=1, group=FIGURE
    )
    rank: str = setting(
        "support",
        "support: Wilson lower bound of the word's flip rate (default); rate: flip rate of words with "
        "at least --min-count occurrences; frequency: occurrences",
        choices=RANKINGS,
        group=FIGURE,
    )
    min_count: int = setting(
        3,
        "cells with fewer occurrences are masked; at least 1 (default {default})",
        minimum=1,
        group=FIGURE,
    )
    cmap: str = setting("viridis", cli=False)
    title: str | None = setting(None, cli=False)


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
    Option(  # `perturbation` and `filler` of FlipOptions, read by cli.py
        "perturbation",
        "delete (default), mask (the mask or unk token), or filler WORD",
        flag="--perturb",
        role="input",
        group=FIGURE,
        nargs="+",
        default=["delete"],
        metavar="KIND",
    ),
    *FlipOptions.options("buckets", "group"),
    *FlipFigure.options("top", "rank", "min_count"),
    Option(
        "resume",  # named: a message about `resume` shows --resume
        "continue an interrupted run in --out (its finished texts are kept there)",
        role="input",
        group=FIGURE,
        action="store_true",
    ),
    *ray_options(),
]
