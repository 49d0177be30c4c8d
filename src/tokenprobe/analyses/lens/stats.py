"""Per-row statistics of decoded logits (entropy, top-k, target probabilities and ranks), in
float32, at a fraction of the cost of the unembedding that made them.

The logits of a chunk are read a few times, with no log-softmax materialised: one top-k (its
first value is the row's maximum), one shifted copy y = x - max, one exponential e = exp(y),
one product; entropy = log(sum e) - sum(e * y) / sum(e), a sum of two non-negative terms (no
cancellation). Ranks count `logits > target logit`. The two (rows, vocabulary) temporaries
live in a `Scratch` reused chunk after chunk: a fresh large tensor per chunk costs its page
faults every time, as much as the arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class _Stats:
    entropy: torch.Tensor  # (n,)
    top_ids: torch.Tensor  # (n, k)
    top_probs: torch.Tensor  # (n, k)
    target_probs: torch.Tensor  # (n, t)
    target_ranks: torch.Tensor  # (n, t)
    logit_diff: torch.Tensor  # (n, 1): logit(target) - logit(foil); (n, 0) without a foil


class Scratch:
    """Work buffers for `logit_stats`, kept between chunks (grown when a chunk is larger)."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A buffer of `like`'s shape (on its device) and `dtype`; contents undefined."""
        n, v = like.shape
        buf = self.buffers.get(name)
        if buf is None or buf.shape[0] < n or buf.shape[1] != v or buf.device != like.device:
            buf = torch.empty((n, v), dtype=dtype, device=like.device)
            self.buffers[name] = buf
        return buf[:n]


def logit_stats(
    logits: torch.Tensor,
    top_k: int,
    target_ids: torch.Tensor,
    diff_ids: torch.Tensor | None = None,
    scratch: Scratch | None = None,
) -> _Stats:
    """Entropy (nats), top-k and target probability/rank of each row of logits, in float32;
    with `diff_ids` (target, foil), the difference of their logits as decoded."""
    x = logits.float()
    work = scratch if scratch is not None else Scratch()
    top_vals, top_ids = torch.topk(x, max(top_k, 1), dim=-1)
    top_max = top_vals[:, :1]  # the row's maximum
    y = torch.sub(x, top_max, out=work.get("y", x, torch.float32))
    e = torch.exp(y, out=work.get("e", x, torch.float32))
    total = e.sum(dim=-1, keepdim=True)
    mean_y = y.mul_(e).sum(dim=-1, keepdim=True) / total  # E[x - max] <= 0
    log_total = total.log()
    entropy = (log_total - mean_y).squeeze(-1)
    lse = top_max + log_total  # torch.logsumexp's formula: max + log(sum(exp(x - max)))
    top_probs = (top_vals[:, :top_k] - lse).exp()
    if target_ids.numel():
        t_logits = x[:, target_ids]  # (n, t)
        t_probs = (t_logits - lse).exp()
        t_ranks = _ranks(x, t_logits, work)
    else:
        t_probs = x.new_zeros((x.shape[0], 0))
        t_ranks = torch.zeros((x.shape[0], 0), dtype=torch.long, device=x.device)
    if diff_ids is not None and diff_ids.numel():
        diff = x[:, diff_ids[0:1]] - x[:, diff_ids[1:2]]
    else:
        diff = x.new_zeros((x.shape[0], 0))
    return _Stats(entropy, top_ids[:, :top_k], top_probs, t_probs, t_ranks, diff)


def _ranks(x: torch.Tensor, t_logits: torch.Tensor, work: Scratch) -> torch.Tensor:
    """Rank of each target (1 = the most likely token; ties count in the target's favour):
    one plus the number of logits above the target's, counted without a sort."""
    above = work.get("above", x, torch.bool)
    counts = [
        torch.gt(x, t_logits[:, j : j + 1], out=above).sum(dim=-1, dtype=torch.int32)
        for j in range(t_logits.shape[1])
    ]
    return torch.stack(counts, dim=-1).long() + 1


def cat_stats(parts: list[_Stats]) -> _Stats:
    """The statistics of several chunks, rows in order."""
    return _Stats(*(torch.cat([getattr(p, f) for p in parts]) for f in _Stats.__dataclass_fields__))


def stats_in_chunks(
    decode: Callable[[torch.Tensor], torch.Tensor],
    rows: torch.Tensor,
    chunk: int,
    top_k: int,
    ids: tuple[torch.Tensor, torch.Tensor],
    scratch: Scratch | None = None,
) -> _Stats:
    """`logit_stats` of `decode(rows)`, `chunk` rows decoded at a time; `ids`: the target ids
    and the (target, foil) pair of the logit difference (empty without a foil)."""
    work = scratch if scratch is not None else Scratch()
    parts = [
        logit_stats(decode(rows[i : i + chunk]), top_k, *ids, scratch=work)
        for i in range(0, rows.shape[0], chunk)
    ]
    return cat_stats(parts)
