"""Attribution's perturbed prompts continue from the unperturbed prompt's key/value cache on
every causal family of the conformance zoo: ablation equals one full forward of each ablated
prompt by hand, occlusion (batched and one prompt at a time) its run with every prompt whole
(Shapley, which scores prompts the same way: test_attribution_prefix.py); the families whose cache cannot continue (state-space and hybrid
layers) run whole prompts and say why."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import zoo
from conftest import TEST_DEVICE, make_tokenizer

import tokenprobe
from tokenprobe.errors import TokenprobeWarning
from tokenprobe.prefix import CONTINUED

# long enough that continuing pays by the cost model (each copy keeps its first positions)
PROMPT = "the hammer was fine and the saw was sharp, but the drill broke on the first day"
TARGET = " and then"
WHOLE = {"mamba", "mamba2", "jamba"}  # their caches hold a state, not every position's keys


@pytest.fixture(scope="module")
def bpe():
    return make_tokenizer()


def _logprobs(lm, prompt: list[int], target: list[int]) -> np.ndarray:
    """log p(target token j | prompt, target[:j]) by one full forward alone, no cache."""
    ids = torch.tensor([prompt + target], device=lm.device)
    with torch.no_grad():
        logits = lm.model(input_ids=ids, use_cache=False).logits[0].double()
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return logp[torch.arange(len(target)), torch.tensor(target)].cpu().numpy()


@pytest.mark.parametrize("arch", sorted(zoo.CAUSAL))
def test_every_continued_prompt_equals_its_full_forward(arch, bpe):
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tokenprobe.attribute(lm, PROMPT, target=TARGET, method="ablation", progress=False)
        ids, target = res.meta["prompt_ids"], res.meta["target_ids"]
        full = _logprobs(lm, ids, target)
        want = np.stack(
            [full - _logprobs(lm, ids[:i] + ids[i + 1 :], target) for i in range(len(ids))], 1
        )
        assert np.abs(want).max() > 0.05  # the prompts differ: equality means something
        np.testing.assert_allclose(res.scores, want, atol=3e-4, rtol=1e-3)
        notes = [("ablation", res.meta["earlier_positions"])]
        whole = tokenprobe.attribute(
            lm, PROMPT, target=TARGET, method="occlusion", reuse_prefix=False
        )
        assert whole.meta["earlier_positions"].startswith("recomputed: the prefix cache")
        for budget in (4096, 1):
            got = tokenprobe.attribute(
                lm, PROMPT, target=TARGET, method="occlusion", batch_tokens=budget
            )
            np.testing.assert_allclose(got.scores, whole.scores, atol=3e-4, rtol=1e-3)
            notes.append(("occlusion", got.meta["earlier_positions"]))
    for method, note in notes:
        if arch in WHOLE:
            assert note.startswith("recomputed: "), note
        else:
            assert note == CONTINUED, (method, note)
    said = [str(w.message) for w in caught if issubclass(w.category, TokenprobeWarning)]
    fell_back = [m for m in said if "earlier positions of each perturbed copy" in m]
    assert bool(fell_back) == (arch in WHOLE), fell_back
