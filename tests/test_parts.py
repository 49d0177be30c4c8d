"""A block's attention heads as `model.parts` finds them, on every family of the zoo: the head
count and width the config says, and the heads' slices through the output projection adding up
to the attention module's own output in a real forward pass."""

from __future__ import annotations

import pytest
import torch
import zoo
from conftest import make_tokenizer

from tokenprobe import TokenprobeError
from tokenprobe.model import text_config
from tokenprobe.model.parts import find_heads, linear_weight

NO_HEADS = {"mamba", "mamba2", "rwkv", "xlstm"}  # no softmax attention
ARCHS = [a for a in [*zoo.CAUSAL, *zoo.SWEEP] if a not in NO_HEADS]


@pytest.fixture(scope="module")
def bpe():
    return make_tokenizer()


@pytest.mark.parametrize("arch", ARCHS)
def test_heads_slices_add_up_to_the_attention_output(arch, bpe):
    lm = zoo.make_causal(arch, bpe)
    layouts = [h for h in find_heads(lm.require_adapter()) if h is not None]
    assert layouts
    config = text_config(lm.model.config)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for h in layouts:
        assert h.heads == getattr(config, "num_attention_heads", h.heads)
        assert h.heads % h.kv_heads == 0 and h.heads * h.head_dim == linear_weight(h.out).shape[1]

        def keep(_m, args, out, b=h.block):
            seen[b] = (args[0].detach(), out.detach())

        handles.append(h.out.register_forward_hook(keep))
    ids = torch.tensor([bpe.encode("the cat sat on the mat and then it ran away")])
    try:
        with torch.no_grad():
            lm.model(ids)
    finally:
        for handle in handles:
            handle.remove()
    for h in layouts:
        inner, out = seen[h.block]
        weight = h.out_weight().detach()
        parts = [inner[..., h.head_slice(k)] @ weight[:, h.head_slice(k)].T for k in range(h.heads)]
        bias = h.out_bias()
        total = torch.stack(parts).sum(0) + (0 if bias is None else bias.detach())
        assert torch.allclose(total, out, atol=1e-4 * max(1.0, float(out.abs().max()))), h.path
        assert float(torch.stack(parts).abs().amax(dim=(1, 2, 3)).min()) > 1e-3  # every head counts


@pytest.mark.parametrize("arch", sorted(NO_HEADS))
def test_models_without_softmax_attention_are_refused_in_one_line(arch, bpe):
    lm = zoo.make_causal(arch, bpe)
    with pytest.raises(TokenprobeError, match="no attention heads") as err:
        find_heads(lm.require_adapter())
    assert "\n" not in str(err.value)


def test_grouped_query_and_multi_query_head_counts(bpe):
    counts = {}
    for arch in ("llama", "gpt_bigcode", "falcon", "falcon-alibi", "gpt2"):
        h = next(x for x in find_heads(zoo.make_causal(arch, bpe).require_adapter()) if x)
        counts[arch] = (h.heads, h.kv_heads)
    config_kv = {"llama": 2, "falcon": 2, "gpt2": 4}
    for arch, kv in config_kv.items():
        assert counts[arch] == (zoo.HEADS, kv)
    assert counts["gpt_bigcode"][1] == 1 and counts["falcon-alibi"][1] == 1  # multi-query
