"""The flip-rate result: one row per word occurrence, the rates per (class, word, bucket), and
one heatmap per class."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from ...errors import TokenprobeError
from ...files import safe_name
from ...heatmap import Heatmap
from ...results import FIGURE_FORMATS, Result
from .options import FlipFigure
from .views import flip_view


@dataclass
class FlipResult(Result):
    """Per word occurrence: did perturbing it flip the prediction; and the rates per (class, word, bucket).

    Saved as `flips.parquet` (occurrences), `rates.parquet`, `meta.json` and one figure per
    class, `flips_<class>.<fmt>`.
    """

    kind: ClassVar[str] = "flips"

    occurrences: pd.DataFrame
    rates: pd.DataFrame
    labels: list[str]
    buckets: int = 10
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """The per-occurrence rows."""
        return self.occurrences

    def classes(self) -> list[str]:
        """Classes that have rows, in label order."""
        present = set(self.rates["class"])
        return [label for label in self.labels if label in present]

    @classmethod
    def files(cls, formats: Iterable[str] = ("png",)) -> list[str]:
        """The tables and meta.json (the figures' names depend on the classes found)."""
        return ["flips.parquet", "rates.parquet", "meta.json"]

    @classmethod
    def saved_names(cls, meta: dict[str, Any]) -> list[str]:
        labels = meta.get("labels")
        classes = labels if isinstance(labels, list) else []
        figures = [f"flips_{safe_name(c)}.{fmt}" for c in classes for fmt in FIGURE_FORMATS]
        return [*cls.files(), *figures]

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"flips": self.occurrences, "rates": self.rates}

    def extra_meta(self) -> dict[str, Any]:
        return {"labels": self.labels, "buckets": self.buckets}

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> FlipResult:
        raise TokenprobeError("a flips result is read from its folder: use load_result(folder)")

    @classmethod
    def from_folder(cls, folder: Path, frame: pd.DataFrame, meta: dict[str, Any]) -> FlipResult:
        """The occurrences' table and meta.json, with the rates table saved beside them."""
        return cls(
            occurrences=frame,
            rates=pd.read_parquet(folder / "rates.parquet"),
            labels=list(meta.get("labels", [])),
            buckets=int(meta.get("buckets", 10)),
            meta=meta,
        )

    def views(self, figure: FlipFigure | None = None, **settings: Any) -> list[tuple[str, Heatmap]]:
        """One (word x bucket) heatmap per class, `flips_<class>`. `figure` (or its settings as
        keyword arguments): see `FlipFigure` and `views.flip_view`."""
        figure = FlipFigure.build(figure, settings)
        return [(f"flips_{safe_name(c)}", flip_view(self, c, figure)) for c in self.classes()]

    def plot(
        self, label: str | None = None, figure: FlipFigure | None = None, **settings: Any
    ) -> Any:
        """The (word x bucket) heatmap of one class (default: the first) as a matplotlib
        Figure; `figure` and `settings` as in `views`."""
        return flip_view(self, label or self.classes()[0], figure, **settings).figure()

    def summary(self) -> str:
        acc = self.meta.get("accuracy")
        acc_text = f"; accuracy on the unperturbed texts {acc:.1%}" if acc is not None else ""
        rate = float(self.occurrences["flipped"].mean()) if len(self.occurrences) else float("nan")
        return (
            f"flip rates over {self.meta.get('texts')} texts, {len(self.occurrences)} word occurrences, "
            f"overall flip rate {rate:.1%}{acc_text}"
        )
