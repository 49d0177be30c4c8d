"""train-sae on every family of the zoo: the states it streams (a forward stopped at the site)
equal the model's own `hidden_states` there bit for bit, a two-step training runs, and its
clean cross-entropy is Hugging Face's own loss; AltUp's multi-stream blocks and the MLP outputs
of families that norm them before adding them are refused in one line."""

from __future__ import annotations

import pytest
import torch
import zoo
from conftest import make_tokenizer, texts

from tokenprobe import TokenprobeError
from tokenprobe.analyses.train_sae import train_sae
from tokenprobe.sae import SaeSite
from tokenprobe.sae.stream import site_states
from tokenprobe.tuned.corpus import pack

FAMILIES = sorted({**zoo.CAUSAL, **zoo.SWEEP})
REFUSED = {"gemma3n": "several streams"}
# transformers lists these families' hidden_states as each block's output (no embeddings
# first): the residual stream after L blocks is hidden_states[L - 1]
OUTPUT_FIRST = {"mamba", "rwkv"}


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.mark.parametrize("arch", FAMILIES)
def test_train_sae_on_every_family(tok, arch: str) -> None:
    lm = zoo.make_causal(arch, tok)
    adapter = lm.require_adapter()
    layer = max(1, adapter.n_blocks // 2)
    run = {"layer": layer, "latents": 24, "k": 3, "seq_len": 16, "batch_size": 2, "tokens": 64}
    if arch in REFUSED:
        with pytest.raises(TokenprobeError, match=REFUSED[arch]):
            train_sae(lm, texts(0, 40), eval_tokens=32, progress=False, **run)
        return
    ids = pack(texts(2, 20), lm.tokenizer, 16, max_sequences=2).to(lm.device)
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    want = hidden.hidden_states[layer - (arch in OUTPUT_FIRST)].float().flatten(0, 1)
    assert torch.equal(site_states(lm, SaeSite("resid", layer), ids), want)
    result = train_sae(lm, texts(0, 40), eval_data=texts(2, 20), eval_tokens=32, progress=False,
                       **run)  # fmt: skip
    q = result.quality
    with torch.no_grad():
        loss = lm.model(input_ids=ids, labels=ids, use_cache=False).loss
    assert q["ce_clean"] == pytest.approx(float(loss), abs=2e-4 * max(1.0, float(loss)))
    assert len(result.to_frame()) == 2 and q["l0"] <= 3


@pytest.mark.parametrize("arch", ["gemma2", "olmo2"])
def test_post_normed_mlp_outputs_are_refused(tok, arch: str) -> None:
    lm = zoo.make_causal(arch, tok)
    with pytest.raises(
        TokenprobeError,
        match=r"sae_site mlp 0: this family norms that output \(post_feedforward_layernorm\)",
    ):
        train_sae(lm, texts(0, 40), sae_site="mlp 0", latents=8, k=2, seq_len=16, batch_size=2,
                  tokens=32, eval_tokens=0, progress=False)  # fmt: skip
