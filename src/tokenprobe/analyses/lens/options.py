"""The lens's settings, declared once: `LensOptions` (what `logit_lens` computes) and
`LensFigure` (how its heatmap is drawn); the command-line options come from their fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import TokenprobeError
from ...heatmap import parse_range
from ...text import DEFAULT_MARKER
from ..base import Option, positive_int, prompt_inputs, ray_options, rows_options
from ..settings import DecoderTextSettings, PromptSettings, Settings, setting

MAX_TOP_K = 100  # each kept token is three columns of the table, per cell
COLOURS = ("entropy", "diff")  # what the cells' colour shows
ROWS_GROUP = "a data file of prompts (one result row each)"


@dataclass(frozen=True)
class LensOptions(PromptSettings, DecoderTextSettings):
    """What `logit_lens` decodes and keeps (chat and system: see `PromptSettings`; an
    encoder-decoder's `target_lang` and `decoder_text`: see `DecoderTextSettings`)."""

    dummy: int = setting(
        0, "insert N dummy marker tokens (default {default})", minimum=0, metavar="N", group="input"
    )
    dummy_token: str = setting(
        DEFAULT_MARKER,
        "the dummy marker (default {default}); added to the tokenizer if unknown",
        group="input",
    )
    dummy_after: str | None = setting(
        None,
        "insert the dummies after the first TEXT (default: "
        "at the end, i.e. after the generation prompt with --chat)",
        metavar="TEXT",
        group="input",
    )
    dummy_before: str | None = setting(
        None, "insert the dummies before the first TEXT", metavar="TEXT", group="input"
    )
    targets: tuple[str, ...] | list[str] = setting(
        (),
        "track this token's probability and rank everywhere, e.g. --target ' Canberra' "
        "(repeatable)",
        flag="--target",
        action="append",
        metavar="TEXT",
        group="lens",
    )
    foil: str | None = setting(
        None,
        "add the logit difference logit(target) - logit(TEXT) of "
        "every cell, with the first --target (e.g. --target ' Canberra' "
        "--foil ' Sydney'); --colour diff draws it",
        metavar="TEXT",
        group="lens",
    )
    lens: Any = setting(
        None,
        "decode every layer through this tuned lens: a tune-lens --out "
        "folder, a tuned-lens package folder (config.json + params.pt), or "
        "builtin (the lens shipped for the built-in model); default: the logit "
        "lens",
        metavar="DIR",
        group="lens",
    )
    top_k: int = setting(
        5,
        "top tokens kept per cell, 1 to {maximum} (default {default})",
        minimum=1,
        maximum=MAX_TOP_K,
        group="lens",
    )
    memory_mb: float | None = setting(
        None,
        "memory for logits decoded at once (default 512 on CPU, 2048 on a GPU)",
        type=positive_int,
        group="lens",
    )
    batch_tokens: int = setting(2048, cli=False)

    def check(self) -> None:
        for name in ("dummy_after", "dummy_before"):
            if getattr(self, name) is not None and self.dummy == 0:
                raise TokenprobeError(
                    f"`{name}` has no effect without `dummy` N: give the number of dummy tokens to insert"
                )
        if self.memory_mb is not None and self.memory_mb <= 0:
            raise TokenprobeError(f"`memory_mb` must be positive, not {self.memory_mb:g}")
        if self.batch_tokens < 1:
            raise TokenprobeError(f"`batch_tokens` must be at least 1, not {self.batch_tokens}")


@dataclass(frozen=True)
class LensFigure(Settings):
    """How the lens heatmap is drawn (see `views.lens_view`)."""

    role = "figure"

    zoom: str | tuple[int, int] | None = setting(
        None,
        "draw positions START..END-1 in detail (negative: from the end, e.g. --zoom=-16:); "
        "under the whole prompt unless --no-overview",
        metavar="START:END",
        group="figure",
    )
    frame: str | tuple[int, int] | bool | None = setting(
        None,
        "outline positions START..END-1 (default: the dummy tokens)",
        metavar="START:END",
        group="figure",
    )
    colour: str = setting(
        "entropy",
        "what the colour shows: entropy, or diff = the --foil logit difference (default {default})",
        choices=COLOURS,
        group="figure",
    )
    overview: bool | None = setting(None, cli=False)  # --overview / --no-overview (cli.py)
    annotate: bool | None = setting(None, cli=False)
    label_chars: int = setting(7, cli=False, minimum=1)
    cmap: str | None = setting(None, cli=False)
    vmax: float | None = setting(None, cli=False, minimum=0)
    title: str | None = setting(None, cli=False)

    def check(self) -> None:
        for name in ("zoom", "frame"):
            value = getattr(self, name)
            if value is not True and value is not False:
                parse_range(value, name)  # a malformed range fails here, before any model work


OPTIONS = [
    *prompt_inputs(several=True),
    *LensOptions.options("chat", "system"),
    *rows_options(),
    Option(
        None,
        "with --data: continue an interrupted run in --out",
        flag="--resume",
        role="input",
        action="store_true",
        group=ROWS_GROUP,
    ),
    *ray_options(),
    *LensOptions.options(
        "dummy",
        "dummy_token",
        "dummy_after",
        "dummy_before",
        "targets",
        "foil",
        "lens",
        "top_k",
        "memory_mb",
        "target_lang",
        "decoder_text",
    ),
    *LensFigure.options("zoom", "frame"),
    Option(
        None,
        "outline nothing",
        flag="--no-frame",
        role="input",
        action="store_true",
        group="figure",
    ),
    *LensFigure.options("colour"),
    Option(
        None,
        "one figure: the whole prompt above, the --zoom region boxed, the zoom in "
        "detail below (default with a --zoom shorter than the prompt)",
        flag="--overview",
        role="input",
        action="store_true",
        group="figure",
    ),
    Option(
        None,
        "with --zoom, only the zoomed figure",
        flag="--no-overview",
        role="input",
        action="store_true",
        group="figure",
    ),
]
