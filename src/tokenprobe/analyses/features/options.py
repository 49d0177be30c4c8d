"""features' settings, declared once: `FeaturesOptions` (the dictionary, what is kept and what
is scored) and `FeaturesFigure` (how many features the figures show); the command-line options
come from their fields."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import TokenprobeError
from ...sae import SaeSite
from ..base import Option, prompt_inputs, ray_options
from ..settings import PromptSettings, Settings, setting


@dataclass(frozen=True)
class FeaturesOptions(PromptSettings):
    """The sparse dictionary (`sae`, with `hookpoint` for a run folder of several and `sae_site`
    where its files do not say where it reads), how many features per position are kept
    (`top`), and with `target` (and `foil`) the score each feature's effect is measured on
    (chat and system: see `PromptSettings`)."""

    sae: str | None = setting(
        None,
        "the sparse autoencoder or transcoder: a SAELens folder (cfg.json + "
        "sae_weights.safetensors), a sparsify folder, a Gemma Scope params.npz (or its folder), "
        "a hub id owner/repo[/sub/folder], or builtin (the one shipped for the built-in model) "
        "(required)",
        metavar="DIR",
        group="dictionary",
    )
    hookpoint: str | None = setting(
        None,
        "which dictionary of a sparsify run folder that holds several (e.g. layers.12)",
        metavar="NAME",
        group="dictionary",
    )
    sae_site: str | None = setting(
        None,
        "where the dictionary reads, where its files do not say: 'resid L' (the residual "
        "stream after L blocks), 'mlp B', 'attn B' or 'mlp-in B' (block B's MLP input)",
        metavar="SITE",
        group="dictionary",
    )
    skip_first: int | None = setting(
        None,
        "leave out the first N positions of each text (no features, no effects, no "
        "splice): those the dictionary was not trained on (default: the dictionary's own, "
        "train-sae's --skip-first as its cfg.json records it, else 0)",
        minimum=0,
        metavar="N",
        group="dictionary",
    )
    top: int = setting(
        8,
        "features kept per position: the most active ones, and with --target also those with "
        "the largest activation x gradient (default {default})",
        minimum=1,
        maximum=1000,
        metavar="K",
        group="dictionary",
    )
    target: str | None = setting(
        None,
        "the next token whose log-probability each feature's effect is measured on: activation "
        "x gradient, and the exact change when the feature is removed",
        metavar="TEXT",
        group="input",
    )
    foil: str | None = setting(
        None,
        "with --target: measure the logit difference target - foil instead",
        metavar="TEXT",
        group="input",
    )
    ablate: bool = setting(
        True,
        "with --target, remove each kept feature at its position in a forward pass of its own "
        "(batched) for its exact effect; --no-ablate keeps only activation x gradient",
        flag="--no-ablate",
        action="store_true",
        invert=True,
        group="dictionary",
    )
    top_examples: int = setting(
        20,
        "with --data: the top contexts kept per feature (default {default})",
        minimum=1,
        maximum=1000,
        metavar="N",
        group="data",
    )
    context: int = setting(
        8,
        "with --data: tokens of each top context shown either side of the activating token "
        "(default {default})",
        minimum=0,
        maximum=256,
        metavar="W",
        group="data",
    )
    text_column: str = setting(
        "text", "the --data column of texts (default {default})", metavar="NAME", group="data"
    )
    limit: int | None = setting(
        None, "with --data: use only the first N texts", minimum=1, metavar="N", group="data"
    )
    chunk_texts: int = setting(64, cli=False, minimum=1)  # texts per checkpointed chunk
    batch_tokens: int = setting(2048, cli=False)

    def check(self) -> None:
        if self.sae is not None and not self.sae:
            raise TokenprobeError("`sae` is empty: give --sae DIR or a hub id")
        if self.sae_site is not None:
            SaeSite.parse(self.sae_site)
        if self.foil is not None and self.target is None:
            raise TokenprobeError("`foil` needs `target`: give --target TEXT as well")
        if self.foil is not None and self.foil == self.target:
            raise TokenprobeError(f"`foil` {self.foil!r} is `target`: give another foil")
        if self.target is not None and not self.target:
            raise TokenprobeError("`target` is empty: give a token such as ' Paris'")
        if self.batch_tokens < 1:
            raise TokenprobeError(f"`batch_tokens` must be at least 1, not {self.batch_tokens}")


@dataclass(frozen=True)
class FeaturesFigure(Settings):
    """How many features the heatmaps show (the most active, or those with the largest effect)."""

    role = "figure"

    show: int = setting(
        30,
        "features drawn in the heatmaps (default {default})",
        minimum=1,
        metavar="N",
        group="figure",
    )
    examples: int = setting(
        5,
        "with --data: top contexts per feature drawn token by token (default {default})",
        minimum=1,
        metavar="N",
        group="figure",
    )


OPTIONS = [
    *prompt_inputs(several=False),
    Option(
        None,
        "instead of a prompt, a data set of texts (.txt, .csv, .jsonl, .parquet, a folder, "
        "hf:NAME[:CONFIG][:SPLIT], sample:NAME): per feature its frequency, mean and largest "
        "activation and its top contexts",
        flag="--data",
        role="input",
        metavar="FILE",
        group="data",
    ),
    *FeaturesOptions.options(),
    *FeaturesFigure.options(),
    Option(
        "resume",  # named: a message about `resume` shows --resume
        "continue an interrupted --data run in --out (its finished texts are kept there)",
        role="input",
        action="store_true",
        group="data",
    ),
    *ray_options(),
]
