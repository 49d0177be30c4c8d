"""Logit attribution against numbers it did not produce: a bfloat16 model's parts against the
float32 parts of the same weights (cast), and each head's slice of the output projection's
input against softmax attention weights times V computed here from the model's own value
projection."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import zoo
from conftest import make_tokenizer

from tokenprobe import LoadedModel
from tokenprobe.analyses.logit_attribution import logit_attribution
from tokenprobe.model.parts import find_heads

PROMPT = "What is the capital of Australia? The capital is"
TARGET, FOIL = " Canberra", " Sydney"
TOP = ("embed", "attn", "mlp", "mixer", "bias")
# bfloat16 keeps 8 significant bits (unit roundoff 2^-8 = 3.9e-3); the two forward passes of
# the same weights differ by that rounding, carried through two blocks. A part may differ from
# its float32 value by 1.5 roundoffs of its position's scale (the sum of the sizes of the
# position's parts); float32 vs bfloat16 of the correct read-out stays within 0.003 here,
# a LayerNorm frozen as an RMSNorm (no centring) is off by 0.01.
HALF_BOUND = 6e-3


@pytest.fixture(scope="module")
def bpe():
    return make_tokenizer()


def _stressed(arch: str, bpe):
    """The zoo model with its norms' weights and biases moved off 1 and 0; GPT-2's last MLP
    bias writes a +-60 pair of channels, so the final LayerNorm's input has a mean near 0
    next to two outliers: an RMSNorm form then fits it within half precision's tolerance."""
    lm = zoo.make_causal(arch, bpe)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            owner = name.split(".")[-2] if "." in name else ""
            if p.dim() == 1 and ("norm" in name or owner.startswith("ln")):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
        if arch == "gpt2":
            bias = lm.model.transformer.h[-1].mlp.c_proj.bias
            bias[0] += 60.0
            bias[1] -= 60.0
    return lm


def _run(lm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return logit_attribution(lm, PROMPT, target=TARGET, foil=FOIL)


@pytest.mark.parametrize("arch", ["gpt2", "gemma2", "llama"])
def test_half_precision_parts_match_float32_of_the_same_weights(arch, bpe):
    lm = _stressed(arch, bpe)
    half = copy.deepcopy(lm.model).to(torch.bfloat16)
    full = copy.deepcopy(half).to(torch.float32)  # the very same (bfloat16) weights
    got = _run(LoadedModel.wrap(half, lm.tokenizer, name=f"tiny-{arch}-bf16")).frame
    want = _run(LoadedModel.wrap(full, lm.tokenizer, name=f"tiny-{arch}-f32")).frame
    keys = ["position", "layer", "component", "head"]
    assert got[keys].equals(want[keys])
    top = want[want["component"].isin(TOP)]
    scale = top["value"].abs().groupby(top["position"]).sum().clip(lower=1.0)
    bound = HALF_BOUND * scale.loc[want["position"]].to_numpy()
    diff = np.abs(got["value"].to_numpy() - want["value"].to_numpy())
    worst = int(np.argmax(diff / bound))
    assert diff[worst] <= bound[worst], want.iloc[worst].to_dict()


# the modules named here, not found by the code under test: (attention, value source, out)
HEAD_MODULES = {
    "llama": ("self_attn", "self_attn.v_proj", "self_attn.o_proj"),
    "gpt2": ("attn", "attn.c_attn", "attn.c_proj"),  # Conv1D, q k v side by side
}


@pytest.mark.parametrize("arch", sorted(HEAD_MODULES))
def test_each_heads_slice_is_its_softmax_weights_times_its_values(arch, bpe):
    lm = zoo.make_causal(arch, bpe)
    lm.model.set_attn_implementation("eager")
    config = lm.model.config
    width, heads = config.hidden_size, config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = width // heads
    _, v_name, out_name = HEAD_MODULES[arch]
    blocks = lm.require_adapter().blocks
    kept: dict = {}
    handles = []
    for b, block in enumerate(blocks):
        v_mod, out = block.get_submodule(v_name), block.get_submodule(out_name)
        handles.append(
            v_mod.register_forward_hook(lambda _m, _a, o, b=b: kept.update({(b, "v"): o[0]}))
        )
        handles.append(
            out.register_forward_pre_hook(lambda _m, a, b=b: kept.update({(b, "z"): a[0][0]}))
        )
    ids = torch.tensor([lm.tokenizer(PROMPT)["input_ids"]])
    try:
        with torch.no_grad():
            weights = lm.model(ids, output_attentions=True).attentions
    finally:
        for h in handles:
            h.remove()
    layouts = find_heads(lm.require_adapter())
    assert arch != "llama" or kv < heads  # grouped-query: a wrong group would change V
    for b, layout in enumerate(layouts):
        assert layout is not None and layout.out is blocks[b].get_submodule(out_name)
        assert (layout.heads, layout.kv_heads) == (heads, kv)
        v = kept[(b, "v")]
        v = v[:, 2 * width :] if arch == "gpt2" else v
        v = v.reshape(v.shape[0], kv, head_dim)
        z = kept[(b, "z")]
        expected = [weights[b][0, h] @ v[:, h // (heads // kv)] for h in range(heads)]
        apart = min(
            float((expected[i] - expected[j]).abs().max())
            for i in range(heads)
            for j in range(i + 1, heads)
        )
        assert apart > 1e-2  # the heads differ: a wrong order would fail
        for h in range(heads):
            tol = 1e-5 * max(1.0, float(expected[h].abs().max()))
            assert torch.allclose(z[:, layout.head_slice(h)], expected[h], atol=tol), (b, h)


def test_post_norm_parts_hold_at_every_position_next_to_an_outlier_position(bpe):
    """Gemma 2 with one prompt token's embedding x 1e4: one limit over all positions would let
    the raw branch outputs (not the post-norms') pass the block check; each position's own
    logit, from the model's own logits, tells them apart."""
    lm = zoo.make_causal("gemma2", bpe)
    ids = lm.tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        lm.model.get_input_embeddings().weight[ids[2]] *= 1e4
    result = _run(lm)
    pair = [result.meta["target_id"], result.meta["foil_id"]]
    raw = {}
    head = lm.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, _a, o: raw.update(out=o[0].double()))
    try:
        with torch.no_grad():
            lm.model(torch.tensor([result.meta["token_ids"]]))
    finally:
        handle.remove()
    own = (raw["out"][:, pair[0]] - raw["out"][:, pair[1]]).numpy()
    frame = result.frame
    top = frame[frame["component"].isin(TOP)]
    scale = top["value"].abs().groupby(top["position"]).sum().clip(lower=1.0).to_numpy()
    assert np.all(np.abs(np.array(result.total()) - own) <= 1e-4 * scale)
