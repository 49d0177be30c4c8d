"""features over a data set (`--data`): the per-feature table (count, frequency, mean, max),
the top contexts table beside it, and meta.json. Saved as its own kind, `feature_contexts`,
which the features analysis reads back (`FeaturesResult.from_folder` hands it over)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ...errors import TokenprobeError
from ...heatmap import Heatmap
from ...results import FIGURE_FORMATS, Result
from ...text import token_texts
from .contexts_views import CONTEXT_STEMS, context_views
from .options import FeaturesFigure
from .tally import Tally

TOP_TABLE = "feature_contexts_top"
STATS = ("feature", "count", "frequency", "mean", "max")
CONTEXT_COLUMNS = (
    "feature",
    "rank",
    "activation",
    "text",
    "position",
    "left",
    "token",
    "right",
    "window_tokens",
    "window_activations",
)  # fmt: skip  (the window: 2 x context + 1 tokens, "" and NaN past the text's ends)


def build_tables(
    tally: Tally, encoded: Sequence[Sequence[int]], tokenizer: Any
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-feature table (every latent, dead ones with count 0) and the top contexts table
    (one row per filled heap slot), the windows' tokens decoded."""
    n = max(tally.tokens, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(tally.count > 0, tally.total / np.maximum(tally.count, 1), np.nan)
    stats = pd.DataFrame(
        {
            "feature": np.arange(len(tally.count), dtype=np.int64),
            "count": tally.count,
            "frequency": tally.count / n,
            "mean": mean,
            "max": tally.peak.astype(np.float64),
        }
    )
    f, r = np.nonzero(np.isfinite(tally.act))
    text, pos = tally.text[f, r], tally.pos[f, r]
    # the strings of each distinct (text, position) once: many features share a context (one
    # int64 key per pair: np.unique over rows sorts them as records, 10x slower)
    span = int(pos.max(initial=0)) + 1
    flat, inverse = np.unique(text * span + pos, return_inverse=True)
    keys = np.stack([flat // span, flat % span], 1)
    left, token, right, window = _strings(keys, encoded, tokenizer, tally.context)
    inverse = inverse.reshape(-1)
    contexts = pd.DataFrame(
        {
            "feature": f.astype(np.int64),
            "rank": (r + 1).astype(np.int64),
            "activation": tally.act[f, r].astype(np.float64),
            "text": text.astype(np.int64),
            "position": pos.astype(np.int64),
            "left": left[inverse],
            "token": token[inverse],
            "right": right[inverse],
            "window_tokens": window[inverse],
            "window_activations": list(tally.window[f, r].astype(np.float64)),
        }
    )
    return stats, contexts


def _strings(
    keys: np.ndarray, encoded: Sequence[Sequence[int]], tokenizer: Any, w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each (text, position): the window's text left of the token, the token, the text
    right of it, and the window's 2w + 1 tokens ("" past the text's ends)."""
    n = len(keys)
    left, token, right, window = (np.empty(n, dtype=object) for _ in range(4))
    decoded: dict[int, list[str]] = {}
    for k, (t, p) in enumerate(keys.tolist()):
        if t not in decoded:
            decoded[t] = token_texts(tokenizer, encoded[t])
        toks = decoded[t]
        lo, hi = max(0, p - w), min(len(toks), p + w + 1)
        left[k], token[k], right[k] = "".join(toks[lo:p]), toks[p], "".join(toks[p + 1 : hi])
        window[k] = [""] * (lo - p + w) + toks[lo:hi] + [""] * (p + w + 1 - hi)
    return left, token, right, window


@dataclass
class FeatureContextsResult(Result):
    """`stats`: one row per latent (feature, count, frequency, mean, max); `contexts`: per
    latent its top contexts (see `CONTEXT_COLUMNS`)."""

    kind: ClassVar[str] = "feature_contexts"

    stats: pd.DataFrame
    contexts: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return self.stats

    def tables(self) -> dict[str, pd.DataFrame]:
        return {self.kind: self.stats, TOP_TABLE: self.contexts}

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> FeatureContextsResult:
        missing = [c for c in STATS if c not in frame.columns]
        if missing:
            raise TokenprobeError(
                f"{cls.kind}.parquet has no {missing[0]!r} column: it is not a feature "
                "contexts table; run features --data again"
            )
        empty = pd.DataFrame({c: [] for c in CONTEXT_COLUMNS})
        return cls(stats=frame, contexts=empty, meta=meta)

    @classmethod
    def from_folder(cls, folder: Path, frame: pd.DataFrame, meta: dict[str, Any]) -> Result:
        result = cls.from_frame(frame, meta)
        path = folder / f"{TOP_TABLE}.parquet"
        if path.is_file():
            result.contexts = pd.read_parquet(path)
        return result

    @classmethod
    def files(cls, formats: Iterable[str] = ("png",)) -> list[str]:
        figures = [f"{stem}.{fmt}" for stem in CONTEXT_STEMS for fmt in formats]
        return [f"{cls.kind}.parquet", f"{TOP_TABLE}.parquet", "meta.json", *figures]

    @classmethod
    def saved_names(cls, meta: dict[str, Any]) -> list[str]:
        return cls.files(FIGURE_FORMATS)

    def views(
        self, figure: FeaturesFigure | None = None, **settings: Any
    ) -> list[tuple[str, Heatmap]]:
        """The most frequent features' top activations, and their top contexts token by token;
        `figure`: see `FeaturesFigure` (`show` features, `examples` contexts each)."""
        return context_views(self, FeaturesFigure.build(figure, settings))

    def summary(self) -> str:
        d = self.meta.get("dictionary") or {}
        s = self.stats
        alive = s[s["count"] > 0]
        line = (
            f"features over {self.meta.get('texts_used', '?')} texts "
            f"({self.meta.get('tokens', '?')} tokens): {d.get('latents', len(s))}-latent "
            f"{d.get('kind', 'dictionary')} at {d.get('reads', '?')}, "
            f"{len(s) - len(alive)} dead"
        )
        if len(alive):
            best = alive.sort_values(["frequency", "feature"], ascending=[False, True]).iloc[0]
            line += (
                f"; most frequent: feature {int(best['feature'])} "
                f"({100 * float(best['frequency']):.1f}% of tokens); median frequency of the "
                f"live ones {100 * float(alive['frequency'].median()):.2f}%"
            )
        return line
