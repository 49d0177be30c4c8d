"""Attribution over a data file of prompts: one `attribute` per row, one table for all rows
(`rowset.run_rows`; locally or on Ray workers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import TokenprobeError, text_list
from ...model import LoadedModel
from ...rowset import DEFAULT_FIGURES, RowSet, at_rows, prompt_rows, run_rows
from ...text import one_token_text
from ..settings import with_options
from .compute import _check, _foil_id, attribute
from .features import prepare_attribution
from .options import AttributionOptions
from .result import AttributionResult

DEFAULT_CHUNK_ROWS = 4  # rows per checkpointed chunk (and per Ray task)


def _attribute_chunk(
    lm: LoadedModel, rows: list[dict[str, Any]], options: dict[str, Any]
) -> list[AttributionResult]:
    """Each row of a chunk attributed on its own (a row's inputs are batched inside)."""
    out = []
    for j, row in enumerate(rows):
        given = {"target": row["target"]} if row.get("target") is not None else {}
        with at_rows([j]):
            out.append(attribute(lm, row["prompt"], **{**options, **given, "progress": False}))
    return out


def _check_row(lm: LoadedModel, row: dict[str, Any], options: dict[str, Any]) -> None:
    """What `attribute` makes of one row before its model runs: the prompt and target checked,
    rendered and tokenised, the spans found, within the context, the foil against the target.
    A row whose target is generated is checked with a one-token stand-in for it (the least
    any answer adds), since generating it is model work."""
    o = AttributionOptions(**options)
    target = row["target"] if row.get("target") is not None else o.target
    generate = o.generate if target is None else None
    _check(row["prompt"], target, generate)
    stand_in = one_token_text(lm.tokenizer, " the")
    inp = prepare_attribution(
        lm,
        row["prompt"],
        target=stand_in if target is None else target,
        generate=None,
        features=text_list(o.features, "features"),
        target_spans=text_list(o.target_spans, "target_spans") if target is not None else None,
        chat=o.chat,
        system=o.system,
    )
    if target is not None:
        _foil_id(lm, o.foil, inp.target_text)


@with_options(AttributionOptions, analysis="attribute --data")
def attribute_rows(
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
    options: AttributionOptions,
) -> RowSet:
    """`attribute` of every prompt (one data-file row each) to its target `row_targets[i]` (or
    `options`' `target` / `generate` for every row): one table whose `row` is the data row and
    `target_row` the attributed target row within it; the first `figures` rows' figures.
    `options` (or its settings as keyword arguments) are `attribute`'s. With `checkpoint` each
    finished chunk is kept there (`resume` goes on), with `executor`
    (`executors.RayExecutor`) the chunks run on its workers."""
    if row_targets is not None and (options.target is not None or options.generate):
        raise TokenprobeError("each row has its target: leave out `target` and `generate`")
    if row_targets is None and options.target is None and options.generate is None:
        raise TokenprobeError(
            "give each row's target (`row_targets`, --target-column), one `target` for every "
            "row, or `generate` N to attribute the model's own answers"
        )
    return run_rows(
        lm,
        prompt_rows(prompts, row_targets),
        _attribute_chunk,
        AttributionResult,
        options.values(),
        check=_check_row,
        chunk_rows=chunk_rows or DEFAULT_CHUNK_ROWS,
        figures=figures,
        checkpoint=checkpoint,
        resume=resume,
        executor=executor,
        progress=progress,
        desc="attribution",
        data=data,
    )
