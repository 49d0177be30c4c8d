"""Past similarity: per layer, the cosine between a marker token's hidden state and the hidden
states of the T tokens before (or after) it, for one text or averaged over a data set.

Layer 0 is the embedding output (the first block's input) and layer i the output of block i,
as in the logit lens, read by hooks on the blocks: `output_hidden_states` ends with the
final-normed state instead, which is not a block output, and some families (Mamba) leave out
the embeddings. Blocks that carry several streams (Gemma 3n's AltUp) are compared on the state
the model would decode, their merge (`Adapter.record`), as the logit lens decodes it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ...checkpoint import Checkpoint, digest, model_settings, npz_writer
from ...errors import TokenprobeError
from ...model import LoadedModel
from ...provenance import provenance
from ...runner import (
    open_checkpoint,
    progress_disabled,
    run_chunks,
    token_budget_batches,
)
from ...text import ensure_marker, token_texts
from ..settings import with_options
from .cosines import Cosines, Texts
from .layout import _chunks, _texts_of_part
from .markers import anchors_of, insert_markers
from .options import SimilarityOptions
from .remote import remote_sums
from .result import SimilarityResult
from .seq2seq import Seq2SeqCosines, check_options, encode_pairs, layers_text

PARTIAL = "similarity.partial"  # the checkpoint folder inside --out
SUFFIX = ".npz"  # a checkpoint part: the chunk's float64 sums, counts and text indices


def _check(items: list[str], single: bool) -> None:
    """Refuse an empty data set or an empty text, before the model does any work (the settings
    were checked as `SimilarityOptions` was built)."""
    if not items:
        raise TokenprobeError("the data set is empty: give at least one text")
    if any(not str(t).strip() for t in items) and single:
        raise TokenprobeError("the text is empty: give a text that contains the marker")


def _encode(lm: LoadedModel, items: list[str], single: bool, o: SimilarityOptions) -> Texts:
    """Markers inserted, texts tokenized, and the `occurrence`-th marker of each found."""
    tok = lm.tokenizer
    marker, add_marker, occurrence = o.marker, o.add_marker, o.occurrence
    insert_every, insert_after = o.insert_every, o.insert_after
    if add_marker:
        pattern = [ensure_marker(lm, marker)]
    else:
        pattern = tok.encode(marker, add_special_tokens=False)
        if not pattern:
            raise TokenprobeError(f"the marker {marker!r} gives no tokens")
    items = [insert_markers(lm, t, marker, every=insert_every, after=insert_after) for t in items]
    encoded = [list(tok(t, add_special_tokens=True)["input_ids"]) for t in items]
    limit = lm.context_length
    for i, ids in enumerate(encoded):
        if limit is not None and len(ids) > limit:
            raise TokenprobeError(
                f"text {i + 1} is {len(ids)} tokens, longer than the model's context of {limit}: "
                "shorten it"
            )
    anchors = anchors_of(encoded, pattern, occurrence, single, marker)
    return Texts(items, encoded, anchors, pattern, single)


def _check_anchors(texts: Texts, marker: str, occurrence: int, direction: str) -> int:
    """Refuse texts that leave nothing to compare; warn about skipped ones (returns how many)."""
    used, anchors, encoded = texts.used, texts.anchors, texts.encoded
    # a marker with no token on the compared side would give an all-NaN table
    side = "before" if direction == "past" else "after"
    bare = [i for i in used if anchors[i] == (0 if direction == "past" else len(encoded[i]) - 1)]
    if used and len(bare) == len(used):
        where = "the text" if texts.single else f"each of the {len(used)} texts that have it"
        raise TokenprobeError(
            f"marker {occurrence} ({marker!r}) has no tokens {side} it in {where} (`direction` "
            f"{direction}): choose another `occurrence`, put text {side} the marker, or use `direction` "
            f"{'future' if direction == 'past' else 'past'}"
        )
    if not used:
        raise TokenprobeError(
            f"none of the {len(texts.items)} texts has {occurrence} {marker!r} marker(s): "
            "insert them with `insert_every` or `insert_after`, or lower `occurrence`"
        )
    lacking = len(texts.items) - len(used)
    if lacking:
        warnings.warn(
            f"{lacking} of {len(texts.items)} texts have fewer than {occurrence} {marker!r} marker(s) and were skipped",
            UserWarning,
            stacklevel=3,
        )
    return lacking


def _sums(
    cosines: Cosines,
    texts: Texts,
    store: Checkpoint | None,
    chunk_texts: int,
    batch_tokens: int,
    progress: bool | None,
    after_chunk: Callable[[int], None] | None,
    remote: Any = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """The float64 sums of cosines over the used texts, chunk by chunk (a finished chunk is
    kept in `store`, and a resumed run reads it back), added up in chunk order, and the counts."""
    used = texts.used
    done = {} if store is None else store.read(SUFFIX, _texts_of_part)
    chunks = _chunks(used, done, chunk_texts)
    finished = {i for part in done.values() for i in part}
    todo = [i for i in used if i not in finished]
    n_batches = len(token_budget_batches([len(texts.encoded[i]) for i in todo], batch_tokens))
    disable = progress_disabled(progress, n_batches if not done else None)
    with tqdm(
        total=len(used),
        initial=len(used) - len(todo),
        desc="past similarity",
        unit="text",
        disable=disable,
    ) as bar:
        parts = run_chunks(
            chunks,
            lambda chunk: cosines.sums(chunk, batch_tokens, bar),
            store=store,
            suffix=SUFFIX,
            unit="text",
            write=lambda part: npz_writer(**part),
            after_chunk=after_chunk,
            bar=None if remote is None else bar,  # a worker's batches are not seen here
            executor=None if remote is None else remote[0],
            remote=None if remote is None else remote[1],
        )
    total = torch.zeros((cosines.n_layers, cosines.window), dtype=torch.float64)
    count = np.zeros(cosines.window, dtype=np.int64)
    for k in sorted(parts):
        total += torch.from_numpy(parts[k]["total"])
        count += parts[k]["count"]
    return total, count


@with_options(SimilarityOptions)
def past_similarity(
    lm: LoadedModel,
    texts: str | Sequence[str],
    *,
    options: SimilarityOptions,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    executor: Any = None,
    _after_chunk: Callable[[int], None] | None = None,
) -> SimilarityResult:
    """Cosine similarity of the `occurrence`-th `marker` with each of the `window` tokens before it
    (`direction="future"`: after it), per layer; over several texts, the mean with its count.

    `options` (or its settings as keyword arguments: see `SimilarityOptions`): `centre`
    subtracts each layer's mean hidden state over the text's positions first (raw residual
    streams share a large common direction, which pushes every cosine towards 1); the mean
    leaves out the first position unless `centre_skip_first=False`, because that position often
    holds massive attention-sink activations that would swamp it. A marker that is several
    tokens (with `add_marker=False`) is represented by its last token.
    With `checkpoint`, the sums over each finished chunk of `chunk_texts` texts are written
    there; `resume=True` skips the texts already summed. With an `executor`
    (`tokenprobe.executors.RayExecutor`), the chunks are summed on its workers.

    An encoder-decoder model: each text is a source; the marker is compared within the
    encoder's states of the source or the decoder's states of its input (start token, forced
    `target_lang` token, `decoder_text`): `side`, by default the side the marker is in.
    """
    o = options
    single = isinstance(texts, str)
    items = [texts] if isinstance(texts, str) else list(texts)
    _check(items, single)
    check_options(lm, o, executor)
    run = encode_pairs(lm, items, single, o) if lm.is_seq2seq else _encode(lm, items, single, o)
    lacking = _check_anchors(run, o.marker, o.occurrence, o.direction)
    kind = Seq2SeqCosines if lm.is_seq2seq else Cosines
    cosines = kind(lm, run, o.window, o.direction, o.centre, o.centre_skip_first)
    kept = _kept(o, run)
    store = None
    if checkpoint is not None:
        # batching changes speed, not the numbers
        settings = {
            "analysis": "past similarity",
            "model": model_settings(lm),
            "texts": digest(items),
            **{k: v for k, v in kept.items() if k != "batch_tokens"},
        }
        store = open_checkpoint(checkpoint, PARTIAL, settings, resume)
    remote = None
    if executor is not None:
        remote = (executor, remote_sums(lm, run, o.marker if o.add_marker else None, o))
    total, count = _sums(
        cosines, run, store, o.chunk_texts, o.batch_tokens, progress, _after_chunk, remote
    )
    result = _result(lm, run, total, count, lacking, kept)
    result.meta["batching"] = cosines.batching or "no padded batch was run here"
    if store is not None:
        store.finish(result)  # removed now, or by result.save() inside kept_until_saved()
    return result


def _kept(o: SimilarityOptions, run: Texts) -> dict[str, Any]:
    """The settings meta.json records (and, less `batch_tokens`, a checkpoint must share); an
    encoder-decoder's side and decoder input besides."""
    pair = {"side": run.side, "target_lang": o.target_lang, "decoder_text": o.decoder_text}
    return {
        "marker": o.marker,
        "marker_token_ids": run.pattern,
        "add_marker": o.add_marker,
        "occurrence": o.occurrence,
        "window": o.window,
        "centre": o.centre,
        "centre_skip_first": o.centre_skip_first,
        "direction": o.direction,
        "insert_every": o.insert_every,
        "insert_after": o.insert_after,
        "batch_tokens": o.batch_tokens,
        **(pair if run.side is not None else {}),
    }


def _result(
    lm: LoadedModel,
    run: Texts,
    total: torch.Tensor,
    count: np.ndarray,
    lacking: int,
    options: dict[str, Any],
) -> SimilarityResult:
    """The mean cosine per (layer, distance), NaN where no text reaches, with the token at
    each distance when there is one text."""
    window, direction = options["window"], options["direction"]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (total.numpy() / count[None, :]).astype(np.float32)
    mean[:, count == 0] = np.nan
    context_tokens: list[str | None] = [None] * window
    if run.single:
        p = run.anchors[0]
        assert p is not None
        ids = run.encoded[0]
        step = -1 if direction == "past" else 1
        positions = [p + step * d for d in range(1, window + 1)]
        texts_at = token_texts(lm.tokenizer, [ids[q] for q in positions if 0 <= q < len(ids)])
        context_tokens = [*texts_at, *([None] * (window - len(texts_at)))]
    n_layers = int(total.shape[0])
    return SimilarityResult(
        layer_labels=[str(i) for i in range(n_layers)],
        cosine=mean,
        count=count,
        tokens=context_tokens,
        marker=options["marker"],
        occurrence=options["occurrence"],
        direction=direction,
        centre=options["centre"],
        meta={
            "analysis": "past similarity",
            **provenance(lm, options).meta(),
            "texts": len(run.items),
            "texts_used": len(run.used),
            "texts_skipped": lacking,
            "text": run.items[0] if run.single else None,
            "token_ids": run.encoded[0] if run.single else None,
            "anchor_position": run.anchors[0] if run.single else None,
            "layers": layers_text(run.side)
            if run.side
            else "layer 0 = embeddings, layer i = output of block i (the last one before the final norm)",
            **_pair_meta(run),
        },
        side=run.side,
    )


def _pair_meta(run: Texts) -> dict[str, Any]:
    """An encoder-decoder's one text: its source and decoder ids (`token_ids` are the compared
    side's)."""
    if run.pairs is None or not run.single:
        return {}
    return {"source_ids": run.pairs[0][0], "decoder_ids": run.pairs[0][1]}
