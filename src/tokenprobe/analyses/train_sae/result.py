"""The result of training a sparse autoencoder: the dictionary (saved as a SAELens folder beside
the table), its training log (one row per step) and its held-out quality in meta.json."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ...heatmap import Heatmap
from ...results import Result, check_writable
from ...sae import Dictionary, load_sae
from ...sae.saving import SAE_FILES, save_saelens
from ...sae.train import COLUMNS
from .views import curve_view


@dataclass
class TrainSaeResult(Result):
    """`table`: per step (0-based) the tokens seen after it and the batch's FVE, L0, dead
    fraction (after the step), loss and AuxK loss before its update; `dictionary` the trained
    SAE (None when its files are not there); meta.json's `quality` the held-out numbers."""

    kind: ClassVar[str] = "train_sae"

    table: dict[str, np.ndarray]
    dictionary: Dictionary | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def quality(self) -> dict[str, Any] | None:
        return self.meta.get("quality")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"step": self.table["step"], "tokens": self.table["tokens"],
                             **{c: self.table[c] for c in COLUMNS}})  # fmt: skip

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> TrainSaeResult:
        """The log alone (no dictionary: see `from_folder`)."""
        frame = frame.sort_values("step")
        return cls(table={c: frame[c].to_numpy() for c in frame.columns}, meta=meta)

    @classmethod
    def from_folder(cls, folder: Path, frame: pd.DataFrame, meta: dict[str, Any]) -> TrainSaeResult:
        """The log, and the dictionary saved beside it when it is still there and readable."""
        result = cls.from_frame(frame, meta)
        try:
            result.dictionary = load_sae(folder)
        except Exception:  # the table is the result; the SAE files may have been moved
            result.dictionary = None
        return result

    @classmethod
    def files(cls, formats: Iterable[str] = ("png",)) -> list[str]:
        return [*super().files(formats), *SAE_FILES]

    def views(self) -> list[tuple[str, Heatmap]]:
        return [(self.kind, curve_view(self.table, self.meta))]

    def summary(self) -> str:
        sae = self.meta.get("sae") or {}
        steps = len(self.table["step"])
        head = f"train-sae: {sae.get('latents')} latents, k {sae.get('k')} at {sae.get('site')}"
        q = self.quality
        if not q:
            last = f"FVE {self.table['fve'][-1]:.3f}" if steps else "no step"
            return f"{head}, {steps} steps; last batch {last}"
        return (
            f"{head}, {steps} steps; held-out FVE {q['fve']:.3f}"
            + (
                f", median error ratio {q['error_ratio_median']:.3f}"
                if "error_ratio_median" in q
                else ""
            )
            + f", L0 {q['l0']:.1f}, dead "
            f"{q['dead_latents']}, CE recovered {q['ce_recovered']:.3f} "
            f"({q['ce_clean']:.3f} clean, {q['ce_spliced']:.3f} spliced, "
            f"{q['ce_zero_ablated']:.3f} zero-ablated nats)"
        )

    def save(
        self,
        out_dir: str | os.PathLike[str],
        *,
        formats: Iterable[str] = ("png",),
        overwrite: bool = False,
        plot_options: dict[str, Any] | None = None,
    ) -> dict[str, Path]:
        """The SAELens folder's files (each written atomically), then the table, meta.json and
        figure as every result saves them (which removes the finished checkpoint last)."""
        written: dict[str, Path] = {}
        if self.dictionary is not None:
            check_writable(Path(out_dir), SAE_FILES, overwrite)
            info = {"model_name": self.meta.get("model_name"), "training": self.meta.get("options")}
            written.update(save_saelens(self.dictionary, Path(out_dir), info))
        written.update(
            super().save(out_dir, formats=formats, overwrite=overwrite, plot_options=plot_options)
        )
        return written
