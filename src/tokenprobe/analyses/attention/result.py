"""attention's result: the kept weights as a long table (layer, head, query, key, weight; key
<= query where the attention is causal; an encoder-decoder's rows also name their `stack`), the
layer x head `to` table beside it, and the tokens in meta.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ...errors import TokenprobeError
from ...results import FIGURE_FORMATS, Result

TO_TABLE = "attention_to"
STEMS = ("attention_head", "attention_layer", TO_TABLE)


@dataclass
class Pattern:
    """Kept weights in long form: parallel arrays, one entry per (layer, head, query, key)."""

    layer: np.ndarray
    head: np.ndarray
    query: np.ndarray
    key: np.ndarray
    weight: np.ndarray

    @classmethod
    def from_dense(
        cls, patterns: dict[int, torch.Tensor], heads: list[int] | None, causal: bool = True
    ) -> Pattern:
        """Each block's (heads, queries, keys) weights, the lower triangle where `causal`, else
        every cell; `heads`: the head numbers of the rows kept (None: all, in order). The
        columns are written once into arrays of their final length (a 1,024-token prompt's
        every layer and head is tens of millions of rows: no per-layer parts to join)."""
        blocks = sorted(patterns.items())
        cells = {w.shape[1:]: _cells(w.shape[1], w.shape[2], causal) for _, w in blocks}
        total = sum(w.shape[0] * cells[w.shape[1:]][0].size for _, w in blocks)
        out = cls(*(np.empty(total, k) for k in (np.int32,) * 4 + (np.float32,)))
        at = 0
        for layer, w in blocks:
            h = w.shape[0]
            q, k, flat = cells[w.shape[1:]]
            t = q.size
            numbers = np.asarray(heads if heads is not None else range(h), dtype=np.int32)
            for i in range(h):
                rows = slice(at + i * t, at + (i + 1) * t)
                out.head[rows], out.query[rows], out.key[rows] = numbers[i], q, k
            out.layer[at : at + h * t] = layer
            values = torch.from_numpy(out.weight[at : at + h * t]).view(h, t)
            torch.index_select(w.reshape(h, -1).float(), 1, flat, out=values)
            at += h * t
        return out

    @classmethod
    def from_rows(cls, rows: dict[int, torch.Tensor], query: int, causal: bool = True) -> Pattern:
        """Only query `query`'s row (heads, keys) of each block, keys up to the query where
        `causal`, else every key."""
        parts = []
        for layer, r in sorted(rows.items()):
            h, t = r.shape[0], query + 1 if causal else r.shape[1]
            parts.append(
                (
                    np.full(h * t, layer, np.int32),
                    np.repeat(np.arange(h, dtype=np.int32), t),
                    np.full(h * t, query, np.int32),
                    np.tile(np.arange(t, dtype=np.int32), h),
                    r[:, :t].numpy().reshape(-1).astype(np.float32),
                )
            )
        return cls(*_joined(parts))

    def dense(self, layer: int, head: int, n: int, keys: int | None = None) -> np.ndarray:
        """(n, keys) weights of one head (keys default n), NaN where nothing is kept (above
        the diagonal of a causal pattern)."""
        out = np.full((n, n if keys is None else keys), np.nan, dtype=np.float32)
        sel = (self.layer == layer) & (self.head == head)
        out[self.query[sel], self.key[sel]] = self.weight[sel]
        return out

    def heads_of(self, layer: int) -> list[int]:
        return sorted({int(h) for h in np.unique(self.head[self.layer == layer])})

    def full(self, layer: int, n: int) -> bool:
        """Whether the whole pattern (every query) of this block is kept."""
        sel = self.layer == layer
        return bool(sel.any()) and int(np.unique(self.query[sel]).size) == n


def _cells(n: int, m: int, causal: bool) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Query and key (int32) of each kept cell of an (n, m) pattern, row by row (the lower
    triangle where `causal`, else every cell), and each cell's flat index q * m + k."""
    if causal:
        q, k = torch.tril_indices(n, n)
    else:
        q, k = torch.arange(n).repeat_interleave(m), torch.arange(m).repeat(n)
    return q.numpy().astype(np.int32), k.numpy().astype(np.int32), q * m + k


def _joined(parts: list[Any]) -> list[np.ndarray]:
    if not parts:
        kinds = (np.int32,) * 4 + (np.float32,)
        return [np.zeros(0, k) for k in kinds]
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


@dataclass
class AttentionResult(Result):
    """`pattern`: the kept weights; `to_table`: (attention layer, head) attention from
    meta["from"] to the key positions meta["to_keys"] (None without `to`)."""

    kind: ClassVar[str] = "attention"

    tokens: list[str]
    layers: list[int]
    heads: int
    pattern: Pattern
    to_table: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    stack: str | None = None  # an encoder-decoder's: encoder, decoder or cross
    key_tokens: list[str] | None = None  # the keys' tokens, where not `tokens`

    @property
    def keys(self) -> list[str]:
        """The tokens of the key positions."""
        return self.tokens if self.key_tokens is None else self.key_tokens

    def to_frame(self) -> pd.DataFrame:
        p = self.pattern
        columns = {"layer": p.layer, "head": p.head, "query": p.query, "key": p.key}
        stack = {"stack": np.full(len(p.layer), self.stack)} if self.stack else {}
        return pd.DataFrame({**stack, **columns, "weight": p.weight})

    def to_frame_to(self) -> pd.DataFrame:
        assert self.to_table is not None
        n_layers, n_heads = self.to_table.shape
        return pd.DataFrame(
            {
                "layer": np.repeat(np.asarray(self.layers, dtype=np.int32), n_heads),
                "head": np.tile(np.arange(n_heads, dtype=np.int32), n_layers),
                "weight": self.to_table.reshape(-1).astype(np.float64),
            }
        )

    def tables(self) -> dict[str, pd.DataFrame]:
        out = {self.kind: self.to_frame()}
        if self.to_table is not None:
            out[TO_TABLE] = self.to_frame_to()
        return out

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> AttentionResult:
        columns = [frame[c].to_numpy() for c in ("layer", "head", "query", "key", "weight")]
        weights = columns[-1].astype(np.float32)
        if not np.isfinite(weights).all():
            raise TokenprobeError(
                "attention.parquet: some weights are not finite: the table is damaged; run "
                "attention again"
            )
        layer, head, query, key = (c.astype(np.int32) for c in columns[:-1])
        pattern = Pattern(layer, head, query, key, weights)
        keys = meta.get("key_tokens")
        return cls(
            tokens=[str(t) for t in meta["tokens"]],
            layers=[int(b) for b in meta["attention_layers"]],
            heads=int(meta.get("heads", 0)),
            pattern=pattern,
            meta=meta,
            stack=meta.get("stack"),
            key_tokens=None if keys is None else [str(t) for t in keys],
        )

    @classmethod
    def from_folder(cls, folder: Path, frame: pd.DataFrame, meta: dict[str, Any]) -> Result:
        result = cls.from_frame(frame, meta)
        path = folder / f"{TO_TABLE}.parquet"
        if path.is_file():
            to = pd.read_parquet(path).sort_values(["layer", "head"])
            result.to_table = to["weight"].to_numpy().reshape(len(result.layers), -1)
        return result

    def extra_meta(self) -> dict[str, Any]:
        return {"heads": self.heads}

    @classmethod
    def files(cls, formats: Any = ("png",)) -> list[str]:
        figures = [f"{stem}.{fmt}" for stem in STEMS for fmt in formats]
        return [f"{cls.kind}.parquet", f"{TO_TABLE}.parquet", "meta.json", *figures]

    @classmethod
    def saved_names(cls, meta: dict[str, Any]) -> list[str]:
        return cls.files(FIGURE_FORMATS)

    def views(self) -> list[tuple[str, Any]]:
        """One head's pattern (with a head asked for, or where one is kept), every head of
        the layer as small multiples, and the `to` table; each only where it was kept."""
        from .views import views

        return views(self)

    def summary(self) -> str:
        n = len(self.tokens)
        out = f"attention: {len(self.layers)} attention layer(s) x {self.heads} heads, {n} tokens"
        if self.stack is not None:
            what = {"encoder": "encoder self-attention", "decoder": "decoder self-attention"}
            out = (
                f"attention ({what.get(self.stack, 'cross-attention')}): {len(self.layers)} "
                f"layer(s) x {self.heads} heads, {n} queries x {len(self.keys)} keys"
            )
        if self.to_table is not None:
            layer, head = np.unravel_index(int(np.argmax(self.to_table)), self.to_table.shape)
            out += (
                f"; most attention to {self.meta.get('options', {}).get('to')!r}: layer "
                f"{self.layers[layer]} head {head} ({float(self.to_table[layer, head]):.3f})"
            )
        return out
