"""What an encoder-decoder's input is made of beside the text: the decoder's start token and
the token forced after it (a target language code), as the model's own `generate` begins, and
right-padded batches of (source, decoder) ids with their masks."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import TokenprobeError


def _model_setting(lm: Any, name: str) -> Any:
    """A generation setting: the generation config's, else the model config's."""
    generation = getattr(lm.model, "generation_config", None)
    value = getattr(generation, name, None)
    return value if value is not None else getattr(lm.model.config, name, None)


def language_id(tokenizer: Any, code: str) -> int:
    """The token id of a target language code: M2M100's `get_lang_id` ("de" -> "__de__"),
    else the code as one token of the tokenizer (mBART-50's de_DE, NLLB's deu_Latn)."""
    get = getattr(tokenizer, "get_lang_id", None)
    if callable(get):
        try:
            return int(get(code))
        except (KeyError, ValueError):
            pass
    found = tokenizer.convert_tokens_to_ids(code)
    if not isinstance(found, int) or found == tokenizer.unk_token_id:
        raise TokenprobeError(
            f"`target_lang` {code!r} is not a token of this tokenizer: give a language code it "
            "has (de_DE for mBART-50, deu_Latn for NLLB, de for M2M100)"
        )
    return found


def decoder_prefix(lm: Any, target_lang: str | None) -> list[int]:
    """The decoder's start token and the token forced after it (`target_lang`'s code, else
    the model's `forced_bos_token_id`), as the model's own `generate` begins."""
    start = _model_setting(lm, "decoder_start_token_id")
    if not isinstance(start, int):
        raise TokenprobeError(
            f"{lm.name} names no decoder start token (decoder_start_token_id in its config or "
            "generation config): set one there"
        )
    if target_lang is not None:
        forced: int | None = language_id(lm.tokenizer, target_lang)
    else:
        forced = _model_setting(lm, "forced_bos_token_id")
    return [start] + ([int(forced)] if isinstance(forced, int) else [])


def pad_batch(
    sources: list[list[int]], decoder_ids: list[list[int]], pad_id: int, device: Any = "cpu"
) -> dict[str, torch.Tensor]:
    """Right-padded model inputs for a batch of (source ids, decoder ids) pairs, with the
    attention masks of both sides; `pad_id` is the model's `pad_token_id` (FSMT and M2M100
    find padding by that id, besides the masks)."""

    def padded(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
        return ids.to(device), mask.to(device)

    input_ids, attention_mask = padded(sources)
    decoder_input_ids, decoder_attention_mask = padded(decoder_ids)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder_input_ids,
        "decoder_attention_mask": decoder_attention_mask,
    }
