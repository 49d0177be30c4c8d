"""lens-eval's pictures: a line plot of KL and cross-entropy against the layer (one line per
lens, the tuned lens paper's figure 2), and the same numbers as heatmaps for the report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...heatmap import Heatmap

LENSES = ("logit", "tuned")
COLOURS = {"logit": "#1f77b4", "tuned": "#d62728"}
MEASURES = (("kl", "KL(final || layer) (nats)"), ("ce", "next-token cross-entropy (nats)"))


@dataclass
class LinePlot:
    """The saved figure: what `Result.views` gives for lens-eval (it draws with `figure()`
    like a Heatmap; the report's sections come from `measure_heatmaps`)."""

    layer_labels: list[str]
    kl: np.ndarray
    ce: np.ndarray
    title: str

    def figure(self) -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = np.arange(len(self.layer_labels))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
        for ax, (_name, label), values in zip(axes, MEASURES, (self.kl, self.ce), strict=True):
            for i, lens in enumerate(LENSES[: len(values)]):
                ax.plot(
                    x,
                    values[i],
                    marker="o",
                    markersize=3,
                    color=COLOURS[lens],
                    label=f"{lens} lens",
                )
            ax.set_xlabel("layer")
            ax.set_ylabel(label)
            ticks = _ticks(len(x))
            ax.set_xticks(ticks, [self.layer_labels[j] for j in ticks], fontsize=7)
            ax.grid(alpha=0.3, which="both")
            # the embeddings' row is often 10x the others (and KL is 0 at the output): linear
            # up to 1 nat, logarithmic above, so every layer stays readable
            ax.set_yscale("symlog", linthresh=1.0)
            top = _top(values)
            ax.set_ylim(0, max(2.0, top * 1.6))
            ax.legend()
        fig.suptitle(self.title, fontsize=11)
        return fig

    def section(self) -> dict[str, Any]:
        return measure_heatmaps(self.layer_labels, self.kl, self.ce, self.title)[0].section()


def _ticks(n: int, most: int = 12) -> list[int]:
    """At most about `most` evenly spaced tick positions of n, always with the last (the
    output) and without a neighbour so close that their labels overlap."""
    step = max(1, -(-n // most))
    ticks = list(range(0, n, step))
    if ticks[-1] != n - 1:
        if n - 1 - ticks[-1] < max(2, step // 2) and len(ticks) > 1:
            ticks.pop()
        ticks.append(n - 1)
    return ticks


def measure_heatmaps(
    layer_labels: list[str], kl: np.ndarray, ce: np.ndarray, title: str
) -> list[Heatmap]:
    """KL and cross-entropy, each a (lens x layer) heatmap with the numbers in the cells."""
    out = []
    for (name, label), values in zip(MEASURES, (kl, ce), strict=True):
        rows = [f"{lens} lens" for lens in LENSES[: len(values)]]
        out.append(
            Heatmap(
                values=values.astype(np.float64),
                rows=rows,
                cols=list(layer_labels),
                cmap="magma_r",
                vmin=0.0,
                vmax=_top(values),
                title=f"{title}: {label}",
                colorbar=label,
                xlabel="layer",
                ylabel="lens",
                cell_text=np.vectorize(lambda v: f"{v:.2f}")(values),
                about=[
                    f"{name} per layer; lower is closer to the model's output"
                    if name == "kl"
                    else f"{name} per layer; the output column is the model's own loss"
                ],
            )
        )
    return out


def _top(values: np.ndarray) -> float:
    """The largest finite value (1 when there is none): a colour or axis limit that is a number."""
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else 1.0
