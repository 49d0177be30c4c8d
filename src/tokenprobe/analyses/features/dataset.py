"""`feature_contexts`: a dictionary's latents over a data set, per feature: how often it fires,
its mean and largest activation, and its top contexts (the core of a feature dashboard).

The texts run in chunks (each finished chunk's tally kept in the checkpoint, so an interrupted
run resumes where it stopped), each chunk in token-budget batches of right-padded texts
(`reader`), the forward stopped at the site; the tallies are merged in chunk order (`tally`:
exact, whichever worker ran which chunk)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ...checkpoint import digest, model_settings, npz_writer
from ...errors import TokenprobeError
from ...executors import worker_load_args
from ...model import LoadedModel
from ...provenance import provenance
from ...runner import Remote, map_batches, open_checkpoint, progress_disabled, run_chunks
from ...sae import Dictionary
from ...sae.hooks import check_fits
from ..settings import with_options
from .compute import _describe, _load, skip_first
from .contexts import FeatureContextsResult, build_tables
from .options import FeaturesOptions
from .reader import SiteReader
from .tally import Tally

PARTIAL = "features.partial"  # the checkpoint folder inside --out
SUFFIX = ".npz"


@with_options(FeaturesOptions)
def feature_contexts(
    lm: LoadedModel,
    data: str | Sequence[str],
    *,
    options: FeaturesOptions,
    dictionary: Dictionary | None = None,
    offline: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    executor: Any = None,
    _after_chunk: Callable[[int], None] | None = None,
) -> FeatureContextsResult:
    """Per feature of the dictionary over the texts of `data` (a data set's path, read as
    `--data` is, or the texts): tokens it fired on, frequency, mean activation when active,
    largest activation, and its `top_examples` top contexts with `context` tokens each side.
    With `checkpoint`, each finished chunk of `chunk_texts` texts is written there and
    `resume=True` goes on from them; with an `executor` (`executors.RayExecutor`) the chunks
    run on its workers. `options` (or its settings as keyword arguments): see
    `FeaturesOptions` (the dictionary and the data-set settings)."""
    o = options
    adapter = lm.require_adapter()
    sae = dictionary if dictionary is not None else _load(o, offline, lm)
    check_fits(adapter, sae)
    texts = _texts(data, o)
    encoded, cut = _encode(lm, texts)
    used = [i for i, ids in enumerate(encoded) if ids]
    if not used:
        raise TokenprobeError("every text is empty after tokenization: check the data set")
    skip = skip_first(o, sae)
    kept = {"top_examples": o.top_examples, "context": o.context, "chunk_texts": o.chunk_texts}
    kept |= {"skip_first": skip}
    store = open_checkpoint(checkpoint, PARTIAL, _shared(lm, sae, encoded, kept), resume)
    chunks = [used[i : i + o.chunk_texts] for i in range(0, len(used), o.chunk_texts)]
    run = _Run(lm, sae.to(lm.device), o.top_examples, o.context, o.batch_tokens, skip)
    remote = None if executor is None else _remote(lm, sae, encoded, o)
    with tqdm(
        total=len(used), desc="features", unit="text", disable=progress_disabled(progress)
    ) as bar:
        parts = run_chunks(
            chunks,
            lambda chunk: run.chunk(chunk, encoded).arrays(),
            store=store,
            suffix=SUFFIX,
            unit="text",
            write=lambda part: npz_writer(**part),
            bar=bar,
            after_chunk=_after_chunk,
            executor=executor,
            remote=remote,
        )
    tally = _merged(parts, sae.d_sae, o)
    stats, contexts = build_tables(tally, encoded, lm.tokenizer)
    counts = {"texts": len(texts), "texts_used": len(used), "texts_cut": cut}
    meta = _meta(lm, sae, data, tally, counts, {**kept, "batch_tokens": o.batch_tokens})
    meta["batching"] = run.reader.batching or "no padded batch was run here"
    result = FeatureContextsResult(stats=stats, contexts=contexts, meta=meta)
    if store is not None:
        store.finish(result)  # removed now, or by result.save() inside kept_until_saved()
    return result


def _merged(parts: dict[Any, Any], d_sae: int, o: FeaturesOptions) -> Tally:
    """The chunks' tallies merged in chunk order (the same whatever order they finished in)."""
    tally = Tally.empty(d_sae, o.top_examples, o.context)
    for k in sorted(parts):
        tally.merge(Tally.from_arrays(parts[k]))
    return tally


ROWS = (
    "feature_contexts.parquet: one row per latent: count (tokens it fired on), frequency "
    "(count / tokens), mean (its mean activation where active), max; "
    "feature_contexts_top.parquet: per latent its top contexts by activation (ties: lower text, "
    "then position first): rank, activation, text (index in the data set), position, left / "
    "token / right (the window's text, the activating token apart), window_tokens and "
    "window_activations (the latent's activation at each window token)"
)


def _meta(
    lm: LoadedModel,
    sae: Dictionary,
    data: str | Sequence[str],
    tally: Tally,
    counts: dict[str, int],
    settings: dict[str, Any],
) -> dict[str, Any]:
    return {
        "analysis": "feature contexts",
        **provenance(lm, settings).meta(),
        "dictionary": _describe(lm.require_adapter(), sae),
        "data": data if isinstance(data, str) else f"{counts['texts']} texts",
        **counts,
        "tokens": tally.tokens,
        "dead": int((tally.count == 0).sum()),
        "rows": ROWS,
    }


class _Run:
    """Chunks of texts -> tallies, against one model and dictionary (here or on a worker)."""

    def __init__(
        self,
        lm: LoadedModel,
        sae: Dictionary,
        top: int,
        context: int,
        batch_tokens: int,
        skip: int = 0,
    ) -> None:
        self.lm, self.sae, self.top, self.context = lm, sae, top, context
        self.batch_tokens, self.skip = batch_tokens, skip
        self.reader = SiteReader(lm, sae)

    def chunk(self, chunk: Sequence[int], encoded: Sequence[list[int]] | dict) -> Tally:
        """One chunk's tally, its texts in token-budget batches."""
        chunk = list(chunk)
        tally = Tally.empty(self.sae.d_sae, self.top, self.context)
        lengths = [len(encoded[i]) for i in chunk]
        for _, _ in map_batches(
            lengths,
            self.batch_tokens,
            lambda b: self._batch(sorted(chunk[j] for j in b), encoded, tally),
        ):
            pass
        return tally

    def _batch(self, batch: list[int], encoded: Any, tally: Tally) -> None:
        """Encode one batch's states (texts in ascending order), each from position `skip` on,
        and add them to `tally`."""
        read = self.reader.rows([list(encoded[i]) for i in batch])
        rows = [r[min(self.skip, len(r)) :] for r in read]
        device = self.lm.device
        text = torch.cat(
            [torch.full((len(r),), i, dtype=torch.long) for i, r in zip(batch, rows, strict=True)]
        )
        pos = torch.cat(
            [torch.arange(len(r) - len(k), len(r)) for r, k in zip(read, rows, strict=True)]
        )
        with torch.inference_mode():
            acts = self.sae.encode(torch.cat(rows))
            tally.add(acts, text.to(device), pos.to(device))


def _texts(data: str | Sequence[str], o: FeaturesOptions) -> list[str]:
    """The texts of `data`: as given, a .txt file's non-empty lines, else any data set that
    `--data` reads (its `text_column`)."""
    if isinstance(data, str) and data.lower().endswith(".txt") and Path(data).is_file():
        try:
            lines = Path(data).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise TokenprobeError(f"--data {data} is not UTF-8 text: save it as UTF-8") from exc
        texts = [line for line in lines if line.strip()]
    elif isinstance(data, str):
        from ...data import read_texts

        texts = read_texts(data, o.text_column)
    else:
        texts = [str(t) for t in data]
    if o.limit is not None:
        texts = texts[: o.limit]
    if not texts:
        raise TokenprobeError("the data set is empty: give at least one text")
    return texts


def _encode(lm: LoadedModel, texts: list[str]) -> tuple[list[list[int]], int]:
    """Each text's token ids (with the tokenizer's special tokens), cut to the model's
    context; and how many were cut."""
    limit = lm.context_length
    encoded = [list(lm.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
    cut = sum(1 for ids in encoded if limit is not None and len(ids) > limit)
    if limit is not None:
        encoded = [ids[:limit] for ids in encoded]
    return encoded, cut


def _shared(
    lm: LoadedModel, sae: Dictionary, encoded: list[list[int]], kept: dict[str, Any]
) -> dict[str, Any]:
    """What a resumed run must share with the run it resumes (the checkpoint's settings)."""
    return {
        "analysis": "feature contexts",
        "model": model_settings(lm),
        "dictionary": _identity(sae),
        "texts": digest(*encoded),
        **kept,
    }


def _identity(sae: Dictionary) -> dict[str, Any]:
    """What a resumed run must share with the run it resumes about the dictionary."""
    return {
        "path": sae.path,
        "hook": sae.hook,
        "site": str(sae.site),
        "latents": sae.d_sae,
        "activation": sae.activation,
        "weights": digest([float(sae.w_enc.double().sum()), float(sae.b_enc.double().sum())]),
    }


def _worker_state(load_args: dict[str, Any], sae: Dictionary, settings: tuple) -> _Run:
    """A Ray worker's model and dictionary, loaded once."""
    from ...model import load

    lm = load(**load_args)
    check_fits(lm.require_adapter(), sae)
    return _Run(lm, sae.to(lm.device), *settings)


def _chunk_on_worker(run: _Run, payload: tuple) -> dict[str, np.ndarray]:
    chunk, encoded = payload
    return run.chunk(chunk, encoded).arrays()


def _remote(
    lm: LoadedModel, sae: Dictionary, encoded: list[list[int]], o: FeaturesOptions
) -> Remote:
    """How a chunk runs on a Ray worker: its own model, the chunk's token ids."""
    settings = (o.top_examples, o.context, o.batch_tokens, skip_first(o, sae))
    factory = functools.partial(_worker_state, worker_load_args(lm), sae.to("cpu"), settings)
    return Remote(factory, _chunk_on_worker, lambda c: (list(c), {i: encoded[i] for i in c}))
