"""The logit lens over a data file of prompts: one `logit_lens` per row, batched within a chunk,
one table for all rows (`rowset.run_rows`; locally or on Ray workers)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import TokenprobeError
from ...model import LoadedModel
from ...rowset import DEFAULT_FIGURES, RowSet, prompt_rows, run_rows
from .compute import logit_lens
from .result import LensResult

DEFAULT_CHUNK_ROWS = 16  # rows per checkpointed chunk (and per Ray task)

def _lens_chunk(lm: LoadedModel, rows: list[dict[str, Any]], options: dict[str, Any]) -> list[LensResult]:
    """The lens of each row of a chunk: rows sharing a target (or having none) in one batched
    call, so a chunk costs what a multi-prompt `logit_lens` costs."""
    targets = list(options.get("targets") or ())
    groups: dict[str | None, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.get("target"), []).append(i)
    out: list[LensResult | None] = [None] * len(rows)
    for target, members in groups.items():
        row_targets = targets if target is None or target in targets else [*targets, target]
        results = logit_lens(
            lm,
            [rows[i]["prompt"] for i in members],
            **{**options, "targets": row_targets, "progress": False},
        )
        assert isinstance(results, list)
        for i, result in zip(members, results, strict=True):
            if target is not None:
                result.meta["row_target"] = target
                result.meta["row_target_shared"] = target in targets
            out[i] = result
    return [r for r in out if r is not None]


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
    **options: Any,
) -> RowSet:
    """The logit lens of every prompt (one data-file row each): one table with a `row` column
    and the first `figures` rows' figures. `row_targets[i]` is tracked in row i besides
    `targets`, in the columns `target`, `target_prob` and `target_rank`. `options` are
    `logit_lens`'s; with `checkpoint` each finished chunk is kept there (`resume` goes on),
    with `executor` (`executors.RayExecutor`) the chunks run on its workers."""
    if "decoder" in options and options["decoder"] is not None and executor is not None:
        raise TokenprobeError("a lens `decoder` runs here only: leave out `executor`")
    _check_foil(lm, options.get("foil"), options.get("targets") or (), row_targets or ())
    return run_rows(
        lm,
        prompt_rows(prompts, row_targets),
        _lens_chunk,
        LensResult,
        options,
        chunk_rows=chunk_rows or DEFAULT_CHUNK_ROWS,
        figures=figures,
        checkpoint=checkpoint,
        resume=resume,
        executor=executor,
        progress=progress,
        desc="lens",
        data=data,
        fingerprints=_lens_fingerprint(options.get("lens")) if checkpoint is not None else None,
    )


def _check_foil(lm: LoadedModel, foil: str | None, targets: Sequence[str], row_targets: Sequence[str]) -> None:
    """Before any row runs: without shared `targets`, each row's foil is compared with that
    row's target, so a row whose target starts with the foil's token fails here, naming it."""
    if not foil or targets or not row_targets:
        return
    first = lm.tokenizer.encode(foil, add_special_tokens=False)[:1]
    for i, target in enumerate(row_targets):
        if target and lm.tokenizer.encode(target, add_special_tokens=False)[:1] == first:
            raise TokenprobeError(
                f"`foil` {foil!r} is the same token as row {i}'s target {target!r} it is compared "
                "with: give a different foil, or shared `targets`"
            )


def _lens_fingerprint(lens: Any) -> dict[str, str] | None:
    """The digest of a lens folder's weights, so that `--resume` after the lens was trained
    again in the same folder starts over instead of mixing two lenses."""
    if lens is None or not isinstance(lens, (str, os.PathLike)):
        return None
    from ...tuned import lens_digest

    return {"lens": lens_digest(lens)}
