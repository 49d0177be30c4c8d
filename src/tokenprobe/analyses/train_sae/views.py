"""The training curves as a heatmap: FVE, L0 / k and the dead fraction (rows, each in 0..1)
against the tokens seen (columns: steps, averaged into at most `MAX_COLUMNS` bins)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...heatmap import Heatmap

MAX_COLUMNS = 200
ROWS = ("FVE", "L0 / k", "dead fraction")


def curve_view(table: dict[str, np.ndarray], meta: dict[str, Any]) -> Heatmap:
    """One row per curve, bottom to top, one column per bin of steps (its last step's tokens)."""
    k = float((meta.get("sae") or {}).get("k") or 1)
    curves = np.stack([table["fve"], table["l0"] / k, table["dead_fraction"]]).astype(np.float64)
    steps = curves.shape[1]
    bins = max(1, min(MAX_COLUMNS, steps))
    edges = np.linspace(0, steps, bins + 1).round().astype(int)
    values = (
        np.stack(
            [curves[:, a:b].mean(1) for a, b in zip(edges, edges[1:], strict=False) if b > a],
            axis=1,
        )
        if steps
        else np.zeros((len(ROWS), 0))
    )
    ends = [int(table["tokens"][b - 1]) for a, b in zip(edges, edges[1:], strict=False) if b > a]
    model = (meta.get("model") or {}).get("name", "")
    site = (meta.get("sae") or {}).get("site", "")
    about = [f"{steps} steps; each column averages {max(1, steps // max(1, bins))} or more steps"]
    if quality := meta.get("quality"):
        about.append(
            f"held-out: FVE {quality['fve']:.3f}, L0 {quality['l0']:.1f}, CE recovered "
            f"{quality['ce_recovered']:.3f}"
        )
    return Heatmap(
        values=np.clip(values, 0.0, 1.0) if values.size else values,
        rows=list(ROWS),
        cols=[_tokens(t) for t in ends],
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        title=f"SAE training{f' ({model}, {site})' if model else ''}: FVE, L0 / k, dead fraction",
        colorbar="value (0 to 1)",
        xlabel="tokens seen",
        ylabel="",
        origin="lower",
        about=about,
        size=(min(14.0, 5.0 + len(ends) * 0.05), 3.0),
    )


def _tokens(n: int) -> str:
    """1234567 -> 1.23M."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)
