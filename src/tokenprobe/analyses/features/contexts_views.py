"""The dashboard heatmaps of features over a data set: the most frequent features x their top
contexts' activations (hover: the context), and those features' top contexts token by token
(rows: contexts, columns: the window, the activating token's column framed; each cell is a
token coloured by the feature's activation there over its largest, as Neuronpedia shows)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...heatmap import MAX_FIGURE_WIDTH_IN, Heatmap
from ...text import display_token

if TYPE_CHECKING:
    from .contexts import FeatureContextsResult
    from .options import FeaturesFigure

CONTEXT_STEMS = ("feature_contexts", "feature_contexts_tokens")
MAX_TOKEN_FEATURES = 16  # features in the token view (each takes `examples` rows)


def context_views(
    result: FeatureContextsResult, figure: FeaturesFigure
) -> list[tuple[str, Heatmap]]:
    shown = _shown(result.stats, figure.show)
    return [
        (CONTEXT_STEMS[0], top_view(result, shown)),
        (CONTEXT_STEMS[1], token_view(result, shown[:MAX_TOKEN_FEATURES], figure.examples)),
    ]


def _shown(stats: pd.DataFrame, n: int) -> list[int]:
    """The `n` live features that fire most often (ties: the lower feature first)."""
    alive = stats[stats["count"] > 0]
    order = alive.sort_values(["frequency", "feature"], ascending=[False, True], kind="stable")
    return [int(f) for f in order["feature"][:n]]


def _title(result: FeatureContextsResult, what: str) -> str:
    d = result.meta.get("dictionary") or {}
    model = (result.meta.get("model") or {}).get("name", "")
    where = f" at {d.get('reads')}" if d.get("reads") else ""
    return f"Sparse features{where} over a data set: {what}{' — ' + model if model else ''}"


def _about(result: FeatureContextsResult) -> list[str]:
    m = result.meta
    d = m.get("dictionary") or {}
    return [
        f"data: {m.get('data', '')}: {m.get('texts_used', '?')} texts, {m.get('tokens', '?')} "
        f"tokens; {m.get('dead', '?')} of {d.get('latents', '?')} latents never fired",
        f"dictionary: {d.get('kind', '')} ({d.get('format', '')}, {d.get('activation', '')}) "
        f"reading {d.get('reads', '')} ({d.get('reads_module', '')})",
    ]


def _stat_line(row: Any) -> str:
    return (
        f"feature {int(row['feature'])}: fires on {int(row['count'])} tokens "
        f"({100 * float(row['frequency']):.2f}%), mean {float(row['mean']):.4g}, "
        f"max {float(row['max']):.4g}"
    )


def top_view(result: FeatureContextsResult, shown: list[int]) -> Heatmap:
    """Features (rows, the most frequent first) x rank of their top contexts' activations."""
    top = int(result.meta.get("options", {}).get("top_examples") or 0) or int(
        result.contexts["rank"].max() if len(result.contexts) else 1
    )
    values = np.full((len(shown), top), np.nan)
    text = np.full((len(shown), top), "", dtype=object)
    at = {f: i for i, f in enumerate(shown)}
    stats = result.stats.set_index("feature")
    for row in result.contexts.itertuples(index=False):
        i = at.get(int(row.feature))
        if i is not None and row.rank <= top:
            values[i, row.rank - 1] = row.activation
            text[i, row.rank - 1] = f"{row.left}[[{row.token}]]{row.right}"

    def tips() -> list[list[str]]:
        return [
            [
                f"{_stat_line({'feature': f, **stats.loc[f]})} — #{r + 1}: "
                f"{values[i, r]:.4g} in text {text[i, r]!r}"
                for r in range(top)
            ]
            for i, f in enumerate(shown)
        ]

    finite = values[np.isfinite(values)]
    return Heatmap(
        values=values,
        rows=[str(f) for f in shown],
        cols=[str(r + 1) for r in range(top)],
        cmap="Reds",
        vmin=0.0,
        vmax=float(finite.max()) if finite.size and finite.max() > 0 else 1.0,
        title=_title(result, "top activations of the most frequent features"),
        colorbar="activation",
        xlabel="rank of the context",
        ylabel="feature (most frequent first)",
        tips=tips,
        about=_about(result),
        empty="no feature fired",
        size=(
            min(MAX_FIGURE_WIDTH_IN, max(6.5, 0.3 * top + 3.0)),
            max(3.0, 0.22 * len(shown) + 2.6),
        ),
    )


def token_view(result: FeatureContextsResult, shown: list[int], examples: int) -> Heatmap:
    """Rows: each shown feature's top `examples` contexts; columns: the window around the
    activating token (framed); cells: the token, coloured by activation / the feature's max."""
    w = int(result.meta.get("options", {}).get("context", 0))
    stats = result.stats.set_index("feature")
    picked = result.contexts[result.contexts["feature"].isin(shown)]
    picked = picked[picked["rank"] <= examples]
    order = {f: i for i, f in enumerate(shown)}
    picked = picked.assign(o=picked["feature"].map(order)).sort_values(["o", "rank"])
    n = len(picked)
    values = np.full((n, 2 * w + 1), np.nan)
    cells = np.full((n, 2 * w + 1), "", dtype=object)
    tips = [[""] * (2 * w + 1) for _ in range(n)]
    labels = []
    for i, row in enumerate(picked.itertuples(index=False)):
        f = int(row.feature)
        peak = float(stats.loc[f, "max"]) or 1.0
        line = _stat_line({"feature": f, **stats.loc[f]})
        for c, (tok, a) in enumerate(zip(row.window_tokens, row.window_activations, strict=True)):
            if not np.isfinite(a):
                continue  # past the text's ends
            values[i, c] = float(a) / peak
            cells[i, c] = display_token(str(tok), 10)
            tips[i][c] = (
                f"{line} — context #{row.rank} (text {row.text}): {str(tok)!r} {float(a):.4g}"
            )
        labels.append(f"{f} #{row.rank}")
    return Heatmap(
        values=values,
        rows=labels,
        cols=[f"{c - w:+d}" if c != w else "0" for c in range(2 * w + 1)],
        cmap="Reds",
        vmin=0.0,
        vmax=1.0,
        title=_title(result, "top contexts, token by token"),
        colorbar="activation / the feature's max",
        xlabel="token relative to the activating one (framed)",
        ylabel="feature #rank of the context",
        cell_text=cells,
        annotate=True,
        cell_fontsize=6.0,
        frame=(w, w + 1),
        tips=lambda: tips,
        about=_about(result),
        empty="no feature fired",
        size=(
            min(MAX_FIGURE_WIDTH_IN, max(6.5, 0.6 * (2 * w + 1) + 3.0)),
            max(3.0, 0.22 * n + 2.6),
        ),
    )
