"""Logit attribution's settings, declared once: `LogitAttributionOptions` (what is attributed)
and `LogitAttributionFigure` (which position and component kind the figures show); the
command-line options come from their fields."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import TokenprobeError
from ..base import prompt_inputs
from ..settings import PromptSettings, Settings, setting

SHOW = ("attn", "mlp", "mixer", "block")  # block: everything a block adds


@dataclass(frozen=True)
class LogitAttributionOptions(PromptSettings):
    """The token whose logit is attributed (`target`) and, with `foil`, the logit difference
    target - foil (chat and system: see `PromptSettings`)."""

    target: str | None = setting(
        None,
        "the next token whose logit is attributed, e.g. ' Paris' (required)",
        metavar="TEXT",
        group="input",
    )
    foil: str | None = setting(
        None,
        "a contrasting token: attribute the logit difference target - foil",
        metavar="TEXT",
        group="input",
    )

    def check(self) -> None:
        if not self.target:
            raise TokenprobeError(
                "`target` is required: the next token to attribute, e.g. ' Paris'"
            )
        if self.foil is not None and not self.foil:
            raise TokenprobeError("`foil` is empty: give a token such as ' Rome'")
        if self.foil is not None and self.foil == self.target:
            raise TokenprobeError(f"`foil` {self.foil!r} is `target`: give another foil")


@dataclass(frozen=True)
class LogitAttributionFigure(Settings):
    """What the figures show: the components and heads at `position` (default the last;
    negative counts from the end), and the layer x position map of `show` (default attn, or
    mixer for a model without attention)."""

    role = "figure"

    position: int | None = setting(
        None,
        "the position the component and head figures show (default the last; -2 is the one "
        "before it)",
        metavar="N",
        group="figure",
    )
    show: str | None = setting(
        None,
        "the component kind the layer x position figure shows: attn, mlp, mixer or block "
        "(all a block adds); default attn (mixer without attention)",
        choices=list(SHOW),
        group="figure",
    )


OPTIONS = [
    *prompt_inputs(several=False),
    *LogitAttributionOptions.options(),
    *LogitAttributionFigure.options(),
]
