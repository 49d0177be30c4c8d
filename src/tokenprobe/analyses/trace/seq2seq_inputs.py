"""An encoder-decoder trace's inputs: the source prompt (and a corrupted source of the same
token length), the decoder ids both runs share (start and forced tokens, then
`decoder_text`), the subject's source positions, the scored tokens, and the settings that do
not apply to such a model, refused in one line each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...errors import TokenprobeError, warn
from ...model import LoadedModel
from ...model.adapter import weight_of
from ...text import Seq2SeqInput, prepare_seq2seq, token_texts
from .options import CAUSAL_ONLY, TraceOptions
from .seq2seq_sites import encoder_embedding
from .seq2seq_tracer import Seq2SeqComparison


@dataclass
class Seq2SeqGiven:
    """The clean source and decoder ids, the corrupted source (None with noise) and where it
    differs, the subject's source positions, and the scored tokens' ids."""

    clean: Seq2SeqInput
    bad: Seq2SeqInput | None
    differ: tuple[int, int] | None
    span: tuple[int, int] | None
    target_id: int
    foil_id: int | None

    @property
    def marked(self) -> list[int] | None:
        """The source positions the encoder figure marks: the subject's, else the changed."""
        return list(self.span or self.differ or []) or None

    def problem(self, metric: str, direction: str, noise: torch.Tensor | None) -> Seq2SeqComparison:
        clean = list(self.clean.input_ids)
        bad = list(self.bad.input_ids) if self.bad is not None else clean
        return Seq2SeqComparison(
            clean,
            bad,
            self.target_id,
            self.foil_id,
            metric,
            direction,
            noise,
            self.span,
            decoder_ids=list(self.clean.decoder_ids),
        )


def refuse_for_seq2seq(o: TraceOptions, prompt: Any) -> None:
    """The settings an encoder-decoder trace cannot use, one line each."""
    if not isinstance(prompt, str):
        raise TokenprobeError(
            "an encoder-decoder trace takes the source prompt as text, not a prepared input: "
            "pass the prompt string"
        )
    if o.chat or o.system is not None:
        raise TokenprobeError(
            "`chat` and `system` wrap a prompt in a causal chat model's template: an "
            "encoder-decoder reads its source as given; drop them"
        )
    causal = [c for c in o.traced if c in CAUSAL_ONLY]
    if causal:
        raise TokenprobeError(
            f"`components` {', '.join(causal)} are traced in decoder-only models: an "
            "encoder-decoder traces resid (its encoder's and decoder's residual streams) and "
            "cross (each decoder block's cross-attention output)"
        )
    if o.method != "exact":
        raise TokenprobeError(
            f"`method` {o.method} is not available for encoder-decoder models yet: use "
            "`method` exact"
        )


def seq2seq_inputs(lm: LoadedModel, prompt: str, o: TraceOptions) -> Seq2SeqGiven:
    """The source and decoder ids, the corrupted source, the subject, the scored tokens."""
    clean = prepare_seq2seq(lm, prompt, target=o.decoder_text, target_lang=o.target_lang)
    bad, differ = None, None
    if o.corruption == "prompt":
        bad = prepare_seq2seq(
            lm, o.corrupted or "", target=o.decoder_text, target_lang=o.target_lang
        )
        differ = _differ(clean, bad)
    span = source_span(lm, clean, o.subject) if o.subject is not None else None
    target_id = target_token(lm, o.target or "", "target")
    foil_id = target_token(lm, o.foil, "foil") if o.foil is not None else None
    if foil_id is not None and foil_id == target_id:
        raise TokenprobeError(
            f"`foil` {o.foil!r} is the same token as `target` {o.target!r}: give another foil"
        )
    return Seq2SeqGiven(clean, bad, differ, span, target_id, foil_id)


def _differ(clean: Seq2SeqInput, bad: Seq2SeqInput) -> tuple[int, int]:
    """Where the corrupted source differs; refused unless it has the source's token length."""
    a, b = clean.input_ids, bad.input_ids
    if len(a) != len(b):
        raise TokenprobeError(
            f"the corrupted source is {len(b)} tokens and the prompt {len(a)}; `corrupted` must "
            "have the same token length"
        )
    differ = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    if not differ:
        raise TokenprobeError(
            "`corrupted` gives the same tokens as the prompt: nothing is corrupted"
        )
    return differ[0], differ[-1] + 1


def source_span(lm: LoadedModel, clean: Seq2SeqInput, subject: str) -> tuple[int, int]:
    """The [start, end) source positions covering the first `subject` in the prompt."""
    if not subject.strip():
        raise TokenprobeError("`subject` is empty: give the prompt's subject, e.g. 'Eiffel Tower'")
    text, tok = clean.source, lm.tokenizer
    at = text.find(subject)
    if at < 0:
        raise TokenprobeError(
            f"`subject` {subject!r} is not in the prompt: give a substring of `prompt` (case "
            "and spaces count)"
        )
    if text.find(subject, at + 1) >= 0:
        warn(
            f"`subject` {subject!r} occurs more than once in the prompt: the noise goes on the first"
        )
    end = at + len(subject)
    offsets = None
    if getattr(tok, "is_fast", False):
        encoded = tok(text, return_offsets_mapping=True)
        if list(encoded["input_ids"]) == list(clean.input_ids):
            offsets = encoded["offset_mapping"]
    if offsets is not None:
        covered = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > at]
    else:  # no offsets: count the tokens before and through the subject, after the leading ones
        plain = tok(text, add_special_tokens=False)["input_ids"]
        ids = list(clean.input_ids)
        lead = next((i for i in range(len(ids)) if ids[i : i + len(plain)] == plain), 0)
        first = lead + len(tok(text[:at], add_special_tokens=False)["input_ids"])
        last = lead + len(tok(text[:end], add_special_tokens=False)["input_ids"])
        covered = list(range(min(first, last - 1), last))
    if not covered:
        raise TokenprobeError(f"`subject` {subject!r} covers no token of the prompt")
    return covered[0], covered[-1] + 1


def target_token(lm: LoadedModel, text: str, name: str) -> int:
    """The id of `text` as the decoder writes it (the target side's tokens), its first token
    with a warning when it is several."""
    ids = lm.tokenizer(text_target=text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise TokenprobeError(f"`{name}` {text!r} gives no token")
    if len(ids) > 1:
        first = token_texts(lm.tokenizer, ids[:1])[0]
        warn(f"`{name}` {text!r} is {len(ids)} tokens; the trace scores its first token {first!r}")
    return int(ids[0])


def source_noise(
    lm: LoadedModel, span: tuple[int, int], o: TraceOptions
) -> tuple[torch.Tensor, float]:
    """(samples, subject tokens, width) Gaussian draws, seeded on the CPU, scaled to `noise` x
    the standard deviation of the encoder's token embedding output (over up to 4,096 evenly
    spread rows of its vocabulary); and that scale. The noise is added to that output, before
    any scale the family applies after it, which then scales the noise as the embedding."""
    embed = encoder_embedding(lm.model)
    vocab, width = (int(x) for x in weight_of(embed).shape)
    ids = torch.linspace(0, vocab - 1, steps=min(vocab, 4096)).long().to(lm.device)
    with torch.inference_mode():
        std = float(embed(ids[None]).float().std()) * o.noise
    draws = torch.randn(
        (o.samples, span[1] - span[0], width), generator=torch.Generator().manual_seed(o.seed)
    )
    scaled = (draws * std).to(lm.device)
    if not bool(torch.isfinite(scaled).all()):
        raise TokenprobeError(
            f"`noise` {o.noise:g} x the embeddings' standard deviation is not a finite number: "
            "give a smaller `noise` (3 is the usual)"
        )
    return scaled, std
