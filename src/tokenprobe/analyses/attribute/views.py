"""Attribution's heatmap: features as columns (labels on top), target rows as rows, each value
written with 4 decimals; RdYlGn centred on 0 with limits at +-max|value|. Hovering on the page
gives the feature's characters, the target row and the value (with its standard error)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ...heatmap import MAX_FIGURE_WIDTH_IN, Heatmap
from ...text import display_token

if TYPE_CHECKING:
    from .options import AttributionFigure
    from .result import AttributionResult

MAX_ANNOTATED_CELLS = 1600
MAX_ANNOTATED_FEATURES = 60


def attribution_view(result: AttributionResult, figure: AttributionFigure) -> Heatmap:
    """The heatmap of scores (rows x features) in `figure.cmap`; values are written in the
    saved figure's cells when `figure.annotate` (default: up to 1600 cells and 60 features)."""
    annotate, title = figure.annotate, figure.title
    scores = result.scores
    n_rows, n_feat = scores.shape
    if annotate is None:
        annotate = n_rows * n_feat <= MAX_ANNOTATED_CELLS and n_feat <= MAX_ANNOTATED_FEATURES
    top = float(np.abs(scores).max()) or 1.0
    options = result.meta.get("options") or {}
    spans, row_spans = bool(options.get("spans")), bool(options.get("target_spans"))
    per_col = 0.95 if annotate else 0.18
    fig_w = min(MAX_FIGURE_WIDTH_IN, max(6.0, per_col * n_feat + 3.0))
    fig_h = max(3.5, (0.36 if annotate else 0.16) * n_rows + 2.8)
    model_name = (result.meta.get("model") or {}).get("name", "")
    method = result.method.replace("_", " ")
    foil = options.get("foil")
    if foil is not None:  # contrastive: say what the score is contrasted with
        method += f", vs foil {display_token(foil, 18)}"
    # an encoder-decoder: source tokens, then the target prefix outlined as a second block
    n_source = result.source_features
    block = (n_source, n_feat) if n_source < n_feat else None
    return Heatmap(
        values=scores,
        frame=block,
        rows=[display_token(r, 18, show_spaces=not row_spans) for r in result.rows],
        cols=[display_token(f["text"], 18, show_spaces=not spans) for f in result.features],
        cmap=figure.cmap,
        vmin=-top,
        vmax=top,
        title=title or f"Token Attribution ({method}){' — ' + model_name if model_name else ''}",
        colorbar="Token Attribution" if foil is None else "Token Attribution (target - foil)",
        xlabel="input feature" if block is None else "source tokens | target prefix (outlined)",
        ylabel="target token" if all(len(p) <= 1 for p in result.row_positions) else "target span",
        origin="upper",  # first target row on top
        cell_text=np.vectorize(lambda v: f"{v:.4f}", otypes=[object])(scores),
        annotate=annotate,
        cell_fontsize=7,
        tips=lambda: _tips(result),
        about=[
            f"{'source' if block else 'prompt'}: {result.meta.get('prompt', '')[:300]}",
            f"target: {result.meta.get('target', '')}",
        ],
        size=(fig_w, fig_h),
        xticks_top=True,
        xtick_rotation=60,
        xtick_fontsize=8,
        ytick_fontsize=8,
        ytick_step=max(1, math.ceil(n_rows * 0.13 / max(1.0, fig_h - 2.8))),
        gridlines=0.4 if annotate else 0.0,
        colorbar_fraction=0.04,
        colorbar_pad=0.01,
        title_fontsize=11,
        figure_title=True,
        text_min_px=44,
    )


def _tips(res: AttributionResult) -> list[list[str]]:
    """Hover text of each cell: the feature and its characters, the target row, the value."""
    feats = [f["text"] for f in res.features]
    return [
        [
            f"{res.features[c].get('side', 'feature')}: "
            f"{display_token(feats[c], 40, show_spaces=False)} "
            f"(chars {res.features[c]['start']}-{res.features[c]['end']})"
            f"\ntarget: {display_token(res.rows[r], 24)}\nattribution {res.scores[r, c]:.4f}"
            + (f" ± {res.stderr[r, c]:.4f}" if res.stderr is not None else "")
            for c in range(len(feats))
        ]
        for r in range(len(res.rows))
    ]
