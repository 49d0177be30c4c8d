"""attention's settings, declared once: `AttentionOptions` (what `attention` records and
keeps); the command-line options come from its fields."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import TokenprobeError
from ..base import prompt_inputs
from ..settings import DecoderTextSettings, PromptSettings, setting

STACKS = ("cross", "encoder", "decoder")  # an encoder-decoder's kinds of attention

# every layer and head is kept while layers x heads x the prompt's lower triangle fits this
MAX_CELLS = 4_000_000


@dataclass(frozen=True)
class AttentionOptions(PromptSettings, DecoderTextSettings):
    """Which layer and head to show (default: every one kept), the `to` text whose key
    tokens' attention from query `from_position` is tabled per layer x head, and how many
    weights are kept at most (chat and system: see `PromptSettings`); an encoder-decoder's
    `stack`, `target_lang` and `decoder_text` (see `DecoderTextSettings`)."""

    stack: str | None = setting(
        None,
        "encoder-decoder models: which attention to show: cross (decoder positions attending "
        "to source tokens; the default), encoder (source x source) or decoder (the decoder's "
        "causal self-attention over its start token, forced token and --decoder-text)",
        choices=STACKS,
        metavar="KIND",
        group="encoder-decoder",
    )

    layer: int | None = setting(
        None,
        "the block to show (default: the last attention layer; every layer is kept when "
        "the prompt is short enough, see --max-cells)",
        minimum=0,
        metavar="N",
        group="attention",
    )
    head: int | None = setting(
        None,
        "the query head to show (default: every head of --layer, or of the last attention layer)",
        minimum=0,
        metavar="N",
        group="attention",
    )
    to: str | None = setting(
        None,
        "table per layer x head the attention from --from's query to the key token(s) of "
        "this text (summed over its tokens), e.g. --to ' Paris'",
        metavar="TEXT",
        group="attention",
    )
    from_position: int = setting(
        -1,
        "with --to: the query position (negative: from the end; default {default}, the last)",
        flag="--from",
        metavar="POSITION",
        group="attention",
    )
    max_cells: int = setting(
        MAX_CELLS,
        "keep every layer and head while layers x heads x the prompt's lower triangle is at "
        "most this many weights; past it only --layer (and --head) are kept, or with --to "
        "only the --from query's row (default {default})",
        minimum=1,
        metavar="N",
        group="attention",
    )
    eager_check: bool = setting(True, cli=False)  # compare with the eager implementation once

    def check(self) -> None:
        if self.from_position != -1 and self.to is None:
            raise TokenprobeError(
                "`from_position` (--from) picks the query whose attention to --to's tokens is "
                "tabled: give --to TEXT as well"
            )


OPTIONS = [
    *prompt_inputs(several=False),
    *AttentionOptions.options("chat", "system"),
    *AttentionOptions.options("layer", "head", "to", "from_position", "max_cells"),
    *AttentionOptions.options("stack", "target_lang", "decoder_text"),
]
