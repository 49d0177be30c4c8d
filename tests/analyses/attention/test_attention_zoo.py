"""Attention weights on every family of the zoo: what tokenprobe records while the model runs
with its own kernel equals, for every layer and head, what the same model switched to eager
attention returns with `output_attentions=True`; the logits are bitwise those of a forward
without recording; families without softmax attention are refused in one line."""

from __future__ import annotations

import copy

import pytest
import torch
import zoo
from conftest import CORPUS, make_tokenizer

from tokenprobe import TokenprobeError
from tokenprobe.analyses.attention import attention, recording
from tokenprobe.analyses.attention.capture import own_forward, uses_interface

NO_SOFTMAX = {"mamba", "mamba2", "rwkv", "xlstm"}
FAMILIES = sorted({**zoo.CAUSAL, **zoo.SWEEP})
TEXT = CORPUS[0]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def _eager(lm, ids):
    """Per attention layer, in block order, the eager implementation's weights (batch row 0):
    `output_attentions` of the model switched to eager; a hybrid's other mixers (Minimax's
    linear attention) give no (n, n) softmax weights and are left out."""
    model = copy.deepcopy(lm.model)
    model.set_attn_implementation("eager")
    n = ids.shape[1]
    with torch.inference_mode():
        found = model(input_ids=ids, use_cache=False, output_attentions=True).attentions
    return [a[0].float() for a in found if a is not None and tuple(a.shape[-2:]) == (n, n)]


@pytest.mark.parametrize("arch", FAMILIES)
def test_weights_equal_eager_output_attentions_and_logits_are_unchanged(arch, tok):
    lm = zoo.make_causal(arch, tok)
    if arch in NO_SOFTMAX:
        with pytest.raises(TokenprobeError, match="no softmax attention") as info:
            attention(lm, TEXT)
        assert "\n" not in str(info.value)
        return
    ids = lm.tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.inference_mode():
        plain = lm.model(input_ids=ids, use_cache=False).logits
    if uses_interface(lm):
        with recording(lm) as rec, torch.inference_mode():
            logits = lm.model(input_ids=ids, use_cache=False).logits
        assert torch.equal(plain, logits)  # bitwise: the model's own kernel gave the output
        ours = rec.weights
    else:
        ours = own_forward(lm, ids)
    eager = _eager(lm, ids)
    assert len(eager) == len(ours) > 0
    for theirs, layer in zip(eager, sorted(ours), strict=True):
        assert ours[layer].shape == theirs.shape
        torch.testing.assert_close(ours[layer], theirs, atol=1e-5, rtol=0)
    # the analysis itself: its table holds the same numbers, its check passed
    result = attention(lm, TEXT)
    assert result.layers == sorted(ours)
    n = ids.shape[1]
    for theirs, layer in zip(eager, result.layers, strict=True):
        for head in range(theirs.shape[0]):
            dense = torch.from_numpy(result.pattern.dense(layer, head, n))
            lower = torch.tril(torch.ones(n, n, dtype=torch.bool))
            torch.testing.assert_close(dense[lower], theirs[head][lower], atol=1e-5, rtol=0)
    check = result.meta["eager_check"]
    assert check.get("passed") or "skipped" in check
