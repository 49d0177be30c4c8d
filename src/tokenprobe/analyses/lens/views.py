"""The lens's heatmap: x = input tokens, y = layers with "output" on top, the top-1 token in
each cell, colour = entropy; hovering on the page gives the top-k and the targets."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ...heatmap import MAX_FIGURE_WIDTH_IN, Heatmap, clip_range, parse_range
from ...text import display_token

if TYPE_CHECKING:
    from .result import LensResult

MAX_ANNOTATED_POSITIONS = 80


def lens_view(
    result: LensResult,
    *,
    zoom: str | tuple[int, int] | None = None,
    frame: str | tuple[int, int] | bool | None = None,
    annotate: bool | None = None,
    label_chars: int = 7,
    cmap: str = "RdYlBu_r",
    vmax: float | None = None,
    title: str | None = None,
) -> Heatmap:
    """Entropy heatmap of positions `zoom` (START:END, default all), outlining positions
    `frame` (default: the inserted dummy tokens; False for none). Colour runs from 0 to `vmax`
    nats (default: the largest entropy drawn, rounded up to half a nat)."""
    n_rows, n_pos = result.entropy.shape
    start, end = clip_range(parse_range(zoom, "zoom") or (0, n_pos), n_pos, "zoom")
    ent = result.entropy[:, start:end]
    width = end - start
    annotate = width <= MAX_ANNOTATED_POSITIONS if annotate is None else annotate
    # default: the data's own range (more contrast than 0..ln V; pass vmax=ln V to compare figures)
    top = vmax if vmax is not None else max(0.5, math.ceil(2 * float(np.nanmax(ent))) / 2)
    fig_w = min(MAX_FIGURE_WIDTH_IN, max(7.0, (0.52 if annotate else 0.14) * width + 3.0))
    model_name = (result.meta.get("model") or {}).get("name", "")
    shown = None
    if frame is not False:
        span = parse_range(frame, "frame") if frame not in (None, True) else result.marked
        if span is not None:
            f0, f1 = clip_range(span, n_pos, "frame")
            f0, f1 = max(f0, start), min(f1, end)
            shown = (f0 - start, f1 - start) if f0 < f1 else None
    labels = np.vectorize(lambda t: display_token(str(t), label_chars), otypes=[object])
    return Heatmap(
        values=ent,
        rows=list(result.layer_labels),
        cols=[display_token(t, 10) for t in result.tokens[start:end]],
        cmap=cmap,
        vmin=0.0,
        vmax=top,
        title=title
        or f"Entropy of token predictions (logit lens){' — ' + model_name if model_name else ''}",
        colorbar="Entropy (nats)",
        xlabel="input token",
        ylabel="layer",
        origin="lower",
        cell_text=labels(result.top1[:, start:end]),
        annotate=annotate,
        cell_fontsize=6.5 if label_chars <= 7 else 5.5,
        frame=shown,
        tips=lambda: _tips(result, start, end),
        about=[
            f"prompt: {result.meta.get('prompt', '')}",
            f"targets: {', '.join(result.targets) or 'none'}",
        ],
        size=(fig_w, max(4.5, 0.27 * n_rows + 2.6)),
        col_numbers=(start, "position"),
        gridlines=0.25 if annotate else 0.0,
        colorbar_fraction=0.025 if fig_w > 12 else 0.05,
    )


def _tips(res: LensResult, start: int, end: int) -> list[list[str]]:
    """Hover text of each cell: the position, the layer, entropy, top-k and the targets."""
    tips = []
    for r in range(res.n_rows):
        line = []
        for c in range(start, end):
            tops = ", ".join(
                f"{display_token(str(res.top_tokens[r, c, j]), 16)} {res.top_probs[r, c, j]:.3f}"
                for j in range(res.top_k)
            )
            text = (
                f"position {c}: {display_token(res.tokens[c], 24)}\nlayer {res.layer_labels[r]}\n"
                f"entropy {res.entropy[r, c]:.3f} nats\ntop-{res.top_k}: {tops}"
            )
            for t, name in enumerate(res.targets):
                assert res.target_probs is not None and res.target_ranks is not None
                text += f"\n{display_token(name, 16)}: p={res.target_probs[r, c, t]:.4f} rank {res.target_ranks[r, c, t]}"
            line.append(text)
        tips.append(line)
    return tips
