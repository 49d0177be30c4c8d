"""A trace's inputs checked and turned into ids: the settings (before any model work), the
corrupted prompt (same token length), the subject's token span and the scored tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import TokenprobeError, warn
from ...model import LoadedModel
from ...text import PreparedInput, display_token, encode, first_token, prepare
from .options import COMPONENTS


@dataclass
class Settings:
    """The settings a trace runs with, the defaults that depend on others resolved."""

    corrupt: str
    metric: str
    components: list[str]


def check_settings(
    target: str | None,
    foil: str | None,
    corrupted: str | None,
    corrupt: str | None,
    subject: str | None,
    noise: float,
    components: Sequence[str],
    metric: str | None,
) -> Settings:
    """Refuse contradictory or missing settings in one line each, before the model runs."""
    if not target:
        raise TokenprobeError("`target` is required: the next token to score, e.g. ' Paris'")
    if foil is not None and not foil:
        raise TokenprobeError("`foil` is empty: give a token such as ' London'")
    if corrupt is None:
        corrupt = "prompt" if corrupted is not None else "noise" if subject is not None else None
    if corrupt is None:
        raise TokenprobeError(
            "nothing to corrupt: give `corrupted` TEXT (a prompt of the same token length) or "
            "`corrupt` noise with `subject` TEXT (the span whose embeddings get the noise)"
        )
    if corrupt == "prompt" and corrupted is None:
        raise TokenprobeError(
            "`corrupt` prompt needs `corrupted` TEXT, a prompt of the same token length"
        )
    if corrupt == "noise" and subject is None:
        raise TokenprobeError(
            "`corrupt` noise needs `subject` TEXT: the span whose embeddings get the noise"
        )
    if corrupt == "noise" and corrupted is not None:
        raise TokenprobeError("give `corrupted` TEXT or `corrupt` noise, not both")
    if not noise > 0:
        raise TokenprobeError(f"`noise` must be above 0, not {noise:g}")
    if isinstance(components, str):
        components = [components]
    comps = list(dict.fromkeys(components))
    if not comps:
        raise TokenprobeError(f"`components` is empty: give one or more of {', '.join(COMPONENTS)}")
    for c in comps:
        if c not in COMPONENTS:
            raise TokenprobeError(f"`components` must be among {', '.join(COMPONENTS)}, not {c!r}")
    metric = metric or ("diff" if foil is not None else "prob")
    if metric == "diff" and foil is None:
        raise TokenprobeError(
            "`metric` diff is the logit difference target - foil: give `foil` TEXT"
        )
    if metric != "diff" and foil is not None:
        raise TokenprobeError(
            f"`foil` is scored only by `metric` diff, not {metric}: drop `metric` or `foil`"
        )
    return Settings(corrupt, metric, comps)


def corrupted_input(
    lm: LoadedModel, clean: PreparedInput, corrupted: str, chat: bool, system: str | None
) -> tuple[PreparedInput, tuple[int, int]]:
    """The corrupted prompt, prepared as the clean one, and the span of positions where the two
    differ; refused unless it has the same number of tokens and differs somewhere."""
    bad = prepare(lm, corrupted, chat=chat, system=system)
    a, b = list(clean.input_ids), list(bad.input_ids)
    differ = [i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]
    if len(a) != len(b):
        at = differ[0] if differ else min(len(a), len(b))
        where = (
            f"they diverge at position {at}: {_shown(bad.tokens, at)} vs {_shown(clean.tokens, at)}"
        )
        raise TokenprobeError(
            f"the corrupted prompt is {len(b)} tokens and the prompt {len(a)}; `corrupted` must "
            f"have the same token length ({where})"
        )
    if not differ:
        raise TokenprobeError(
            "`corrupted` gives the same tokens as the prompt: nothing is corrupted"
        )
    return bad, (differ[0], differ[-1] + 1)


def _shown(tokens: list[str], at: int) -> str:
    return repr(display_token(tokens[at], 24, show_spaces=False)) if at < len(tokens) else "the end"


def subject_span(lm: LoadedModel, clean: PreparedInput, subject: str) -> tuple[int, int]:
    """The [start, end) token positions covering the first `subject` in the user's prompt."""
    if not subject.strip():
        raise TokenprobeError("`subject` is empty: give the prompt's subject, e.g. 'Eiffel Tower'")
    text = clean.text
    origin = max(0, text.find(clean.prompt))
    at = text.find(subject, origin)
    if at < 0 or at + len(subject) > origin + len(clean.prompt):  # not the chat template's text
        raise TokenprobeError(
            f"`subject` {subject!r} is not in the prompt: give a substring of `prompt` (case and spaces count)"
        )
    if 0 <= text.find(subject, at + 1) < origin + len(clean.prompt) - len(subject) + 1:
        warn(
            f"`subject` {subject!r} occurs more than once in the prompt: the noise goes on the first"
        )
    ids, offsets = encode(lm.tokenizer, text, chat=clean.chat)
    end = at + len(subject)
    if offsets is not None and list(ids) == list(clean.input_ids):
        covered = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > at]
    else:  # no offsets: count the tokens of the text before and through the subject
        first = len(encode(lm.tokenizer, text[:at], chat=clean.chat)[0])
        last = len(encode(lm.tokenizer, text[:end], chat=clean.chat)[0])
        covered = list(range(min(first, last - 1), last))
    if not covered:
        raise TokenprobeError(f"`subject` {subject!r} covers no token of the prompt")
    return covered[0], covered[-1] + 1


def token_id(lm: LoadedModel, text: str, name: str) -> int:
    """The id of the token `text` (its first token, with a warning, when it is several)."""
    return first_token(lm.tokenizer, text, name, "the trace scores")
