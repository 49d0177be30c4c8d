"""One lens run over prepared inputs, a batch in and per-input statistics out: what a causal
LM's run (`CausalLens`) and an encoder-decoder's (`seq2seq.Seq2SeqLens`) share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ...errors import TokenprobeError
from ...model import LoadedModel
from ...model.adapter import weight_of
from ...provenance import provenance
from ...runner import pad_batch, pad_id_of
from ...text import PreparedInput, token_texts
from .check import check_output_row, check_rows
from .decoders import Decoder, LogitDecoder
from .result import LensResult
from .stats import Scratch, _Stats, cat_stats, stats_in_chunks

# logits decoded at once (MB) when not given; on an H100, 2048 brought the lens to 1.07-1.19x the
# time of decoding every layer at once (512: 1.66x) in a seventh of that one's memory
DEFAULT_MEMORY_MB = {"cpu": 512, "cuda": 2048}


def _at(decoder: Decoder, layer: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`decoder` at one layer (None: a shared decoder, every layer)."""
    return lambda x: decoder.decode(x, layer)


def layer_stats(
    decoder: Decoder,
    states: list[torch.Tensor],
    chunk: int,
    top_k: int,
    ids: tuple[torch.Tensor, torch.Tensor],
    scratch: Scratch,
) -> _Stats:
    """Statistics of layers 0..L-1 (each (n, width)), layer-major: decoded together when the
    decoder is the same for every layer, else layer by layer."""
    if decoder.shared:
        rows = torch.cat(states)
        return stats_in_chunks(_at(decoder, None), rows, chunk, top_k, ids, scratch)
    return cat_stats(
        [
            stats_in_chunks(_at(decoder, i), h, chunk, top_k, ids, scratch)
            for i, h in enumerate(states)
        ]
    )


class LensRun:
    """What every lens run keeps: the tracked ids, the decoding chunk, the decoder, the output
    check's verdict; `stats` and `split` turn a batch's states into per-input statistics."""

    def __init__(
        self,
        lm: LoadedModel,
        adapter: Any,
        ids: tuple[list[int], int | None],
        top_k: int,
        memory_mb: float | None,
        decoder: Decoder,
        vocab: int,
    ) -> None:
        self.lm, self.adapter, self.decoder = lm, adapter, decoder
        self.tids, self.fid = ids
        self.top_k = min(top_k, vocab)
        device = lm.device
        if memory_mb is None:
            memory_mb = DEFAULT_MEMORY_MB["cuda" if device.type == "cuda" else "cpu"]
        target_t = torch.tensor(self.tids, dtype=torch.long, device=device)
        pair = [self.tids[0], self.fid] if self.fid is not None else []
        self.ids = (target_t, torch.tensor(pair, dtype=torch.long, device=device))
        # float32 logits plus ~3 temporaries of the same size per decoded row
        self.chunk = max(1, int(memory_mb * 2**20) // (vocab * 4 * 4))
        self.check = "not run"
        self.target_texts = token_texts(lm.tokenizer, self.tids)
        self.layer_labels = [str(i) for i in range(adapter.n_blocks)] + ["output"]

    def stats(self, states: list[torch.Tensor], logits: torch.Tensor) -> tuple[_Stats, _Stats]:
        """Statistics of the inner layers' states (each (n, width)) and of the model's own
        logits (n, vocabulary)."""
        scratch = Scratch()  # the chunks' work buffers, reused by every chunk of the batch
        inner = layer_stats(self.decoder, states, self.chunk, self.top_k, self.ids, scratch)
        outer = stats_in_chunks(lambda x: x, logits, self.chunk, self.top_k, self.ids, scratch)
        return inner, outer

    def split(self, lengths: list[int], inner: _Stats, outer: _Stats) -> list[_Stats]:
        """Back per input (of these numbers of positions): (rows, positions) of each statistic."""
        n_blocks, n = self.adapter.n_blocks, sum(lengths)
        fields = {  # (rows, n, ...) of each statistic, moved off the device once
            f: torch.cat(
                [
                    getattr(inner, f).reshape(n_blocks, n, *getattr(inner, f).shape[1:]),
                    getattr(outer, f)[None],
                ]
            ).cpu()
            for f in _Stats.__dataclass_fields__
        }
        results, offset = [], 0
        for length in lengths:
            results.append(_Stats(**{f: w[:, offset : offset + length] for f, w in fields.items()}))
            offset += length
        return results

    def make_result(
        self,
        st: _Stats,
        tokens: list[str],
        token_ids: list[int],
        targets: list[str],
        foil: str | None,
        meta: dict[str, Any],
        **fields: Any,
    ) -> LensResult:
        """A `LensResult` of one input's statistics; `meta` (provenance, the input) first."""
        tids, fid = self.tids, self.fid
        top_ids = st.top_ids.numpy().astype(np.int64)
        uniq, inverse = np.unique(top_ids, return_inverse=True)
        texts = np.asarray(token_texts(self.lm.tokenizer, uniq.tolist()), dtype=object)
        diff = st.logit_diff[..., 0].numpy().astype(np.float32) if fid is not None else None
        return LensResult(
            tokens=tokens,
            token_ids=token_ids,
            layer_labels=self.layer_labels,
            entropy=st.entropy.numpy().astype(np.float32),
            top_ids=top_ids,
            top_tokens=texts[inverse.reshape(top_ids.shape)],
            top_probs=st.top_probs.numpy().astype(np.float32),
            targets=targets,
            target_ids=tids,
            target_probs=st.target_probs.numpy().astype(np.float32) if tids else None,
            target_ranks=st.target_ranks.numpy().astype(np.int64) if tids else None,
            foil=foil if fid is not None else None,
            logit_diff=diff,
            meta={
                **meta,
                "targets": targets,
                "target_ids": tids,
                "target_tokens": self.target_texts,
                "foil": foil if fid is not None else None,
                "foil_id": fid,
                "foil_token": token_texts(self.lm.tokenizer, [fid])[0] if fid is not None else None,
            },
            **fields,
        )


class CausalLens(LensRun):
    """A causal LM's lens: every layer of its one residual stream at every prompt position."""

    def __init__(
        self,
        lm: LoadedModel,
        inputs: list[PreparedInput],
        ids: tuple[list[int], int | None],
        top_k: int,
        memory_mb: float | None,
        decoder: Decoder | None,
    ) -> None:
        adapter = lm.require_adapter()
        chosen = decoder if decoder is not None else LogitDecoder(adapter)
        vocab = int(weight_of(adapter.unembed).shape[0])
        super().__init__(lm, adapter, ids, top_k, memory_mb, chosen, vocab)
        self.inputs = inputs
        self.pad = pad_id_of(lm.tokenizer)

    def length(self, inp: PreparedInput) -> int:
        return len(inp)

    def run(self, batch: list[int]) -> list[_Stats]:
        """Statistics (rows, positions) of each input of the batch: layers 0..L-1, then the
        model's own logits."""
        lm, n_blocks = self.lm, self.adapter.n_blocks
        ids, mask = pad_batch([self.inputs[i].input_ids for i in batch], self.pad, lm.device)
        with torch.inference_mode():
            with self.adapter.record() as hidden:  # input of block 0, then each block's output
                fwd = lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
            if len(hidden) != n_blocks + 1:
                raise TokenprobeError(
                    f"{type(lm.model).__name__} ran its blocks {len(hidden) - 1} times for "
                    f"{n_blocks} blocks in one forward pass; cannot tell which state is which "
                    "layer's"
                )
            valid = mask.bool()
            if self.check == "not run":  # before any inner row is decoded by the adapter's head
                rows, positions = check_rows(valid, self.chunk)
                self.check = check_output_row(
                    lm, hidden[n_blocks][rows, positions], fwd.logits[rows, positions]
                )
            states = [hidden[layer][valid] for layer in range(n_blocks)]
            inner, outer = self.stats(states, fwd.logits[valid])
        return self.split([len(self.inputs[i].input_ids) for i in batch], inner, outer)

    def result(
        self, inp: PreparedInput, st: _Stats, targets: list[str], foil: str | None, options: dict
    ) -> LensResult:
        adapter = self.adapter
        rows = (
            "layer 0 = embeddings, layer i = block i output (final norm + unembedding), "
            "'output' = the model's logits"
        )
        if adapter.streams > 1:
            rows += (
                f"; the blocks carry {adapter.streams} streams, decoded merged as the model "
                "merges its last block's"
            )
        meta = {
            "analysis": "logit lens",
            # after the output check: the head it found
            **provenance(self.lm, {**inp.options, **options}).meta(),
            "prompt": inp.prompt,
            "text": inp.text,
            "token_ids": list(inp.input_ids),
            "marked": list(inp.marked) if inp.marked else None,
            "rows": rows,
            "softcap": adapter.softcap,
            "logit_multiplier": adapter.logit_multiplier,
            "output_check": None,
        }
        return self.make_result(
            st, list(inp.tokens), list(inp.input_ids), targets, foil, meta, marked=inp.marked
        )
