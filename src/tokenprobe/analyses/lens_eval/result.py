"""lens-eval's result: per layer, KL to the final distribution and next-token cross-entropy
through the logit lens and the tuned lens. The saved figure is a line plot (the tuned lens
paper's figure 2); the report shows the same numbers as one heatmap per measure (its viewer
draws heatmaps), with a lens per row and a layer per column."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ...errors import TokenprobeError
from ...results import Result
from .views import LENSES, LinePlot, measure_heatmaps

__all__ = ["LENSES", "LensEvalResult"]


@dataclass
class LensEvalResult(Result):
    """`kl`, `ce`: (lens, layer) means in nats, lens in `LENSES` order (logit, tuned), layers
    0..L-1 then the model's own output (KL 0 there)."""

    kind: ClassVar[str] = "lens_eval"

    layer_labels: list[str]
    kl: np.ndarray
    ce: np.ndarray
    n_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        n_lens, n_layers = self.kl.shape
        return pd.DataFrame(
            {
                "layer": np.tile(np.arange(n_layers), n_lens),
                "label": self.layer_labels * n_lens,
                "lens": np.repeat(np.array(LENSES[:n_lens], dtype=object), n_layers),
                "kl": self.kl.reshape(-1),
                "ce": self.ce.reshape(-1),
                "tokens": self.n_tokens,
            }
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> LensEvalResult:
        order = {name: i for i, name in enumerate(LENSES)}
        frame = frame.assign(_lens=frame["lens"].map(order)).sort_values(["_lens", "layer"])
        n_lens, n_layers = frame["_lens"].nunique(), int(frame["layer"].max()) + 1
        values = frame[["kl", "ce"]].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise TokenprobeError(
                f"{cls.kind}.parquet: {int((~np.isfinite(values)).sum())} of its kl and ce values are "
                "not finite (NaN or inf): the table is damaged; run lens-eval again"
            )
        return cls(
            layer_labels=[str(x) for x in frame["label"][:n_layers]],
            kl=frame["kl"].to_numpy().reshape(n_lens, n_layers),
            ce=frame["ce"].to_numpy().reshape(n_lens, n_layers),
            n_tokens=int(frame["tokens"].iloc[0]),
            meta=meta,
        )

    def views(self) -> list[tuple[str, LinePlot]]:  # type: ignore[override]
        """One figure: KL and cross-entropy against the layer, a line per lens."""
        return [(self.kind, LinePlot(self.layer_labels, self.kl, self.ce, self._title()))]

    def sections(self) -> list[dict[str, Any]]:
        """The report's sections: KL and cross-entropy as heatmaps (lens x layer)."""
        model = (self.meta.get("model") or {}).get("name", "")
        lens = (self.meta.get("lens") or {}).get("path", "")
        out = []
        for view in measure_heatmaps(self.layer_labels, self.kl, self.ce, self._title()):
            section = view.section()
            section["kind"] = self.kind
            section["about"] = [f"model: {model}", f"tuned lens: {lens}", *section["about"]]
            out.append(section)
        return out

    def _title(self) -> str:
        model = (self.meta.get("model") or {}).get("name", "")
        return f"logit lens vs tuned lens{f' ({model})' if model else ''}, {self.n_tokens} held-out tokens"

    def summary(self) -> str:
        inner = slice(0, self.kl.shape[1] - 1)
        logit, tuned = self.kl[0, inner].mean(), self.kl[1, inner].mean()
        return (
            f"lens-eval: mean KL to the final distribution over {self.kl.shape[1] - 1} layers: "
            f"logit lens {logit:.3f}, tuned lens {tuned:.3f} nats ({self.n_tokens} tokens)"
        )
