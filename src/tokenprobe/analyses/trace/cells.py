"""A trace's cells and the grids they fill: every (row, position) of each component with a site
(positions "each"), or one cell per row restoring all its positions at once ("all"); scored
exactly in batches, estimated by attribution patching, or both. A head component's grid comes
out as (blocks, heads, positions); the others' as (rows, positions)."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ...errors import TokenprobeError
from ...runner import progress_disabled, token_budget_batches
from .estimate import first_order
from .heads import is_head
from .options import TraceOptions
from .seq2seq_tracer import Seq2SeqTracer
from .store import CellStore
from .tracer import Cell, Tracer, window_of

AnyTracer = Tracer | Seq2SeqTracer

# each component's cells (the sites each restores) and the (row, column) each fills
Plans = dict[str, tuple[list[Cell], list[tuple[int, int]]]]


def plan_cells(
    tracer: AnyTracer, component: str, window: int, positions: str = "each"
) -> tuple[list[Cell], list[tuple[int, int]]]:
    """Every cell of a component (an encoder-decoder's grid) that has a site, with the (site,
    position) pairs it restores and the (row, column) it fills: a column per position, or one
    ("all") for every position."""
    sites: list = tracer.sites[component]
    n_pos = tracer.n_columns(component)
    cells, where = [], []
    for row, site in enumerate(sites):
        if site is None:
            continue
        idx = [tracer.index[(component, k)] for k in window_of(sites, row, window)]
        if positions == "all":
            cells.append([(i, p) for i in idx for p in range(n_pos)])
            where.append((row, 0))
            continue
        for p in range(n_pos):
            cells.append([(i, p) for i in idx])
            where.append((row, p))
    return cells, where


def trace_grids(
    tracer: AnyTracer,
    o: TraceOptions,
    progress: bool | None,
    store: CellStore | None = None,
    grids: list[str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Each component's grid (`grids`, default the components traced) of exact scores (or
    estimates when only those are asked for), and the estimates beside exact ones with
    `method="both"`. With a `store`, its finished patched runs are taken and each new batch is
    written to it."""
    plans = {c: plan_cells(tracer, c, o.window, o.positions) for c in grids or o.traced}
    columns = {c: 1 if o.positions == "all" else tracer.n_columns(c) for c in plans}
    try:
        estimates = None
        if o.method in ("estimate", "both"):
            assert isinstance(tracer, Tracer)
            estimates = _estimates(tracer, plans, columns)
        if o.method == "estimate":
            return _shaped(tracer, estimates or {}), None
        exact = _exact(tracer, plans, columns, o.batch_tokens, progress, store)
        return _shaped(tracer, exact), None if estimates is None else _shaped(tracer, estimates)
    except TokenprobeError:
        # settings that can never finish: keeping their checkpoint would only make the
        # corrected call ask for `resume`
        if store is not None:
            store.checkpoint.discard()
        raise


def _shaped(tracer: AnyTracer, grids: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A head component's (blocks x heads, columns) grid as (blocks, heads, columns)."""
    n = tracer.adapter.n_blocks
    return {
        c: g.reshape(n, g.shape[0] // n, g.shape[1]) if is_head(c) else g for c, g in grids.items()
    }


def _grids(tracer: AnyTracer, plans: Plans, columns: dict[str, int]) -> dict[str, np.ndarray]:
    """A (rows, columns) grid of NaN per component, for its cells' values."""
    return {c: np.full((len(tracer.sites[c]), columns[c]), np.nan) for c in plans}


def _estimates(tracer: Tracer, plans: Plans, columns: dict[str, int]) -> dict[str, np.ndarray]:
    """Attribution patching's estimate of every cell, from one forward and backward pass: the
    sum of the first-order terms of the (site, position) pairs it restores."""
    deltas = first_order(tracer)
    base = float(np.mean(tracer.base_scores))
    estimates = _grids(tracer, plans, columns)
    for c, (cells, where) in plans.items():
        for cell, (row, q) in zip(cells, where, strict=True):
            estimates[c][row, q] = base + sum(float(deltas[i][:, p].mean()) for i, p in cell)
    return estimates


def _exact(
    tracer: AnyTracer,
    plans: Plans,
    columns: dict[str, int],
    batch_tokens: int,
    progress: bool | None,
    store: CellStore | None,
) -> dict[str, np.ndarray]:
    """Every cell's patched run, in batches; the progress bar starts at what `store` holds."""
    grids = _grids(tracer, plans, columns)
    n_rows = sum(len(cells) for cells, _ in plans.values()) * tracer.samples
    n_batches = len(token_budget_batches([tracer.n_pos] * max(1, n_rows), batch_tokens))
    disable = progress_disabled(progress, n_batches)
    with tqdm(total=n_rows, desc="causal trace", unit="run", disable=disable) as bar:
        bar.update(0 if store is None else store.n_done)
        for c, (cells, where) in plans.items():
            done = None if store is None else store.done[c]
            write = None if store is None else (lambda r, v, c=c: store.write(c, r, v))
            values = tracer.score_cells(cells, batch_tokens, bar, done, write)
            for (row, q), v in zip(where, values, strict=True):
                grids[c][row, q] = v
    return grids
