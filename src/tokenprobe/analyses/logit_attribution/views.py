"""Logit attribution's heatmaps, diverging around 0 (red raises the attributed logit, blue
lowers it): the components per block at one position (attn, mlp or mixer x block), the heads
at that position (block x head), and one component kind over blocks and positions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...errors import TokenprobeError
from ...heatmap import MAX_FIGURE_WIDTH_IN, Heatmap
from ...text import display_token

if TYPE_CHECKING:
    from .options import LogitAttributionFigure
    from .result import LogitAttributionResult

STEMS = ("logit_attribution", "logit_attribution_heads", "logit_attribution_positions")
CMAP = "RdBu_r"
KINDS = ("attn", "mlp", "mixer")
MAX_ANNOTATED = 24
NAMES = {
    "attn": "attention",
    "mlp": "MLP",
    "mixer": "state-space mixer",
    "block": "all a block adds",
}


def _cells(values: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: "" if not np.isfinite(v) else f"{v:.2f}", otypes=[object])(values)


def _limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def _position(result: LogitAttributionResult, position: int | None) -> int:
    n = len(result.tokens)
    p = n - 1 if position is None else position
    p = p + n if p < 0 else p
    if not 0 <= p < n:
        raise TokenprobeError(
            f"`position` {position} is outside the prompt's {n} positions: give 0..{n - 1} "
            "(or -1 for the last)"
        )
    return p


def views(
    result: LogitAttributionResult, figure: LogitAttributionFigure
) -> list[tuple[str, Heatmap]]:
    """Each figure (stem, heatmap); the heads' only where some block's heads were split."""
    p = _position(result, figure.position)
    out = [(STEMS[0], components_view(result, p))]
    heads = result.heads(p)
    if heads.size and np.isfinite(heads).any():
        out.append((STEMS[1], heads_view(result, p, heads)))
    kinds = [k for k in KINDS if (result.frame["component"] == k).any()]
    show = figure.show or ("attn" if "attn" in kinds else kinds[0] if kinds else "block")
    if show not in (*kinds, "block"):
        raise TokenprobeError(
            f"`show` {show}: this model has no {NAMES[show]} component; show one of "
            f"{', '.join([*kinds, 'block'])}"
        )
    out.append((STEMS[2], positions_view(result, show)))
    return out


def _title(result: LogitAttributionResult, what: str) -> str:
    model = (result.meta.get("model") or {}).get("name", "")
    return f"Direct logit attribution: {what}{' — ' + model if model else ''}"


def _about(result: LogitAttributionResult) -> list[str]:
    m = result.meta
    exact = m.get("exactness") or {}
    lines = [f"prompt: {str(m.get('prompt', ''))[:300]}", f"attributed: {m.get('attributed', '')}"]
    if exact:
        lines.append(
            f"parts vs the model's own logit: max error {exact['max_abs_error']:.2g} (tolerance "
            f"{exact['tolerance']:.2g})"
        )
    cap = (m.get("decomposition") or {}).get("soft_cap")
    return [*lines, *([cap] if cap else [])]


def components_view(result: LogitAttributionResult, p: int) -> Heatmap:
    """attn / mlp / mixer (rows) x block (columns) at position p; embed, bias and the total
    in the title."""
    kinds = [k for k in KINDS if (result.frame["component"] == k).any()]
    values = np.stack([result.grid(k)[:, p] for k in kinds]) if kinds else np.zeros((0, 0))
    embed, bias = result.values("embed")[p], result.values("bias")[p]
    total = result.total()[p]
    token = display_token(result.tokens[p], 16)
    n = result.n_layers
    return Heatmap(
        values=values,
        rows=kinds,
        cols=[str(b) for b in range(n)],
        cmap=CMAP,
        vmin=-_limit(values),
        vmax=_limit(values),
        title=_title(
            result,
            f"position {p} ({token}): embed {embed:+.3g}, bias {bias:+.3g}, total {total:.4g}",
        ),
        colorbar=str(result.meta.get("attributed", "logit")),
        xlabel="block",
        ylabel="component",
        cell_text=_cells(values),
        annotate=n <= 40,
        about=_about(result),
        size=(min(MAX_FIGURE_WIDTH_IN, max(6.5, 0.45 * n + 3.0)), 1.0 + 0.6 * len(kinds) + 1.6),
        empty="no block components",
        gridlines=0.25,
    )


def heads_view(result: LogitAttributionResult, p: int, heads: np.ndarray) -> Heatmap:
    """block (rows, upwards) x head (columns) at position p; NaN: no split heads there."""
    n_layers, n_heads = heads.shape
    annotate = n_heads <= MAX_ANNOTATED and n_layers <= 40
    token = display_token(result.tokens[p], 16)
    return Heatmap(
        values=heads,
        rows=[str(b) for b in range(n_layers)],
        cols=[str(h) for h in range(n_heads)],
        cmap=CMAP,
        vmin=-_limit(heads),
        vmax=_limit(heads),
        title=_title(result, f"heads at position {p} ({token})"),
        colorbar=str(result.meta.get("attributed", "logit")),
        xlabel="head",
        ylabel="block",
        origin="lower",
        cell_text=_cells(heads),
        annotate=annotate,
        cell_fontsize=6.0,
        about=_about(result),
        size=(
            min(MAX_FIGURE_WIDTH_IN, max(6.0, 0.42 * n_heads + 3.0)),
            max(3.5, 0.24 * n_layers + 2.4),
        ),
        xtick_rotation=0.0,
        gridlines=0.25 if annotate else 0.0,
    )


def positions_view(result: LogitAttributionResult, show: str) -> Heatmap:
    """block (rows, upwards) x position (columns) of one component kind."""
    values = result.grid(show)
    n_rows, n_pos = values.shape
    annotate = n_pos <= MAX_ANNOTATED and n_rows <= 40
    return Heatmap(
        values=values,
        rows=[str(b) for b in range(n_rows)],
        cols=[display_token(t, 10) for t in result.tokens],
        cmap=CMAP,
        vmin=-_limit(values),
        vmax=_limit(values),
        title=_title(result, f"{NAMES[show]} per block and position"),
        colorbar=str(result.meta.get("attributed", "logit")),
        xlabel="input token (the logit predicted after it)",
        ylabel="block",
        origin="lower",
        cell_text=_cells(values),
        annotate=annotate,
        cell_fontsize=6.0,
        about=_about(result),
        size=(
            min(MAX_FIGURE_WIDTH_IN, max(6.5, (0.5 if annotate else 0.16) * n_pos + 3.0)),
            max(4.0, 0.2 * n_rows + 2.6),
        ),
        col_numbers=(0, "position"),
        gridlines=0.25 if annotate else 0.0,
    )
