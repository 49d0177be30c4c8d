"""Attribution over a data file of prompts: one `attribute` per row, one table for all rows
(`rowset.run_rows`; locally or on Ray workers)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ...errors import TokenprobeError, text_list, warn
from ...model import LoadedModel
from ...model.seq2seq_input import decoder_prefix
from ...rowset import DEFAULT_FIGURES, RowSet, at_rows, prompt_rows, run_rows
from ...text import one_token_text, prepare_seq2seq
from ..settings import with_options
from .compute import _check, _foil_id, attribute
from .features import prepare_attribution
from .options import AttributionOptions
from .result import AttributionResult
from .seq2seq import generate_together, prepare_seq2seq_attribution

DEFAULT_CHUNK_ROWS = 4  # rows per checkpointed chunk (and per Ray task)
# an encoder-decoder's generated targets come from one `generate` per chunk: larger chunks
GENERATE_CHUNK_ROWS = 8

# per model: how its chunks generate ("together" once checked against one source alone, or
# why not), so that the check runs once per model and process
_GENERATION: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
TOGETHER = "the chunk's sources right-padded into one generate (checked against one source alone)"


def _attribute_chunk(
    lm: LoadedModel, rows: list[dict[str, Any]], options: dict[str, Any]
) -> list[AttributionResult]:
    """Each row of a chunk attributed on its own (a row's inputs are batched inside); an
    encoder-decoder's generated targets are generated for the whole chunk first."""
    made, note = _generated(lm, rows, options) if lm.is_seq2seq else ({}, None)
    out = []
    for j, row in enumerate(rows):
        given = {"target": row["target"]} if row.get("target") is not None else {}
        with at_rows([j]):
            result = attribute(
                lm,
                row["prompt"],
                **{**options, **given, "progress": False},
                _generated=made.get(j),
            )
        if j in made:
            result.meta["generation"] = note
        out.append(result)
    return out


def _generated(
    lm: LoadedModel, rows: list[dict[str, Any]], options: dict[str, Any]
) -> tuple[dict[int, list[int]], str | None]:
    """The generated output of each row of a chunk that has no target of its own (by row
    index), and how it was generated. The chunk's sources run through one `generate`,
    right-padded; the first time for a model, the most padded source is also generated alone
    and must come out the same, else every source is generated alone from then on (said
    once)."""
    o = AttributionOptions(**options)
    todo = [j for j, row in enumerate(rows) if row.get("target") is None]
    if o.generate is None or not todo:
        return {}, None
    prefix = decoder_prefix(lm, o.target_lang)
    sources = {}
    for j in todo:
        with at_rows([j]):
            sources[j] = prepare_seq2seq(lm, rows[j]["prompt"], target_lang=o.target_lang).input_ids
    how = _GENERATION.get(lm.model)
    if len(todo) == 1 or (how is not None and how != TOGETHER):
        made = {j: generate_together(lm, [sources[j]], prefix, o.generate)[0] for j in todo}
        single = len(todo) == 1 and how in (None, TOGETHER)
        return made, "one source alone (nothing to generate together)" if single else how
    together = generate_together(lm, [sources[j] for j in todo], prefix, o.generate)
    made = dict(zip(todo, together, strict=True))
    if how is None:
        probe = min(todo, key=lambda j: len(sources[j]))
        alone = generate_together(lm, [sources[probe]], prefix, o.generate)[0]
        if alone == made[probe]:
            how = TOGETHER
        else:
            how = (
                "one source alone: generated with the chunk's sources padded together, "
                f"{lm.name} wrote {made[probe]} for one of them and {alone} for it alone"
            )
            warn(f"{how}; every source is generated alone (slower, the same targets)")
            made = {j: generate_together(lm, [sources[j]], prefix, o.generate)[0] for j in todo}
        _GENERATION[lm.model] = how
    return made, how


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
    if lm.is_seq2seq:
        if o.chat:
            raise TokenprobeError("an encoder-decoder has no chat template: leave out `chat`")
        inp2 = prepare_seq2seq_attribution(
            lm,
            row["prompt"],
            target=stand_in if target is None else target,
            generate=None,
            target_lang=o.target_lang,
            # a span may lie in the target, which generating makes: checked when it runs
            features=text_list(o.features, "features") if target is not None else None,
            target_spans=text_list(o.target_spans, "target_spans") if target is not None else None,
        )
        if target is not None:
            _foil_id(lm, o.foil, inp2.target_text)
        return
    if o.target_lang is not None:
        raise TokenprobeError(
            "`target_lang` is for encoder-decoder models: leave it out for a decoder-only one"
        )
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


def _chunk_rows(
    lm: LoadedModel, row_targets: Sequence[str] | None, options: AttributionOptions
) -> int:
    """Rows per chunk: more where an encoder-decoder generates every row's target."""
    together = lm.is_seq2seq and row_targets is None and options.generate is not None
    return GENERATE_CHUNK_ROWS if together else DEFAULT_CHUNK_ROWS


@with_options(AttributionOptions, analysis="attribute")
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
        chunk_rows=chunk_rows or _chunk_rows(lm, row_targets, options),
        figures=figures,
        checkpoint=checkpoint,
        resume=resume,
        executor=executor,
        progress=progress,
        desc="attribution",
        data=data,
    )
