"""The logit lens over a data file of prompts: one `logit_lens` per row, batched within a chunk,
one table for all rows (`rowset.run_rows`; locally or on Ray workers)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import TokenprobeError, text_list
from ...model import LoadedModel
from ...rowset import DEFAULT_FIGURES, RowSet, at_rows, prompt_rows, run_rows
from ...text import one_token_text, prepare
from ..settings import with_options
from .compute import _foil_id, _target_ids, logit_lens
from .options import LensOptions
from .result import LensResult
from .seq2seq import check_options, prepare_source

DEFAULT_CHUNK_ROWS = 16  # rows per checkpointed chunk (and per Ray task)


def _row_targets(targets: Sequence[str], target: str | None) -> list[str]:
    """The targets a row tracks: the shared ones, then its own (unless shared already)."""
    return list(targets) if target is None or target in targets else [*targets, target]


def _lens_chunk(
    lm: LoadedModel, rows: list[dict[str, Any]], options: dict[str, Any]
) -> list[LensResult]:
    """The lens of each row of a chunk: rows sharing a target (or having none) in one batched
    call, so a chunk costs what a multi-prompt `logit_lens` costs."""
    targets = list(options.get("targets") or ())
    groups: dict[str | None, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.get("target"), []).append(i)
    out: list[LensResult | None] = [None] * len(rows)
    for target, members in groups.items():
        with at_rows(members):  # an error in this call is about these rows
            results = logit_lens(
                lm,
                [rows[i]["prompt"] for i in members],
                **{**options, "targets": _row_targets(targets, target), "progress": False},
            )
        assert isinstance(results, list)
        for i, result in zip(members, results, strict=True):
            if target is not None:
                result.meta["row_target"] = target
                result.meta["row_target_shared"] = target in targets
            out[i] = result
    return [r for r in out if r is not None]


def _check_row(lm: LoadedModel, row: dict[str, Any], options: dict[str, Any]) -> None:
    """What `logit_lens` makes of one row before its model runs: the prompt rendered, tokenised
    and within the context, its dummies placed, its targets' and foil's tokens. A stand-in
    that is one token already takes the place of a marker the tokenizer lacks, so that the
    check adds no token (the run adds it, and says so)."""
    o = LensOptions.build(None, {k: v for k, v in options.items() if k != "decoder"})
    check_options(lm, o)
    if lm.is_seq2seq:
        prepare_source(lm, row["prompt"], o)
    else:
        _check_prompt(lm, row["prompt"], o)
    targets = _row_targets(text_list(o.targets, "targets") or [], row.get("target"))
    _foil_id(lm, o.foil, targets, _target_ids(lm, targets))


def _check_prompt(lm: LoadedModel, prompt: str, o: LensOptions) -> None:
    """A causal LM's prompt rendered, tokenised and its dummies placed, as `logit_lens` will."""
    marker = one_token_text(lm.tokenizer, o.dummy_token) if o.dummy else o.dummy_token
    prepare(
        lm,
        prompt,
        chat=o.chat,
        system=o.system,
        dummy=o.dummy,
        dummy_token=marker,
        dummy_after=o.dummy_after,
        dummy_before=o.dummy_before,
    )


@with_options(LensOptions, analysis="lens")
def lens_rows(
    lm: LoadedModel,
    prompts: Sequence[str],
    row_targets: Sequence[str] | None = None,
    *,
    figures: int = DEFAULT_FIGURES,
    chunk_rows: int | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    executor: Any = None,
    progress: bool | None = None,
    data: str | None = None,
    options: LensOptions,
    decoder: Any = None,
) -> RowSet:
    """The logit lens of every prompt (one data-file row each): one table with a `row` column
    and the first `figures` rows' figures. `row_targets[i]` is tracked in row i besides
    `targets`, in the columns `target`, `target_prob` and `target_rank`. `options` (and
    `decoder`) are `logit_lens`'s; with `checkpoint` each finished chunk is kept there (`resume` goes on),
    with `executor` (`executors.RayExecutor`) the chunks run on its workers. An
    encoder-decoder's rows are sources, each row a `logit_lens` of its decoder."""
    if decoder is not None and executor is not None:
        raise TokenprobeError("a lens `decoder` runs here only: leave out `executor`")
    settings = options.values() | ({"decoder": decoder} if decoder is not None else {})
    return run_rows(
        lm,
        prompt_rows(prompts, row_targets),
        _lens_chunk,
        LensResult,
        settings,
        check=_check_row,
        chunk_rows=chunk_rows or DEFAULT_CHUNK_ROWS,
        figures=figures,
        checkpoint=checkpoint,
        resume=resume,
        executor=executor,
        progress=progress,
        desc="lens",
        data=data,
        fingerprints=_lens_fingerprint(options.lens) if checkpoint is not None else None,
    )


def _lens_fingerprint(lens: Any) -> dict[str, str] | None:
    """The digest of a lens folder's weights, so that `--resume` after the lens was trained
    again in the same folder starts over instead of mixing two lenses."""
    if lens is None or not isinstance(lens, (str, os.PathLike)):
        return None
    from ...tuned import lens_digest

    return {"lens": lens_digest(lens)}
