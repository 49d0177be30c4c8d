"""Logit attribution beyond the zoo-wide check: target - foil is the difference of the two
attributions, the installed command writes its files (read back equal), the figure options,
the report, and bad input as one line with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zoo
from conftest import make_tokenizer
from test_cli import assert_one_line_errors, model_dir, run  # noqa: F401  (fixture)

from tokenprobe import TokenprobeError
from tokenprobe.analyses.logit_attribution import LogitAttributionResult, logit_attribution
from tokenprobe.loading import load_result
from tokenprobe.report import render

PROMPT = "What is the capital of Australia? The capital is"
TARGET, FOIL = " Canberra", " Sydney"


@pytest.fixture(scope="module")
def bpe():
    return make_tokenizer()


def _run(lm, **kw) -> LogitAttributionResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return logit_attribution(lm, PROMPT, **kw)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "opt-project", "mamba", "bloom"])
def test_foil_is_target_minus_foil(arch, bpe):
    lm = zoo.make_causal(arch, bpe)
    both = _run(lm, target=TARGET, foil=FOIL).frame
    alone = _run(lm, target=TARGET).frame
    other = _run(lm, target=FOIL).frame
    keys = ["position", "layer", "component", "head"]
    assert both[keys].equals(alone[keys]) and both[keys].equals(other[keys])
    diff = alone["value"].to_numpy() - other["value"].to_numpy()
    scale = 1e-6 * max(1.0, float(np.abs(alone["value"]).max()))
    assert np.allclose(both["value"].to_numpy(), diff, atol=scale)
    assert np.abs(diff).max() > 1e-2  # target and foil differ: the check could fail


def test_the_installed_command_writes_files_read_back_equal(model_dir, tmp_path):  # noqa: F811
    out = tmp_path / "dla"
    exe = Path(sys.executable).with_name("tokenprobe")
    argv = [str(exe), "logit-attribution", "--model", str(model_dir), "--prompt", PROMPT]
    argv += ["--target", TARGET, "--foil", FOIL, "--out", str(out), "--show", "mlp"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENPROBE_DEVICE": "cpu"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir())
    stems = ["logit_attribution", "logit_attribution_heads", "logit_attribution_positions"]
    assert names == sorted(["logit_attribution.parquet", "meta.json", *(f"{s}.png" for s in stems)])
    meta = json.loads((out / "meta.json").read_text())
    exact = meta["exactness"]
    assert exact["max_abs_error"] <= exact["tolerance"]
    assert meta["decomposition"]["attn"].startswith("output of model.layers.N.self_attn")
    assert "logit attribution of" in done.stdout
    loaded = load_result(out)
    assert isinstance(loaded, LogitAttributionResult)
    frame = pd.read_parquet(out / "logit_attribution.parquet")
    assert set(frame.columns) == {"position", "token", "layer", "component", "head", "value"}
    own = _own_logit(model_dir, meta["token_ids"], [meta["target_id"], meta["foil_id"]])
    assert np.allclose(loaded.total(), own, atol=1e-4 * max(1.0, float(np.abs(own).max())))
    assert "logit_attribution_positions" in [s for s, _ in loaded.views(show="mlp")]


def _own_logit(folder, token_ids: list[int], pair: list[int]) -> np.ndarray:
    """target - foil from the saved model's own logits, loaded and run here."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0].double()
    return (logits[:, pair[0]] - logits[:, pair[1]]).numpy()


def test_figures_follow_the_position_and_show_options(bpe):
    lm = zoo.make_causal("llama", bpe)
    result = _run(lm, target=TARGET)
    views = dict(result.views(position=-2, show="block"))
    grid = views["logit_attribution"].values
    frame = result.frame
    attn = frame[(frame["component"] == "attn") & (frame["position"] == len(result.tokens) - 2)]
    attn = attn.sort_values("layer")
    assert np.allclose(grid[0], attn["value"].to_numpy())
    heads = views["logit_attribution_heads"].values
    assert heads.shape == (2, zoo.HEADS) and np.isfinite(heads).all()
    block = views["logit_attribution_positions"].values
    assert np.allclose(block, result.grid("attn") + result.grid("mlp"))
    for fig in (v.figure() for v in views.values()):
        assert fig.axes
    html = render([result])
    assert "Direct logit attribution" in html
    for bad, message in (
        ({"position": 99}, "outside the prompt"),
        ({"show": "mixer"}, "no state-space"),
    ):
        with pytest.raises(TokenprobeError, match=message) as err:
            result.views(**bad)
        assert "\n" not in str(err.value)


def test_state_space_models_have_mixer_parts_and_no_heads(bpe):
    result = _run(zoo.make_causal("mamba", bpe), target=TARGET)
    assert set(result.frame["component"]) == {"embed", "mixer", "bias"}
    assert [s for s, _ in result.views()] == ["logit_attribution", "logit_attribution_positions"]


def test_bad_input_is_one_line(bpe):
    lm = zoo.make_causal("llama", bpe)
    cases = [
        ({}, "is required: the next token"),
        ({"target": TARGET, "foil": TARGET}, "give another foil"),
        ({"target": TARGET, "foil": ""}, "is empty"),
    ]
    for kw, message in cases:
        with pytest.raises(TokenprobeError, match=message) as err:
            _run(lm, **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(TokenprobeError, match="same token as") as err:  # the same first token
        _run(lm, target=TARGET, foil=TARGET + " is")
    assert "\n" not in str(err.value)


def test_cli_bad_input_exits_2_with_one_line(model_dir, tmp_path, capsys, bpe):  # noqa: F811
    cases = [
        (["--prompt", PROMPT], "is required: the next token"),
        (["--prompt", PROMPT, "--target", TARGET, "--foil", TARGET], "give another foil"),
        (["--target", TARGET], "give one of --prompt"),
    ]
    assert_one_line_errors(capsys, "logit-attribution", str(model_dir), tmp_path / "o", cases)
    refused = tmp_path / "opt-350m"
    lm = zoo.make_causal("opt-350m", bpe)
    lm.model.save_pretrained(refused)
    lm.tokenizer.save_pretrained(refused)
    cases = [(["--prompt", PROMPT, "--target", TARGET], "cannot split block 0")]
    assert_one_line_errors(capsys, "logit-attribution", str(refused), tmp_path / "o2", cases)
    assert not (tmp_path / "o2").exists()
