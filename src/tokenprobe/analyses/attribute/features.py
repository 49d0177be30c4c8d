"""From what the caller gives to what the methods score, in one call (`prepare_attribution`):
the rendered prompt, its ids and character ranges, the input features (tokens or spans), the
target ids (given or generated) and the target rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from ...errors import TokenprobeError
from ...model import LoadedModel
from ...text import encode, render, token_texts

if TYPE_CHECKING:
    from transformers import GenerationMixin


@dataclass
class Feature:
    """One input feature: a set of prompt token positions and the text they cover."""

    text: str
    start: int  # character range in the rendered prompt
    end: int
    positions: list[int]


@dataclass
class AttributionInput:
    """A prompt and target made ready for attribution, before any scoring."""

    prompt: str  # as given
    text: str  # as the model sees it (chat template applied)
    prompt_ids: list[int]
    offsets: list[tuple[int, int]]  # each prompt token's character range in `text`
    tokens: list[str]  # each prompt token's text
    features: list[Feature]
    target_ids: list[int]
    target_text: str
    rows: list[list[int]]  # target token indices of each row
    row_texts: list[str]


def prepare_attribution(
    lm: LoadedModel,
    prompt: str,
    *,
    target: str | None,
    generate: int | None,
    features: Sequence[str] | None,
    target_spans: Sequence[str] | None,
    chat: bool,
    system: str | None,
) -> AttributionInput:
    """Render and tokenize the prompt, find the features, get the target (scored as given or
    the greedy continuation of `generate` tokens) and group its tokens into rows."""
    tok = lm.tokenizer
    text = render(tok, prompt, chat=chat, system=system)
    prompt_ids, offsets = encode(tok, text, chat=chat)
    if offsets is None:
        raise TokenprobeError(
            "attribution needs a fast tokenizer (one that reports character offsets)"
        )
    tokens = token_texts(tok, prompt_ids)
    feats = build_features(tok, prompt_ids, text, offsets, features, tokens=tokens)
    target_ids = _target_ids(lm, prompt_ids, target, generate)
    limit = lm.context_length
    if limit is not None and len(prompt_ids) + len(target_ids) > limit:
        raise TokenprobeError(
            f"prompt ({len(prompt_ids)} tokens) plus target ({len(target_ids)} tokens) is longer than the "
            f"model's context of {limit}: shorten them"
        )
    target_text, target_offsets = _char_offsets(tok, target_ids)
    if target_spans:
        rows, row_texts = [], []
        for span in target_spans:
            _, _, positions = _locate(target_text, target_offsets, span, "target_spans")
            rows.append(positions)
            row_texts.append(span)
    else:
        rows = [[j] for j in range(len(target_ids))]
        row_texts = token_texts(tok, target_ids)
    return AttributionInput(
        prompt, text, prompt_ids, offsets, tokens, feats, target_ids, target_text, rows, row_texts
    )


def _target_ids(
    lm: LoadedModel, prompt_ids: list[int], target: str | None, generate: int | None
) -> list[int]:
    """The target's ids: `target` encoded, or the model's greedy continuation."""
    if generate is None:
        assert target is not None
        return lm.tokenizer.encode(target, add_special_tokens=False)
    target_ids = _generate(lm, prompt_ids, generate)
    if not target_ids:
        raise TokenprobeError(
            "the model generated no tokens (it stopped at once): give a `target` instead"
        )
    return target_ids


def _char_offsets(tokenizer: Any, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decoded text of `ids` and each token's character range in it (cumulative decoding)."""
    ends, text = [], ""
    for j in range(len(ids)):
        text = tokenizer.decode(
            ids[: j + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        ends.append(len(text))
    starts = [0, *ends[:-1]]
    return text, list(zip(starts, ends, strict=True))


def _locate(
    text: str, offsets: list[tuple[int, int]], span: str, param: str
) -> tuple[int, int, list[int]]:
    """Character range and token positions of `span` (given as `param`) in `text`."""
    at = text.find(span) if span else -1
    if at < 0:
        where = "prompt" if param == "features" else "target"
        raise TokenprobeError(f"`{param}` {span!r} is not in the {where}: give an exact substring")
    end = at + len(span)
    positions = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > at]
    if not positions:
        raise TokenprobeError(f"`{param}` {span!r} covers no token")
    return at, end, positions


def build_features(
    tokenizer: Any,
    prompt_ids: list[int],
    text: str,
    offsets: list[tuple[int, int]],
    spans: Sequence[str] | None,
    *,
    tokens: Sequence[str] | None = None,
) -> list[Feature]:
    """One feature per span (or per prompt token when no spans; `tokens` are their texts if
    known already); overlapping spans are an error."""
    if not spans:
        texts = list(tokens) if tokens is not None else token_texts(tokenizer, prompt_ids)
        return [Feature(texts[i], s, e, [i]) for i, (s, e) in enumerate(offsets)]
    features: list[Feature] = []
    for span in spans:
        start, end, positions = _locate(text, offsets, span, "features")
        for other in features:
            if set(positions) & set(other.positions):
                raise TokenprobeError(
                    f"spans {other.text!r} and {span!r} overlap (share tokens): make them disjoint"
                )
        features.append(Feature(span, start, end, positions))
    return features


def _generate(lm: LoadedModel, prompt_ids: list[int], n: int) -> list[int]:
    """The model's greedy continuation of `n` tokens, without trailing end tokens."""
    ids = torch.tensor([prompt_ids], device=lm.device)
    with torch.no_grad():
        # generate() is on causal-LM models (GenerationMixin), not on the plain model type
        out = cast("GenerationMixin", lm.model).generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id
            if lm.tokenizer.pad_token_id is not None
            else lm.tokenizer.eos_token_id,
        )
    new = out[0, len(prompt_ids) :].tolist()
    stops = {lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id} - {None}
    while new and new[-1] in stops:
        new.pop()
    return new
