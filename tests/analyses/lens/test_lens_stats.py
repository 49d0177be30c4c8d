"""The lens's per-row statistics against float64 log-softmax, a sort and torch.topk."""

from __future__ import annotations

import torch

from tokenprobe.analyses.lens.stats import Scratch, logit_stats, stats_in_chunks


def _logits() -> torch.Tensor:
    """Rows of every kind: spread, peaked (entropy near 0), flat, large, with ties."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 300, generator=g) * 4
    x[1, 17] = 80.0  # one token takes all the mass
    x[2] = 0.5  # uniform: every token ties
    x[3] *= 40  # large logits
    x[4, :5] = x[4, 9]  # the target ties with other tokens
    x[5] = x[5].round()  # many ties
    return x


def _reference(x: torch.Tensor, targets: list[int], k: int):
    logp = torch.log_softmax(x.double(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    t = torch.tensor(targets)
    ranks = torch.stack(
        [(x[i] > x[i, j]).sum() + 1 for i in range(x.shape[0]) for j in targets]
    ).reshape(x.shape[0], len(targets))
    return entropy, logp.exp().gather(1, x.topk(k, dim=-1).indices), logp.exp()[:, t], ranks


def test_stats_match_float64_log_softmax():
    x, targets = _logits(), [9, 17, 0]
    st = logit_stats(x, 4, torch.tensor(targets), torch.tensor([9, 17]))
    entropy, top_probs, t_probs, ranks = _reference(x, targets, 4)
    torch.testing.assert_close(st.entropy.double(), entropy, atol=2e-5, rtol=1e-5)
    assert (
        float(st.entropy[1]) < 1e-6
        and abs(float(st.entropy[2]) - torch.log(torch.tensor(300.0))) < 1e-5
    )
    assert torch.equal(st.top_ids, x.topk(4, dim=-1).indices)
    torch.testing.assert_close(st.top_probs.double(), top_probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(st.target_probs.double(), t_probs, atol=1e-6, rtol=1e-5)
    assert torch.equal(st.target_ranks, ranks)
    assert st.target_ranks.dtype == torch.long and int(st.target_ranks[2, 0]) == 1  # all tie
    torch.testing.assert_close(st.logit_diff[:, 0], x[:, 9] - x[:, 17])


def test_stats_without_targets_are_empty_columns():
    st = logit_stats(_logits(), 3, torch.tensor([], dtype=torch.long))
    assert st.target_probs.shape == (12, 0) and st.target_ranks.shape == (12, 0)
    assert st.logit_diff.shape == (12, 0) and st.top_ids.shape == (12, 3)


def test_chunks_reusing_scratch_equal_one_pass():
    """Work buffers are reused (and grown) across chunks: no chunk sees another's values."""
    x, ids = _logits(), (torch.tensor([9, 3]), torch.tensor([9, 3]))
    whole = logit_stats(x, 5, *ids)
    scratch = Scratch()
    for chunk in (5, 12, 7, 1):
        parts = stats_in_chunks(lambda r: r, x, chunk, 5, ids, scratch)
        for f in whole.__dataclass_fields__:
            assert torch.equal(getattr(parts, f), getattr(whole, f)), (chunk, f)
