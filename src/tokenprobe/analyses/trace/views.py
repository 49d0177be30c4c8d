"""The trace's heatmaps: x = input tokens (the subject's or the changed tokens marked with * and
framed), y = layers, one sequential colour map per component (ROME's: purple for the residual
stream, red for attention, green for MLPs), the colourbar naming the metric; hovering on the
page gives the cell's score, its normalised value and the estimate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...heatmap import MAX_FIGURE_WIDTH_IN, Heatmap
from ...text import display_token

if TYPE_CHECKING:
    from .options import TraceFigure
    from .result import TraceResult

CMAPS = {"resid": "Purples", "attn": "Reds", "mlp": "Greens"}
NAMES = {"resid": "the residual stream", "attn": "attention output", "mlp": "MLP output"}
MAX_ANNOTATED_POSITIONS = 24


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
    positions)."""
    show, annotate, title = figure.show, figure.annotate, figure.title
    meta = result.meta
    raw = result.scores[component]
    values = result.normalised(raw) if show == "normalised" else raw
    n_rows, n_pos = values.shape
    ends = [0.0, 1.0] if show == "normalised" else [result.clean_score, result.corrupted_score]
    finite = values[np.isfinite(values)]
    lo = float(min([*ends, *(finite.min(keepdims=True) if finite.size else [])]))
    hi = float(max([*ends, *(finite.max(keepdims=True) if finite.size else [])]))
    marked = meta.get("marked")
    frame = (int(marked[0]), int(marked[1])) if marked else None
    cols = [
        display_token(t, 10) + ("*" if frame and frame[0] <= i < frame[1] else "")
        for i, t in enumerate(result.tokens)
    ]
    annotate = n_pos <= MAX_ANNOTATED_POSITIONS if annotate is None else annotate
    label = metric_label(meta)
    colorbar = f"{label}, normalised (0 = corrupted, 1 = clean)" if show == "normalised" else label
    window = int((meta.get("options") or {}).get("window") or 1)
    verb = "corrupting" if meta.get("direction") == "corrupt" else "restoring"
    model_name = (meta.get("model") or {}).get("name", "")
    fig_w = min(MAX_FIGURE_WIDTH_IN, max(6.5, (0.5 if annotate else 0.16) * n_pos + 3.0))
    return Heatmap(
        values=values,
        rows=[str(k) for k in range(n_rows)],
        cols=cols,
        cmap=CMAPS[component],
        vmin=lo,
        vmax=hi if hi > lo else lo + 1.0,
        title=title
        or f"Causal trace: {verb} {NAMES[component]}{f' (window {window})' if window > 1 else ''}"
        f"{' — ' + model_name if model_name else ''}",
        colorbar=colorbar,
        xlabel="input token (* = "
        + ("subject)" if meta.get("corruption") == "noise" else "corrupted)"),
        ylabel="layer (0 = embeddings)" if component == "resid" else "block",
        origin="lower",
        cell_text=np.vectorize(lambda v: "" if not np.isfinite(v) else f"{v:.2f}", otypes=[object])(
            values
        ),
        annotate=annotate,
        cell_fontsize=6.0,
        frame=frame,
        tips=lambda: _tips(result, component),
        about=_about(result),
        size=(fig_w, max(4.0, 0.2 * n_rows + 2.6)),
        col_numbers=(0, "position"),
        gridlines=0.25 if annotate else 0.0,
    )


def _about(result: TraceResult) -> list[str]:
    m = result.meta
    if m.get("corruption") == "noise":
        how = f"noise on {m.get('subject')!r}: {m.get('noise_std', 0):.4g} std, {(m.get('options') or {}).get('samples')} samples"
    else:
        how = f"corrupted prompt: {m.get('corrupted', '')}"
    lines = [
        f"prompt: {m.get('prompt', '')}",
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
    """Hover text of each cell: the position and token, the layer, score, normalised, estimate."""
    grid = res.scores[component]
    norm = res.normalised(grid)
    est = res.estimates[component] if res.estimates is not None else None
    label = metric_label(res.meta)
    what = "layer" if component == "resid" else f"{component} of block"
    tips = []
    for r in range(grid.shape[0]):
        line = []
        for p in range(grid.shape[1]):
            if not np.isfinite(grid[r, p]):
                line.append(
                    f"position {p}: {display_token(res.tokens[p], 24)}\nno {component} in block {r}"
                )
                continue
            text = (
                f"position {p}: {display_token(res.tokens[p], 24)}\n{what} {r}\n"
                f"{label} = {grid[r, p]:.4g}\nnormalised {norm[r, p]:.3f}"
            )
            if est is not None:
                text += f"\nestimate {est[r, p]:.4g}"
            line.append(text)
        tips.append(line)
    return tips
