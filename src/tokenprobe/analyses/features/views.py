"""features' heatmaps: the shown features' activations per position (features ranked by their
largest activation, values as tooltips), with a target their exact effect per position (red
raises the score, blue lowers it), and the reconstruction error per position."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...heatmap import MAX_FIGURE_WIDTH_IN, Heatmap
from ...text import display_token

if TYPE_CHECKING:
    from .options import FeaturesFigure
    from .result import FeaturesResult

STEMS = ("features", "features_effects", "features_error")
MAX_ANNOTATED = 24


def views(result: FeaturesResult, figure: FeaturesFigure) -> list[tuple[str, Heatmap]]:
    """The activation heatmap, the effect heatmap where effects were computed, and the
    reconstruction error where it was kept."""
    out = [(STEMS[0], activations_view(result, figure.show))]
    k = result.kept
    by = "ablation" if np.isfinite(k.ablation).any() else "attribution"
    if np.isfinite(getattr(k, by)).any():
        out.append((STEMS[1], effects_view(result, figure.show, by)))
    if "error_ratio" in result.positions:
        out.append((STEMS[2], error_view(result)))
    return out


def _title(result: FeaturesResult, what: str) -> str:
    d = result.meta.get("dictionary") or {}
    model = (result.meta.get("model") or {}).get("name", "")
    where = f" at {d.get('reads')}" if d.get("reads") else ""
    return f"Sparse features{where}: {what}{' — ' + model if model else ''}"


def _about(result: FeaturesResult) -> list[str]:
    m = result.meta
    d = m.get("dictionary") or {}
    lines = [
        f"prompt: {str(m.get('prompt', ''))[:300]}",
        f"dictionary: {d.get('kind', '')} ({d.get('format', '')}, {d.get('activation', '')}, "
        f"{d.get('latents', '?')} latents) reading {d.get('reads', '')} "
        f"({d.get('reads_module', '')}), writing {d.get('writes', '')}",
    ]
    if m.get("score"):
        lines.append(f"score: {m['score']} = {m.get('base_score', float('nan')):.4g}")
    r = result.correlation()
    if r is not None:
        lines.append(f"activation x gradient vs exact ablation: Pearson r = {r:.3f}")
    return lines


def _cols(result: FeaturesResult) -> list[str]:
    return [display_token(t, 10) for t in result.tokens]


def _size(n_rows: int, n_pos: int, annotate: bool) -> tuple[float, float]:
    return (
        min(MAX_FIGURE_WIDTH_IN, max(6.5, (0.5 if annotate else 0.16) * n_pos + 3.0)),
        max(3.0, 0.22 * n_rows + 2.6),
    )


def _cells(values: np.ndarray) -> np.ndarray:
    return np.vectorize(
        lambda v: "" if not np.isfinite(v) or v == 0 else f"{v:.2g}", otypes=[object]
    )(values)


def activations_view(result: FeaturesResult, show: int) -> Heatmap:
    """Features (rows, the most active first) x positions of activation (0: inactive)."""
    features = result.kept.shown("activation", show)
    values = result.kept.grid("activation", features, len(result.tokens))
    n_pos = len(result.tokens)
    annotate = n_pos <= MAX_ANNOTATED and len(features) <= 40
    top = float(values.max()) if values.size and values.max() > 0 else 1.0

    def tips() -> list[list[str]]:
        return [
            [
                f"feature {f} at {p} ({result.tokens[p]!r}): activation {values[i, p]:.4g}"
                for p in range(n_pos)
            ]
            for i, f in enumerate(features)
        ]

    return Heatmap(
        values=values,
        rows=[str(f) for f in features],
        cols=_cols(result),
        cmap="Reds",
        vmin=0.0,
        vmax=top,
        title=_title(result, "activation per position"),
        colorbar="activation",
        xlabel="token",
        ylabel="feature (most active first)",
        cell_text=_cells(values),
        annotate=annotate,
        cell_fontsize=6.0,
        tips=tips,
        about=_about(result),
        empty="no feature is active",
        size=_size(len(features), n_pos, annotate),
        col_numbers=(0, "position"),
    )


def effects_view(result: FeaturesResult, show: int, by: str) -> Heatmap:
    """Features (rows, the largest |effect| first) x positions of the exact ablation effect
    (or activation x gradient where no ablation was run); NaN: not kept there."""
    features = result.kept.shown(by, show)
    values = result.kept.grid(by, features, len(result.tokens))
    n_pos = len(result.tokens)
    finite = np.abs(values[np.isfinite(values)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    annotate = n_pos <= MAX_ANNOTATED and len(features) <= 40
    what = "score lost when removed" if by == "ablation" else "activation x gradient"
    return Heatmap(
        values=values,
        rows=[str(f) for f in features],
        cols=_cols(result),
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        title=_title(result, f"effect on the score ({what})"),
        colorbar=what,
        xlabel="token",
        ylabel="feature (largest effect first)",
        cell_text=_cells(values),
        annotate=annotate,
        cell_fontsize=6.0,
        about=_about(result),
        empty="no effect was computed",
        size=_size(len(features), n_pos, annotate),
        col_numbers=(0, "position"),
    )


def error_view(result: FeaturesResult) -> Heatmap:
    """One row: |state - reconstruction| / |state| per position; KL and L0 as tooltips."""
    pos = result.positions
    values = np.asarray(pos["error_ratio"], dtype=float)[None]
    n_pos = values.shape[1]

    def tips() -> list[list[str]]:
        row = []
        for p in range(n_pos):
            if not np.isfinite(values[0, p]):
                row.append(f"{result.tokens[p]!r}: left out (not a position it was trained on)")
                continue
            text = f"{result.tokens[p]!r}: error ratio {values[0, p]:.3f}"
            for name in ("l0", "kl", "splice_effect"):
                if name in pos:
                    text += f", {name} {float(pos[name][p]):.4g}"
            row.append(text)
        return [row]

    annotate = n_pos <= MAX_ANNOTATED
    return Heatmap(
        values=values,
        rows=["error"],
        cols=_cols(result),
        cmap="Oranges",
        vmin=0.0,
        vmax=max(1.0, float(np.nanmax(values)) if np.isfinite(values).any() else 1.0),
        title=_title(result, "reconstruction error per position"),
        colorbar="|state - reconstruction| / |state|",
        xlabel="token",
        ylabel="",
        cell_text=np.vectorize(lambda v: f"{v:.2f}" if np.isfinite(v) else "", otypes=[object])(
            values
        ),
        annotate=annotate,
        cell_fontsize=6.0,
        tips=tips,
        about=_about(result),
        size=(_size(1, n_pos, annotate)[0], 2.6),
        col_numbers=(0, "position"),
    )
