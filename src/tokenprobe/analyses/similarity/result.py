"""Past similarity's result: the mean cosine per (layer, distance) and the texts behind it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ...heatmap import Heatmap
from ...results import Result
from .options import SimilarityFigure
from .views import similarity_view


@dataclass
class SimilarityResult(Result):
    """Cosine similarity of a marker's hidden state with the tokens before (or after) it.

    `cosine[layer, d-1]` is the mean over texts at distance d; NaN where no text reaches that
    far (padded). `count[d-1]` is the number of texts behind each distance. `side`: an
    encoder-decoder's compared stream, "source" (encoder) or "decoder" (the table's `side`).
    """

    kind: ClassVar[str] = "similarity"

    layer_labels: list[str]
    cosine: np.ndarray  # (layers, window) float32, NaN = padded
    count: np.ndarray  # (window,) int64
    tokens: list[str | None]  # text of the token at each distance (one text), else None
    marker: str
    occurrence: int
    direction: str = "past"
    centre: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    side: str | None = None  # an encoder-decoder's stream: "source" or "decoder"

    @property
    def window(self) -> int:
        return int(self.cosine.shape[1])

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, distance)."""
        layers, window = self.cosine.shape
        layer = np.repeat(np.arange(layers), window)
        dist = np.tile(np.arange(1, window + 1), layers)
        side = {"side": np.full(layers * window, self.side, dtype=object)} if self.side else {}
        return pd.DataFrame(
            {
                **side,
                "layer": layer,
                "layer_label": np.asarray(self.layer_labels, dtype=object)[layer],
                "distance": dist,
                "token": np.asarray(self.tokens, dtype=object)[dist - 1],
                "cosine": self.cosine.reshape(-1),
                "count": self.count[dist - 1],
            }
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> SimilarityResult:
        frame = frame.sort_values(["layer", "distance"])
        layers = int(frame["layer"].max()) + 1
        window = int(frame["distance"].max())
        first = frame[frame["layer"] == 0]
        opts = meta.get("options", {})
        return cls(
            layer_labels=[str(x) for x in frame.groupby("layer")["layer_label"].first()],
            cosine=frame["cosine"].to_numpy(dtype=np.float32).reshape(layers, window),
            count=first["count"].to_numpy(dtype=np.int64),
            tokens=[
                None if t is None or (isinstance(t, float) and np.isnan(t)) else str(t)
                for t in first["token"]
            ],
            marker=opts.get("marker", ""),
            occurrence=int(opts.get("occurrence", 1)),
            direction=opts.get("direction", "past"),
            centre=bool(opts.get("centre", False)),
            meta=meta,
            side=str(first["side"].iloc[0]) if "side" in frame.columns else None,
        )

    def views(
        self, figure: SimilarityFigure | None = None, **settings: Any
    ) -> list[tuple[str, Heatmap]]:
        """The layer x distance heatmap. `figure` (or its settings as keyword arguments): see
        `SimilarityFigure` and `views.similarity_view`."""
        return [(self.kind, similarity_view(self, SimilarityFigure.build(figure, settings)))]

    def summary(self) -> str:
        texts = self.meta.get("texts_used", 1)
        kind = "centred " if self.centre else ""
        stack = {"source": "encoder ", "decoder": "decoder "}.get(self.side or "", "")
        return (
            f"{kind}{self.direction} similarity of {self.marker} #{self.occurrence}: {len(self.layer_labels)} {stack}layers x "
            f"{self.window} distances over {texts} text(s)"
        )
