"""An encoder-decoder asked a question: the template with the text in it is the source, the
decoder reads its start (and forced) tokens, and the verbalisers' first target-side tokens are
scored at the decoder's first prediction, as `generate` would begin its answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ...errors import TokenprobeError
from ...model import LoadedModel
from ...model.seq2seq_input import decoder_prefix, pad_batch
from ...runner import CheckedBatching, pad_id_of
from .verbalisers import verbaliser_ids


class TargetSide:
    """The tokenizer, encoding as the target side (`text_target`): Marian's target vocabulary,
    the language codes of mBART/NLLB left to the forced token."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = self._tok(text_target=text, add_special_tokens=add_special_tokens)["input_ids"]
        return [int(i) for i in ids]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def special_wrap(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a source text (BART's <s> and
    </s>, T5's and Marian's </s>), found by tokenizing one word with and without them."""
    probe = "a"
    bare = [int(i) for i in tokenizer(probe, add_special_tokens=False)["input_ids"]]
    full = [int(i) for i in tokenizer(probe)["input_ids"]]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []


def setup(clf: Any, lm: LoadedModel, rendered_parts: tuple[str, str]) -> None:
    """Fill a prompted classifier's token lists for an encoder-decoder `lm`: the source's
    special tokens around prefix + text + suffix, the decoder's start/forced ids, and the
    verbalisers' first target-side tokens. No prefix cache: the encoder reads the whole source
    at once."""
    if clf.chat:
        raise TokenprobeError(
            f"{lm.name} is an encoder-decoder model: it has no chat template to wrap the prompt "
            "in; leave out --chat"
        )
    tok = lm.tokenizer
    lead, trail = special_wrap(tok)
    prefix_text, suffix_text = rendered_parts
    clf.prefix_ids = lead + [
        int(i) for i in tok(prefix_text, add_special_tokens=False)["input_ids"]
    ]
    clf.suffix_ids = [int(i) for i in tok(suffix_text, add_special_tokens=False)["input_ids"]]
    clf.suffix_ids += trail
    clf.decoder_ids = decoder_prefix(lm, None)
    clf.verbaliser_ids = verbaliser_ids(TargetSide(tok), clf.labels, clf.verbalisers)
    clf.reuse_prefix = False


def checking(clf: Any) -> CheckedBatching:
    """Right-padded sources with their mask (every row's decoder ids are the same), checked on
    a run's first batch against one source alone."""
    return CheckedBatching(
        {"right": lambda seqs: _logits(clf, seqs)},
        {"right": "right-padded sources with their attention mask"},
        lambda seq: _logits(clf, [seq])[0],
        dtype=clf.lm.dtype,
        what=f"flip rates with {type(clf.lm.model).__name__}",
    )


def _logits(clf: Any, seqs: Sequence[list[int]]) -> torch.Tensor:
    """(len(seqs), V) logits of the decoder's first prediction for each source prefix + seq."""
    lm = clf.lm
    pad = lm.model.config.pad_token_id
    pad = int(pad) if isinstance(pad, int) else int(pad_id_of(lm.tokenizer))
    sources = [clf.prefix_ids + list(s) for s in seqs]
    batch = pad_batch(sources, [clf.decoder_ids] * len(sources), pad, lm.device)
    return lm.model(**batch, use_cache=False).logits[:, -1]
