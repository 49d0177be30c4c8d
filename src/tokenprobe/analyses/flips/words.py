"""Words of a text, their perturbed copies, position buckets and the flip-rate table.

Words are lowercase runs of word characters ("couldn't" gives "couldn" and "t"), each mapped to
the model tokens its characters fall in; perturbing a word perturbs all of its tokens. The
bucket of the i-th of n words is floor(B * i / n).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...errors import TokenprobeError
from ...stats import wilson

if TYPE_CHECKING:
    from ...model import LoadedModel

PERTURBATIONS = ("delete", "mask", "filler")
WORD = re.compile(r"\w+")


@dataclass
class TextInput:
    """A text's own tokens (no template, no special tokens) and its words' token positions."""

    text: str
    ids: list[int]
    words: list[str]
    word_tokens: list[list[int]]


def tokenize_words(tokenizer: Any, text: str, *, add_special_tokens: bool = False) -> TextInput:
    """Tokens of `text` and, for each lowercase word, the tokens its characters fall in, from one
    tokenizer call (with the tokenizer's own special tokens when `add_special_tokens`: they
    cover no characters, so they belong to no word and survive every perturbation)."""
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    words, word_tokens = [], []
    for match in WORD.finditer(text):
        s, e = match.span()
        toks = [i for i, (a, b) in enumerate(offsets) if b > a and a < e and b > s]
        if toks:
            words.append(match.group().lower())
            word_tokens.append(toks)
    return TextInput(text, ids, words, word_tokens)


def bucket_of(i: int, n: int, buckets: int) -> int:
    """Relative position bucket of the i-th (0-based) of n words."""
    return (buckets * i) // n


def perturb(inp: TextInput, word: int, how: str, replacement: list[int]) -> list[int]:
    """The text's ids with all tokens of word `word` deleted or replaced (once) by `replacement`."""
    positions = inp.word_tokens[word]
    head, tail = positions[0], positions[-1]
    keep_between = [inp.ids[i] for i in range(head, tail + 1) if i not in positions]
    new = [] if how == "delete" else replacement
    return inp.ids[:head] + new + keep_between + inp.ids[tail + 1 :]


def replacement_ids(lm: LoadedModel, how: str, filler: str | None) -> list[int]:
    """The tokens a perturbed word becomes: none (delete), the mask or unk token, or the filler
    word's tokens (`how` and `filler` as `FlipOptions` checked them)."""
    tok = lm.tokenizer
    if how == "delete":
        return []
    if how == "filler":
        assert filler is not None
        return tok.encode(" " + filler.strip(), add_special_tokens=False)
    for attr in ("mask_token_id", "unk_token_id"):
        tid = getattr(tok, attr, None)
        if tid is not None:
            return [int(tid)]
    raise TokenprobeError(
        "this tokenizer has neither a mask nor an unk token: use `perturbation` delete, or "
        "filler with a `filler` word"
    )


def rates_table(occurrences: pd.DataFrame, labels: Sequence[str], group: str) -> pd.DataFrame:
    """Flips, occurrences, rate and Wilson interval per (class, word, bucket)."""
    col = "original" if group == "predicted" else "gold"
    frame = occurrences[occurrences[col].notna()]
    grouped = (
        frame.groupby([col, "word", "bucket"], sort=True)["flipped"]
        .agg(flips="sum", occurrences="count")
        .reset_index()
    )
    grouped = grouped.rename(columns={col: "class"})
    grouped["flips"] = grouped["flips"].astype(np.int64)
    grouped["rate"] = grouped["flips"] / grouped["occurrences"]
    low, high = wilson(grouped["flips"].to_numpy(), grouped["occurrences"].to_numpy())
    grouped["wilson_low"], grouped["wilson_high"] = low, high
    return grouped
