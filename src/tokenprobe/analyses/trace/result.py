"""The causal trace's result: per component, a (layers x positions) grid of patched scores."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ...heatmap import Heatmap
from ...results import FIGURE_FORMATS, Result
from .options import COMPONENT_OF, COMPONENTS, GRIDS, STACKS, TraceFigure
from .views import trace_view


@dataclass
class TraceResult(Result):
    """`scores[component][layer, position]`: the metric after restoring that cell (for the
    residual stream layer 0 = embeddings, layer k = output of block k; for attn and mlp, the
    block's number). `estimates` holds attribution patching's estimates beside exact scores
    (method both); with method estimate, `scores` are the estimates. The clean and corrupted
    runs' scores are in `meta`.
    """

    kind: ClassVar[str] = "trace"

    tokens: list[str]
    token_ids: list[int]
    components: list[str]
    # component -> (rows, positions) float64, NaN: no such site; a head component's is
    # (blocks, heads, positions); with positions "all" one column (every position at once)
    scores: dict[str, np.ndarray]
    estimates: dict[str, np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def clean_score(self) -> float:
        return float(self.meta["clean_score"])

    @property
    def corrupted_score(self) -> float:
        return float(self.meta["corrupted_score"])

    @property
    def n_positions(self) -> int:
        return len(self.tokens)

    @property
    def seq2seq(self) -> bool:
        """An encoder-decoder's trace: grids encoder, decoder and cross (see `seq2seq_sites`)."""
        return bool(self.meta.get("seq2seq"))

    def tokens_of(self, component: str) -> list[str]:
        """The tokens of a grid's columns: an encoder-decoder's decoder and cross grids are
        over the decoder's tokens; the rest over the prompt's (the source's)."""
        if self.seq2seq and component != "encoder":
            return [str(t) for t in self.meta.get("decoder_tokens", [])]
        return self.tokens

    def normalised(self, values: np.ndarray) -> np.ndarray:
        """0 = the corrupted run's score, 1 = the clean run's (NaN when the two are equal)."""
        gap = self.clean_score - self.corrupted_score
        if gap == 0:
            return np.full_like(values, np.nan, dtype=np.float64)
        return (values - self.corrupted_score) / gap

    def correlation(self) -> dict[str, float | None]:
        """Pearson correlation of the estimates with the exact scores, per component and over
        all cells (None where either is constant)."""
        if self.estimates is None:
            return {}
        out: dict[str, float | None] = {}
        pairs = [(c, self.scores[c], self.estimates[c]) for c in self.components]
        pairs.append(
            (
                "all",
                np.concatenate([exact.ravel() for _, exact, _ in pairs]),
                np.concatenate([est.ravel() for _, _, est in pairs]),
            )
        )
        for name, exact, est in pairs:
            ok = np.isfinite(exact) & np.isfinite(est)
            a, b = np.ravel(exact)[np.ravel(ok)], np.ravel(est)[np.ravel(ok)]
            out[name] = (
                float(np.corrcoef(a, b)[0, 1])
                if len(a) > 1 and a.std() > 0 and b.std() > 0
                else None
            )
        return out

    @property
    def all_positions(self) -> bool:
        """Was each row restored at every position at once (one column per row)?"""
        return self.meta.get("positions") == "all"

    def to_frame(self) -> pd.DataFrame:
        """One row per (component, layer, head, position); head is empty (NA) for resid, attn
        and mlp, position for positions "all" (every position restored at once). An
        encoder-decoder's rows also name their `stack`: encoder, decoder or cross-attention
        (component resid, resid, cross), positions the source's or the decoder's."""
        parts = []
        for c in self.components:
            tokens = np.asarray(self.tokens_of(c), dtype=object)
            grid = self.scores[c]
            g3 = grid if grid.ndim == 3 else grid[:, None, :]
            layers, heads, cols = g3.shape
            n = layers * heads * cols
            pos = np.tile(np.arange(cols), layers * heads)
            data: dict[str, Any] = {
                **({"stack": STACKS[c]} if self.seq2seq else {}),
                "component": COMPONENT_OF[c] if self.seq2seq else c,
                "layer": np.repeat(np.arange(layers), heads * cols),
                "head": pd.array(
                    np.tile(np.repeat(np.arange(heads), cols), layers)
                    if grid.ndim == 3
                    else [pd.NA] * n,
                    dtype="Int64",
                ),
                "position": pd.array([pd.NA] * n, dtype="Int64") if self.all_positions else pos,
                "token": None if self.all_positions else tokens[pos],
                "score": g3.reshape(-1),
                "normalised": self.normalised(g3).reshape(-1),
            }
            if self.estimates is not None:
                est = self.estimates[c].reshape(-1)
                data["estimate"] = est
                data["estimate_normalised"] = self.normalised(est)
            parts.append(pd.DataFrame(data))
        return pd.concat(parts, ignore_index=True)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> TraceResult:
        if "stack" in frame.columns:  # an encoder-decoder's: the grid is named by its stack
            grid_of = {stack: g for g, stack in STACKS.items()}
            frame = frame.assign(component=[grid_of[str(s)] for s in frame["stack"]])
        components = list(dict.fromkeys(str(c) for c in frame["component"]))
        scores: dict[str, np.ndarray] = {}
        estimates: dict[str, np.ndarray] | None = {} if "estimate" in frame.columns else None
        every = meta.get("positions") == "all"
        tokens: list[str] = [str(t) for t in meta.get("tokens", [])] if every else []
        for c in components:
            part = frame[frame["component"] == c]
            headed = "head" in part.columns and bool(part["head"].notna().any())
            order = ["layer", "head", "position"] if headed else ["layer", "position"]
            part = part.sort_values(order)
            shape: tuple[int, ...] = (
                int(part["layer"].max()) + 1,
                *((int(part["head"].max()) + 1,) if headed else ()),
                1 if every else int(part["position"].max()) + 1,
            )
            scores[c] = part["score"].to_numpy(dtype=np.float64).reshape(shape)
            if estimates is not None:
                estimates[c] = part["estimate"].to_numpy(dtype=np.float64).reshape(shape)
            if not every:
                tokens = [str(t) for t in part["token"][: shape[-1]]]
        if meta.get("seq2seq"):
            tokens = [str(t) for t in meta.get("source_tokens", [])]
        return cls(
            tokens=tokens,
            token_ids=list(meta.get("token_ids", [])),
            components=components,
            scores=scores,
            estimates=estimates,
            meta=meta,
        )

    @classmethod
    def files(cls, formats: Iterable[str] = ("png",)) -> list[str]:
        """The table, meta.json and a figure per component that can be traced."""
        figures = [
            f"trace_{c}.{fmt}" for c in dict.fromkeys((*COMPONENTS, *GRIDS)) for fmt in formats
        ]
        return ["trace.parquet", "meta.json", *figures]

    @classmethod
    def saved_names(cls, meta: dict[str, Any]) -> list[str]:
        return cls.files(FIGURE_FORMATS)

    def views(
        self, figure: TraceFigure | None = None, **settings: Any
    ) -> list[tuple[str, Heatmap]]:
        """A heatmap per component; `figure` (or its settings as keyword arguments): see
        `TraceFigure`."""
        figure = TraceFigure.build(figure, settings)
        return [(f"trace_{c}", trace_view(self, c, figure)) for c in self.components]

    def summary(self) -> str:
        m = self.meta
        best = []
        lowest = m.get("direction") == "corrupt"  # corrupting: the cells that break the answer
        for c in self.components:
            grid = self.scores[c]
            if np.isfinite(grid).any():
                at = np.unravel_index(
                    np.nanargmin(grid) if lowest else np.nanargmax(grid), grid.shape
                )
                word = "lowest" if lowest else "highest"
                where = f"layer {at[0]}" + (f", head {at[1]}" if grid.ndim == 3 else "")
                if not self.all_positions:
                    where += f", position {at[-1]}"
                best.append(f"{c} {word} at {where} ({grid[at]:.4g})")
        line = (
            f"causal trace ({m.get('method')}, {m.get('metric')}) of {str(m.get('prompt', ''))[:50]!r}: "
            f"clean {self.clean_score:.4g}, corrupted {self.corrupted_score:.4g}; "
            + "; ".join(best)
        )
        corr = m.get("estimate_correlation")
        if corr:
            line += f"; estimate vs exact r = {corr.get('all') if corr.get('all') is None else round(corr['all'], 3)}"
        return line
