"""A trace's inputs checked and turned into ids: the clean and the corrupted prompt (same
token length), the subject's token span and the scored tokens. The settings themselves are
checked as they are built (`options.TraceOptions`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import TokenprobeError, warn
from ...model import LoadedModel
from ...text import PreparedInput, display_token, encode, first_token, prepare
from .options import TraceOptions
from .tracer import Comparison


@dataclass
class TraceInputs:
    """A trace's prompts as ids: the clean one, the corrupted one (None with noise) and where
    it differs, the subject's positions (with `subject`), and the scored tokens' ids."""

    clean: PreparedInput
    bad: PreparedInput | None
    differ: tuple[int, int] | None
    span: tuple[int, int] | None
    target_id: int
    foil_id: int | None

    @property
    def marked(self) -> list[int] | None:
        """The positions the figures mark: the subject's, else where the prompts differ."""
        return list(self.span or self.differ or []) or None

    def problem(self, metric: str, direction: str, noise: torch.Tensor | None) -> Comparison:
        """What the trace compares: these ids (the clean ones again under noise), these tokens."""
        clean = list(self.clean.input_ids)
        corrupted = list(self.bad.input_ids) if self.bad is not None else clean
        return Comparison(
            clean, corrupted, self.target_id, self.foil_id, metric, direction, noise, self.span
        )


def trace_inputs(
    lm: LoadedModel, prompt: str | PreparedInput, options: TraceOptions
) -> TraceInputs:
    """The prompt and the corrupted one prepared, the subject found, the tokens scored, each
    refused in one line when it does not fit the model's tokens."""
    o = options
    clean = (
        prompt
        if isinstance(prompt, PreparedInput)
        else prepare(lm, prompt, chat=o.chat, system=o.system)
    )
    bad, differ = (
        (None, None)
        if o.corruption == "noise"
        else corrupted_input(lm, clean, o.corrupted or "", o.chat, o.system)
    )
    span = subject_span(lm, clean, o.subject) if o.subject is not None else None
    target_id = token_id(lm, o.target or "", "target")
    foil_id = token_id(lm, o.foil, "foil") if o.foil is not None else None
    if foil_id is not None and foil_id == target_id:
        raise TokenprobeError(
            f"`foil` {o.foil!r} is the same token as `target` {o.target!r}"
            f"{'' if o.foil == o.target else ' (their first tokens are the same)'}: give another foil"
        )
    return TraceInputs(clean, bad, differ, span, target_id, foil_id)


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
