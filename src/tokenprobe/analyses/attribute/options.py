"""Attribution's settings, declared once: `AttributionOptions` (what `attribute` and
`attribute_rows` compute) and `AttributionFigure` (how its heatmap is drawn); the command
line's options come from their fields."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ...errors import TokenprobeError
from ..base import Option, prompt_inputs, ray_options, rows_options
from ..settings import PromptSettings, Settings, TargetLangSettings, setting
from .gradients import IG_BASELINES
from .methods import DEFAULT_METHOD, METHODS
from .problem import BASELINES, DEFAULT_BASELINE, SCORES


def _listing(names: Iterable[str], default: str) -> str:
    """The names, the default marked: "a (default), b, c"."""
    return ", ".join(f"{n} (default)" if n == default else n for n in names)


@dataclass(frozen=True)
class AttributionOptions(PromptSettings, TargetLangSettings):
    """What `attribute` attributes and how (chat and system: see `PromptSettings`). The
    target is `target` or `generate` N tokens of the model's own (`attribute_rows` may take
    each row's target instead)."""

    target: str | None = setting(
        None, "the continuation to attribute (scored by teacher forcing)", group="input"
    )
    generate: int | None = setting(
        None,
        "attribute the model's greedy continuation of N tokens",
        minimum=1,
        metavar="N",
        group="input",
    )
    features: tuple[str, ...] | list[str] | None = setting(
        None,
        "a substring of the prompt to use as one feature (repeatable; default: every prompt token)",
        flag="--span",
        action="append",
        metavar="TEXT",
        group="input",
    )
    target_spans: tuple[str, ...] | list[str] | None = setting(
        None,
        "a substring of the target to use as one row (repeatable; default: every target token)",
        flag="--target-span",
        action="append",
        metavar="TEXT",
        group="input",
    )
    # the choice is checked in `check` (with the message that lists the methods), not by
    # argparse: --help shows NAME and the list, as before
    method: str = setting(
        DEFAULT_METHOD, _listing(METHODS, DEFAULT_METHOD), metavar="NAME", group="method"
    )
    baseline: str = setting(
        DEFAULT_BASELINE,
        f"what replaces an ablated feature: {_listing(BASELINES, DEFAULT_BASELINE)}, or any text",
        group="method",
    )
    samples: int = setting(
        64, "shapley: permutations sampled (default {default})", minimum=1, group="method"
    )
    seed: int = setting(0, "shapley: random seed (default {default})", group="method")
    window: int = setting(
        3, "occlusion: window in tokens (default {default})", minimum=1, group="method"
    )
    stride: int = setting(
        1, "occlusion: stride in tokens (default {default})", minimum=1, group="method"
    )
    steps: int = setting(
        32,
        "integrated_gradients: Gauss-Legendre steps (default {default})",
        minimum=1,
        group="method",
    )
    ig_baseline: str = setting(
        "unk",
        "integrated_gradients: embedding the path starts from (default {default}; zero rarely "
        "converges in RMSNorm models)",
        choices=IG_BASELINES,
        group="method",
    )
    score: str = setting(
        "logprob",
        "a row's score: log-probability (default) or probability",
        choices=SCORES,
        group="method",
    )
    foil: str | None = setting(
        None,
        "contrastive: a row's score becomes log p(target) - log p(TEXT) at the row's first "
        "position (inseq's contrastive attribution; a foil of several tokens counts its first)",
        metavar="TEXT",
        group="method",
    )
    reuse_prefix: bool = setting(
        True,
        "ablation, occlusion, shapley: run every perturbed prompt whole instead of continuing "
        "it from the unperturbed prompt's key/value cache (slower; the same scores)",
        flag="--no-prefix-cache",
        action="store_true",
        invert=True,
        group="method",
    )
    # a library-only setting has no `Option`, so its limit is checked in `check` (the
    # command line's --batch-tokens is range-checked as it is read)
    batch_tokens: int = setting(4096, cli=False)

    def check(self) -> None:
        if self.method not in METHODS:
            raise TokenprobeError(
                f"unknown method {self.method!r}: use one of {', '.join(METHODS)}"
            )
        if self.target is not None and self.generate is not None:
            raise TokenprobeError(
                "give a `target` to score or `generate` N to attribute the model's own answer, "
                "not both"
            )
        if self.batch_tokens < 1:
            raise TokenprobeError(f"`batch_tokens` must be at least 1, not {self.batch_tokens}")
        if not self.baseline:
            raise TokenprobeError(
                f"`baseline` must be one of {', '.join(BASELINES)} or a replacement string"
            )


@dataclass(frozen=True)
class AttributionFigure(Settings):
    """How the attribution heatmap is drawn (see `views.attribution_view`): its colour map,
    the values written in the cells (`annotate`; default: up to 1600 cells and 60 features)
    and its title."""

    role = "figure"

    cmap: str = setting("RdYlGn", cli=False)
    annotate: bool | None = setting(None, cli=False)
    title: str | None = setting(None, cli=False)


OPTIONS = [
    *prompt_inputs(several=False),
    *AttributionOptions.options("chat", "system"),
    *rows_options(),
    *ray_options(),
    *AttributionOptions.options(
        "target",
        "generate",
        "features",
        "target_spans",
        "method",
        "baseline",
        "samples",
        "seed",
        "window",
        "stride",
        "steps",
        "ig_baseline",
        "score",
        "foil",
        "target_lang",
        "reuse_prefix",
    ),
    # not a setting (`attribute`'s own parameter); named, so that a message about `resume`
    # shows --resume on the command line
    Option(
        "resume",
        "continue an interrupted run in --out (its scored inputs and steps are kept there)",
        role="input",
        action="store_true",
        group="method",
    ),
]
