"""Flip rates: perturb each word occurrence of each text, re-classify, and count label flips per
(word, relative position bucket).

Every perturbed text of a chunk of texts goes through the classifier in length-sorted
token-budget batches; finished chunks are written to disk (one Parquet file each) so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ...checkpoint import Checkpoint, digest, model_settings
from ...errors import TokenprobeError
from ...provenance import provenance
from ...runner import Remote, open_checkpoint, progress_disabled, run_chunks
from ..settings import with_options
from .classifiers import Classifier
from .options import FlipOptions
from .result import FlipResult
from .words import TextInput, bucket_of, perturb, rates_table, replacement_ids

PARTIAL = "flips.partial"  # the checkpoint folder inside --out
COLUMNS = [
    "text_id",
    "word",
    "word_index",
    "n_words",
    "bucket",
    "original",
    "gold",
    "perturbed",
    "flipped",
]


def _check_args(
    classifier: Classifier, texts: Sequence[str], gold: Sequence[str] | None, group: str
) -> None:
    """Refuse an empty data set, grouping by gold labels without them, or gold labels the
    classifier does not have (the settings were checked as `FlipOptions` was built)."""
    if not texts:
        raise TokenprobeError("the data set is empty: give at least one text")
    if group == "gold" and gold is None:
        raise TokenprobeError("`group` gold needs gold labels: give `gold`")
    labels = classifier.labels
    if gold is not None:
        unknown = sorted({g for g in gold if g not in labels})
        if unknown:
            raise TokenprobeError(
                f"labels in the data are not in `labels`: {', '.join(map(str, unknown[:5]))}; the labels are {', '.join(labels)}"
            )


def _check_context(classifier: Classifier, inputs: Sequence[TextInput], replacement: int) -> None:
    """Refuse, naming the first one, a text whose longest perturbed copy (template included)
    does not fit the model's context."""
    limit = classifier.lm.context_length
    if limit is None:
        return
    for i, inp in enumerate(inputs):
        if not inp.words:
            continue
        grow = max(0, replacement - min(len(w) for w in inp.word_tokens))
        need = classifier.input_length(len(inp.ids) + grow)
        if need > limit:
            raise TokenprobeError(
                f"text {i + 1} needs {need} tokens (with the prompt template and the longest perturbation), "
                f"longer than the model's context of {limit}: shorten it or leave it out"
            )


def _settings(
    classifier: Classifier,
    texts: Sequence[str],
    gold: Sequence[str] | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """What a resumed run must share with the run it resumes (the checkpoint's settings)."""
    return {
        "analysis": "flip rates",
        "model": model_settings(classifier.lm),
        # the prefix cache changes speed, not predictions
        "classifier": {
            k: v for k, v in classifier.describe().items() if k != "prefix_cache_reused"
        },
        "texts": digest(texts, gold),
        **options,
    }


@with_options(FlipOptions)
def flip_rates(
    classifier: Classifier,
    texts: Sequence[str],
    gold: Sequence[str] | None = None,
    *,
    options: FlipOptions,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    executor: Any = None,
    _after_chunk: Callable[[int], None] | None = None,
) -> FlipResult:
    """Flip rate of every (word, bucket) over `texts`, with per-occurrence rows.

    `options` (or its settings as keyword arguments: see `FlipOptions`) say how each word is
    perturbed, into how many position `buckets` and by what the texts are grouped. `gold`
    labels (optional) give accuracy and `group="gold"`. With `checkpoint`, each finished chunk
    of `chunk_texts` texts is written there; `resume=True` reuses the chunks already written.
    With an `executor` (`tokenprobe.executors.RayExecutor`), the chunks run on its workers,
    each with its own copy of the classifier (the model loaded as `load` loaded it here).
    """
    o = options
    _check_args(classifier, texts, gold, o.group)
    classifier.begin_run()  # the run's first batch is checked against one input alone
    replacement = replacement_ids(classifier.lm, o.perturbation, o.filler)
    inputs = [classifier.encode(t) for t in texts]
    empty = [i for i, inp in enumerate(inputs) if not inp.ids or not inp.words]
    _check_context(classifier, inputs, len(replacement))
    if len(empty) == len(inputs):
        raise TokenprobeError("every text is empty after tokenization: check `texts`")
    kept = {"perturbation": o.perturbation, "filler": o.filler, "buckets": o.buckets}
    shared = _settings(classifier, texts, gold, {**kept, "chunk_texts": o.chunk_texts})
    store = open_checkpoint(checkpoint, PARTIAL, shared, resume)
    parts = _run_all(
        classifier, inputs, gold, replacement, o, store, progress, executor, _after_chunk
    )
    occurrences = pd.concat(parts, ignore_index=True)
    occurrences.attrs = {}
    kept |= {"group": o.group, "batch_tokens": o.batch_tokens}
    result = _result(classifier, occurrences, gold, len(inputs), len(empty), kept)
    result.meta["batching"] = _batching_note(parts)
    result.meta["earlier_positions"] = _batching_note(parts, "earlier_positions")
    if store is not None:
        store.finish(result)  # removed now, or by result.save() inside kept_until_saved()
    return result


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def _run_all(
    classifier: Classifier,
    inputs: list[TextInput],
    gold: Sequence[str] | None,
    replacement: list[int],
    o: FlipOptions,
    store: Checkpoint | None,
    progress: bool | None,
    executor: Any,
    after_chunk: Callable[[int], None] | None,
) -> list[pd.DataFrame]:
    """Every chunk's occurrence rows, in order: here or on `executor`'s workers, each finished
    chunk kept in `store` (and read back from it when a resumed run finds it there)."""
    chunks = _chunks(len(inputs), o.chunk_texts)
    settings = (o.perturbation, replacement, o.buckets, o.batch_tokens)

    def compute(chunk: Sequence[int]) -> pd.DataFrame:
        # looked up at call time: tests stand in for the chunk runner
        return _run_chunk(classifier, inputs, chunk, gold, *settings)

    def write(part: pd.DataFrame) -> Callable[[Path], object]:
        return lambda p: part.to_parquet(p, index=False)

    remote = None if executor is None else _remote(classifier, inputs, gold, settings)
    disable = progress_disabled(progress)
    with tqdm(total=len(inputs), desc="flip rates", unit="text", disable=disable) as bar:
        done = run_chunks(
            chunks,
            compute,
            store=store,
            suffix=".parquet",
            unit="text",
            write=write,
            read=pd.read_parquet,
            bar=bar,
            after_chunk=after_chunk,
            executor=executor,
            remote=remote,
        )
    return [done[k] for k in range(len(chunks))]


def _result(
    classifier: Classifier,
    occurrences: pd.DataFrame,
    gold: Sequence[str] | None,
    n_texts: int,
    n_empty: int,
    options: dict[str, Any],
) -> FlipResult:
    """The result of a finished run: the rates table, accuracy and meta."""
    originals = occurrences.drop_duplicates("text_id")
    accuracy = None
    if gold is not None:
        per_text = _original_predictions(occurrences, n_texts)
        scored = [(p, g) for p, g in zip(per_text, gold, strict=True) if p is not None]
        accuracy = float(np.mean([p == g for p, g in scored])) if scored else None
    labels = classifier.labels
    rates = rates_table(occurrences, labels, options["group"])
    return FlipResult(
        occurrences=occurrences,
        rates=rates,
        labels=list(labels),
        buckets=options["buckets"],
        meta={
            "analysis": "flip rates",
            **provenance(classifier.lm, options).meta(),
            "classifier": classifier.describe(),
            "texts": n_texts,
            "texts_empty_skipped": n_empty,
            "word_occurrences": int(len(occurrences)),
            "accuracy": accuracy,
            "predicted_distribution": originals["original"].value_counts().to_dict(),
            "words": "lowercase runs of word characters (regex \\w+), each mapped to the tokens its characters fall in",
        },
    )


def _batching_note(parts: Sequence[pd.DataFrame], key: str = "batching") -> str:
    """How the run's batches went through the model (each chunk says, in its frame's attrs,
    whichever process ran it and whether this run or an interrupted one), for meta.json; with
    `key` "earlier_positions", how the perturbed copies' earlier positions ran."""
    notes = list(dict.fromkeys(p.attrs[key] for p in parts if p.attrs.get(key)))
    return (
        " / ".join(notes) if notes else "not recorded (every chunk came from an older checkpoint)"
    )


def _original_predictions(occurrences: pd.DataFrame, n: int) -> list[str | None]:
    first = occurrences.drop_duplicates("text_id").set_index("text_id")["original"]
    return [first.get(i) for i in range(n)]


def _run_chunk(
    classifier: Classifier,
    inputs: list[TextInput],
    chunk: Sequence[int],
    gold: Sequence[str] | None,
    perturbation: str,
    replacement: list[int],
    buckets: int,
    batch_tokens: int,
) -> pd.DataFrame:
    """Predictions for the chunk's texts and every perturbed copy, in one batched call."""
    ids_list: list[list[int]] = []
    owners: list[tuple[int, int]] = []  # (text, word) ; word -1 = the unperturbed text
    bases: list[int] = []  # the index of each copy's unperturbed text in ids_list
    for i in chunk:
        inp = inputs[i]
        if not inp.ids or not inp.words:
            continue
        base = len(ids_list)
        ids_list.append(inp.ids)
        owners.append((i, -1))
        for w in range(len(inp.words)):
            ids_list.append(perturb(inp, w, perturbation, replacement))
            owners.append((i, w))
        bases.extend([base] * (len(inp.words) + 1))
    labels = classifier.labels
    preds = (
        classifier.predict(ids_list, batch_tokens, bases)
        if ids_list
        else np.empty(0, dtype=np.int64)
    )
    original = {i: int(p) for (i, w), p in zip(owners, preds, strict=True) if w == -1}
    rows = []
    for (i, w), p in zip(owners, preds, strict=True):
        if w == -1:
            continue
        n = len(inputs[i].words)
        rows.append(
            {
                "text_id": i,
                "word": inputs[i].words[w],
                "word_index": w,
                "n_words": n,
                "bucket": bucket_of(w, n, buckets),
                "original": labels[original[i]],
                "gold": gold[i] if gold is not None else None,
                "perturbed": labels[int(p)],
                "flipped": int(p) != original[i],
            }
        )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    note = classifier.batching_note()
    if note is not None:  # which way the batches ran, kept with the chunk (and its checkpoint)
        frame.attrs["batching"] = note
    earlier = classifier.prefix_note()
    if earlier is not None:  # how the copies' earlier positions ran
        frame.attrs["earlier_positions"] = earlier
    return frame


def _remote(
    classifier: Classifier,
    inputs: Sequence[TextInput],
    gold: Sequence[str] | None,
    settings: tuple,
) -> Remote:
    """How a chunk runs on a Ray worker: its own classifier, the chunk's texts and labels."""
    return Remote(
        classifier.replica(),
        _chunk_on_worker,
        lambda chunk: (
            list(chunk),
            {i: inputs[i] for i in chunk},
            None if gold is None else {i: gold[i] for i in chunk},
            settings,
        ),
    )


def _chunk_on_worker(classifier: Classifier, payload: tuple) -> pd.DataFrame:
    """One chunk on a Ray worker, against the worker's own classifier."""
    chunk, inputs, gold, (perturbation, replacement, buckets, batch_tokens) = payload
    return _run_chunk(
        classifier, inputs, chunk, gold, perturbation, replacement, buckets, batch_tokens
    )
