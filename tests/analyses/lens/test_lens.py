"""The lens against a by-hand computation from output_hidden_states, on five tiny families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tokenprobe
from tokenprobe import logit_lens

# The reference names each family's final norm and head by hand: it must not share the
# adapter's discovery logic, or a wrong discovery would agree with itself.
HAND = {
    "LlamaForCausalLM": ("model.norm", "lm_head"),
    "Qwen2ForCausalLM": ("model.norm", "lm_head"),
    "Gemma2ForCausalLM": ("model.norm", "lm_head"),
    "GPT2LMHeadModel": ("transformer.ln_f", "lm_head"),
    "GPTNeoXForCausalLM": ("gpt_neox.final_layer_norm", "lm_head"),
}

PROMPT = "What is the capital of Australia? The capital is"


def by_hand(model, ids: list[int], k: int, targets: list[int], softcap: bool = True):
    """Entropy, top-k and target probabilities of every row, the slow obvious way."""
    norm_name, head_name = HAND[type(model).__name__]
    norm, head = model.get_submodule(norm_name), model.get_submodule(head_name)
    cap = getattr(model.config, "final_logit_softcapping", None) if softcap else None
    with torch.no_grad():
        out = model(torch.tensor([ids], device=model.device), output_hidden_states=True)
        rows = []
        for h in out.hidden_states[:-1]:
            logits = head(norm(h[0]))
            if cap:
                logits = torch.tanh(logits / cap) * cap
            rows.append(logits)
        rows.append(out.logits[0])
    logits = torch.stack(rows).cpu()  # (L+1, T, V)
    ent = torch.distributions.Categorical(logits=logits).entropy()
    probs = torch.softmax(logits, dim=-1)
    top_p, top_i = probs.topk(k, dim=-1)
    ranks = (
        probs.argsort(dim=-1, descending=True) == torch.tensor(targets)[:, None, None, None]
    ).float().argmax(-1) + 1
    return (
        ent.numpy(),
        top_i.numpy(),
        top_p.numpy(),
        probs[..., targets].numpy(),
        ranks.permute(1, 2, 0).numpy(),
        logits,
    )


def test_lens_matches_by_hand(tiny):
    targets = [" Canberra", " Sydney"]
    res = logit_lens(tiny, PROMPT, targets=targets, top_k=4)
    tids = [tiny.tokenizer.encode(t, add_special_tokens=False)[0] for t in targets]
    ent, top_i, top_p, t_p, t_r, _ = by_hand(tiny.model, res.token_ids, 4, tids)
    n_blocks = tiny.model.config.num_hidden_layers
    assert res.entropy.shape == (n_blocks + 1, len(res.token_ids))
    assert res.layer_labels[-1] == "output" and res.layer_labels[0] == "0"
    np.testing.assert_allclose(res.entropy, ent, atol=1e-5, rtol=0)
    np.testing.assert_allclose(res.top_probs, top_p, atol=1e-5, rtol=0)
    # ids can swap only where two probabilities tie
    same = res.top_ids == top_i
    assert same.mean() > 0.999
    np.testing.assert_allclose(res.target_probs, t_p, atol=1e-6, rtol=1e-4)
    np.testing.assert_array_equal(res.target_ranks, t_r)
    assert res.meta["output_check"] == "ok"


def test_output_row_is_the_model_logits(tiny):
    res = logit_lens(tiny, PROMPT, top_k=3)
    with torch.no_grad():
        logits = tiny.model(torch.tensor([res.token_ids], device=tiny.device)).logits[0].cpu()
    probs = torch.softmax(logits.float(), dim=-1)
    np.testing.assert_allclose(res.top_probs[-1], probs.topk(3, dim=-1).values.numpy(), atol=1e-6)
    np.testing.assert_array_equal(res.top_ids[-1, :, 0], logits.argmax(-1).numpy())
    ent = torch.distributions.Categorical(logits=logits).entropy().numpy()
    np.testing.assert_allclose(res.entropy[-1], ent, atol=1e-5)


def test_softcapping_is_applied(tokenizer):
    from conftest import make_model

    lm = make_model("gemma2", tokenizer)
    assert lm.adapter.softcap == 2.0
    res = logit_lens(lm, PROMPT)
    ent_cap = by_hand(lm.model, res.token_ids, 5, [0])[0]
    ent_raw = by_hand(lm.model, res.token_ids, 5, [0], softcap=False)[0]
    np.testing.assert_allclose(res.entropy, ent_cap, atol=1e-5)
    # the cap changes the intermediate rows a lot, so the test above can tell them apart
    assert np.abs(res.entropy[:-1] - ent_raw[:-1]).max() > 0.1


def test_adapter_finds_parts_by_convention(tiny):
    ad = tiny.adapter
    norm_name, head_name = HAND[type(tiny.model).__name__]
    assert ad.final_norm is tiny.model.get_submodule(norm_name)
    assert ad.unembed is tiny.model.get_submodule(head_name)
    assert ad.n_blocks == tiny.model.config.num_hidden_layers


def test_adapter_error_names_the_class():
    from torch import nn

    class Config:
        num_hidden_layers = 2

    class Headless(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = Config()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10)

        def get_input_embeddings(self):
            return self.emb

        def get_output_embeddings(self):
            return self.head

    with pytest.raises(
        tokenprobe.TokenprobeError, match="cannot find the transformer blocks of Headless"
    ):
        tokenprobe.Adapter.from_model(Headless())


def test_batched_equals_one_at_a_time(llama):
    prompts = [
        "Hello world!",
        PROMPT,
        "Tools: hammer, wrench, level, pliers. Fruits: orange, peach",
    ]
    together = logit_lens(llama, prompts, targets=[" the"], batch_tokens=4096)
    tiny_batches = logit_lens(llama, prompts, targets=[" the"], batch_tokens=8)
    for p, a, b in zip(prompts, together, tiny_batches, strict=True):
        alone = logit_lens(llama, p, targets=[" the"])
        for r in (a, b):
            assert r.tokens == alone.tokens
            np.testing.assert_allclose(r.entropy, alone.entropy, atol=2e-5)
            np.testing.assert_allclose(r.target_probs, alone.target_probs, atol=1e-6, rtol=1e-4)


def test_memory_budget_chunks_give_the_same_numbers(llama):
    big = logit_lens(llama, PROMPT, memory_mb=512)
    small = logit_lens(llama, PROMPT, memory_mb=0.01)  # one row of logits at a time
    np.testing.assert_allclose(small.entropy, big.entropy, atol=1e-5)
    np.testing.assert_array_equal(small.top_ids, big.top_ids)
    with pytest.raises(tokenprobe.TokenprobeError, match="memory_mb must be positive"):
        logit_lens(llama, PROMPT, memory_mb=0)


def test_multi_token_target_warns_and_uses_first_token(llama):
    with pytest.warns(UserWarning, match="tracks its first token"):
        res = logit_lens(llama, PROMPT, targets=["Canberra-Queanbeyan"])
    assert res.target_ids == [
        llama.tokenizer.encode("Canberra-Queanbeyan", add_special_tokens=False)[0]
    ]


def test_frame_roundtrip_and_save_load(llama, tmp_path):
    res = logit_lens(llama, PROMPT, chat=True, dummy=3, targets=[" Canberra"])
    written = res.save(tmp_path / "lens", formats=["png", "svg"])
    assert {"table", "meta", "png", "svg"} <= set(written)
    back = tokenprobe.load_result(tmp_path / "lens")
    assert isinstance(back, tokenprobe.LensResult)
    assert back.tokens == res.tokens and back.token_ids == res.token_ids
    assert back.marked == res.marked
    np.testing.assert_array_equal(back.entropy, res.entropy)
    np.testing.assert_array_equal(back.top_ids, res.top_ids)
    np.testing.assert_array_equal(back.top_tokens, res.top_tokens)
    np.testing.assert_array_equal(back.target_ranks, res.target_ranks)
    frame = back.to_frame()
    for col in [
        "layer",
        "position",
        "token",
        "entropy",
        "top1",
        "top1_prob",
        "prob[ Canberra]",
        "rank[ Canberra]",
    ]:
        assert col in frame.columns
    assert len(frame) == res.n_rows * res.n_positions
    assert back.meta["model"]["name"] == "tiny-llama" and back.meta["versions"]["tokenprobe"]


def test_save_refuses_to_overwrite(llama, tmp_path):
    res = logit_lens(llama, PROMPT)
    res.save(tmp_path, formats=[])
    with pytest.raises(tokenprobe.TokenprobeError, match="pass overwrite"):
        res.save(tmp_path, formats=[])
    res.save(tmp_path, formats=[], overwrite=True)


def test_rows_are_decoded_with_the_head_after_a_new_marker_grew_it(llama):
    """A dummy marker the tokenizer lacks grows the embedding and the head by one row; every
    row is decoded with the grown head, as the model decodes its own output (before the move
    into analyses/lens/, the inner rows used the head from before the marker was added)."""
    vocab = llama.model.get_output_embeddings().weight.shape[0]
    res = logit_lens(llama, "The cat sat on the mat", dummy=2)
    assert llama.model.get_output_embeddings().weight.shape[0] == vocab + 1
    ids = torch.tensor([res.token_ids])
    with torch.inference_mode():
        states = llama.model(input_ids=ids, output_hidden_states=True).hidden_states
        logits = llama.model.lm_head(llama.model.model.norm(states[1][0]))
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)
    np.testing.assert_allclose(res.entropy[1], entropy.numpy(), rtol=1e-5, atol=1e-6)
