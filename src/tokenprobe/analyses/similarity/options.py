"""Past similarity's settings, declared once: `SimilarityOptions` (what `past_similarity`
computes) and `SimilarityFigure` (how its heatmap is drawn); the command-line options come
from their fields."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import TokenprobeError
from ...text import DEFAULT_MARKER
from ..base import Option, ray_options
from ..settings import DecoderTextSettings, Settings, setting

DIRECTIONS = ("past", "future")  # the tokens compared: before the marker, or after it
SIDES = ("auto", "source", "decoder")  # an encoder-decoder's stream the marker is compared in


@dataclass(frozen=True)
class SimilarityOptions(DecoderTextSettings):
    """What `past_similarity` compares: which marker, which of its occurrences, how far (an
    encoder-decoder's `side`, `target_lang` and `decoder_text`: see `DecoderTextSettings`)."""

    marker: str = setting(DEFAULT_MARKER, "the marker token (default {default})", group="input")
    add_marker: bool = setting(
        True,
        "do not add the marker to the tokenizer; match its ordinary tokens and use the last one",
        flag="--no-add-marker",
        action="store_true",
        invert=True,
        group="input",
    )
    # `type=int`: the flag reads any whole number and the limit is checked with the others, as
    # one line naming the flag (`--window must be at least 1, not 0`)
    insert_every: int | None = setting(
        None,
        "write a marker after every N tokens of each text (for texts without markers)",
        type=int,
        minimum=1,
        metavar="N",
        group="input",
    )
    insert_after: str | None = setting(
        None, "write a marker after each occurrence of TEXT", metavar="TEXT", group="input"
    )
    occurrence: int = setting(  # at least 1: `check` says so in its own words
        1, "use the K-th marker of each text (default {default})", metavar="K", group="similarity"
    )
    window: int = setting(
        16,
        "how many tokens before the marker (default {default})",
        type=int,
        minimum=1,
        metavar="T",
        group="similarity",
    )
    direction: str = setting(
        "past",
        "compare with the tokens before (past, default) or after (future) the marker",
        choices=DIRECTIONS,
        group="similarity",
    )
    centre: bool = setting(
        False,
        "subtract each layer's mean hidden state over the text's positions before the cosine: "
        "raw residual streams are highly anisotropic (one large shared direction makes every cosine "
        "close to 1), and centring shows what a token has in common beyond that. The mean leaves out "
        "the first position, whose attention-sink activations can be 100x larger than the rest",
        action="store_true",
        group="similarity",
    )
    centre_skip_first: bool = setting(
        True,
        "with --centre, include the first position in the mean",
        flag="--centre-include-first",
        action="store_true",
        invert=True,
        group="similarity",
    )
    side: str = setting(
        "auto",
        "encoder-decoder models: compare the marker with the encoder's states of the source "
        "(--text) or the decoder's states of --decoder-text (default auto: the side the marker "
        "is in)",
        choices=SIDES,
        group="encoder-decoder",
    )
    # library only (the command line's --batch-tokens fills `batch_tokens`; a chunk is also
    # one Ray task)
    batch_tokens: int = setting(4096, cli=False, minimum=1)  # padded tokens per forward pass
    chunk_texts: int = setting(256, cli=False, minimum=1)  # texts per checkpointed chunk

    def check(self) -> None:
        if self.occurrence < 1:
            raise TokenprobeError(f"`occurrence` counts from 1, not {self.occurrence}")
        if self.insert_every is not None and self.insert_after is not None:
            raise TokenprobeError("give `insert_every` or `insert_after`, not both")


@dataclass(frozen=True)
class SimilarityFigure(Settings):
    """How the layer x distance heatmap is drawn (see `views.similarity_view`)."""

    role = "figure"

    cmap: str = setting("viridis", cli=False)
    vmax: float | None = setting(None, cli=False)  # the colour runs from -vmax to vmax
    title: str | None = setting(None, cli=False)

    def check(self) -> None:
        if self.vmax is not None and self.vmax <= 0:
            raise TokenprobeError(f"`vmax` must be above 0, not {self.vmax:g}")


OPTIONS = [
    Option(None, "one text containing the marker", flag="--text", role="input", group="input"),
    Option(
        None,
        "a data set (.csv, .jsonl, .parquet); averages over its texts",
        flag="--data",
        role="input",
        group="input",
    ),
    Option(
        None,
        "column of --data holding the texts (default: text)",
        flag="--text-column",
        role="input",
        group="input",
        default="text",
    ),
    *SimilarityOptions.options(
        "marker",
        "add_marker",
        "insert_every",
        "insert_after",
        "occurrence",
        "window",
        "direction",
        "centre",
        "centre_skip_first",
    ),
    Option(
        "resume",  # named: a message about `resume` shows --resume
        "continue an interrupted --data run in --out (its finished texts are kept there)",
        role="input",
        action="store_true",
        group="similarity",
    ),
    *ray_options(),
    *SimilarityOptions.options("side", "target_lang", "decoder_text"),
]
