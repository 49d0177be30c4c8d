"""The lens's per-row statistics against float64 log-softmax, a sort and torch.topk."""

from __future__ import annotations

import torch

from tokenprobe.analyses.lens.stats import (
    BLOCK,
    CPU_ROWS,
    Scratch,
    logit_stats,
    stats_in_chunks,
    top_of,
)


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
    entropy = torch.special.entr(logp.exp()).sum(-1)  # 0 log 0 = 0 (a -inf logit)
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


def test_blockwise_top_k_and_ranks_on_long_rows_equal_the_plain_ones(monkeypatch):
    """Rows long enough for `top_of`'s blocks (and a part block past them): top-k values and
    ids equal torch.topk's, the top tokens sitting in one block, in the part block, or tied
    across blocks; ranks and probabilities equal the float64 reference."""
    g = torch.Generator().manual_seed(1)
    v = 30 * BLOCK + 77  # 30 whole blocks: at least 4 k of them, so the blocks are used
    x = torch.randn(7, v, generator=g) * 3
    x[0, 5 : 5 + 6] = torch.linspace(30, 20, 6)  # all of the top in the first block
    x[1, -5:] = 40.0 + torch.arange(5.0)  # the top in the part block past the whole blocks
    x[2, [100, 2 * BLOCK + 1, 28 * BLOCK + 3, v - 1]] = 25.0  # tied across blocks
    x[3] = x[3].round()  # many ties
    x[4, 3 * BLOCK + 7] = float("-inf")
    real_topk = torch.topk
    for k in (1, 2, 5):
        widths: list[int] = []

        def spy(t, *a, _widths=widths, **kw):
            _widths.append(t.shape[-1])
            return real_topk(t, *a, **kw)

        monkeypatch.setattr(torch, "topk", spy)
        vals, ids = top_of(x, k)
        monkeypatch.setattr(torch, "topk", real_topk)
        assert widths and max(widths) < v // 4, widths  # the blocks' maxima, the candidates
        ref = torch.topk(x, k, dim=-1)
        assert torch.equal(vals, ref.values), k
        assert torch.equal(x.gather(1, ids), ref.values) and all(
            len(set(r.tolist())) == k for r in ids
        )
        untied = [0, 1, 4, 5, 6]
        assert torch.equal(ids[untied], ref.indices[untied]), k
    targets = [9, 4 * BLOCK + 1, v - 3]
    st = logit_stats(x, 5, torch.tensor(targets))
    entropy, top_probs, t_probs, ranks = _reference(x, targets, 5)
    torch.testing.assert_close(st.entropy.double(), entropy, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(st.target_probs.double(), t_probs, atol=1e-6, rtol=1e-5)
    assert torch.equal(st.target_ranks, ranks)
    # more rows than one CPU block: the blocks' statistics are put back in order
    many = x.repeat(CPU_ROWS // 7 + 2, 1)
    whole = logit_stats(many, 5, torch.tensor(targets))
    assert torch.equal(whole.target_ranks, ranks.repeat(CPU_ROWS // 7 + 2, 1))
    assert torch.equal(whole.top_ids[: len(x)], st.top_ids)
