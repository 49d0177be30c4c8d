"""Logit lens: decode every layer's residual stream at every position through the final norm
and unembedding, keeping only entropy, top-k and target statistics.

One forward pass per batch gives all hidden states; the intermediate rows are unembedded in
chunks sized by a memory budget, so a (layers x positions x vocabulary) array never exists.
The last row is the model's own logits (its last hidden state is already normed: norming it
again would be wrong). Before any inner row is decoded, the adapter's head must rebuild those
logits from the last block's output (`Adapter.check_head`), else the lens stops with an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ...errors import TokenprobeError, text_list
from ...model import LoadedModel
from ...model.adapter import weight_of
from ...provenance import provenance
from ...runner import map_batches, pad_batch, pad_id_of, progress_disabled, token_budget_batches
from ...text import PreparedInput, prepare, token_texts
from ...tuned.lens import TunedLens, check_lens
from ..settings import with_options
from .check import check_output_row, check_rows
from .decoders import Decoder, LogitDecoder, tuned_decoder
from .options import LensOptions
from .result import LensResult
from .stats import Scratch, _Stats, cat_stats, stats_in_chunks

# logits decoded at once (MB) when not given; on an H100, 2048 brought the lens to 1.07-1.19x the
# time of decoding every layer at once (512: 1.66x) in a seventh of that one's memory
DEFAULT_MEMORY_MB = {"cpu": 512, "cuda": 2048}


def _at(decoder: Decoder, layer: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`decoder` at one layer (None: a shared decoder, every layer)."""
    return lambda x: decoder.decode(x, layer)


def _layer_stats(
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


def _first_token(lm: LoadedModel, text: str, what: str, param: str, does: str) -> int:
    """The id of `text`'s first token; a warning when it has several (`does`: what the lens
    does with that first token)."""
    enc = lm.tokenizer.encode(text, add_special_tokens=False)
    if not enc:
        raise TokenprobeError(f"the {what} {text!r} (`{param}`) gives no token")
    if len(enc) > 1:
        first = token_texts(lm.tokenizer, enc[:1])[0]
        warnings.warn(
            f"{what} {text!r} is {len(enc)} tokens; the lens {does} its first token {first!r}",
            UserWarning,
            stacklevel=4,
        )
    return int(enc[0])


def _target_ids(lm: LoadedModel, targets: Sequence[str]) -> list[int]:
    ids = []
    for target in targets:
        if not target:
            raise TokenprobeError(
                "a target in `targets` is empty: give the token text, e.g. ' Canberra'"
            )
        ids.append(_first_token(lm, target, "target", "targets", "tracks"))
    return ids


def _foil_id(
    lm: LoadedModel, foil: str | None, targets: Sequence[str], tids: list[int]
) -> int | None:
    """The foil's token id, checked against the first target it is compared with."""
    if foil is None:
        return None
    if not foil:
        raise TokenprobeError("`foil` is empty: give the token text, e.g. ' Sydney'")
    if not targets:
        raise TokenprobeError(
            "`foil` needs a target to compare with: give `targets` too (the difference is "
            "logit(first target) - logit(foil))"
        )
    fid = _first_token(lm, foil, "foil", "foil", "compares")
    if fid == tids[0]:
        same = token_texts(lm.tokenizer, [fid])[0]
        raise TokenprobeError(
            f"`foil` {foil!r} is the same token ({same!r}) as the target {targets[0]!r} it is "
            "compared with: give a different foil"
        )
    return fid


@with_options(LensOptions)
def logit_lens(
    lm: LoadedModel,
    prompts: str | PreparedInput | Sequence[str | PreparedInput],
    *,
    options: LensOptions,
    progress: bool | None = None,
    decoder: Decoder | None = None,
) -> LensResult | list[LensResult]:
    """Logit lens of one prompt (returns a result) or many (returns a list, batched).

    `options` (or its settings as keyword arguments: see `LensOptions`): `memory_mb` bounds
    the float32 logits decoded at once (default 512 on the CPU, 2048 on a GPU, where fewer and
    larger kernels pay); `batch_tokens` bounds the padded tokens of one forward pass. `foil`
    adds the logit difference logit(first target) - logit(foil) of every cell, taken from the
    decoded logits (the "output" row: the model's own). `lens`: a tuned lens (a `tune-lens` or
    tuned-lens package folder, or a `TunedLens`) decodes every inner layer. `decoder` turns
    each layer's states into logits (default: the model's own final norm and unembedding, the
    logit lens proper; a tuned lens is another decoder).
    """
    o = options
    single = isinstance(prompts, (str, PreparedInput))
    items: list[str | PreparedInput] = (
        [prompts] if isinstance(prompts, (str, PreparedInput)) else list(prompts)
    )
    if not items:
        raise TokenprobeError("no prompts given")
    targets = text_list(o.targets, "targets") or []
    inputs = [p if isinstance(p, PreparedInput) else _prepare(lm, p, o) for p in items]
    about = None
    if o.lens is not None:
        decoder, about = tuned_decoder(lm, o.lens, decoder)
        if isinstance(o.lens, TunedLens):  # a folder's lens was checked as it was read
            check_lens(o.lens, lm, "`lens` (in memory)")
    tids = _target_ids(lm, targets)
    fid = _foil_id(lm, o.foil, targets, tids)
    run = _Lens(lm, inputs, tids, fid, o.top_k, o.memory_mb, decoder)
    out = _decode_all(run, inputs, targets, o, progress)
    for r in out:
        r.meta["output_check"] = run.check
        if about is not None:
            r.meta["analysis"], r.meta["lens"] = "tuned lens", about
    return out[0] if single else out


def _prepare(lm: LoadedModel, prompt: str, o: LensOptions) -> PreparedInput:
    """A prompt as the lens reads it: rendered (chat), tokenised, its dummies inserted."""
    return prepare(
        lm,
        prompt,
        chat=o.chat,
        system=o.system,
        dummy=o.dummy,
        dummy_token=o.dummy_token,
        dummy_after=o.dummy_after,
        dummy_before=o.dummy_before,
    )


def _decode_all(
    run: _Lens,
    inputs: list[PreparedInput],
    targets: list[str],
    o: LensOptions,
    progress: bool | None,
) -> list[LensResult]:
    """Every input's result, in token-budget batches; the progress bar is forced on/off, or by
    default shown on a terminal when there is more than one batch."""
    out: list[LensResult | None] = [None] * len(inputs)
    lengths = [len(x) for x in inputs]
    disable = progress_disabled(progress, len(token_budget_batches(lengths, o.batch_tokens)))
    kept = {"top_k": run.top_k, "batch_tokens": o.batch_tokens}
    with tqdm(total=len(inputs), desc="logit lens", unit="prompt", disable=disable) as bar:
        for sub, stats_list in map_batches(lengths, o.batch_tokens, run.run):
            for i, st in zip(sub, stats_list, strict=True):
                out[i] = run.result(inputs[i], st, list(targets), o.foil, kept)
            bar.update(len(sub))
    return [r for r in out if r is not None]


class _Lens:
    """One lens run over prepared inputs: a batch in, per-input statistics out."""

    def __init__(
        self,
        lm: LoadedModel,
        inputs: list[PreparedInput],
        tids: list[int],
        fid: int | None,
        top_k: int,
        memory_mb: float | None,
        decoder: Decoder | None,
    ) -> None:
        self.lm, self.inputs, self.tids, self.fid = lm, inputs, tids, fid
        self.adapter = lm.require_adapter()
        self.decoder = decoder if decoder is not None else LogitDecoder(self.adapter)
        vocab = int(weight_of(self.adapter.unembed).shape[0])
        self.top_k = min(top_k, vocab)
        device = lm.device
        if memory_mb is None:
            memory_mb = DEFAULT_MEMORY_MB["cuda" if device.type == "cuda" else "cpu"]
        self.target_t = torch.tensor(tids, dtype=torch.long, device=device)
        pair = [tids[0], fid] if fid is not None else []
        self.ids = (self.target_t, torch.tensor(pair, dtype=torch.long, device=device))
        # float32 logits plus ~3 temporaries of the same size per decoded row
        self.chunk = max(1, int(memory_mb * 2**20) // (vocab * 4 * 4))
        self.pad = pad_id_of(lm.tokenizer)
        self.check = "not run"
        self.target_texts = token_texts(lm.tokenizer, tids)
        self.layer_labels = [str(i) for i in range(self.adapter.n_blocks)] + ["output"]

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
                    f"{type(lm.model).__name__} ran its blocks {len(hidden) - 1} times for {n_blocks} blocks "
                    "in one forward pass; cannot tell which state is which layer's"
                )
            valid = mask.bool()
            n = int(valid.sum())
            if self.check == "not run":  # before any inner row is decoded by the adapter's head
                rows, positions = check_rows(valid, self.chunk)
                self.check = check_output_row(
                    lm, hidden[n_blocks][rows, positions], fwd.logits[rows, positions]
                )
            states = [hidden[layer][valid] for layer in range(n_blocks)]
            scratch = Scratch()  # the chunks' work buffers, reused by every chunk of the batch
            inner = _layer_stats(self.decoder, states, self.chunk, self.top_k, self.ids, scratch)
            outer = stats_in_chunks(
                lambda x: x, fwd.logits[valid], self.chunk, self.top_k, self.ids, scratch
            )
        return self._split(batch, inner, outer, n)

    def _split(self, batch: list[int], inner: _Stats, outer: _Stats, n: int) -> list[_Stats]:
        """Back per input: (rows, positions) of each statistic."""
        n_blocks = self.adapter.n_blocks
        fields = {  # (rows, n, ...) of each statistic, moved off the device once
            f: torch.cat(
                [
                    getattr(inner, f).reshape(n_blocks, n, *getattr(inner, f).shape[1:]),
                    getattr(outer, f)[None],
                ]
            ).cpu()
            for f in _Stats.__dataclass_fields__
        }
        results = []
        offset = 0
        for length in (len(self.inputs[i].input_ids) for i in batch):
            per = {}
            for f, whole in fields.items():
                per[f] = whole[:, offset : offset + length]
            results.append(_Stats(**per))
            offset += length
        return results

    def result(
        self, inp: PreparedInput, st: _Stats, targets: list[str], foil: str | None, options: dict
    ) -> LensResult:
        tids, fid = self.tids, self.fid
        top_ids = st.top_ids.numpy().astype(np.int64)
        uniq, inverse = np.unique(top_ids, return_inverse=True)
        texts = np.asarray(token_texts(self.lm.tokenizer, uniq.tolist()), dtype=object)
        return LensResult(
            tokens=list(inp.tokens),
            token_ids=list(inp.input_ids),
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
            logit_diff=st.logit_diff[..., 0].numpy().astype(np.float32)
            if fid is not None
            else None,
            marked=inp.marked,
            meta={
                "analysis": "logit lens",
                **provenance(
                    self.lm, {**inp.options, **options}
                ).meta(),  # after the output check: the head it found
                "prompt": inp.prompt,
                "text": inp.text,
                "token_ids": list(inp.input_ids),
                "targets": targets,
                "target_ids": tids,
                "target_tokens": self.target_texts,
                "foil": foil if fid is not None else None,
                "foil_id": fid,
                "foil_token": token_texts(self.lm.tokenizer, [fid])[0] if fid is not None else None,
                "marked": list(inp.marked) if inp.marked else None,
                "rows": "layer 0 = embeddings, layer i = block i output (final norm + unembedding), "
                "'output' = the model's logits"
                + (
                    f"; the blocks carry {self.adapter.streams} streams, decoded merged as the "
                    "model merges its last block's"
                    if self.adapter.streams > 1
                    else ""
                ),
                "softcap": self.adapter.softcap,
                "logit_multiplier": self.adapter.logit_multiplier,
                "output_check": None,
            },
        )
