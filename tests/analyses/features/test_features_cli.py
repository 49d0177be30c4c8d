"""`tokenprobe features` as users run it: the installed command on a saved model folder and a
SAELens folder (cfg.json + sae_weights.safetensors, as sae-lens 6 writes them), equal to the
library on the same files; bad input is one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_model, make_tokenizer
from safetensors.torch import save_file

import tokenprobe
from tokenprobe.analyses.features import features

TOKENPROBE = Path(sys.executable).with_name("tokenprobe")
FIXTURE = Path(__file__).resolve().parents[2] / "data" / "sae" / "saelens-standard"
PROMPT = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Llama saved as a folder, and a SAELens folder for its residual stream after 2
    blocks (`blocks.1.hook_resid_post`), written in sae-lens's layout (the fixture's cfg.json
    with this model's width)."""
    lm = make_model("llama", make_tokenizer())
    root = tmp_path_factory.mktemp("features-cli")
    model = root / "model"
    lm.model.save_pretrained(model)
    lm.tokenizer.save_pretrained(model)
    width, latents = lm.require_adapter().width, 40
    cfg = json.loads((FIXTURE / "cfg.json").read_text())
    cfg.update(d_in=width, d_sae=latents)
    cfg["metadata"]["hook_name"] = "blocks.1.hook_resid_post"
    sae = root / "sae"
    sae.mkdir()
    (sae / "cfg.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "W_enc": torch.randn(width, latents, generator=g) / width**0.5,
            "b_enc": -0.2 * torch.rand(latents, generator=g),
            "W_dec": torch.randn(latents, width, generator=g) * 0.5,
            "b_dec": 0.1 * torch.randn(width, generator=g),
        },
        str(sae / "sae_weights.safetensors"),
    )
    return model, sae


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TOKENPROBE), *argv], capture_output=True, text=True, timeout=300, check=False
    )


def test_the_command_equals_the_library(folders, tmp_path) -> None:
    model, sae = folders
    out = tmp_path / "feat"
    done = _run(
        "features", "--model", str(model), "--sae", str(sae), "--prompt", PROMPT,
        "--target", " the", "--top", "3", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = {p.name for p in out.iterdir()}
    assert {"features.parquet", "features_positions.parquet", "meta.json"} <= names
    assert {"features.png", "features_effects.png", "features_error.png"} <= names
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dictionary"]["reads"] == "resid 2" and meta["dictionary"]["format"] == "saelens"
    lm = tokenprobe.load(str(model))
    want = features(lm, PROMPT, sae=str(sae), target=" the", top=3).to_frame()
    got = pd.read_parquet(out / "features.parquet")
    assert len(got) == len(want) > 0
    for column in ("position", "feature", "rank"):
        assert (got[column].to_numpy() == want[column].to_numpy()).all()
    for column in ("activation", "attribution", "ablation"):
        np.testing.assert_allclose(got[column], want[column], rtol=1e-4, atol=1e-6)
    assert "features:" in done.stdout


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--sae-site", "block 3"], "not a site"),
        (["--sae-site", "resid 40"], "residual layers 0 to"),
        (["--foil", " dog"], "needs"),
    ],
)
def test_bad_input_is_one_line(folders, tmp_path, extra: list[str], says: str) -> None:
    model, sae = folders
    done = _run(
        "features", "--model", str(model), "--sae", str(sae), "--prompt", PROMPT,
        "--out", str(tmp_path / "x"), *extra,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in done.stderr


def test_a_missing_folder_is_one_line(folders, tmp_path) -> None:
    model, _ = folders
    done = _run(
        "features", "--model", str(model), "--sae", str(tmp_path / "nowhere"), "--prompt",
        PROMPT, "--out", str(tmp_path / "x"), "--offline",
    )  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_builtin_sae_on_another_model_is_one_line(folders, tmp_path) -> None:
    """`--sae builtin` was trained on the built-in model: a model with another vocabulary is
    refused before anything runs (not a width error, not wrong features)."""
    model, _ = folders
    done = _run(
        "features", "--model", str(model), "--sae", "builtin", "--prompt", PROMPT,
        "--out", str(tmp_path / "x"),
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "trained on the built-in model" in lines[0] and "--sae DIR" in lines[0]


def test_the_builtin_sae_warns_on_other_weights_of_the_same_shape(monkeypatch) -> None:
    """Same vocabulary, other unembedding (the original float weights instead of the built-in
    4-bit ones, or another model of that vocabulary): a warning, and the run goes on."""
    import tokenprobe.analyses.features.compute as compute

    lm = make_model("llama", make_tokenizer())
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    real = compute.read_json
    monkeypatch.setattr(
        compute,
        "read_json",
        lambda path: {
            **real(path),
            "tokenprobe_training": {"vocab_size": vocab, "unembed_hash": "0" * 64},
        },
    )
    with pytest.warns(UserWarning, match="unembedding differs"):
        compute._check_builtin(lm)
    monkeypatch.setattr(
        compute, "read_json", lambda path: {"tokenprobe_training": {"vocab_size": vocab + 1}}
    )
    with pytest.raises(tokenprobe.TokenprobeError, match="vocabulary"):
        compute._check_builtin(lm)
