"""Logit attribution's result: a long table (position, token, layer, component, head, value)
and meta.json; the figures are drawn from the table (`views`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ...errors import TokenprobeError
from ...heatmap import Heatmap
from ...results import FIGURE_FORMATS, Result
from .options import LogitAttributionFigure
from .views import STEMS, views

TOP = ("embed", "attn", "mlp", "mixer", "bias")  # the parts that add up to the logit
COLUMNS = ("position", "token", "layer", "component", "head", "value")


class Rows:
    """The table being built: one (component, layer, head) at a time, a value per position."""

    def __init__(self) -> None:
        self.items: list[tuple[str, int | None, int | None, torch.Tensor]] = []

    def add(
        self, component: str, layer: int | None, head: int | None, values: torch.Tensor
    ) -> None:
        self.items.append((component, layer, head, values.double().cpu()))

    def total(self) -> torch.Tensor:
        """The sum of the parts that add up to the logit, per position."""
        return torch.stack([v for c, _, _, v in self.items if c in TOP]).sum(0)

    def magnitude(self) -> torch.Tensor:
        """The sum of those parts' sizes, per position: the scale of the rounding error."""
        return torch.stack([v.abs() for c, _, _, v in self.items if c in TOP]).sum(0)

    def frame(self, tokens: list[str]) -> pd.DataFrame:
        n = len(tokens)
        k = len(self.items)
        return pd.DataFrame(
            {
                "position": np.tile(np.arange(n), k),
                "token": np.tile(np.asarray(tokens, dtype=object), k),
                "layer": pd.array(np.repeat([i[1] for i in self.items], n), dtype="Int64"),
                "component": np.repeat(np.asarray([i[0] for i in self.items], dtype=object), n),
                "head": pd.array(np.repeat([i[2] for i in self.items], n), dtype="Int64"),
                "value": torch.cat([i[3] for i in self.items]).numpy(),
            }
        )


@dataclass
class LogitAttributionResult(Result):
    """`frame`: one row per (component, layer, head, position); embed, attn, mlp, mixer and
    bias add up to the attributed logit at each position, head and attn_bias to their
    block's attn. `meta` says what each component is and how exact the sum is."""

    kind: ClassVar[str] = "logit_attribution"

    tokens: list[str]
    frame: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        blocks = (self.meta.get("decomposition") or {}).get("blocks")
        if isinstance(blocks, dict) and blocks:
            return sum(len(b) for b in blocks.values())
        layers = self.frame["layer"].dropna()
        return int(layers.max()) + 1 if len(layers) else 0

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> LogitAttributionResult:
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise TokenprobeError(
                f"{cls.kind}.parquet has no {missing[0]!r} column: it is not a logit "
                "attribution table; run logit-attribution again"
            )
        firsts = frame.drop_duplicates("position").sort_values("position")
        frame = frame.assign(
            layer=frame["layer"].astype("Int64"), head=frame["head"].astype("Int64")
        )
        return cls(tokens=[str(t) for t in firsts["token"]], frame=frame, meta=meta)

    def values(self, component: str) -> np.ndarray:
        """A layerless component's value per position (embed, bias), NaN where it has none."""
        part = self.frame[self.frame["component"] == component]
        out = np.full(len(self.tokens), np.nan)
        out[part["position"].to_numpy(dtype=int)] = part["value"].to_numpy(dtype=np.float64)
        return out

    def grid(self, component: str) -> np.ndarray:
        """(layers, positions) of a block component (attn, mlp, mixer, attn_bias; block: all a
        block adds), NaN where a block has none."""
        names = ("attn", "mlp", "mixer") if component == "block" else (component,)
        part = self.frame[self.frame["component"].isin(names)]
        out = np.full((self.n_layers, len(self.tokens)), np.nan)
        if len(part):
            summed = part.groupby(["layer", "position"])["value"].sum()
            layers = summed.index.get_level_values(0).to_numpy(dtype=int)
            out[layers, summed.index.get_level_values(1).to_numpy(dtype=int)] = summed.to_numpy()
        return out

    def heads(self, position: int) -> np.ndarray:
        """(layers, heads) at one position, NaN where a block has no split heads."""
        part = self.frame[
            (self.frame["component"] == "head") & (self.frame["position"] == position)
        ]
        width = int(part["head"].max()) + 1 if len(part) else 0
        out = np.full((self.n_layers, width), np.nan)
        out[part["layer"].to_numpy(dtype=int), part["head"].to_numpy(dtype=int)] = part["value"]
        return out

    def total(self) -> np.ndarray:
        """The parts' sum per position: the model's own logit (before any soft-cap)."""
        part = self.frame[self.frame["component"].isin(TOP)]
        out = np.zeros(len(self.tokens))
        np.add.at(out, part["position"].to_numpy(dtype=int), part["value"].to_numpy(dtype=float))
        return out

    @classmethod
    def files(cls, formats: Iterable[str] = ("png",)) -> list[str]:
        figures = [f"{stem}.{fmt}" for stem in STEMS for fmt in formats]
        return [f"{cls.kind}.parquet", "meta.json", *figures]

    @classmethod
    def saved_names(cls, meta: dict[str, Any]) -> list[str]:
        return cls.files(FIGURE_FORMATS)

    def views(
        self, figure: LogitAttributionFigure | None = None, **settings: Any
    ) -> list[tuple[str, Heatmap]]:
        """The components per block and the heads at one position, and one component kind
        over layers and positions; `figure` (or its settings): see `LogitAttributionFigure`."""
        return views(self, LogitAttributionFigure.build(figure, settings))

    def summary(self) -> str:
        m = self.meta
        p = len(self.tokens) - 1
        grid = self.grid("block")[:, p]
        line = f"logit attribution of {m.get('attributed', '')} at the last position: "
        line += f"total {self.total()[p]:.4g}"
        if np.isfinite(grid).any():
            top = int(np.nanargmax(np.abs(grid)))
            line += f", largest block {top} ({grid[top]:+.4g})"
        heads = self.heads(p)
        if np.isfinite(heads).any():
            layer, head = np.unravel_index(np.nanargmax(np.abs(heads)), heads.shape)
            line += f", largest head L{layer}H{head} ({heads[layer, head]:+.4g})"
        exact = m.get("exactness") or {}
        if exact:
            line += f"; sum vs model max error {exact['max_abs_error']:.2g} (tolerance {exact['tolerance']:.2g})"
        return line
