"""Attribution's result: each target row's score attributed to each input feature."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ...heatmap import Heatmap
from ...results import Result
from .options import AttributionFigure
from .views import attribution_view


@dataclass
class AttributionResult(Result):
    """Attribution of each target row (output token or span) to each input feature.

    `scores[row, feature]`; `stderr` for sampled methods (Shapley); `target_scores[row]` is the
    row's own score (log-probability under teacher forcing, or probability).
    """

    kind: ClassVar[str] = "attribute"
    old_kinds: ClassVar[tuple[str, ...]] = ("attr",)  # saved before 0.2: attr.parquet

    features: list[dict[str, Any]]  # text, start, end (character range in the prompt), positions
    rows: list[str]
    row_positions: list[list[int]]
    scores: np.ndarray  # (rows, features)
    stderr: np.ndarray | None
    target_scores: np.ndarray  # (rows,)
    method: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per (feature, target row)."""
        n_rows, n_feat = self.scores.shape
        row = np.repeat(np.arange(n_rows), n_feat)
        feat = np.tile(np.arange(n_feat), n_rows)
        # an encoder-decoder's features are on the source or the target side
        sides = [f["side"] for f in self.features if "side" in f]
        side = {"side": np.asarray(sides, dtype=object)[feat]} if sides else {}
        return pd.DataFrame(
            {
                **side,
                "feature": feat,
                "feature_text": np.asarray([f["text"] for f in self.features], dtype=object)[feat],
                "feature_start": np.asarray([f["start"] for f in self.features], dtype=np.int64)[
                    feat
                ],
                "feature_end": np.asarray([f["end"] for f in self.features], dtype=np.int64)[feat],
                "row": row,
                "target": np.asarray(self.rows, dtype=object)[row],
                "score": self.scores.reshape(-1),
                "stderr": self.stderr.reshape(-1)
                if self.stderr is not None
                else np.full(row.shape, np.nan),
                "target_score": self.target_scores[row],
                "method": self.method,
            }
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> AttributionResult:
        frame = frame.sort_values(["row", "feature"])
        n_rows = int(frame["row"].max()) + 1
        n_feat = int(frame["feature"].max()) + 1
        first = frame[frame["row"] == 0]
        per_row = frame[frame["feature"] == 0]
        stderr = frame["stderr"].to_numpy(dtype=np.float64).reshape(n_rows, n_feat)
        positions = meta.get("feature_positions") or [[] for _ in range(n_feat)]
        return cls(
            features=[
                {"text": str(t), "start": int(s), "end": int(e), "positions": list(p)} | side
                for t, s, e, p, side in zip(
                    first["feature_text"],
                    first["feature_start"],
                    first["feature_end"],
                    positions,
                    _sides(first),
                    strict=True,
                )
            ],
            rows=[str(t) for t in per_row["target"]],
            row_positions=meta.get("row_positions") or [[] for _ in range(n_rows)],
            scores=frame["score"].to_numpy(dtype=np.float64).reshape(n_rows, n_feat),
            stderr=None if np.isnan(stderr).all() else stderr,
            target_scores=per_row["target_score"].to_numpy(dtype=np.float64),
            method=str(first["method"].iloc[0]),
            meta=meta,
        )

    @property
    def source_features(self) -> int:
        """How many features are on the source side (all of them for a decoder-only model)."""
        return sum(f.get("side", "source") == "source" for f in self.features)

    def views(
        self, figure: AttributionFigure | None = None, **settings: Any
    ) -> list[tuple[str, Heatmap]]:
        """The attribution heatmap. `figure` (or its settings as keyword arguments: `cmap`,
        `annotate`, `title`): see `AttributionFigure`."""
        return [(self.kind, attribution_view(self, AttributionFigure.build(figure, settings)))]

    def row_frame(self) -> pd.DataFrame:
        """As a data file's row (`attribute_rows`): `row` (the target row) is `target_row`,
        since a data-set table's `row` is the data row."""
        return self.to_frame().rename(columns={"row": "target_row"})

    @classmethod
    def from_row_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> AttributionResult:
        return cls.from_frame(frame.rename(columns={"target_row": "row"}), meta)

    def summary(self) -> str:
        n_rows, n_feat = self.scores.shape
        return f"{self.method} attribution: {n_rows} target rows x {n_feat} features; max |score| {np.abs(self.scores).max():.4f}"

    def extra_meta(self) -> dict[str, Any]:
        return {
            "feature_positions": [f["positions"] for f in self.features],
            "row_positions": self.row_positions,
        }


def _sides(first: pd.DataFrame) -> list[dict[str, str]]:
    """Each feature's {"side": ...} where the table has sides (an encoder-decoder's), else {}."""
    if "side" not in first.columns:
        return [{} for _ in range(len(first))]
    return [{"side": str(s)} for s in first["side"]]
