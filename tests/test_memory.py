"""The memory estimate said before a run, and the one line when the largest batch cannot fit."""

from __future__ import annotations

import pytest
from test_cli import model_dir, run  # noqa: F401  (the tiny model folder fixture)

import tokenprobe
from tokenprobe.model import memory


def test_the_estimate_grows_with_the_batch_and_with_gradients(model_dir):
    lm = tokenprobe.load(str(model_dir))
    small, large = memory.estimate(lm, 512), memory.estimate(lm, 4096)
    assert large.batch == 8 * small.batch > 0
    assert memory.estimate(lm, 512, gradients=True).batch > small.batch
    assert small.weights == sum(p.numel() * 4 for p in lm.model.parameters())


def test_a_run_says_its_estimate_and_refuses_what_cannot_fit(
    model_dir,
    tmp_path,
    capsys,
    monkeypatch,
):
    argv = ["lens", "--model", str(model_dir), "--prompt", "The cat sat"]
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "a"))
    assert code == 0 and "memory: about" in err and "GiB for the largest batch (2048 tokens)" in err
    per_token = memory.per_token_bytes(tokenprobe.load(str(model_dir)))
    monkeypatch.setattr(memory, "available_bytes", lambda device: 100 * per_token)
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "b"))
    (line,) = [ln for ln in err.splitlines() if ln.startswith("tokenprobe: error:")]
    assert code == 2 and "lower --batch-tokens (about 100 would fit)" in line
    assert "--device-map" in line
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "c"), "--batch-tokens", "64")
    assert code == 0, err


def test_gradient_methods_count_the_kept_activations(model_dir, tmp_path, capsys, monkeypatch):
    lm = tokenprobe.load(str(model_dir))
    plain = memory.per_token_bytes(lm)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 4096 * plain + 1)
    argv = ["attribute", "--model", str(model_dir), "--prompt", "The cat sat", "--target", " on"]
    assert run(capsys, *argv, "--out", str(tmp_path / "a"))[0] == 0  # ablation fits
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "b"), "--method", "saliency")
    assert code == 2 and "lower --batch-tokens" in err


@pytest.mark.parametrize("device", ["cpu"])
def test_available_memory_is_read(device):
    import torch

    assert (memory.available_bytes(torch.device(device)) or 0) > 0
