"""One analysis over every row of a data file of prompts: one table for all rows, figures for
the first few.

A per-prompt analysis (the lens, attribution) gives one `Result` per row. `run_rows` hands the
rows to the runner in chunks (checkpointed in `--out`, so `--resume` continues; on Ray workers
when given an executor) and `RowSet` keeps what came back: the rows' tables stacked with a
`row` column (the data file's row number), each row's own meta.json entries in a second
table, and the first `figures` rows' figures. `Result.load` reads a saved `RowSet` back.

An error about a row names it, in one place (here): each row's cheap preparation (`check`:
tokenisation, target ids) runs for every row before any model work, and a `TokenprobeError`
raised while a chunk runs is said with the rows it is about ("row 17 of data.csv (line 19):
..."). Rows count from 0, as the `row` column does; the line is the file's, where it has lines.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .checkpoint import digest, model_settings
from .data import row_lines
from .errors import TokenprobeError, text_list
from .executors import worker_load_args
from .model import LoadedModel
from .provenance import json_default
from .results import Result
from .runner import Remote, open_checkpoint, progress_disabled, run_chunks

ROW = "row"  # the data row's column in a RowSet's table
ROW_META = "tokenprobe.rows"  # a checkpoint part's Parquet metadata key: the rows' metas
DEFAULT_FIGURES = 3

# fn(model, rows of one chunk, options) -> one result per row
RowFunction = Callable[[LoadedModel, list[dict[str, Any]], dict[str, Any]], Sequence[Result]]
# check(model, one row, options): raises the TokenprobeError the row would fail with, cheaply
RowCheck = Callable[[LoadedModel, dict[str, Any], dict[str, Any]], None]
_IN_CHUNK = "_tokenprobe_chunk_rows"  # set on an error: the rows (places in its chunk) it is about
_DATA_ROWS = "_tokenprobe_data_rows"  # set on an error: the data rows it is about
SHOWN_ROWS = 5  # bad rows listed in one message


@dataclass
class RowPart:
    """One chunk's rows: their tables stacked (with `row`) and each row's own meta entries."""

    frame: pd.DataFrame
    metas: dict[int, dict[str, Any]]


def _part(results: Sequence[Result], rows: Sequence[int]) -> RowPart:
    frames, metas = [], {}
    for i, result in zip(rows, results, strict=True):
        frame = result.row_frame()
        frame.insert(0, ROW, i)
        frames.append(frame)
        metas[i] = json.loads(
            json.dumps({**result.meta, **result.extra_meta()}, default=json_default)
        )
    return RowPart(pd.concat(frames, ignore_index=True), metas)


def _write_part(part: RowPart) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        table = pa.Table.from_pandas(part.frame, preserve_index=False)
        extra = {ROW_META.encode(): json.dumps(part.metas).encode()}
        pq.write_table(
            table.replace_schema_metadata({**(table.schema.metadata or {}), **extra}), path
        )

    return write


def _read_part(path: Path) -> RowPart:
    table = pq.read_table(path)
    metas = json.loads((table.schema.metadata or {})[ROW_META.encode()])
    return RowPart(table.to_pandas(), {int(k): v for k, v in metas.items()})


def prompt_rows(prompts: Sequence[str], row_targets: Sequence[str] | None) -> list[dict[str, Any]]:
    """One {"prompt", "target"} per prompt (target None without `row_targets`)."""
    prompts = text_list(prompts, "prompts") or []
    row_targets = text_list(row_targets, "row_targets")
    if row_targets is not None and len(row_targets) != len(prompts):
        raise TokenprobeError(
            f"`row_targets` has {len(row_targets)} entries for {len(prompts)} prompts: give one per prompt"
        )
    return [
        {"prompt": p, "target": None if row_targets is None else row_targets[i]}
        for i, p in enumerate(prompts)
    ]


@contextmanager
def at_rows(places: Sequence[int]) -> Iterator[None]:
    """In a row function: a TokenprobeError raised inside is about these rows of its chunk
    (their places in the chunk's list), so the runner names them rather than the whole chunk."""
    try:
        yield
    except TokenprobeError as exc:
        if getattr(exc, _IN_CHUNK, None) is None:
            setattr(exc, _IN_CHUNK, list(places))
        raise


def _computed(
    fn: RowFunction,
    lm: LoadedModel,
    chunk: Sequence[int],
    rows: list[dict[str, Any]],
    options: dict[str, Any],
) -> RowPart:
    """`fn` over one chunk; a TokenprobeError it raises learns the data rows it is about (here
    or on a Ray worker: the attribute travels with the pickled error)."""
    try:
        return _part(fn(lm, rows, options), chunk)
    except TokenprobeError as exc:
        places = getattr(exc, _IN_CHUNK, None)
        setattr(exc, _DATA_ROWS, [chunk[j] for j in places] if places is not None else list(chunk))
        raise


def _chunk_on_worker(lm: LoadedModel, payload: tuple) -> RowPart:
    """One chunk on a Ray worker, against the worker's own model."""
    fn, chunk, rows, options = payload
    return _computed(fn, lm, chunk, rows, options)


def _rows_text(rows: Sequence[int]) -> str:
    """ "7", "16 to 31", "3, 5 and 9", or "3, 5, 9, 11, 12 and 4 more"."""
    rows = sorted(rows)
    if len(rows) == 1:
        return str(rows[0])
    if len(rows) > 2 and rows == list(range(rows[0], rows[-1] + 1)):
        return f"{rows[0]} to {rows[-1]}"
    if len(rows) <= SHOWN_ROWS:
        return f"{', '.join(map(str, rows[:-1]))} and {rows[-1]}"
    return f"{', '.join(map(str, rows[:SHOWN_ROWS]))} and {len(rows) - SHOWN_ROWS} more"


def where(rows: Sequence[int], data: str | None, n_rows: int) -> str:
    """How a message names data rows: "row 17 of data.csv (line 19)", "rows 16 to 31 of
    data.csv" (the `row` column's numbers, from 0; the file's line where rows have lines)."""
    of = f" of {data}" if data else ""
    if len(rows) != 1:
        return f"rows {_rows_text(rows)}{of}"
    lines = row_lines(data) if data else None
    line = f" (line {lines[rows[0]]})" if lines is not None and len(lines) == n_rows else ""
    return f"row {rows[0]}{of}{line}"


def _check_rows(
    lm: LoadedModel,
    rows: Sequence[dict[str, Any]],
    check: RowCheck | None,
    options: dict[str, Any],
    data: str | None,
    chunk_rows: int,
) -> None:
    """Some rows, a chunk size of at least 1, and every row's cheap preparation (`check`) before
    any model work, so a bad row 900 fails at once: the first bad row's error, and how many more."""
    if not rows:
        raise TokenprobeError("the data set has no rows: give a file with at least one prompt")
    if chunk_rows < 1:
        raise TokenprobeError(f"`chunk_rows` must be at least 1, not {chunk_rows}")
    if check is None:
        return
    bad: list[tuple[int, TokenprobeError]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the run itself warns, where a run always did
        for i, row in enumerate(rows):
            try:
                check(lm, dict(row), options)
            except TokenprobeError as exc:
                bad.append((i, exc))
    if not bad:
        return
    first, error = bad[0]
    if len(bad) == len(rows) > 1 and all(e.template == error.template for _, e in bad):
        of = f" of {data}" if data else ""
        raise TokenprobeError(f"all {len(rows)} rows{of}: {error.template}") from error
    more = [i for i, _ in bad[1:]]
    also = ""
    if more:
        also = (
            f" (and {len(more)} more bad {'row' if len(more) == 1 else 'rows'}: {_rows_text(more)})"
        )
    raise TokenprobeError(f"{where([first], data, len(rows))}: {error.template}{also}") from error


@contextmanager
def _naming_rows(data: str | None, n_rows: int) -> Iterator[None]:
    """A TokenprobeError raised inside about some data rows (`_computed`) is said with them."""
    try:
        yield
    except TokenprobeError as exc:
        about = getattr(exc, _DATA_ROWS, None)
        if about is None:
            raise
        raise TokenprobeError(f"{where(about, data, n_rows)}: {exc.template}") from exc


def _load_worker_model(load_args: dict[str, Any]) -> LoadedModel:
    from .model import load

    return load(**load_args)


def run_rows(
    lm: LoadedModel,
    rows: Sequence[dict[str, Any]],
    fn: RowFunction,
    result: type[Result],
    options: dict[str, Any],
    *,
    check: RowCheck | None = None,
    chunk_rows: int = 16,
    figures: int = DEFAULT_FIGURES,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    executor: Any = None,
    progress: bool | None = None,
    desc: str = "rows",
    data: str | None = None,
    fingerprints: dict[str, str] | None = None,
) -> RowSet:
    """`fn` over `rows` (each a dict of that row's inputs, e.g. its prompt and target) in chunks
    of `chunk_rows`, checkpointed in `checkpoint` and resumable; on `executor`'s workers when
    given (each loads the model as `lm` was loaded). `fn` must be a module-level function.
    `check` runs on every row first (cheap: no model work). `fingerprints` (e.g. of a lens's
    weights) join the settings a resumed run must match. An error about a row names it."""
    _check_rows(lm, rows, check, options, data, chunk_rows)
    chunks = [range(i, min(len(rows), i + chunk_rows)) for i in range(0, len(rows), chunk_rows)]
    settings = {
        "analysis": f"{result.kind} over rows",
        "model": model_settings(lm),
        "rows": digest([json.dumps(r, sort_keys=True, default=str) for r in rows]),
        "options": json.loads(json.dumps(options, sort_keys=True, default=str)),
        "chunk_rows": chunk_rows,
        **({"fingerprints": fingerprints} if fingerprints else {}),
    }
    store = open_checkpoint(checkpoint, f"{result.kind}.partial", settings, resume)
    remote = None if executor is None else _remote(lm, fn, rows, options)

    def compute(chunk: Sequence[int]) -> RowPart:
        return _computed(fn, lm, chunk, [dict(rows[i]) for i in chunk], options)

    bar = tqdm(total=len(rows), desc=desc, unit="row", disable=progress_disabled(progress))
    with _naming_rows(data, len(rows)), bar:
        done = run_chunks(
            chunks,
            compute,
            store=store,
            suffix=".rows.parquet",
            unit="row",
            write=_write_part,
            read=_read_part,
            bar=bar,
            executor=executor,
            remote=remote,
        )
    parts = [done[k] for k in range(len(chunks))]
    frame = pd.concat([p.frame for p in parts], ignore_index=True)
    metas = {i: m for p in parts for i, m in p.metas.items()}
    out = RowSet.build(result, frame, [metas[i] for i in range(len(rows))], figures, data)
    if store is not None:
        store.finish(out)  # removed now, or by out.save() inside kept_until_saved()
    return out


def _remote(
    lm: LoadedModel, fn: RowFunction, rows: Sequence[dict[str, Any]], options: dict[str, Any]
) -> Remote:
    """How a chunk of rows runs on a Ray worker, which loads the model as `lm` was loaded."""
    return Remote(
        functools.partial(_load_worker_model, worker_load_args(lm)),
        _chunk_on_worker,
        lambda chunk: (fn, list(chunk), [dict(rows[i]) for i in chunk], options),
    )


@dataclass
class RowSet(Result):
    """The results of one analysis over a data file's rows: one table, the first few figures.

    `frame` stacks every row's table with a `row` column; `row_meta[i]` holds what row i's own
    result needs beyond its table (its prompt, targets, ...); `result(i)` rebuilds it."""

    kind: ClassVar[str] = ""  # set per instance: the inner kind (a RowSet saves as that kind)

    inner: type[Result]
    frame: pd.DataFrame
    row_meta: list[dict[str, Any]]
    figures: int = DEFAULT_FIGURES
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = self.inner.kind  # type: ignore[misc]

    @classmethod
    def build(
        cls,
        inner: type[Result],
        frame: pd.DataFrame,
        row_meta: list[dict[str, Any]],
        figures: int,
        data: str | None,
    ) -> RowSet:
        """A RowSet whose meta.json holds what every row shares (the first row's model,
        options and versions), the data file and the row count."""
        first = row_meta[0]
        shared = {k: v for k, v in first.items() if all(m.get(k) == v for m in row_meta)}
        meta = {**shared, "data": data, "data_rows": len(row_meta), "figure_rows": figures}
        own = [{k: v for k, v in m.items() if k not in shared} for m in row_meta]
        return cls(inner, frame, own, figures, meta)

    def __len__(self) -> int:
        return len(self.row_meta)

    def result(self, i: int) -> Result:
        """Row i's own result, as the analysis run on that prompt alone would give it."""
        shared = {
            k: v for k, v in self.meta.items() if k not in ("data", "data_rows", "figure_rows")
        }
        frame = self.frame[self.frame[ROW] == i].drop(columns=[ROW]).reset_index(drop=True)
        return self.inner.from_row_frame(frame, {**shared, **self.row_meta[i]})

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def tables(self) -> dict[str, pd.DataFrame]:
        metas = [json.dumps(m, default=json_default) for m in self.row_meta]
        return {
            self.kind: self.frame,
            f"{self.kind}_rows": pd.DataFrame({ROW: range(len(self)), "meta": metas}),
        }

    def views(self, **options: Any) -> list[tuple[str, Any]]:
        """The first `figures` rows' figures, each file stem and title naming its row."""
        out = []
        for i in range(min(self.figures, len(self))):
            for stem, view in self.result(i).views(**options):
                view.title = f"row {i}: {view.title}"
                out.append((f"{stem}_row{i}", view))
        return out

    @staticmethod
    def names(kind: str, n_rows: int, figures: int, formats: Sequence[str]) -> list[str]:
        """The files a saved RowSet of `kind` occupies (its figures one stem per row)."""
        stems = [f"{kind}_row{i}" for i in range(min(figures, n_rows))]
        return [f"{kind}.parquet", f"{kind}_rows.parquet", "meta.json"] + [
            f"{s}.{fmt}" for s in stems for fmt in formats
        ]

    @staticmethod
    def is_saved(meta: dict[str, Any]) -> bool:
        """Whether a saved folder's meta.json is one analysis over a data file's rows."""
        return "data_rows" in meta

    @classmethod
    def read(
        cls, inner: type[Result], frame: pd.DataFrame, meta: dict[str, Any], folder: Path
    ) -> RowSet:
        """A saved RowSet from its table and meta.json (its row metas are read beside them,
        in `folder`)."""
        saved = str(meta.get("kind", inner.kind))  # an earlier version's kind, for old folders
        rows_table = folder / f"{saved}_rows.parquet"
        if not rows_table.is_file():
            raise TokenprobeError(f"{folder} lacks {rows_table.name}: re-run the analysis")
        metas = pd.read_parquet(rows_table).sort_values(ROW)["meta"]
        row_meta = [json.loads(m) for m in metas]
        want = meta.get("data_rows")
        have = sorted(set(frame[ROW].tolist())) if ROW in frame.columns else []
        if len(row_meta) != want or have != list(range(len(row_meta))):
            raise TokenprobeError(
                f"{folder} is damaged: meta.json says {want} data rows, {rows_table.name} holds "
                f"{len(row_meta)} and {saved}.parquet {len(have)}: re-run the analysis"
            )
        return cls(inner, frame, row_meta, int(meta.get("figure_rows", DEFAULT_FIGURES)), meta)

    def summary(self) -> str:
        n = len(self)
        shown = min(self.figures, n)
        about = f" of {self.meta['data']}" if self.meta.get("data") else ""
        figs = f"; figures for rows 0..{shown - 1}" if shown else ""
        return f"{self.kind} over {n} rows{about}: {len(self.frame)} table rows{figs}"
