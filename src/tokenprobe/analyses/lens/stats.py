"""Per-row statistics of decoded logits (entropy, top-k, target probabilities and ranks), in
float32, at a fraction of the cost of the unembedding that made them.

The logits of a chunk are read a few times, with no log-softmax materialised: one top-k (its
first value is the row's maximum; on a CPU taken from the blocks with the largest maxima),
one shifted copy y = x - max (clamped at -80), one exponential e = exp(y), one product;
entropy = log(sum e) - sum(e * y) / sum(e), a sum of two non-negative terms (no
cancellation). Ranks count `logits > target logit`. On a CPU the rows go 64 at a time, so
every pass after the first reads from the cache; the temporaries live in a `Scratch` reused
block after block (a fresh large tensor each time costs its page faults, as much as the
arithmetic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# rows whose statistics are taken together on a CPU (64 x a 49,152-word vocabulary: 12 MB,
# cache-resident for the passes after the first) and the column blocks of `top_of`
CPU_ROWS = 64
BLOCK = 256  # 0.27x torch.topk's time on 64 x 49,152 logits (1024: 0.45x)
# x - max is clamped here before its exponential: exp(-80) = 1.8e-35 adds nothing a float32
# sum can hold, while arguments below about -87 (underflow; common in middle layers' logits)
# take the vectorised exponential's slow path, 6x slower; a -inf logit's term becomes 0, not NaN
EXP_FLOOR = -80.0


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
    with `diff_ids` (target, foil), the difference of their logits as decoded. On a CPU the
    rows go `CPU_ROWS` at a time, so that the passes after the first read from the cache."""
    x = logits.float()
    work = scratch if scratch is not None else Scratch()
    step = CPU_ROWS if x.device.type == "cpu" else max(x.shape[0], 1)
    parts = [
        _block_stats(x[i : i + step], top_k, target_ids, diff_ids, work)
        for i in range(0, x.shape[0], step)
    ]
    return parts[0] if len(parts) == 1 else cat_stats(parts)


def _block_stats(
    x: torch.Tensor,
    top_k: int,
    target_ids: torch.Tensor,
    diff_ids: torch.Tensor | None,
    work: Scratch,
) -> _Stats:
    """`logit_stats` of float32 rows small enough to stay in the cache."""
    top_vals, top_ids = top_of(x, max(top_k, 1))
    top_max = top_vals[:, :1]  # the row's maximum
    y = torch.sub(x, top_max, out=work.get("y", x, torch.float32)).clamp_(min=EXP_FLOOR)
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
        t_ranks = _ranks(x, t_logits, y)
    else:
        t_probs = x.new_zeros((x.shape[0], 0))
        t_ranks = torch.zeros((x.shape[0], 0), dtype=torch.long, device=x.device)
    if diff_ids is not None and diff_ids.numel():
        diff = x[:, diff_ids[0:1]] - x[:, diff_ids[1:2]]
    else:
        diff = x.new_zeros((x.shape[0], 0))
    return _Stats(entropy, top_ids[:, :top_k], top_probs, t_probs, t_ranks, diff)


def top_of(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.topk(x, k)` of each row (values, ids), on a CPU at about a quarter of its cost for long rows:
    the k largest values lie in the k blocks of `BLOCK` columns with the largest maxima (each
    one's block has a maximum at least as large), so one pass takes the blocks' maxima and the
    top-k runs over those k blocks (ascending, in column order) and the columns past the last
    whole block."""
    n, v = x.shape
    whole = v // BLOCK
    if x.device.type != "cpu" or whole < 4 * k:
        return torch.topk(x, k, dim=-1)
    maxima = x[:, : whole * BLOCK].view(n, whole, BLOCK).amax(dim=-1)
    blocks = torch.topk(maxima, k, dim=-1).indices.sort(dim=-1).values
    cols = (blocks.unsqueeze(-1) * BLOCK + torch.arange(BLOCK, device=x.device)).view(n, -1)
    if whole * BLOCK < v:  # the columns past the last whole block are always candidates
        tail = torch.arange(whole * BLOCK, v, device=x.device).expand(n, -1)
        cols = torch.cat([cols, tail], dim=-1)
    vals, at = torch.topk(torch.gather(x, 1, cols), k, dim=-1)
    return vals, torch.gather(cols, 1, at)


def _ranks(x: torch.Tensor, t_logits: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """Rank of each target (1 = the most likely token; ties count in the target's favour):
    one plus the number of logits above the target's, counted without a sort (as 0.0/1.0 in a
    float32 buffer: exact below 2**24 columns, and a third of a boolean count's time)."""
    counts = [
        torch.gt(x, t_logits[:, j : j + 1], out=buffer).sum(dim=-1)
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
