"""Past similarity's heatmap: y = layers (0 at the bottom), x = distance from the marker (1 on
the left, labelled with the tokens there for one text), colour = cosine, symmetric about 0;
hovering on the page gives the cosine and the texts behind each cell."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ...heatmap import MAX_FIGURE_WIDTH_IN, Heatmap
from ...text import display_token

if TYPE_CHECKING:
    from .options import SimilarityFigure
    from .result import SimilarityResult


def similarity_view(result: SimilarityResult, figure: SimilarityFigure) -> Heatmap:
    """Layer x distance heatmap of cosine similarity in `figure.cmap`: colour from -`vmax` to
    `vmax` (default: the largest |cosine|), padded cells (no text reaches that far) left blank;
    `title` replaces the one made from the marker and the direction."""
    vmax, title = figure.vmax, figure.title
    n_layers, window = result.cosine.shape
    finite = result.cosine[np.isfinite(result.cosine)]
    top = vmax if vmax is not None else (float(np.abs(finite).max()) if finite.size else 1.0) or 1.0
    fig_w = min(MAX_FIGURE_WIDTH_IN, max(6.5, 0.42 * window + 3.0))
    where = "past" if result.direction == "past" else "future"
    name = f"{result.marker} #{result.occurrence}"
    if any(t is not None for t in result.tokens):
        cols = [display_token(t, 10) if t is not None else "" for t in result.tokens]
        xlabel = f"Token {where} of {name} (at T distance; T = 1 on the left)"
    else:
        cols = [str(d) for d in range(1, window + 1)]
        xlabel = f"distance from {name} (tokens, {where})"
    texts = result.meta.get("texts_used")
    tags = "Padded, centred" if result.centre else "Padded"
    over = f" — mean over {texts} texts" if texts and texts > 1 else ""
    stack = {"source": "Encoder", "decoder": "Decoder"}.get(result.side or "")
    about = [
        f"texts: {result.meta.get('texts_used', 1)}",
        f"text: {result.meta.get('text') or result.meta.get('data', '')}",
    ]
    if stack:
        about.append(f"compared within the {stack.lower()}'s states ({result.side} side)")
    return Heatmap(
        values=result.cosine,
        rows=list(result.layer_labels),
        cols=cols,
        cmap=figure.cmap,
        vmin=-top,
        vmax=top,
        title=title
        or f"{name} • {where.capitalize()} Cosine-Sim ({tags}{', ' + stack.lower() if stack else ''}){over}",
        colorbar="cosine similarity",
        xlabel=xlabel,
        ylabel=f"{stack} layer" if stack else "Layer",
        origin="lower",
        bad="white",
        tips=lambda: _tips(result),
        about=about,
        size=(fig_w, max(4.0, 0.24 * n_layers + 2.4)),
        col_offset=1.0,  # distance 1 at x = 1
        xtick_rotation=90.0 if any(t is not None for t in result.tokens) else 0.0,
        xtick_fontsize=8.0,
        ytick_fontsize=8.0,
        ytick_step=max(1, math.ceil(n_layers / 40)),
        title_fontsize=12.0,  # matplotlib's "large", as axes titles are by default
    )


def _tips(res: SimilarityResult) -> list[list[str]]:
    """Hover text of each cell: layer, distance (and its token), cosine and the texts behind it."""
    return [
        [
            f"layer {res.layer_labels[layer]}, distance {d + 1}"
            + (f": {display_token(token, 24)}" if (token := res.tokens[d]) is not None else "")
            + (
                f"\ncosine {res.cosine[layer, d]:.4f}"
                if np.isfinite(res.cosine[layer, d])
                else "\npadded (no token there)"
            )
            + f"\ncount {int(res.count[d])} text(s)"
            for d in range(res.window)
        ]
        for layer in range(len(res.layer_labels))
    ]
