"""Attention patterns of an encoder-decoder model: the prompt is the source the encoder reads;
the decoder reads its start token, the token forced after it (`target_lang`) and
`decoder_text`. `stack` picks the attention shown: the encoder's self-attention (source x
source), the decoder's causal self-attention (decoder x decoder) or the decoder's
cross-attention (decoder positions as queries x source positions as keys). The weights are
read as for a causal model (`capture`): each attention call of the chosen modules, while the
model runs with its own kernel, gives the family's eager weights (T5's relative position bias
included); families whose attention is written inline (MVP, LED, FSMT) are eager-only and
give them through their own `output_attentions`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import TokenprobeError
from ...model import LoadedModel
from ...model.seq2seq import cross_attentions
from ...model.seq2seq_input import pad_batch
from ...runner import pad_id_of
from ...text import Seq2SeqInput, prepare_seq2seq
from . import capture
from .check import compare

CHECK_ROWS = 256  # the last query rows of the first recorded layer compared with eager
OUTPUTS = {
    "encoder": "encoder_attentions",
    "decoder": "decoder_attentions",
    "cross": "cross_attentions",
}
_REFUSED = {  # settings an encoder-decoder cannot take, and why
    "chat": "an encoder-decoder's source is not a chat: leave out `chat` and `system`",
    "system": "an encoder-decoder's source is not a chat: leave out `chat` and `system`",
}
_SEQ2SEQ_ONLY = ("stack", "target_lang", "decoder_text")


def check_options(lm: LoadedModel, o: Any) -> None:
    """What the model's kind refuses of the settings, in one line: chat and system on an
    encoder-decoder; `stack`, `target_lang` and `decoder_text` on a causal LM."""
    if lm.is_seq2seq:
        for name, why in _REFUSED.items():
            if getattr(o, name):
                raise TokenprobeError(f"`{name}` on an encoder-decoder model ({lm.name}): {why}")
        return
    for name in _SEQ2SEQ_ONLY:
        if getattr(o, name) is not None:
            raise TokenprobeError(
                f"`{name}` is for encoder-decoder models; {lm.name} is a causal LM: leave it out "
                "(its prompt's self-attention is shown)"
            )


@dataclass
class Sides:
    """The queries' and keys' tokens of the chosen stack, and whether its attention is causal."""

    stack: str
    inp: Seq2SeqInput
    queries: list[str] = field(init=False)
    keys: list[str] = field(init=False)
    causal: bool = field(init=False)

    def __post_init__(self) -> None:
        source, decoder = self.inp.tokens, self.inp.decoder_tokens
        self.queries = source if self.stack == "encoder" else decoder
        self.keys = decoder if self.stack == "decoder" else source
        self.causal = self.stack == "decoder"

    def key_ids(self) -> list[int]:
        return self.inp.decoder_ids if self.stack == "decoder" else self.inp.input_ids


def prepare(lm: LoadedModel, prompt: str, o: Any) -> tuple[Sides, dict[str, torch.Tensor]]:
    """The source and decoder ids of `prompt` and the model inputs (a batch of one)."""
    if prompt is None or not str(prompt).strip():
        raise TokenprobeError("the prompt is empty: give the source text the encoder reads")
    inp = prepare_seq2seq(lm, prompt, target=o.decoder_text, target_lang=o.target_lang)
    pad = getattr(lm.model.config, "pad_token_id", None)
    pad = pad if isinstance(pad, int) else pad_id_of(lm.tokenizer)
    inputs = pad_batch([inp.input_ids], [inp.decoder_ids], pad, lm.device)
    return Sides(o.stack or "cross", inp), inputs


def owners(lm: LoadedModel, stack: str) -> dict[int, int]:
    """id(module) -> block for the modules of the chosen attention: the encoder's blocks, the
    decoder's blocks less their cross-attention, or each decoder block's cross-attention."""
    adapter = lm.require_seq2seq()
    crossing = [module for _, module in cross_attentions(adapter)]
    roots = {"encoder": list(adapter.encoder.blocks), "cross": crossing}
    chosen = roots.get(stack, list(adapter.decoder.blocks))
    left_out = {id(m) for c in crossing for m in c.modules()} if stack == "decoder" else set()
    out = {}
    for b, root in enumerate(chosen):
        for module in root.modules():
            if id(module) not in left_out:
                out[id(module)] = b
    return out


@contextmanager
def eager(lm: LoadedModel) -> Iterator[str]:
    """The model switched to eager attention while inside (yields its own implementation, put
    back after): the weights are then those its `output_attentions` returns."""
    model = lm.model
    before = str(model.config._attn_implementation)
    try:
        if before != "eager":
            model.set_attn_implementation("eager")
        if model.config._attn_implementation != "eager":
            raise TokenprobeError(
                f"{type(model).__name__} cannot switch to eager attention to give its attention "
                "weights: load it with attn_implementation='eager'"
            )
        yield before
    finally:
        if model.config._attn_implementation != before:
            model.set_attn_implementation(before)


def record(
    lm: LoadedModel, inputs: dict[str, torch.Tensor], stack: str, keep: capture.Keep, check: bool
) -> tuple[str, Any]:
    """One eager forward giving `keep(block, weights (heads, queries, keys))` for each block
    of the chosen attention; the kernel named, and the model's own `output_attentions` for
    that attention where `check` asks for them (None otherwise)."""
    with eager(lm) as own, torch.inference_mode():
        if capture.uses_interface(lm):
            with capture.recording(lm, keep, owners(lm, stack)) as rec:
                out = lm.model(**inputs, use_cache=False, output_attentions=check)
            if rec.modules:  # else written inline (BigBird-Pegasus's encoder): as below
                found = getattr(out, OUTPUTS[stack], None) if check else None
                return f"eager (the family's eager_attention_forward; its own: {own})", found
        out = lm.model(**inputs, use_cache=False, output_attentions=True)
    for b, weights in enumerate(getattr(out, OUTPUTS[stack], None) or ()):
        if isinstance(weights, torch.Tensor):
            keep(b, weights[0])
    return "the model's own eager forward with output_attentions=True", None


def refuse_shape(lm: LoadedModel, stack: str, got: tuple[int, ...] | None, want: tuple) -> None:
    """One line when the chosen attention gave no weights, or weights that are not one
    softmax over the keys for each query (LED's, LongT5's, Pegasus-X's local encoders)."""
    if got is not None and tuple(got[1:]) == tuple(want):
        return
    adapter = lm.require_seq2seq()
    block = (adapter.encoder if stack == "encoder" else adapter.decoder).blocks[0]
    kinds = sorted({type(m).__name__ for m in block.modules() if "Attention" in type(m).__name__})
    what = f"weights of shape {tuple(got)}" if got is not None else "no weights"
    raise TokenprobeError(
        f"{type(lm.model).__name__}'s {stack} attention ({', '.join(kinds) or 'none found'}) gave "
        f"{what}, not (heads, {want[0]} queries, {want[1]} keys): it is not one softmax over "
        "the keys (local or block attention); give another --stack"
    )


def eager_check(
    found: Any, first: dict[int, torch.Tensor], rows: dict, query: int, dtype: Any
) -> dict:
    """Our first recorded layer's last rows, and every layer's `query` row, against the
    model's own `output_attentions` of the same forward."""
    if not found or not all(isinstance(a, torch.Tensor) for a in found):
        return {"skipped": "the model returned no attention weights for this stack"}
    layer, ours = next(iter(first.items()))
    theirs = found[layer][0].float().cpu()
    n = theirs.shape[1]
    out = compare(ours, theirs, slice(max(0, n - ours.shape[1]), n), dtype)
    for b, row in rows.items():
        one = found[b][0][:, query : query + 1].float().cpu()
        worst = compare(row[:, None, :], one, slice(0, 1), dtype)["max_abs_diff"]
        out["max_abs_diff"] = max(out["max_abs_diff"], worst)
    return {"layer": layer, "rows_of_every_layer": query, **out}


def spans(tokenizer: Any, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text of `ids` as the tokenizer decodes it (special tokens left out) and each
    token's character span in it, from decoding every prefix (slow tokenizers included)."""
    text, out = "", []
    for i in range(len(ids)):
        now = tokenizer.decode(
            ids[: i + 1], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        out.append((min(len(text), len(now)), len(now)))
        text = now
    return text, out


def key_positions(lm: LoadedModel, sides: Sides, text: str, query: int) -> list[int]:
    """The key positions of the tokens covering the last occurrence of `text` on the keys'
    side (the source; the decoder's input for `stack` decoder, at or before `query`)."""
    decoded, offsets = spans(lm.tokenizer, sides.key_ids())
    found: list[int] = []
    start = decoded.find(text)
    while text and start >= 0:
        end = start + len(text)
        span = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
        if span and (not sides.causal or span[-1] <= query):
            found = span
        start = decoded.find(text, start + 1)
    if not found:
        where = "the decoder's input" if sides.causal else "the source (the prompt)"
        at = f" at or before position {query}" if sides.causal else ""
        raise TokenprobeError(
            f"--to {text!r} is not in {where}{at} ({decoded!r}): give text that it holds (mind "
            "the leading space)"
        )
    return found
