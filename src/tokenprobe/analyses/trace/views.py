"""The trace's heatmaps: x = input tokens (the subject's or the changed tokens marked with * and
framed), y = layers, one sequential colour map per component (ROME's: purple for the residual
stream, red for attention, green for MLPs), the colourbar naming the metric; hovering on the
page gives the cell's score, its normalised value and the estimate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...heatmap import MAX_FIGURE_WIDTH_IN, Heatmap
from ...text import display_token

if TYPE_CHECKING:
    from .options import TraceFigure
    from .result import TraceResult

CMAPS = {
    "resid": "Purples",
    "attn": "Reds",
    "mlp": "Greens",
    "head": "Oranges",
    "head-k": "Blues",
    "head-v": "YlOrBr",
    "cross": "Reds",  # an encoder-decoder's grids
    "encoder": "Purples",
    "decoder": "BuPu",
}
NAMES = {
    "resid": "the residual stream",
    "attn": "attention output",
    "mlp": "MLP output",
    "head": "each attention head's output",
    "head-k": "each key head",
    "head-v": "each value head",
    "cross": "each decoder block's cross-attention output",
    "encoder": "the encoder's residual stream",
    "decoder": "the decoder's residual stream",
}
YLABELS = {
    "resid": "layer (0 = embeddings)",
    "encoder": "encoder layer (0 = embeddings)",
    "decoder": "decoder layer (0 = embeddings)",
    "cross": "decoder block",
}
MAX_ANNOTATED_POSITIONS = 24
MAX_LABELLED_ROWS = 64  # past this many (block, head) rows, only each block's first is labelled


def grid_2d(result: TraceResult, component: str, values: np.ndarray) -> Grid:
    """A component's values as a drawn grid: (rows, columns) with their labels. A head
    component restored at every position at once is blocks x heads; one with a column per
    position is (block, head) rows x positions; the others are rows x positions (one column
    when every position was restored at once)."""
    every = result.all_positions
    if values.ndim == 3 and every:
        blocks, heads = values.shape[:2]
        return Grid(
            values[:, :, 0],
            [str(b) for b in range(blocks)],
            [str(h) for h in range(heads)],
            "head",
            "block",
            [None] * heads,
        )
    if values.ndim == 3:
        blocks, heads, n_pos = values.shape
        rows = [f"{b}.{h}" for b in range(blocks) for h in range(heads)]
        return Grid(
            values.reshape(blocks * heads, n_pos), rows, [], "", "block.head", list(range(n_pos))
        )
    rows = [str(k) for k in range(values.shape[0])]
    ylabel = YLABELS.get(component, "block")
    if every:
        return Grid(
            values, rows, ["all positions"], "every position restored at once", ylabel, [None]
        )
    return Grid(values, rows, [], "", ylabel, list(range(values.shape[1])))


@dataclass
class Grid:
    """What a heatmap draws: values (rows, cols), labels, and the position of each column
    (None: a column that is not one position)."""

    values: np.ndarray
    rows: list[str]
    cols: list[str]  # empty: the input tokens
    xlabel: str  # empty: the input tokens'
    ylabel: str
    positions: list[int | None]


def metric_label(meta: dict) -> str:
    """The metric as the colourbar names it, e.g. p(▁Paris) or logit(▁Paris) - logit(▁Rome)."""
    target = display_token(str(meta.get("target_token") or meta.get("target") or ""), 16)
    foil = display_token(str(meta.get("foil_token") or meta.get("foil") or ""), 16)
    metric = meta.get("metric")
    if metric == "logprob":
        return f"log p({target})"
    if metric == "diff":
        return f"logit({target}) - logit({foil})"
    return f"p({target})"


def trace_view(result: TraceResult, component: str, figure: TraceFigure) -> Heatmap:
    """The heatmap of one component: the score of each cell (`show="normalised"`: 0 =
    corrupted, 1 = clean), values written in the cells when `annotate` (default: up to 24
    columns). Head components: (block, head) rows x positions, or blocks x heads when every
    position was restored at once."""
    show, annotate, title = figure.show, figure.annotate, figure.title
    meta = result.meta
    raw = result.scores[component]
    grid = grid_2d(result, component, result.normalised(raw) if show == "normalised" else raw)
    values = grid.values
    n_rows, n_cols = values.shape
    ends = [0.0, 1.0] if show == "normalised" else [result.clean_score, result.corrupted_score]
    finite = values[np.isfinite(values)]
    lo = float(min([*ends, *(finite.min(keepdims=True) if finite.size else [])]))
    hi = float(max([*ends, *(finite.max(keepdims=True) if finite.size else [])]))
    # an encoder-decoder marks the source positions of the encoder grid only
    marked = meta.get("marked") if component == "encoder" or not result.seq2seq else None
    frame = (int(marked[0]), int(marked[1])) if marked and not grid.cols else None
    cols = grid.cols or [
        display_token(t, 10) + ("*" if frame and frame[0] <= i < frame[1] else "")
        for i, t in enumerate(result.tokens_of(component))
    ]
    annotate = n_cols <= MAX_ANNOTATED_POSITIONS if annotate is None else annotate
    label = metric_label(meta)
    colorbar = f"{label}, normalised (0 = corrupted, 1 = clean)" if show == "normalised" else label
    window = int((meta.get("options") or {}).get("window") or 1)
    verb = "corrupting" if meta.get("direction") == "corrupt" else "restoring"
    model_name = (meta.get("model") or {}).get("name", "")
    fig_w = min(MAX_FIGURE_WIDTH_IN, max(6.5, (0.5 if annotate else 0.16) * n_cols + 3.0))
    per_block = raw.shape[1] if raw.ndim == 3 and not grid.cols else 1
    step = per_block if n_rows > MAX_LABELLED_ROWS else 1
    every = " at every position at once" if result.all_positions else ""
    return Heatmap(
        values=values,
        rows=grid.rows,
        cols=cols,
        cmap=CMAPS[component],
        vmin=lo,
        vmax=hi if hi > lo else lo + 1.0,
        title=title
        or f"Causal trace: {verb} {NAMES[component]}{every}"
        f"{f' (window {window})' if window > 1 else ''}{' — ' + model_name if model_name else ''}",
        colorbar=colorbar,
        xlabel=grid.xlabel or _xlabel(result, component),
        ylabel=grid.ylabel,
        origin="lower",
        cell_text=np.vectorize(lambda v: "" if not np.isfinite(v) else f"{v:.2f}", otypes=[object])(
            values
        ),
        annotate=annotate,
        cell_fontsize=6.0,
        frame=frame,
        tips=lambda: _tips(result, component),
        about=_about(result),
        size=(fig_w, min(40.0, max(4.0, 0.2 * n_rows / step + 2.6))),
        col_numbers=None if grid.cols else (0, "position"),
        ytick_step=step,
        gridlines=0.25 if annotate else 0.0,
    )


def _xlabel(result: TraceResult, component: str) -> str:
    """The token axis: the input's (an encoder-decoder's source, or its decoder's), the marked
    ones named."""
    if result.seq2seq and component != "encoder":
        return "decoder token (the target is scored after the last)"
    star = "subject)" if result.meta.get("corruption") == "noise" else "corrupted)"
    return ("source token (* = " if result.seq2seq else "input token (* = ") + star


def _about(result: TraceResult) -> list[str]:
    m = result.meta
    if m.get("corruption") == "noise":
        how = f"noise on {m.get('subject')!r}: {m.get('noise_std', 0):.4g} std, {(m.get('options') or {}).get('samples')} samples"
    else:
        how = f"corrupted prompt: {m.get('corrupted', '')}"
    lines = [
        f"prompt: {m.get('prompt', '')}",
        *([f"decoder input: {''.join(m.get('decoder_tokens') or [])}"] if result.seq2seq else []),
        how,
        f"{metric_label(m)}: clean {result.clean_score:.4g}, corrupted {result.corrupted_score:.4g} "
        f"({m.get('direction')}, {m.get('method')})",
    ]
    corr = m.get("estimate_correlation")
    if corr:
        lines.append(
            "estimate vs exact: r = "
            + ", ".join(f"{k} {v:.3f}" for k, v in corr.items() if v is not None)
        )
    return lines


def _tips(res: TraceResult, component: str) -> list[list[str]]:
    """Hover text of each cell: the position and token, the row, score, normalised, estimate."""
    grid = grid_2d(res, component, res.scores[component])
    norm = grid_2d(res, component, res.normalised(res.scores[component])).values
    est = (
        None if res.estimates is None else grid_2d(res, component, res.estimates[component]).values
    )
    label = metric_label(res.meta)
    headed = res.scores[component].ndim == 3
    tokens = res.tokens_of(component)
    tips = []
    for r in range(grid.values.shape[0]):
        line = []
        for q in range(grid.values.shape[1]):
            p = grid.positions[q]
            where = (
                f"position {p}: {display_token(tokens[p], 24)}"
                if p is not None
                else "every position"
            )
            row = _row_name(component, grid, r, q, headed)
            v = grid.values[r, q]
            if not np.isfinite(v):
                line.append(f"{where}\nno {row if headed else f'{component} in block {r}'}")
                continue
            text = f"{where}\n{row}\n{label} = {v:.4g}\nnormalised {norm[r, q]:.3f}"
            if est is not None:
                text += f"\nestimate {est[r, q]:.4g}"
            line.append(text)
        tips.append(line)
    return tips


def _row_name(component: str, grid: Grid, r: int, q: int, headed: bool) -> str:
    """A cell's row as the tips say it: layer 3, attn of block 3, head 2 of block 3."""
    if headed and grid.cols and grid.positions[0] is None and grid.xlabel == "head":
        return f"{component} {grid.cols[q]} of block {grid.rows[r]}"
    if headed:
        block, head = grid.rows[r].split(".")
        return f"{component} {head} of block {block}"
    if component in ("resid", "encoder", "decoder"):
        return f"{'' if component == 'resid' else component + ' '}layer {r}"
    if component == "cross":
        return f"cross-attention of decoder block {r}"
    return f"{component} of block {r}"
