"""The logit lens of an encoder-decoder model: the prompt is the source the encoder reads; the
decoder reads its start token, the token forced after it (`target_lang`) and `decoder_text`;
every decoder layer's residual state at every decoder position is decoded as the model decodes
its last one (`Seq2SeqAdapter.logits`). Encoder layers are left out: no head reads them, they
predict no next token."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import TokenprobeError
from ...model import LoadedModel
from ...model.seq2seq import Seq2SeqAdapter
from ...model.seq2seq_input import pad_batch
from ...provenance import provenance
from ...runner import pad_id_of
from ...text import Seq2SeqInput, prepare_seq2seq
from .decoders import Decoder, LogitDecoder
from .options import LensOptions
from .result import LensResult
from .run import LensRun
from .stats import _Stats

ROWS = (
    "decoder layers: layer 0 = the decoder's embeddings (block 0 input), layer i = decoder "
    "block i output (decoder final norm + head), 'output' = the model's logits; positions are "
    "the decoder's (start token, forced token, decoder text); encoder layers are left out: no "
    "head reads them, they predict no next token"
)
# what an encoder-decoder cannot take, and why (checked before the model runs)
_REFUSED = {
    "lens": "a tuned lens is trained on a causal model's layers, not an encoder-decoder's "
    "decoder: leave out `lens` (the logit lens decodes the decoder's layers)",
    "chat": "an encoder-decoder's source is not a chat: leave out `chat` and `system`",
    "system": "an encoder-decoder's source is not a chat: leave out `chat` and `system`",
    "dummy": "the dummy tokens would go into the source, whose positions the lens does not "
    "decode: leave out `dummy` (write them into the prompt or `decoder_text` instead)",
}
_CAUSAL_ONLY = ("target_lang", "decoder_text")


def check_options(lm: LoadedModel, o: LensOptions) -> None:
    """What the model's kind refuses of the settings, in one line: a tuned lens, chat and
    dummies on an encoder-decoder; `target_lang` and `decoder_text` on a causal LM."""
    if lm.is_seq2seq:
        for name, why in _REFUSED.items():
            if getattr(o, name) is not None if name == "lens" else getattr(o, name):
                raise TokenprobeError(f"`{name}` on an encoder-decoder model ({lm.name}): {why}")
        return
    for name in _CAUSAL_ONLY:
        if getattr(o, name) is not None:
            raise TokenprobeError(
                f"`{name}` is for encoder-decoder models; {lm.name} is a causal LM: leave it out "
                "(its prompt is all it reads)"
            )


def prepare_source(lm: LoadedModel, prompt: str, o: LensOptions) -> Seq2SeqInput:
    """A prompt as the encoder-decoder lens reads it: the source, and the decoder's ids."""
    if prompt is None or not str(prompt).strip():
        raise TokenprobeError("the prompt is empty: give the source text the encoder reads")
    return prepare_seq2seq(lm, prompt, target=o.decoder_text, target_lang=o.target_lang)


def target_side_ids(lm: LoadedModel, text: str) -> list[int]:
    """`text`'s ids as the decoder writes it (the tokenizer's target side: Marian and FSMT
    have their own target vocabulary)."""
    return [int(i) for i in lm.tokenizer(text_target=text, add_special_tokens=False)["input_ids"]]


def vocab_of(adapter: Seq2SeqAdapter) -> int:
    """The decoder's vocabulary: the width of its head's output (T5Gemma's head is a module
    around a linear map, FSMT's the target vocabulary's)."""
    linear = [m for m in adapter.unembed.modules() if isinstance(m, nn.Linear)]
    if len(linear) == 1:
        return int(linear[0].out_features)
    param = next(adapter.unembed.parameters())
    with torch.no_grad():
        return int(adapter.logits(param.new_zeros((1, adapter.width))).shape[-1])


class Seq2SeqLens(LensRun):
    """An encoder-decoder's lens: each decoder layer at each decoder position."""

    def __init__(
        self,
        lm: LoadedModel,
        inputs: list[Seq2SeqInput],
        ids: tuple[list[int], int | None],
        top_k: int,
        memory_mb: float | None,
        decoder: Decoder | None,
    ) -> None:
        adapter = lm.require_seq2seq()
        chosen = decoder if decoder is not None else LogitDecoder(adapter)
        super().__init__(lm, adapter, ids, top_k, memory_mb, chosen, vocab_of(adapter))
        self.inputs = inputs
        pad = getattr(lm.model.config, "pad_token_id", None)
        self.pad = pad if isinstance(pad, int) else pad_id_of(lm.tokenizer)

    def length(self, inp: Seq2SeqInput) -> int:
        """What one input costs a forward pass: its source and its decoder tokens."""
        return len(inp.input_ids) + len(inp.decoder_ids)

    def run(self, batch: list[int]) -> list[_Stats]:
        """Statistics (rows, decoder positions) of each input of the batch: decoder layers
        0..L-1, then the model's own logits."""
        lm, n_blocks = self.lm, self.adapter.n_blocks
        chosen = [self.inputs[i] for i in batch]
        given = pad_batch(
            [x.input_ids for x in chosen], [x.decoder_ids for x in chosen], self.pad, lm.device
        )
        with torch.inference_mode():
            with self.adapter.record() as streams:
                fwd = lm.model(**given, use_cache=False)
            hidden = streams.decoder
            if len(hidden) != n_blocks + 1:
                raise TokenprobeError(
                    f"{type(lm.model).__name__} ran its decoder blocks {len(hidden) - 1} times "
                    f"for {n_blocks} blocks in one forward pass; cannot tell which state is "
                    "which layer's"
                )
            valid = given["decoder_attention_mask"].bool()
            if self.check == "not run":  # before any inner row is decoded
                self.check = self._check(hidden[n_blocks][valid], fwd.logits[valid])
            states = [hidden[layer][valid] for layer in range(n_blocks)]
            inner, outer = self.stats(states, fwd.logits[valid])
        return self.split([len(x.decoder_ids) for x in chosen], inner, outer)

    def _check(self, last: torch.Tensor, logits: torch.Tensor) -> str:
        """The decoder head must turn the last decoder block's output into the model's own
        logits at the first `chunk` decoder positions of the batch, else one line."""
        last, ref = last[: self.chunk], logits[: self.chunk].float()
        rebuilt = self.adapter.logits(last)
        error = float((rebuilt - ref).abs().max())
        tol = 1e-3 if self.lm.dtype in (torch.float32, torch.float64) else 5e-2
        limit = tol * max(1.0, float(ref.abs().max()))
        if not error <= limit:
            raise TokenprobeError(
                f"{type(self.lm.model).__name__}: its decoder head does not rebuild the model's "
                f"logits from its last decoder block (largest error {error:.3g}, tolerance "
                f"{limit:.2g}): its decoder layers cannot be decoded"
            )
        return "ok"

    @staticmethod
    def given(inp: Seq2SeqInput) -> dict[str, Any]:
        """The input's settings meta.json records."""
        return {"decoder_text": inp.target, "target_lang": inp.options.get("target_lang")}

    def result(
        self, inp: Seq2SeqInput, st: _Stats, targets: list[str], foil: str | None, options: dict
    ) -> LensResult:
        adapter = self.adapter
        meta: dict[str, Any] = {
            "analysis": "logit lens",
            **provenance(self.lm, {**self.given(inp), **options}).meta(),
            "prompt": inp.source,
            "text": inp.source,
            "source_ids": list(inp.input_ids),
            "source_tokens": list(inp.tokens),
            "decoder_text": inp.target,
            "token_ids": list(inp.decoder_ids),
            "decoder_forced": inp.forced,
            "marked": None,
            "rows": ROWS,
            "encoder_layers": "left out: no head reads the encoder's states, they predict no "
            "next token",
            "decoder_head": [adapter.decoder.final_norm_path or "no final norm", *adapter.notes],
            "softcap": adapter.softcap,
            "output_check": None,
        }
        return self.make_result(
            st,
            list(inp.decoder_tokens),
            list(inp.decoder_ids),
            targets,
            foil,
            meta,
            side="decoder",
        )
