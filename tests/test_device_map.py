"""A model split across devices with a device map gives every analysis the numbers of the
unsplit model. On a CPU-only machine, accelerate offloads two of the modules to disk (their
weights come in for each forward pass through its hooks); on a GPU machine
(TOKENPROBE_TEST_DEVICE=cuda), the blocks alternate between the GPU and the CPU."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TEST_DEVICE, make_model, make_tokenizer

import tokenprobe
from tokenprobe.model import placement_kwargs

TEXT = "Tools: hammer, wrench _PAUSE_ Fruits: orange, peach _PAUSE_"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    lm = make_model("llama", make_tokenizer())
    folder = tmp_path_factory.mktemp("tiny-llama-split")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    far = "disk" if TEST_DEVICE.type == "cpu" else "cpu"
    near = "cpu" if TEST_DEVICE.type == "cpu" else 0
    device_map = {
        "model.embed_tokens": near,
        "model.layers.0": near,
        "model.layers.1": far,
        "model.layers.2": near,
        "model.norm": near,
        "model.rotary_emb": near,
        "lm_head": far,
    }
    split = tokenprobe.load(
        str(folder),
        device=TEST_DEVICE,
        device_map=device_map,
        offload_folder=str(tmp_path_factory.mktemp("offload")),
    )
    plain = tokenprobe.load(str(folder), device=TEST_DEVICE)
    assert set(split.model.hf_device_map.values()) == {near, far}
    return plain, split


def test_lens_on_a_split_model(models):
    plain, split = (
        tokenprobe.logit_lens(lm, "The cat sat on the mat", targets=[" mat"]) for lm in models
    )
    np.testing.assert_allclose(split.entropy, plain.entropy, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(split.top_ids, plain.top_ids)
    np.testing.assert_allclose(split.target_probs, plain.target_probs, rtol=1e-4, atol=1e-7)
    assert split.meta["output_check"] == "ok"


def test_similarity_on_a_split_model(models):
    # a marker that is one token already: a split model's embeddings cannot grow
    kwargs = {"marker": ",", "occurrence": 2, "window": 5}
    plain, split = (tokenprobe.past_similarity(lm, TEXT, **kwargs) for lm in models)
    np.testing.assert_allclose(split.cosine, plain.cosine, rtol=1e-5, atol=1e-6)
    with pytest.raises(tokenprobe.TokenprobeError, match="cannot do: choose a marker"):
        tokenprobe.past_similarity(models[1], TEXT, occurrence=2, window=5)


@pytest.mark.parametrize("method", ["ablation", "integrated_gradients"])
def test_attribution_on_a_split_model(models, method):
    kwargs = {"target": " orange", "method": method, "steps": 8}
    plain, split = (
        tokenprobe.attribute(lm, "Tools: hammer, wrench. Fruits:", **kwargs) for lm in models
    )
    np.testing.assert_allclose(split.scores, plain.scores, rtol=1e-4, atol=1e-5)


def test_flips_on_a_split_model(models):
    texts = ["the cat sat on the mat", "a dog ran in the park", "hammer and wrench"]
    plain, split = (
        tokenprobe.flip_rates(tokenprobe.PromptedClassifier(lm, ["a", "b"], [" the", " of"]), texts)
        for lm in models
    )
    assert split.occurrences.equals(plain.occurrences)


def test_placement_errors_name_the_parameter():
    with pytest.raises(tokenprobe.TokenprobeError, match="^max_memory 'gpu=2'"):
        placement_kwargs("auto", "gpu=2", None)
    with pytest.raises(tokenprobe.TokenprobeError, match="^max_memory needs device_map"):
        placement_kwargs(None, "0=2GiB", None)
    with pytest.raises(tokenprobe.TokenprobeError, match="device_map 'everywhere' is not one of"):
        placement_kwargs("everywhere", None, None)
    assert placement_kwargs("auto", "0=20GiB, cpu=64GiB", None) == {
        "device_map": "auto",
        "max_memory": {0: "20GiB", "cpu": "64GiB"},
    }


def test_the_command_line_places_the_model(monkeypatch, capsys):
    """--device-map and --max-memory reach load(); a bad --max-memory is one line naming it."""
    import tokenprobe.model
    from tokenprobe.cli import main

    seen = {}

    def record(name, **kwargs):
        seen.update(kwargs)
        raise tokenprobe.TokenprobeError("stop here")

    monkeypatch.setattr(tokenprobe.model, "load", record)
    main(["lens", "--prompt", "hi", "--device-map", "auto", "--max-memory", "0=2GiB,cpu=8GiB"])
    assert seen["device_map"] == "auto" and seen["max_memory"] == "0=2GiB,cpu=8GiB"
    code = main(["lens", "--prompt", "hi", "--device-map", "auto", "--max-memory", "lots"])
    err = capsys.readouterr().err
    assert code == 2 and "tokenprobe: error: --max-memory 'lots': each part is DEVICE=SIZE" in err
    code = main(["lens", "--prompt", "hi", "--max-memory", "0=2GiB"])
    err = capsys.readouterr().err
    assert code == 2 and "tokenprobe: error: --max-memory needs --device-map" in err


def test_trace_on_a_split_model(models):
    # resid, attn and mlp, noise, and the estimate's backward pass through the offloaded blocks
    kwargs = {
        "target": " orange",
        "corrupt": "noise",
        "subject": "hammer",
        "samples": 2,
        "components": ["resid", "attn", "mlp"],
        "method": "both",
        "progress": False,
    }
    plain, split = (
        tokenprobe.causal_trace(lm, "Tools: hammer, wrench. Fruits:", **kwargs) for lm in models
    )
    # both shortcuts run across the offloaded block (its weights are on the meta device)
    assert split.meta["lower_blocks"] == "reused from the cached run"
    assert split.meta["earlier_positions"].startswith("continued from the cached run")
    for component in ("resid", "attn", "mlp"):
        np.testing.assert_allclose(
            split.scores[component], plain.scores[component], rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            split.estimates[component], plain.estimates[component], rtol=1e-4, atol=1e-6
        )


def test_a_tuned_lens_on_a_split_model(models):
    import torch

    from tokenprobe.tuned import TunedLens, residual_width

    lens = TunedLens(models[0].n_blocks, residual_width(models[0]))
    with torch.no_grad():
        for t in lens.translators:
            t.weight.normal_(std=0.3, generator=torch.Generator().manual_seed(0))
    plain, split = (tokenprobe.logit_lens(lm, "The cat sat on the mat", lens=lens) for lm in models)
    np.testing.assert_allclose(split.entropy, plain.entropy, rtol=1e-5, atol=1e-5)
    assert not np.allclose(
        plain.entropy, tokenprobe.logit_lens(models[0], "The cat sat on the mat").entropy
    )
