"""Per-feature tallies over a data set: how many tokens each latent fired on, the sum and the
largest of its activations, and its top-N contexts (activation, text, position, and the
latent's activations over the window around that position).

The top contexts are the first N under one total order: activation descending, then text
index, then position ascending. So a batch, a chunk or a whole run keeps the same contexts
whatever the batching, and merging tallies (`merge`) is exact and independent of the order
they come in (ties included); only the float64 sums depend on the order, so the caller merges
chunks in chunk order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EMPTY_TEXT = np.iinfo(np.int64).max  # an empty heap slot sorts after every text


@dataclass
class Tally:
    """Arrays per feature: `count`, `total` (float64), `peak`; the heap (features, top) of
    `act` (-inf: empty), `text` (EMPTY_TEXT: empty), `pos`, and `window` (features, top,
    2 x context + 1) of the feature's activation at each window token (NaN: past the text)."""

    count: np.ndarray
    total: np.ndarray
    peak: np.ndarray
    act: np.ndarray
    text: np.ndarray
    pos: np.ndarray
    window: np.ndarray
    tokens: int = 0
    ordered: bool = False  # are the heaps in the total order (the result of `_keep_best`)?

    @classmethod
    def empty(cls, d_sae: int, top: int, context: int) -> Tally:
        return cls(
            count=np.zeros(d_sae, dtype=np.int64),
            total=np.zeros(d_sae, dtype=np.float64),
            peak=np.zeros(d_sae, dtype=np.float32),
            act=np.full((d_sae, top), -np.inf, dtype=np.float32),
            text=np.full((d_sae, top), EMPTY_TEXT, dtype=np.int64),
            pos=np.zeros((d_sae, top), dtype=np.int64),
            window=np.full((d_sae, top, 2 * context + 1), np.nan, dtype=np.float32),
        )

    @property
    def top(self) -> int:
        return int(self.act.shape[1])

    @property
    def context(self) -> int:
        return (int(self.window.shape[2]) - 1) // 2

    def add(self, acts: torch.Tensor, text: torch.Tensor, pos: torch.Tensor) -> None:
        """Count one batch: `acts` (tokens, d_sae) with each token's text index and position,
        the tokens in ascending (text, position) order."""
        active = acts > 0
        self.count += active.sum(0).cpu().numpy()
        self.total += acts.sum(0, dtype=torch.float64).cpu().numpy()
        self.peak = np.maximum(self.peak, acts.max(0).values.clamp_min(0).cpu().numpy())
        self.tokens += int(acts.shape[0])
        idx = _candidates(acts, min(self.top, int(acts.shape[0])))  # (k, d_sae) token rows
        f = torch.arange(acts.shape[1], device=acts.device)
        vals = acts[idx, f[None]]
        ok = vals > 0
        new = Tally(
            count=self.count,
            total=self.total,
            peak=self.peak,
            act=torch.where(ok, vals, -torch.inf).T.float().cpu().numpy(),
            text=torch.where(ok, text[idx], EMPTY_TEXT).T.cpu().numpy(),
            pos=pos[idx].T.cpu().numpy(),
            window=_windows(acts, text, idx, self.context).cpu().numpy(),
        )
        self._keep_best(new)

    def merge(self, other: Tally) -> None:
        """Add another tally of other tokens (exact: see the module's docstring)."""
        self.count += other.count
        self.total += other.total
        self.peak = np.maximum(self.peak, other.peak)
        self.tokens += other.tokens
        self._keep_best(other)

    def _keep_best(self, other: Tally) -> None:
        if other.top == self.top and bool((self.text == EMPTY_TEXT).all()) and other.ordered:
            # an empty heap takes an ordered one as it is (a run's first chunk)
            self.act, self.text, self.pos = other.act, other.text, other.pos
            self.window, self.ordered = other.window, True
            return
        act = np.concatenate([self.act, other.act], axis=1)
        text = np.concatenate([self.text, other.text], axis=1)
        pos = np.concatenate([self.pos, other.pos], axis=1)
        window = np.concatenate([self.window, other.window], axis=1)
        order = np.lexsort((pos, text, -act), axis=-1)[:, : self.top]
        self.act = np.take_along_axis(act, order, 1)
        self.text = np.take_along_axis(text, order, 1)
        self.pos = np.take_along_axis(pos, order, 1)
        self.window = np.take_along_axis(window, order[..., None], 1)
        self.ordered = True

    def arrays(self) -> dict[str, np.ndarray]:
        """For a checkpoint part (`npz_writer`)."""
        names = ("count", "total", "peak", "act", "text", "pos", "window")
        return {**{n: getattr(self, n) for n in names}, "tokens": np.asarray(self.tokens)}

    @classmethod
    def from_arrays(cls, part: dict[str, np.ndarray]) -> Tally:
        names = ("count", "total", "peak", "act", "text", "pos", "window")
        a = {n: np.asarray(part[n]) for n in names}
        return cls(
            a["count"], a["total"], a["peak"], a["act"], a["text"], a["pos"], a["window"],
            tokens=int(part["tokens"]),
        )  # fmt: skip


def _candidates(acts: torch.Tensor, k: int) -> torch.Tensor:
    """(k, d_sae) token rows: each feature's k first tokens under (activation descending, row
    ascending); `topk` alone may pick any of several tokens tied at the k-th value, so the
    features where such a tie crosses the boundary are sorted stably instead."""
    vals, idx = acts.topk(k, dim=0)
    thr = vals[-1]
    tied = ((acts >= thr).sum(0) > k) & (thr > 0)
    if bool(tied.any()):
        cols = tied.nonzero(as_tuple=True)[0]
        order = torch.sort(acts[:, cols], dim=0, descending=True, stable=True).indices[:k]
        idx[:, cols] = order
    return idx


def _windows(
    acts: torch.Tensor, text: torch.Tensor, idx: torch.Tensor, context: int
) -> torch.Tensor:
    """(d_sae, k, 2 x context + 1): each candidate's feature activation at the tokens from
    `context` before to `context` after it in its own text (NaN past the text's ends)."""
    k, d_sae = idx.shape
    offsets = torch.arange(-context, context + 1, device=acts.device)
    rows = idx[None] + offsets[:, None, None]  # (window, k, d_sae)
    inside = (rows >= 0) & (rows < acts.shape[0])
    rows = rows.clamp(0, acts.shape[0] - 1)
    same = inside & (text[rows] == text[idx][None])
    values = acts.gather(0, rows.reshape(-1, d_sae)).reshape(rows.shape)
    values = torch.where(same, values, torch.nan)
    return values.permute(2, 1, 0).float()
