"""`features --data` on representative families of the zoo (grouped-query, learned positions,
ALiBi, a sliding window, soft-capping with post-norms, state-space, hybrid): right-padded
batches give the per-feature counts, means and top contexts of one text per forward."""

from __future__ import annotations

import numpy as np
import pytest
import zoo
from conftest import make_tokenizer
from test_features import random_dictionary

from tokenprobe.analyses.features import feature_contexts
from tokenprobe.sae import SaeSite

FAMILIES = ["llama", "gpt2", "bloom", "mistral-sliding", "gemma2", "mamba", "jamba"]
TEXTS = [f"the cat number {i} sat on the mat" + " and the dog ran" * (i % 5) for i in range(9)]


@pytest.mark.parametrize("arch", FAMILIES)
def test_batched_equals_one_text_at_a_time(arch: str) -> None:
    lm = zoo.make_causal(arch, make_tokenizer())
    adapter = lm.require_adapter()
    sae = random_dictionary(adapter.width, SaeSite("resid", adapter.n_blocks // 2 + 1))
    run = {"dictionary": sae, "top_examples": 5, "context": 2}
    batched = feature_contexts(lm, TEXTS, batch_tokens=4096, **run)
    alone = feature_contexts(lm, TEXTS, batch_tokens=1, **run)  # every text in its own batch
    assert "checked against one text alone" in batched.meta["batching"]
    a, b = batched.stats, alone.stats
    np.testing.assert_array_equal(a["count"], b["count"])
    assert 0 < a["count"].sum() < len(a) * batched.meta["tokens"]  # some fire, not everywhere
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-4)
    np.testing.assert_allclose(a["max"], b["max"], rtol=1e-4)
    x, y = batched.contexts, alone.contexts
    assert len(x) == len(y) > 0
    np.testing.assert_allclose(x["activation"], y["activation"], rtol=1e-4)
    # the same contexts where no near-tie could swap them
    gap = np.abs(np.diff(y["activation"].to_numpy(), prepend=np.inf, append=np.inf))
    clear = np.minimum(gap[:-1], gap[1:]) > 1e-4 * np.abs(y["activation"]).to_numpy()
    same = (x["text"].to_numpy() == y["text"].to_numpy()) & (x["position"] == y["position"])
    assert same[clear].all()
