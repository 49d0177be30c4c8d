"""features' result: the kept features' activations in long form (every position where a kept
feature is active), the per-position reconstruction table beside it, and meta.json."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ...errors import TokenprobeError
from ...heatmap import Heatmap
from ...results import FIGURE_FORMATS, Result
from .options import FeaturesFigure
from .views import STEMS, views

POSITIONS_TABLE = "features_positions"
COLUMNS = ("position", "feature", "activation", "rank", "top", "attribution", "ablation")


@dataclass
class Kept:
    """Parallel arrays, one entry per (position, feature) where a kept feature is active."""

    position: np.ndarray
    feature: np.ndarray
    activation: np.ndarray
    rank: np.ndarray  # 1 = the position's most active latent
    top: np.ndarray  # among the features kept at that position
    attribution: np.ndarray  # activation x gradient (NaN without a target)
    ablation: np.ndarray  # score - score without it (NaN where not run)

    @classmethod
    def build(
        cls,
        kept: torch.Tensor,
        acts: torch.Tensor,
        attribution: torch.Tensor | None,
        ablation: np.ndarray | None,
    ) -> Kept:
        """From the (positions, d_sae) kept mask, activations and effects: every feature kept
        at some position, wherever it is active."""
        features = kept.any(0)
        active = (acts > 0) & features[None]
        order = acts.argsort(dim=-1, descending=True)
        ranks = torch.empty_like(order)
        ranks.scatter_(-1, order, torch.arange(1, acts.shape[-1] + 1).expand_as(order))
        p, f = active.nonzero(as_tuple=True)
        nan = np.full(p.numel(), np.nan)
        return cls(
            position=p.cpu().numpy().astype(np.int32),
            feature=f.cpu().numpy().astype(np.int64),
            activation=acts[p, f].double().cpu().numpy(),
            rank=ranks[p, f].cpu().numpy().astype(np.int64),
            top=kept[p, f].cpu().numpy(),
            attribution=nan if attribution is None else attribution[p, f].double().cpu().numpy(),
            ablation=nan if ablation is None else ablation[p.cpu().numpy(), f.cpu().numpy()],
        )

    def shown(self, by: str, n: int) -> list[int]:
        """The `n` features with the largest activation (`by` "activation") or |effect|
        (`by` "ablation" or "attribution") anywhere."""
        values = getattr(self, by)
        ok = np.isfinite(values)
        if not ok.any():
            return []
        frame = pd.DataFrame({"feature": self.feature[ok], "v": np.abs(values[ok])})
        best = frame.groupby("feature")["v"].max().sort_values(ascending=False, kind="stable")
        return [int(f) for f in best.index[:n]]

    def grid(self, what: str, features: list[int], n_pos: int) -> np.ndarray:
        """(features, positions) of `what`: 0 activation where inactive, NaN effects."""
        fill = 0.0 if what == "activation" else np.nan
        out = np.full((len(features), n_pos), fill)
        at = {f: i for i, f in enumerate(features)}
        values = getattr(self, what)
        for p, f, v in zip(self.position, self.feature, values, strict=True):
            if int(f) in at:
                out[at[int(f)], int(p)] = v
        return out


@dataclass
class FeaturesResult(Result):
    """`kept`: the kept features' activations and effects; `positions`: per position l0,
    norm, error_ratio, kl and (with a target) splice_effect."""

    kind: ClassVar[str] = "features"
    # the kind `features --data` saves (`FeatureContextsResult`): found by this analysis,
    # handed over by `from_folder`
    old_kinds: ClassVar[tuple[str, ...]] = ("feature_contexts",)

    tokens: list[str]
    kept: Kept
    positions: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        k = self.kept
        tokens = np.asarray(self.tokens, dtype=object)
        return pd.DataFrame(
            {
                "position": k.position,
                "token": tokens[k.position] if len(k.position) else np.zeros(0, dtype=object),
                "feature": k.feature,
                "activation": k.activation,
                "rank": k.rank,
                "top": k.top.astype(bool),
                "attribution": k.attribution,
                "ablation": k.ablation,
            }
        )

    def positions_frame(self) -> pd.DataFrame:
        n = len(self.tokens)
        return pd.DataFrame(
            {"position": np.arange(n), "token": self.tokens, **self.positions},
        )

    def tables(self) -> dict[str, pd.DataFrame]:
        return {self.kind: self.to_frame(), POSITIONS_TABLE: self.positions_frame()}

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> FeaturesResult:
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise TokenprobeError(
                f"{cls.kind}.parquet has no {missing[0]!r} column: it is not a features table; "
                "run features again"
            )
        kept = Kept(
            position=frame["position"].to_numpy(dtype=np.int32),
            feature=frame["feature"].to_numpy(dtype=np.int64),
            activation=frame["activation"].to_numpy(dtype=np.float64),
            rank=frame["rank"].to_numpy(dtype=np.int64),
            top=frame["top"].to_numpy(dtype=bool),
            attribution=frame["attribution"].to_numpy(dtype=np.float64),
            ablation=frame["ablation"].to_numpy(dtype=np.float64),
        )
        return cls(tokens=[str(t) for t in meta["tokens"]], kept=kept, positions={}, meta=meta)

    @classmethod
    def from_folder(cls, folder: Path, frame: pd.DataFrame, meta: dict[str, Any]) -> Result:
        if meta.get("kind") == "feature_contexts":
            from .contexts import FeatureContextsResult

            return FeatureContextsResult.from_folder(folder, frame, meta)
        result = cls.from_frame(frame, meta)
        path = folder / f"{POSITIONS_TABLE}.parquet"
        if path.is_file():
            table = pd.read_parquet(path).sort_values("position")
            result.positions = {
                c: table[c].to_numpy() for c in table.columns if c not in ("position", "token")
            }
        return result

    @classmethod
    def files(cls, formats: Iterable[str] = ("png",)) -> list[str]:
        figures = [f"{stem}.{fmt}" for stem in STEMS for fmt in formats]
        return [f"{cls.kind}.parquet", f"{POSITIONS_TABLE}.parquet", "meta.json", *figures]

    @classmethod
    def saved_names(cls, meta: dict[str, Any]) -> list[str]:
        return cls.files(FIGURE_FORMATS)

    def views(
        self, figure: FeaturesFigure | None = None, **settings: Any
    ) -> list[tuple[str, Heatmap]]:
        """The shown features' activations per position, their effects (with a target) and
        the reconstruction error per position; `figure`: see `FeaturesFigure`."""
        return views(self, FeaturesFigure.build(figure, settings))

    def correlation(self) -> float | None:
        """Pearson r between activation x gradient and the exact ablation effect, where both
        were computed (None with fewer than 3)."""
        k = self.kept
        ok = np.isfinite(k.attribution) & np.isfinite(k.ablation)
        if ok.sum() < 3 or np.std(k.ablation[ok]) == 0 or np.std(k.attribution[ok]) == 0:
            return None
        return float(np.corrcoef(k.attribution[ok], k.ablation[ok])[0, 1])

    def extra_meta(self) -> dict[str, Any]:
        return {"correlation": self.correlation()}

    def summary(self) -> str:
        d = self.meta.get("dictionary") or {}
        k = self.kept
        line = (
            f"features: {d.get('latents', '?')}-latent {d.get('kind', 'dictionary')} at "
            f"{d.get('reads', '?')}, {len(self.tokens)} positions, {len(set(k.feature.tolist()))} "
            "features kept"
        )
        error = self.positions.get("error_ratio")
        if error is not None and np.isfinite(error).any():
            line += f"; mean error ratio {float(np.nanmean(error)):.3f}"
        if self.meta.get("skip_first"):
            line += f" (first {self.meta['skip_first']} position(s) left out)"
        if np.isfinite(k.ablation).any():
            i = int(np.nanargmax(np.abs(k.ablation)))
            line += (
                f"; largest effect: feature {int(k.feature[i])} at position "
                f"{int(k.position[i])} ({float(k.ablation[i]):+.4g})"
            )
        r = self.correlation()
        if r is not None:
            line += f"; activation x gradient vs ablation r = {r:.3f}"
        return line
