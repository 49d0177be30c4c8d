"""The causal trace's settings, declared once: `TraceOptions` (what `causal_trace` computes)
and `TraceFigure` (how its heatmaps are drawn); the command-line options come from their
fields, and building either checks it (types, choices, limits, and the rules between them)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from ...errors import TokenprobeError
from ..base import Option, finite_float, prompt_inputs
from ..settings import DecoderTextSettings, PromptSettings, Settings, setting

# residual stream, attention output, MLP output; one query head's output (before the output
# projection), one key or value head (the output of the separate key or value projection);
# cross: an encoder-decoder's cross-attention output in each decoder block
COMPONENTS = ("resid", "attn", "mlp", "head", "head-k", "head-v", "cross")
CAUSAL_ONLY = ("attn", "mlp", "head", "head-k", "head-v")  # not traced in an encoder-decoder
# an encoder-decoder's grids, in the order traced and shown; the table's `stack` and
# `component` of each
GRIDS = ("encoder", "decoder", "cross")
STACKS = {"encoder": "encoder", "decoder": "decoder", "cross": "cross-attention"}
COMPONENT_OF = {"encoder": "resid", "decoder": "resid", "cross": "cross"}
HEAD_COMPONENTS = ("head", "head-k", "head-v")
POSITIONS = ("each", "all")  # a cell per position, or every position of a site at once
CORRUPTIONS = ("prompt", "noise")
DIRECTIONS = ("restore", "corrupt")  # clean into corrupted (denoising), corrupted into clean
METRICS = ("prob", "logprob", "diff")
METHODS = ("exact", "estimate", "both")
SHOW = ("score", "normalised")
NOISE_SETTINGS = ("noise", "samples", "seed")  # what only noise corruption uses


def positive_float(text: str) -> float:
    """argparse type for a noise scale: a number above 0."""
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {value:g}")
    return value


@dataclass(frozen=True)
class TraceOptions(PromptSettings, DecoderTextSettings):
    """What `causal_trace` corrupts, restores and scores (chat and system: see
    `PromptSettings`; an encoder-decoder's target_lang and decoder_text: see
    `DecoderTextSettings`). `corruption`, `scored_by` and `traced` are the settings whose
    defaults depend on others, resolved."""

    target: str | None = setting(
        None, "the next token to score, e.g. ' Paris' (required)", metavar="TEXT", group="input"
    )
    foil: str | None = setting(
        None,
        "a contrasting token: the metric becomes the logit difference target - foil",
        metavar="TEXT",
        group="input",
    )
    corrupted: str | None = setting(
        None,
        "the corrupted prompt: the same number of tokens as --prompt, e.g. another country",
        metavar="TEXT",
        group="corruption",
    )
    corrupt: str | None = setting(
        None,
        "how to corrupt: prompt (--corrupted) or noise (Gaussian noise on --subject's input "
        "embeddings); default: prompt with --corrupted, else noise",
        choices=list(CORRUPTIONS),
        group="corruption",
    )
    subject: str | None = setting(
        None,
        "the prompt's subject, e.g. 'Eiffel Tower': its tokens get the noise and are marked in "
        "the figures",
        metavar="TEXT",
        group="corruption",
    )
    noise: float = setting(
        3.0,
        "noise scale, a multiple of the embeddings' standard deviation (default {default})",
        type=positive_float,
        metavar="X",
        group="corruption",
    )
    samples: int = setting(
        10,
        "noise draws averaged (default {default}); they share the batches",
        minimum=1,
        group="corruption",
    )
    seed: int = setting(0, "seed of the noise (default {default})", group="corruption")
    components: tuple[str, ...] | list[str] | None = setting(
        None,
        "what to restore: resid (residual stream: embeddings and each block's output), attn "
        "(each block's attention output), mlp (each block's MLP output), head (each query "
        "head's output before the output projection), head-k / head-v (each key / value head: "
        "the separate key / value projection's output), cross (encoder-decoder models: each "
        "decoder block's cross-attention output); several allowed (default resid; "
        "encoder-decoder models: resid, the encoder's and the decoder's, and cross)",
        flag="--component",
        nargs="+",
        action="extend",
        choices=list(COMPONENTS),
        metavar="NAME",
        group="trace",
    )
    window: int = setting(
        1,
        "restore W consecutive layers around each layer at once (ROME uses 10 for attn and mlp; "
        "default {default})",
        minimum=1,
        metavar="W",
        group="trace",
    )
    positions: str = setting(
        "each",
        "each: a cell per (row, position) (default); all: every position of a row restored "
        "at once, one cell per row (with --component head: a layer x head map)",
        choices=list(POSITIONS),
        group="trace",
    )
    direction: str = setting(
        "restore",
        "restore: clean states into the corrupted run (default); corrupt: corrupted states into "
        "the clean run",
        choices=list(DIRECTIONS),
        group="trace",
    )
    metric: str | None = setting(
        None,
        "each cell's score: prob, logprob of the target, or diff (logit target - foil); default "
        "diff with --foil, else prob",
        choices=list(METRICS),
        group="trace",
    )
    method: str = setting(
        "exact",
        "exact (one patched run per cell, batched; default), estimate (attribution patching: a "
        "first-order estimate from one forward and backward), or both (exact, plus the estimate "
        "and its correlation with it)",
        choices=list(METHODS),
        group="trace",
    )
    batch_tokens: int = setting(2048, cli=False)

    @property
    def corruption(self) -> str | None:
        """`corrupt`, or by default prompt with `corrupted`, noise with `subject`."""
        if self.corrupt is not None:
            return self.corrupt
        if self.corrupted is not None:
            return "prompt"
        return "noise" if self.subject is not None else None

    @property
    def scored_by(self) -> str:
        """`metric`, or by default diff with a `foil`, else prob."""
        return self.metric or ("diff" if self.foil is not None else "prob")

    @property
    def traced(self) -> list[str]:
        """The components asked for, each once, in their order (resid when none is given)."""
        given = ["resid"] if self.components is None else self.components
        return list(dict.fromkeys([given] if isinstance(given, str) else given))

    @property
    def noise_changed(self) -> list[str]:
        """The noise settings given other than their defaults (ignored with a prompt)."""
        defaults = {f.name: f.default for f in fields(self)}
        return [k for k in NOISE_SETTINGS if getattr(self, k) != defaults[k]]

    def check(self) -> None:
        """Refuse contradictory or missing settings in one line each, before the model runs."""
        if not self.target:
            raise TokenprobeError("`target` is required: the next token to score, e.g. ' Paris'")
        if self.foil is not None and not self.foil:
            raise TokenprobeError("`foil` is empty: give a token such as ' London'")
        self._check_corruption()
        if not self.noise > 0:
            raise TokenprobeError(f"`noise` must be above 0, not {self.noise:g}")
        if not self.traced:
            raise TokenprobeError(
                f"`components` is empty: give one or more of {', '.join(COMPONENTS)}"
            )
        if self.scored_by == "diff" and self.foil is None:
            raise TokenprobeError(
                "`metric` diff is the logit difference target - foil: give `foil` TEXT"
            )
        if self.scored_by != "diff" and self.foil is not None:
            raise TokenprobeError(
                f"`foil` is scored only by `metric` diff, not {self.scored_by}: drop `metric` "
                "or `foil`"
            )
        heads = [c for c in self.traced if c in HEAD_COMPONENTS]
        if heads and self.window > 1:
            raise TokenprobeError(
                f"`window` {self.window} restores consecutive layers of a block's output, not of "
                f"one head: give `window` 1 with `components` {', '.join(heads)}"
            )
        if self.batch_tokens < 1:
            raise TokenprobeError(f"`batch_tokens` must be at least 1, not {self.batch_tokens}")

    def _check_corruption(self) -> None:
        """A corrupted prompt or noise on a subject: one of them, and what it needs."""
        corrupt = self.corruption
        if corrupt is None:
            raise TokenprobeError(
                "nothing to corrupt: give `corrupted` TEXT (a prompt of the same token length) "
                "or `corrupt` noise with `subject` TEXT (the span whose embeddings get the noise)"
            )
        if corrupt == "prompt" and self.corrupted is None:
            raise TokenprobeError(
                "`corrupt` prompt needs `corrupted` TEXT, a prompt of the same token length"
            )
        if corrupt == "noise" and self.subject is None:
            raise TokenprobeError(
                "`corrupt` noise needs `subject` TEXT: the span whose embeddings get the noise"
            )
        if corrupt == "noise" and self.corrupted is not None:
            raise TokenprobeError("give `corrupted` TEXT or `corrupt` noise, not both")


@dataclass(frozen=True)
class TraceFigure(Settings):
    """How the trace's heatmaps are drawn (see `views.trace_view`): `show` the score or the
    normalised score (0 = corrupted, 1 = clean), values written in the cells when `annotate`
    (default: up to 24 positions), and the `title` (default: what was restored)."""

    role = "figure"

    show: str = setting(
        "score",
        "what the figures draw: score (the metric, default) or normalised (0 = corrupted, "
        "1 = clean)",
        choices=list(SHOW),
        group="figure",
    )
    annotate: bool | None = setting(None, cli=False)
    title: str | None = setting(None, cli=False)


OPTIONS = [
    *prompt_inputs(several=False),
    *TraceOptions.options(),
    Option(  # `causal_trace`'s `resume`, not a setting: named so that messages say --resume
        "resume",
        "continue an interrupted run in --out (its finished cells are kept there)",
        flag="--resume",
        role="input",
        action="store_true",
        group="trace",
    ),
    *TraceFigure.options(),
]
