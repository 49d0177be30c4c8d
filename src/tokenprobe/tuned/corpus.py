"""Text for training and evaluating a lens: any data set `--data` reads (plus plain .txt files),
tokenized and packed into fixed-length sequences the way the tuned-lens package packs them
(texts joined by the end-of-text token, which also starts the stream; the last partial
sequence dropped), so no position is padding."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import read_texts
from ..errors import TokenprobeError

TOKENIZE_AT_ONCE = 256  # texts per tokenizer call


def read_corpus(data: str | Sequence[str], text_column: str = "text") -> list[str]:
    """The texts of `data`: a list of texts as given, a .txt file as one text, else any data
    set `--data` reads (its `text_column`)."""
    if not isinstance(data, str):
        texts = [str(t) for t in data if t]
        if not texts:
            raise TokenprobeError("`data` holds no text")
        return texts
    path = Path(data).expanduser()
    if path.suffix.lower() == ".txt" and path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TokenprobeError(f"`data` {data} is not UTF-8 text: save it as UTF-8") from exc
        if not text.strip():
            raise TokenprobeError(f"`data` {data} is empty: give a file with text")
        return [text]
    return read_texts(data, text_column)  # a damaged saved folder is one error (data.py)


def separator_id(tokenizer: object) -> int:
    """The token between texts: end-of-text (eos), else the pad token, else 0."""
    for attr in ("eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def pack(
    texts: Sequence[str],
    tokenizer: object,
    seq_len: int,
    *,
    max_sequences: int | None = None,
    source: str = "`data`",
) -> torch.Tensor:
    """(n, seq_len) token ids: [eos] text1 [eos] text2 ... cut into full sequences; tokenizing
    stops once `max_sequences` are full. One error when not even one sequence fills."""
    if seq_len < 2:
        raise TokenprobeError(f"`seq_len` must be at least 2, not {seq_len}")
    sep = separator_id(tokenizer)
    stream: list[int] = [sep]
    need = None if max_sequences is None else max_sequences * seq_len
    for start in range(0, len(texts), TOKENIZE_AT_ONCE):
        batch = list(texts[start : start + TOKENIZE_AT_ONCE])
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:  # type: ignore[operator]
            stream.extend(ids)
            stream.append(sep)
        if need is not None and len(stream) >= need:
            break
    stream.pop()  # no separator after the last text
    n = len(stream) // seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    if n == 0:
        raise TokenprobeError(
            f"{source} holds {len(stream)} tokens, fewer than one sequence of `seq_len` {seq_len}: "
            "give more text or a smaller `seq_len`"
        )
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def fingerprint(sequences: torch.Tensor) -> str:
    """A short hash of packed token ids (a resumed run must train on the same data)."""
    return hashlib.sha256(sequences.numpy().tobytes()).hexdigest()[:16]


def check_seq_len(seq_len: int, context: int | None) -> None:
    """A sequence must fit the model's context (positions past it have no embedding)."""
    if context is not None and seq_len > context:
        raise TokenprobeError(
            f"`seq_len` {seq_len} is longer than the model's context of {context} tokens: give at most {context}"
        )
