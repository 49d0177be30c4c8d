"""`lens_eval`: how far each layer's decoded distribution is from the model's final one (KL)
and how well it predicts the next token (cross-entropy), through the logit lens and through a
tuned lens, on held-out text (the tuned lens paper's figure 2).

One forward pass per batch gives every layer's states; each layer is decoded both ways in
chunks of rows sized by a memory budget, and only sums are kept."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ...model import LoadedModel
from ...model.adapter import weight_of
from ...provenance import provenance
from ...tuned import TunedDecoder, TunedLens, load_lens, pack, read_corpus
from ...tuned.corpus import check_seq_len
from ...tuned.lens import check_lens
from ...tuned.train import rowdot
from ..settings import with_options
from .options import LensEvalOptions
from .result import LENSES, LensEvalResult

DEFAULT_MEMORY_MB = {"cpu": 512, "cuda": 4096}


@with_options(LensEvalOptions)
def lens_eval(
    lm: LoadedModel,
    lens: str | os.PathLike[str] | TunedLens,
    data: str | Sequence[str],
    *,
    options: LensEvalOptions,
    progress: bool | None = None,
) -> LensEvalResult:
    """Per layer, mean KL(final || layer) and next-token cross-entropy (nats) over up to
    `tokens` tokens of `data` packed into `seq_len` sequences, for the logit lens and for
    `lens` (a tuned lens or the folder it was saved in). `options` (or its settings as
    keyword arguments): see `LensEvalOptions`."""
    tokens, seq_len, text_column = options.tokens, options.seq_len, options.text_column
    source = (
        str(lens) if not isinstance(lens, TunedLens) else lens.info.get("path", "a lens in memory")
    )
    tuned = load_lens(lens, lm) if not isinstance(lens, TunedLens) else lens
    if isinstance(lens, TunedLens):
        check_lens(lens, lm, "`lens` (in memory)")
    check_seq_len(seq_len, lm.context_length)
    max_seq = max(1, tokens // seq_len)
    sequences = pack(read_corpus(data, text_column), lm.tokenizer, seq_len, max_sequences=max_seq)
    adapter = lm.require_adapter()
    decoders = {"logit": None, "tuned": TunedDecoder(tuned.to(lm.device), adapter)}
    n_blocks = adapter.n_blocks
    kl, ce = _sums(lm, sequences, decoders, options, progress)
    n_kl = sequences.numel()
    n_ce = len(sequences) * (seq_len - 1)
    return LensEvalResult(
        layer_labels=[str(i) for i in range(n_blocks)] + ["output"],
        kl=kl / n_kl,
        ce=ce / n_ce,
        n_tokens=n_kl,
        meta={
            "analysis": "lens evaluation",
            **provenance(
                lm,
                {
                    "tokens": tokens,
                    "seq_len": seq_len,
                    "sequences": len(sequences),
                    "batch_tokens": options.batch_tokens,
                    "text_column": text_column,
                },
            ).meta(),
            "lens": {"path": source, **{k: v for k, v in tuned.info.items() if k != "training"}},
            "data": data if isinstance(data, str) else f"{len(data)} texts",
            "rows": "layer 0 = embeddings, layer i = block i output, 'output' = the model's logits; "
            "kl = KL(final || layer) over every position, ce = next-token cross-entropy (nats)",
        },
    )


def _sums(
    lm: LoadedModel,
    sequences: torch.Tensor,
    decoders: dict,
    options: LensEvalOptions,
    progress: bool | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed KL and cross-entropy (lens, layer) over `sequences`, `batch_tokens` tokens per
    forward pass and the logits of `memory_mb` decoded at once."""
    adapter = lm.require_adapter()
    vocab = int(weight_of(adapter.unembed).shape[0])
    memory_mb = options.memory_mb
    if memory_mb is None:
        memory_mb = DEFAULT_MEMORY_MB["cuda" if lm.device.type == "cuda" else "cpu"]
    rows = max(1, int(memory_mb * 2**20) // (vocab * 4 * 3))
    kl = np.zeros((len(LENSES), adapter.n_blocks + 1))
    ce = np.zeros((len(LENSES), adapter.n_blocks + 1))
    micro = max(1, options.batch_tokens // options.seq_len)
    disable = None if progress is None else not progress
    with tqdm(
        total=sequences.numel(), desc="lens-eval", unit="tok", unit_scale=True, disable=disable
    ) as bar:
        for start in range(0, len(sequences), micro):
            ids = sequences[start : start + micro].to(lm.device)
            _batch(lm, ids, decoders, rows, kl, ce)
            bar.update(ids.numel())
    return kl, ce


def _batch(
    lm: LoadedModel, ids: torch.Tensor, decoders: dict, rows: int, kl: np.ndarray, ce: np.ndarray
) -> None:
    """Add one batch's summed KL and cross-entropy to `kl` and `ce` (lens, layer)."""
    adapter = lm.require_adapter()
    n_blocks = adapter.n_blocks
    b, t = ids.shape
    with torch.inference_mode():
        with adapter.record() as hidden:
            logits = lm.model(input_ids=ids, use_cache=False).logits
        logp = torch.log_softmax(logits.flatten(0, -2).float(), dim=-1)
        del logits
        p = logp.exp()
        plogp = rowdot(p, logp)
        flat = ids.flatten()
        has_next = (torch.arange(b * t, device=ids.device) % t) != t - 1
        target = torch.roll(flat, -1)
        final_ce = -logp.gather(1, target[:, None])[:, 0][has_next].sum()
        ce[:, n_blocks] += float(final_ce)
        del logp
        for layer in range(n_blocks):
            h = hidden[layer].flatten(0, -2)
            for r in range(0, h.shape[0], rows):
                sl = slice(r, r + rows)
                for i, decoder in enumerate(decoders.values()):
                    out = adapter.logits(h[sl]) if decoder is None else decoder.decode(h[sl], layer)
                    logq = torch.log_softmax(out.float(), dim=-1)
                    kl[i, layer] += float((plogp[sl] - rowdot(p[sl], logq)).sum())
                    nll = -logq.gather(1, target[sl, None])[:, 0]
                    ce[i, layer] += float(nll[has_next[sl]].sum())
