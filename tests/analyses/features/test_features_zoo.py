"""`features` on every family of the zoo: the latents equal the textbook encoding of the model's
own `hidden_states` (an autoencoder on the residual stream at the middle layer), removing a kept
feature equals one plain forward with the state edited by a hook written here, and one row per
batch equals the default batches; AltUp's multi-stream blocks are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zoo
from conftest import make_tokenizer
from test_features import random_dictionary

from tokenprobe import TokenprobeError
from tokenprobe.analyses.features import features
from tokenprobe.sae import SaeSite

FAMILIES = sorted({**zoo.CAUSAL, **zoo.SWEEP})
REFUSED = {"gemma3n": "several streams"}
# transformers lists these families' hidden_states as each block's output (no embeddings
# first): the residual stream after L blocks is hidden_states[L - 1]
OUTPUT_FIRST = {"mamba", "rwkv"}
PROMPT = "the quick brown fox jumps over the lazy dog"
TARGET = " the"


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def _last_score(lm, ids: torch.Tensor, block: torch.nn.Module | None, edit) -> float:
    """log p(target) at the last position of one plain forward, `block`'s output edited."""
    handle = None
    if block is not None:

        def hook(_m, _a, out):
            first = out[0] if isinstance(out, tuple) else out
            new = edit(first.clone())
            return (new, *out[1:]) if isinstance(out, tuple) else new

        handle = block.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=ids, use_cache=False).logits[0, -1].double()
    finally:
        if handle is not None:
            handle.remove()
    t = lm.tokenizer.encode(TARGET, add_special_tokens=False)[0]
    return float(torch.log_softmax(logits, -1)[t])


@pytest.mark.parametrize("arch", ["gemma2", "olmo2", "glm4"])
def test_post_normed_outputs_are_refused(tok, arch: str) -> None:
    lm = zoo.make_causal(arch, tok)
    width = lm.require_adapter().width
    for site in (SaeSite("mlp", 0), SaeSite("attn", 0)):
        sae = random_dictionary(width, site, latents=16)
        with pytest.raises(TokenprobeError, match="norms that output"):
            features(lm, PROMPT, dictionary=sae)


@pytest.mark.parametrize("arch", FAMILIES)
def test_features_on_every_family(tok, arch: str) -> None:
    lm = zoo.make_causal(arch, tok)
    adapter = lm.require_adapter()
    layer = max(1, adapter.n_blocks // 2)
    sae = random_dictionary(adapter.width, SaeSite("resid", layer), latents=48)
    if arch in REFUSED:
        with pytest.raises(TokenprobeError, match=REFUSED[arch]):
            features(lm, PROMPT, dictionary=sae)
        return
    res = features(lm, PROMPT, dictionary=sae, target=TARGET, top=1)
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)], device=lm.device)
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    x = hidden.hidden_states[layer - (arch in OUTPUT_FIRST)][0].float()
    acts = torch.relu((x - sae.b_dec) @ sae.w_enc + sae.b_enc)
    k = res.kept
    assert len(k.feature)
    np.testing.assert_allclose(
        k.activation, acts[k.position, k.feature].numpy(), rtol=1e-3, atol=1e-5
    )
    # the largest effect, by one plain forward with that feature's row taken from the state
    i = int(np.nanargmax(np.abs(k.ablation)))
    p, f = int(k.position[i]), int(k.feature[i])
    block = adapter.blocks[layer - 1]

    def remove(s):
        s[0, p] -= acts[p, f] * sae.w_dec[f]
        return s

    base = _last_score(lm, ids, None, None)
    want = base - _last_score(lm, ids, block, remove)
    scale = max(1.0, abs(want))
    assert k.ablation[i] == pytest.approx(want, abs=2e-4 * scale)
    one = features(lm, PROMPT, dictionary=sae, target=TARGET, top=1, batch_tokens=ids.shape[1])
    np.testing.assert_allclose(one.kept.ablation, k.ablation, atol=1e-4 * scale)
