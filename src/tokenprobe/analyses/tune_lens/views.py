"""The training curve as a heatmap: mean KL per layer (rows) at every step (columns)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...heatmap import Heatmap


def curve_view(losses: np.ndarray, meta: dict[str, Any]) -> Heatmap:
    """KL(final || tuned layer) in nats, layer 0 at the bottom, one column per step."""
    steps, layers = losses.shape
    values = losses.T.astype(np.float64)
    model = (meta.get("model") or {}).get("name", "")
    return Heatmap(
        values=values,
        rows=[str(i) for i in range(layers)],
        cols=[str(s) for s in range(steps)],
        cmap="viridis",
        vmin=0.0,
        vmax=float(np.nanmax(values)) if values.size else 1.0,
        title=f"tuned lens training{f' ({model})' if model else ''}: KL(final || tuned layer) per step",
        colorbar="KL (nats)",
        xlabel="step",
        ylabel="layer",
        origin="lower",
        about=[f"{steps} steps x {layers} translators; a step's KL is measured before its update"],
        size=(min(14.0, 5.0 + steps * 0.02), max(3.0, 1.5 + layers * 0.15)),
        ytick_step=max(1, layers // 16),
    )
