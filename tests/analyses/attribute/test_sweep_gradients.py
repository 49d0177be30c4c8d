"""Gradient attribution on families whose forward from `inputs_embeds` is not their forward
from ids (tests/zoo.py's SWEEP, the "trust, again" issue): Falcon-H1 applies its
`embedding_multiplier` only to embeddings it looks up itself, Gemma 4 recovers the ids from
the embeddings (and fails on interpolated ones), Gemma 3n and 4 add per-layer inputs looked
up from the ids. Every reference is the model's own forward with ids, its input-embedding
module's output replaced by a forward hook where the reference needs it, never tokenprobe's
code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zoo
from conftest import TEST_DEVICE, make_tokenizer

import tokenprobe

# arch -> (prompt, one-token target, steps). The paths of these tiny random models are rough
# (Gemma 4's integrand has spikes a few hundredths of the path wide), so the step counts are
# what each needs for its completeness gap to fall below 1e-3; the unk baseline (the default)
# as the pad token's embedding row is all zeros in these models.
IG_CASES = {
    "falcon_h1": ("What is the capital of Australia?", " The", 32),
    "gemma4": ("Hello world", "!", 512),
    "gemma4-shared-kv": ("What is the capital of Australia?", " The", 256),
    "gemma3n": ("Tools: hammer, wrench", ",", 64),
}
# a missed embedding multiplier or per-layer input moves f(x) - f(baseline) by 0.3 to 2 here
ATOL = 0.05


@pytest.fixture(scope="module")
def bpe():
    return make_tokenizer()


def _model(arch: str, bpe):
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE)
    with torch.no_grad():
        for module in lm.model.modules():
            if arch == "falcon_h1" and hasattr(module, "chunk_size"):
                # the pure-PyTorch Mamba-2 scan pads every sequence to a whole chunk (256
                # positions): shorter chunks give the same outputs, many times faster
                module.chunk_size = 16
            if arch == "gemma3n" and hasattr(module, "correct_output_scale"):
                # zero at initialisation, which shuts the per-layer inputs off: switched on so
                # that a forward without them (from `inputs_embeds`) differs from one with ids
                scale = module.correct_output_scale
                scale.copy_(torch.linspace(0.5, 1.5, scale.numel()).reshape(scale.shape))
    return lm


def _target_logprobs(
    model, ids: torch.Tensor, n: int, replace: torch.Tensor | None = None
) -> np.ndarray:
    """log p of each target token of `ids` (1, L) after its first n (the prompt), by a plain
    forward with ids; with `replace` (n, D) the embedding module's output at the prompt's
    positions is replaced by it."""

    def hook(_m, _args, out):
        if replace is None:
            return None
        out = out.clone()
        out[0, :n] = replace.to(device=out.device, dtype=out.dtype)
        return out

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[0].float()
    finally:
        handle.remove()
    logp = torch.log_softmax(logits[n - 1 : -1], dim=-1)
    targets = ids[0, n:]
    return logp[torch.arange(len(targets)), targets].cpu().numpy()


@pytest.mark.parametrize("arch", list(IG_CASES))
def test_integrated_gradients_are_complete_for_the_forward_with_ids(arch, bpe):
    """The attributions add up to f(prompt) - f(baseline), both scored by the model's own
    forward with ids; the baseline replaces the embedding module's output at the prompt's
    positions by the unk token's (what the model computes after that module, or from the ids,
    stays as in that forward)."""
    prompt, target, steps = IG_CASES[arch]
    lm = _model(arch, bpe)
    res = tokenprobe.attribute(
        lm, prompt, target=target, method="integrated_gradients", steps=steps
    )
    prompt_ids, target_ids = res.meta["prompt_ids"], res.meta["target_ids"]
    n = len(prompt_ids)
    assert len(target_ids) == 1 and res.scores.shape == (1, n)  # one row, a feature per token
    ids = torch.tensor([prompt_ids + target_ids], device=lm.device)
    with torch.no_grad():
        unk = lm.model.get_input_embeddings()(
            torch.full((1, n), bpe.unk_token_id, device=lm.device)
        )[0]
    diff = _target_logprobs(lm.model, ids, n) - _target_logprobs(lm.model, ids, n, unk)
    np.testing.assert_allclose(res.scores.sum(axis=1), diff, atol=ATOL)
    details = res.meta["method_details"]
    np.testing.assert_allclose(details["score_difference"], diff, atol=1e-4)
    assert details["completeness_gap_max_abs"] < ATOL


def test_saliency_and_input_x_gradient_on_falcon_h1_equal_autograd_by_hand(bpe):
    """Gradients by the model's own forward with ids, the embedding module's output made a
    leaf: Falcon-H1 multiplies it by `embedding_multiplier` after the module."""
    lm = _model("falcon_h1", bpe)
    prompt, target = "Tools: hammer, wrench", ", level"
    sal = tokenprobe.attribute(lm, prompt, target=target, method="saliency")
    ixg = tokenprobe.attribute(lm, prompt, target=target, method="input_x_gradient")
    prompt_ids, target_ids = sal.meta["prompt_ids"], sal.meta["target_ids"]
    n, m = len(prompt_ids), len(target_ids)
    assert m > 1 and sal.scores.shape == ixg.scores.shape == (m, n)
    ids = torch.tensor([prompt_ids + target_ids], device=lm.device)
    leaf: list[torch.Tensor] = []

    def hook(_m, _args, out):
        leaf.append(out.detach().requires_grad_(True))
        return leaf[-1]

    handle = lm.model.get_input_embeddings().register_forward_hook(hook)
    try:
        logits = lm.model(input_ids=ids, use_cache=False).logits[0].float()
    finally:
        handle.remove()
    (x,) = leaf
    logp = torch.log_softmax(logits[n - 1 : -1], dim=-1)
    for r, t in enumerate(target_ids):
        (grad,) = torch.autograd.grad(logp[r, t], x, retain_graph=True)
        g, e = grad[0, :n], x[0, :n].detach()
        np.testing.assert_allclose(
            sal.scores[r], g.abs().sum(-1).cpu().numpy(), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            ixg.scores[r], (g * e).sum(-1).cpu().numpy(), rtol=1e-4, atol=1e-6
        )
