"""Turn what a researcher types into token ids: prompts, chat templates, marker/dummy tokens.

Also the one place that turns token text into something a person can read (spaces, newlines
and raw bytes made visible) and into something safe to put in HTML.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import TokenprobeError, warn
from .model import Adapter, LoadedModel, weight_of
from .model.seq2seq_input import decoder_prefix

DEFAULT_MARKER = "_PAUSE_"


@dataclass
class PreparedInput:
    """One model input: the ids, the text of each token, and where inserted markers sit."""

    prompt: str
    text: str
    input_ids: list[int]
    tokens: list[str]
    chat: bool = False
    marked: tuple[int, int] | None = None  # [start, end) positions of inserted dummy tokens
    options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)


# ----------------------------------------------------------------------------- token text


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-unicode table used by byte-level BPE vocabularies."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_DECODER = _byte_decoder()


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text each token stands for; a token holding part of a UTF-8 character shows its bytes."""
    ids = [int(i) for i in ids]
    raw = tokenizer.convert_ids_to_tokens(ids)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # a fast tokenizer's decode without clean-up is its backend's: one Rust call for all ids
        # (5x faster than one decode each, which the logit lens's top-k tokens would feel)
        texts = backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
    else:
        texts = [
            tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            for i in ids
        ]
    out = []
    for text, piece in zip(texts, raw, strict=True):
        if "\ufffd" in text and piece:
            if all(ch in _BYTE_DECODER for ch in piece):
                text = "".join(f"\\x{_BYTE_DECODER[ch]:02x}" for ch in piece)
            else:
                text = piece
        out.append(text)
    return out


_VISIBLE = {" ": "▁", "\n": "↵", "\t": "→", "\r": "␍"}


def display_token(text: str, max_chars: int | None = 8, *, show_spaces: bool = True) -> str:
    """Token text for a figure: whitespace made visible, control bytes escaped, long ones cut.

    `show_spaces=False` keeps plain spaces (for user-chosen spans, which are text, not tokens).
    """
    shown = []
    for ch in text:
        if ch == " " and not show_spaces:
            shown.append(ch)
        elif ch in _VISIBLE:
            shown.append(_VISIBLE[ch])
        elif not ch.isprintable():
            shown.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            shown.append(ch)
    s = "".join(shown) or "∅"
    if max_chars is not None and len(s) > max_chars:
        s = s[: max(1, max_chars - 1)] + "…"
    return s


def html_token(text: str, max_chars: int | None = None) -> str:
    """Token text made visible and escaped for HTML (tokens such as `<script>` exist)."""
    return html.escape(display_token(text, max_chars), quote=True)


# ----------------------------------------------------------------------------- markers


def ensure_marker(lm: LoadedModel, marker: str) -> int:
    """Id of `marker` as one token, adding it to the tokenizer (and the embeddings) if needed.

    New embedding rows are set to the mean of the existing rows so results are reproducible;
    they are untrained all the same, and a warning says so.
    """
    tok = lm.tokenizer
    if not marker or not marker.strip():
        raise TokenprobeError("the marker token is empty: pass a marker such as _PAUSE_")
    ids = tok.encode(marker, add_special_tokens=False)
    if len(ids) == 1 and tok.decode(ids, clean_up_tokenization_spaces=False) == marker:
        return int(ids[0])
    if getattr(lm.model, "hf_device_map", None):
        raise TokenprobeError(
            f"the marker {marker!r} is not one token of this tokenizer, and adding it would resize the "
            "embeddings of a model placed with a device map, which accelerate cannot do: choose a "
            "marker that is already one token, or load the model without `device_map`"
        )
    from tokenizers import AddedToken

    tok.add_tokens([AddedToken(marker, special=True, normalized=False)], special_tokens=True)
    new_id = int(tok.convert_tokens_to_ids(marker))
    emb = lm.model.get_input_embeddings()
    old_rows = int(weight_of(emb).shape[0])
    if new_id >= old_rows:
        out_emb = lm.model.get_output_embeddings()
        tied = out_emb is not None and out_emb.weight is emb.weight
        try:
            lm.model.resize_token_embeddings(len(tok), mean_resizing=False)
        except (AttributeError, NotImplementedError, RuntimeError, ValueError) as exc:
            raise TokenprobeError(
                f"the marker {marker!r} is not one token of this tokenizer, and transformers cannot "
                f"add a row to {type(lm.model).__name__}'s embeddings ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}): choose a marker that is already one token"
            ) from exc
        if lm.loaded_vocab is None:
            lm.loaded_vocab = old_rows
        with torch.no_grad():
            new_in = weight_of(lm.model.get_input_embeddings())
            new_in[old_rows:] = new_in[:old_rows].mean(dim=0)
            new_out = lm.model.get_output_embeddings()
            if new_out is not None and not tied and new_out.weight.shape[0] > old_rows:
                new_out.weight[old_rows:] = new_out.weight[:old_rows].mean(dim=0)
                bias = getattr(new_out, "bias", None)
                if bias is not None:
                    bias[old_rows:] = bias[:old_rows].mean()
        if lm.adapter is not None:  # resizing replaced the embedding modules
            lm.adapter = Adapter.from_model(lm.model)
        lm.seq2seq = None  # an encoder-decoder's is found again (its logits bias was resized)
    warnings.warn(
        f"marker {marker!r} was not in the tokenizer: added as token {new_id} with an untrained "
        "(mean) embedding, so the model has never seen it",
        UserWarning,
        stacklevel=2,
    )
    return new_id


# ----------------------------------------------------------------------------- prompts


def render(tokenizer: Any, prompt: str, *, chat: bool = False, system: str | None = None) -> str:
    """The prompt as the model sees it: plain, or one user turn in the chat template."""
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise TokenprobeError("this model's tokenizer has no chat template: drop `chat`")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}
    ]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode(
    tokenizer: Any, text: str, *, chat: bool
) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Ids (and character offsets when the tokenizer gives them) without a doubled BOS."""
    # A chat template writes its own special tokens; a plain prompt gets the tokenizer's BOS.
    add_special = not chat
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    else:
        ids, offsets = list(tokenizer(text, add_special_tokens=add_special)["input_ids"]), None
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids, offsets = ids[1:], (offsets[1:] if offsets else None)
    return ids, offsets


def _insert_position(
    tokenizer: Any,
    text: str,
    ids: list[int],
    offsets: list[tuple[int, int]] | None,
    *,
    chat: bool,
    after: str | None,
    before: str | None,
) -> int:
    """Token index at which to insert dummies: the end, or beside the first match of a substring."""
    if after is None and before is None:
        return len(ids)
    needle = after if after is not None else before
    assert needle is not None
    at = text.find(needle)
    if at < 0 or not needle:
        flag = "`dummy_after`" if after is not None else "`dummy_before`"
        raise TokenprobeError(
            f"{flag} {needle!r} is not in the prompt: give a substring of the (rendered) prompt"
        )
    cut = at + len(needle) if after is not None else at
    if offsets is None:
        return len(encode(tokenizer, text[:cut], chat=chat)[0])
    # Special tokens added by the tokenizer have empty offsets: they stay where they are.
    for i, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        if after is not None and start >= cut:
            return i
        if before is not None and end > cut:
            return i
    return len(ids)


def prepare(
    lm: LoadedModel,
    prompt: str,
    *,
    chat: bool = False,
    system: str | None = None,
    dummy: int = 0,
    dummy_token: str = DEFAULT_MARKER,
    dummy_after: str | None = None,
    dummy_before: str | None = None,
    max_length: int | None = None,
) -> PreparedInput:
    """Render, tokenize and insert `dummy` marker tokens; check the result fits the context."""
    if prompt is None or not str(prompt).strip():
        raise TokenprobeError("the prompt is empty: give some text as `prompt`")
    if dummy < 0:
        raise TokenprobeError(f"`dummy` must be 0 or more, not {dummy}")
    if dummy_after is not None and dummy_before is not None:
        raise TokenprobeError("give `dummy_after` or `dummy_before`, not both")
    tok = lm.tokenizer
    text = render(tok, prompt, chat=chat, system=system)
    ids, offsets = encode(tok, text, chat=chat)
    if not ids:
        raise TokenprobeError("the prompt gives no tokens: give some text as `prompt`")
    marked = None
    if dummy:
        pos = _insert_position(
            tok, text, ids, offsets, chat=chat, after=dummy_after, before=dummy_before
        )
        marker_id = ensure_marker(lm, dummy_token)
        ids = ids[:pos] + [marker_id] * dummy + ids[pos:]
        marked = (pos, pos + dummy)
    limit = max_length if max_length is not None else lm.context_length
    if limit is not None and len(ids) > limit:
        raise TokenprobeError(
            f"the prompt is {len(ids)} tokens, longer than the model's context of {limit}: shorten it"
        )
    return PreparedInput(
        prompt=prompt,
        text=text,
        input_ids=ids,
        tokens=token_texts(tok, ids),
        chat=chat,
        marked=marked,
        options={
            "chat": chat,
            "system": system,
            "dummy": dummy,
            "dummy_token": dummy_token if dummy else None,
            "dummy_after": dummy_after,
            "dummy_before": dummy_before,
        },
    )


def first_token(tokenizer: Any, text: str, param: str, does: str) -> int:
    """The id of `text`'s first token, warning (naming `param`) when it has several; `does`
    says what the caller does with that token, e.g. "the trace scores"."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise TokenprobeError(f"`{param}` {text!r} gives no token")
    if len(ids) > 1:
        first = token_texts(tokenizer, ids[:1])[0]
        warn(
            f"`{param}` {text!r} is {len(ids)} tokens; {does} its first token {first!r}",
            stacklevel=3,
        )
    return int(ids[0])


def one_token_text(tokenizer: Any, prefer: str) -> str:
    """`prefer` where the tokenizer reads it as one token it has, else one of its special
    tokens that is: for a row check that must not add a token to the tokenizer (a marker)."""
    special = [getattr(tokenizer, f"{name}_token", None) for name in ("eos", "bos", "unk", "pad")]
    for text in (prefer, *special):
        if isinstance(text, str) and text:
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) == 1 and tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text:
                return text
    return prefer


# ----------------------------------------------------------------------------- encoder-decoder


@dataclass
class Seq2SeqInput:
    """An encoder-decoder's input: the source ids its encoder reads (with the tokenizer's own
    special tokens), and the decoder ids: the model's start token, its forced tokens (a target
    language code), then the tokens of the given target prefix (no EOS after them)."""

    source: str
    input_ids: list[int]
    tokens: list[str]
    decoder_ids: list[int]
    decoder_tokens: list[str]
    forced: int  # decoder_ids[:forced] are the start and forced tokens; the target's follow
    target: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)


def prepare_seq2seq(
    lm: LoadedModel,
    source: str,
    *,
    target: str | None = None,
    target_lang: str | None = None,
    max_length: int | None = None,
) -> Seq2SeqInput:
    """Tokenize `source` for the encoder and build the decoder ids: the model's start token,
    its forced token, then `target` tokenized as the target side (`text_target`), without the
    tokenizer's special tokens (its EOS, a language code the forced token already gives)."""
    if source is None or not str(source).strip():
        raise TokenprobeError("the source text is empty: give some text as `source`")
    tok = lm.tokenizer
    ids = [int(i) for i in tok(source)["input_ids"]]
    decoder = decoder_prefix(lm, target_lang)
    forced = len(decoder)
    if target is not None:
        given = [int(i) for i in tok(text_target=target, add_special_tokens=False)["input_ids"]]
        if not given:
            raise TokenprobeError(f"the target {target!r} gives no tokens: give some text")
        decoder += given
    limit = max_length if max_length is not None else lm.context_length
    for what, seq in (("source", ids), ("decoder input", decoder)):
        if limit is not None and len(seq) > limit:
            raise TokenprobeError(
                f"the {what} is {len(seq)} tokens, longer than the model's context of {limit}: "
                "shorten it"
            )
    return Seq2SeqInput(
        source=source,
        input_ids=ids,
        tokens=token_texts(tok, ids),
        decoder_ids=decoder,
        decoder_tokens=token_texts(tok, decoder),
        forced=forced,
        target=target,
        options={"target": target, "target_lang": target_lang},
    )
