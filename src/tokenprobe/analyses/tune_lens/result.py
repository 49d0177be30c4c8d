"""The result of training a tuned lens: the lens itself (saved as lens files) and its training
curve, the mean KL per layer at every step (the table and the figure)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ...heatmap import Heatmap
from ...results import Result, check_writable
from ...tuned import FORMATS, TunedLens, lens_files, lens_format, load_lens, save_lens
from .views import curve_view


@dataclass
class TuneLensResult(Result):
    """`losses` (steps, L): each step's mean KL(final || tuned layer) in nats, before the
    step's update; `lens` the trained translators (None when its files are not there)."""

    kind: ClassVar[str] = "tuned_lens"

    losses: np.ndarray
    lens: TunedLens | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    lens_formats: tuple[str, ...] = FORMATS  # what save() writes

    @property
    def n_steps(self) -> int:
        return int(self.losses.shape[0])

    def to_frame(self) -> pd.DataFrame:
        steps, layers = self.losses.shape
        return pd.DataFrame(
            {
                "step": np.repeat(np.arange(steps), layers),
                "layer": np.tile(np.arange(layers), steps),
                "kl": self.losses.reshape(-1).astype(np.float64),
            }
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> TuneLensResult:
        """The losses alone (no lens: see `from_folder`)."""
        frame = frame.sort_values(["step", "layer"])
        steps, layers = int(frame["step"].max()) + 1, int(frame["layer"].max()) + 1
        return cls(losses=frame["kl"].to_numpy().reshape(steps, layers), lens=None, meta=meta)

    @classmethod
    def from_folder(cls, folder: Path, frame: pd.DataFrame, meta: dict[str, Any]) -> TuneLensResult:
        """The losses, and the lens saved beside them when it is still there and readable."""
        result = cls.from_frame(frame, meta)
        try:
            lens_format(folder)
            result.lens = load_lens(folder)
        except Exception:  # the table is the result; the lens files may have been moved
            result.lens = None
        return result

    @classmethod
    def files(cls, formats: Iterable[str] = ("png",)) -> list[str]:
        return [*super().files(formats), *lens_files()]

    def views(self) -> list[tuple[str, Heatmap]]:
        return [(self.kind, curve_view(self.losses, self.meta))]

    def summary(self) -> str:
        first, last = self.losses[0], self.losses[-1]
        return (
            f"tuned lens: {self.losses.shape[1]} translators, {self.n_steps} steps; mean KL over "
            f"layers {first.mean():.3f} -> {last.mean():.3f} nats"
        )

    def save(
        self,
        out_dir: str | os.PathLike[str],
        *,
        formats: Iterable[str] = ("png",),
        overwrite: bool = False,
        plot_options: dict[str, Any] | None = None,
    ) -> dict[str, Path]:
        """The lens files (each written atomically), then the table, meta.json and figure as
        every result saves them (which removes the finished training checkpoint last)."""
        written: dict[str, Path] = {}
        if self.lens is not None:
            check_writable(Path(out_dir), lens_files(self.lens_formats), overwrite)
            if overwrite:
                self._remove_previous_lens(Path(out_dir))
            written.update(save_lens(self.lens, out_dir, formats=self.lens_formats))
        written.update(
            super().save(out_dir, formats=formats, overwrite=overwrite, plot_options=plot_options)
        )
        return written

    def _remove_previous_lens(self, out: Path) -> None:
        """The previous tune-lens result's lens files in formats this one does not write (a
        folder whose meta.json is another kind's keeps its files): otherwise a load would find
        the old lens beside the new one."""
        try:
            previous = json.loads((out / "meta.json").read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            return
        if previous != self.kind:
            return
        for name in sorted(set(lens_files()) - set(lens_files(self.lens_formats))):
            (out / name).unlink(missing_ok=True)
