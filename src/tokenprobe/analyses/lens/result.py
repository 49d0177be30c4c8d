"""The logit lens's result: per (layer, position) entropy, top-k tokens and target statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ...heatmap import Heatmap
from ...results import Result
from .options import LensFigure
from .views import lens_view


@dataclass
class LensResult(Result):
    """Per (layer, position): entropy, top-k tokens and probabilities, target probability/rank.

    Rows are layers 0..L: layer 0 is the embedding output, layer i the output of block i, and
    the last row ("output") is the model's own logits. `side` "decoder": an encoder-decoder's
    lens, whose positions and layers are its decoder's (the table's `side` column says so).
    """

    kind: ClassVar[str] = "lens"

    tokens: list[str]
    token_ids: list[int]
    layer_labels: list[str]
    entropy: np.ndarray  # (rows, positions) float32, nats
    top_ids: np.ndarray  # (rows, positions, k) int64
    top_tokens: np.ndarray  # (rows, positions, k) str
    top_probs: np.ndarray  # (rows, positions, k) float32
    targets: list[str] = field(default_factory=list)
    target_ids: list[int] = field(default_factory=list)
    target_probs: np.ndarray | None = None  # (rows, positions, n_targets)
    target_ranks: np.ndarray | None = None  # (rows, positions, n_targets), 1 = top
    foil: str | None = None  # compared with the first target
    logit_diff: np.ndarray | None = None  # (rows, positions) logit(targets[0]) - logit(foil)
    marked: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    side: str | None = None  # "decoder": an encoder-decoder's decoder positions

    @property
    def n_rows(self) -> int:
        return int(self.entropy.shape[0])

    @property
    def n_positions(self) -> int:
        return int(self.entropy.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.top_ids.shape[2])

    @property
    def top1(self) -> np.ndarray:
        return self.top_tokens[:, :, 0]

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, position)."""
        rows, positions = self.entropy.shape
        layer = np.repeat(np.arange(rows), positions)
        pos = np.tile(np.arange(positions), rows)
        data: dict[str, Any] = {
            "layer": layer,
            "layer_label": np.asarray(self.layer_labels, dtype=object)[layer],
            "position": pos,
            "token": np.asarray(self.tokens, dtype=object)[pos],
            "token_id": np.asarray(self.token_ids, dtype=np.int64)[pos],
            "entropy": self.entropy.reshape(-1),
        }
        if self.side is not None:
            data["side"] = np.full(rows * positions, self.side, dtype=object)
        for j in range(self.top_k):
            data[f"top{j + 1}"] = self.top_tokens[:, :, j].reshape(-1)
            data[f"top{j + 1}_prob"] = self.top_probs[:, :, j].reshape(-1)
            data[f"top{j + 1}_id"] = self.top_ids[:, :, j].reshape(-1)
        for t, name in enumerate(self.targets):
            assert self.target_probs is not None and self.target_ranks is not None
            data[f"prob[{name}]"] = self.target_probs[:, :, t].reshape(-1)
            data[f"rank[{name}]"] = self.target_ranks[:, :, t].reshape(-1)
        if self.logit_diff is not None:
            data["logit_diff"] = self.logit_diff.reshape(-1)
        return pd.DataFrame(data)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> LensResult:
        frame = frame.sort_values(["layer", "position"])
        rows = int(frame["layer"].max()) + 1
        positions = int(frame["position"].max()) + 1
        first_row = frame[frame["layer"] == 0]
        k = sum(1 for c in frame.columns if c.startswith("top") and c.endswith("_id"))

        def grid(col: str) -> np.ndarray:
            return frame[col].to_numpy().reshape(rows, positions)

        targets = list(meta.get("targets", []))
        marked = meta.get("marked")
        return cls(
            tokens=[str(t) for t in first_row["token"]],
            token_ids=[int(t) for t in first_row["token_id"]],
            layer_labels=[str(x) for x in frame.groupby("layer")["layer_label"].first()],
            entropy=grid("entropy").astype(np.float32),
            top_ids=np.stack([grid(f"top{j + 1}_id") for j in range(k)], axis=-1).astype(np.int64),
            top_tokens=np.stack([grid(f"top{j + 1}").astype(object) for j in range(k)], axis=-1),
            top_probs=np.stack([grid(f"top{j + 1}_prob") for j in range(k)], axis=-1).astype(
                np.float32
            ),
            targets=targets,
            target_ids=list(meta.get("target_ids", [])),
            target_probs=np.stack([grid(f"prob[{t}]") for t in targets], axis=-1).astype(np.float32)
            if targets
            else None,
            target_ranks=np.stack([grid(f"rank[{t}]") for t in targets], axis=-1).astype(np.int64)
            if targets
            else None,
            # results saved before the foil existed have neither the column nor the meta
            foil=meta.get("foil") if "logit_diff" in frame.columns else None,
            logit_diff=grid("logit_diff").astype(np.float32)
            if "logit_diff" in frame.columns
            else None,
            marked=tuple(marked) if marked else None,
            meta=meta,
            side=str(first_row["side"].iloc[0]) if "side" in frame.columns else None,
        )

    def views(self, figure: LensFigure | None = None, **settings: Any) -> list[tuple[str, Heatmap]]:
        """The lens heatmap (entropy, or the logit difference with `colour="diff"`); with
        `zoom`, the composite figure (whole prompt above, the zoom below) unless `overview` is
        False. `figure` (or its settings as keyword arguments): see `LensFigure`."""
        return [(self.kind, lens_view(self, LensFigure.build(figure, settings)))]

    def row_frame(self) -> pd.DataFrame:
        """As a data file's row (`lens_rows`): the row's own target in `target`,
        `target_prob` and `target_rank`, so that every row has the same columns (copied when
        the row's target is also one tracked in every row, moved otherwise)."""
        frame = self.to_frame()
        target = self.meta.get("row_target")
        if target is None:
            return frame
        prob, rank = frame[f"prob[{target}]"], frame[f"rank[{target}]"]
        if not self.meta.get("row_target_shared"):
            frame = frame.drop(columns=[f"prob[{target}]", f"rank[{target}]"])
        return frame.assign(target=target, target_prob=prob, target_rank=rank)

    @classmethod
    def from_row_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> LensResult:
        target = meta.get("row_target")
        if target is not None:
            own = frame.drop(columns=["target"])
            if meta.get("row_target_shared"):
                frame = own.drop(columns=["target_prob", "target_rank"])
            else:
                frame = own.rename(
                    columns={"target_prob": f"prob[{target}]", "target_rank": f"rank[{target}]"}
                )
        return cls.from_frame(frame, meta)

    def summary(self) -> str:
        last = self.n_positions - 1
        where = f"{self.side} positions" if self.side else "positions"
        return (
            f"lens of {str(self.meta.get('prompt', ''))[:50]!r}: {self.n_positions} {where} x {self.n_rows} rows; "
            f"output top-1 at the last position {self.top1[-1, last]!r} (p={self.top_probs[-1, last, 0]:.3f})"
        )
