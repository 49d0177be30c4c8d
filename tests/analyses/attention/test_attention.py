"""The attention analysis end to end: the command line (in-process and the installed
command) writing its files with weights equal to the eager implementation's, the `--to`
table against a sum over the eager weights, what is kept past --max-cells, one-line refusals,
the model's implementation put back after a failed check, and a 4,096-token report section
that is one image tile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import zoo
from conftest import make_model, make_tokenizer

from tokenprobe import TokenprobeError
from tokenprobe.analyses.attention import AttentionResult, attention
from tokenprobe.analyses.attention import check as check_module
from tokenprobe.analyses.attention.result import Pattern
from tokenprobe.cli import main
from tokenprobe.report import render, sections_of

PROMPT = "What is the capital of Australia? The capital of Australia is Canberra, not Sydney."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    lm = make_model("llama", make_tokenizer())
    folder = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mamba_dir(tmp_path_factory):
    lm = zoo.make_causal("mamba", make_tokenizer())
    folder = tmp_path_factory.mktemp("tiny-mamba")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def _eager(folder, ids):
    """Every layer's weights (heads, n, n) from the saved model loaded with eager attention."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    with torch.inference_mode():
        found = model(input_ids=ids, use_cache=False, output_attentions=True).attentions
    return [a[0].float() for a in found]


def test_the_command_writes_weights_equal_to_eager_and_the_to_table(model_dir, tmp_path, capsys):
    out = tmp_path / "attn"
    argv = ["attention", "--model", str(model_dir), "--prompt", PROMPT, "--to", " Australia"]
    assert main([*argv, "--layer", "1", "--head", "3", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"attention.parquet", "attention_to.parquet", "meta.json"} <= names
    assert {"attention_head.png", "attention_layer.png", "attention_to.png"} <= names
    meta = json.loads((out / "meta.json").read_text())
    assert meta["eager_check"]["passed"] and meta["eager_check"]["max_abs_diff"] <= 1e-5
    ids = torch.tensor([meta["input_ids"]])
    eager = _eager(model_dir, ids)
    frame = pd.read_parquet(out / "attention.parquet")
    n = ids.shape[1]
    assert len(frame) == len(eager) * eager[0].shape[0] * n * (n + 1) // 2  # every layer, head
    q, k = frame["query"].to_numpy(), frame["key"].to_numpy()
    theirs = np.array(
        [eager[b][h, i, j] for b, h, i, j in zip(frame["layer"], frame["head"], q, k, strict=True)]
    )
    np.testing.assert_allclose(frame["weight"].to_numpy(), theirs, atol=1e-5, rtol=0)
    # --to: from the last token to the tokens of the last " Australia", summed
    keys = meta["to_keys"]
    assert "".join(meta["tokens"][i] for i in keys) == " Australia" and meta["from"] == n - 1
    to = pd.read_parquet(out / "attention_to.parquet")
    want = [
        float(eager[b][h, n - 1, keys].sum()) for b, h in zip(to["layer"], to["head"], strict=True)
    ]
    np.testing.assert_allclose(to["weight"].to_numpy(), want, atol=1e-5, rtol=0)


def test_past_max_cells_only_what_was_asked_is_kept(tmp_path, tokenizer):
    lm = make_model("llama", tokenizer)
    n = len(attention(lm, PROMPT).tokens)
    small = n * (n + 1) // 2  # one head's triangle
    one = attention(lm, PROMPT, layer=2, head=1, max_cells=small)
    assert set(one.pattern.layer) == {2} and set(one.pattern.head) == {1}
    assert one.meta["stored"] == "the layer and head asked for"
    rows = attention(lm, PROMPT, to=" Sydney", max_cells=small)
    assert set(rows.pattern.query) == {n - 1} and len(rows.layers) == 3
    assert [s for s, _ in rows.views()] == ["attention_to"]
    with pytest.raises(TokenprobeError, match="--max-cells"):
        attention(lm, PROMPT, max_cells=small)
    with pytest.raises(TokenprobeError, match="every head of layer 2 .* over --max-cells"):
        attention(lm, PROMPT, layer=2, max_cells=small)  # 4 heads do not fit: not kept anyway


def test_a_failed_check_puts_the_implementation_back(tokenizer, monkeypatch):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    lm = make_model("llama", tokenizer)
    before = (lm.model.config._attn_implementation, dict(ALL_ATTENTION_FUNCTIONS._local_mapping))
    real = check_module.eager_weights

    def off(*args):
        return real(*args) + 0.5  # what a wrong reading would give

    monkeypatch.setattr("tokenprobe.analyses.attention.compute.eager_weights", off)
    with pytest.raises(TokenprobeError, match="differ from the eager implementation"):
        attention(lm, PROMPT)
    after = (lm.model.config._attn_implementation, dict(ALL_ATTENTION_FUNCTIONS._local_mapping))
    assert after == before and before[0] == "sdpa"


def test_refusals_are_one_line_with_exit_2(model_dir, mamba_dir, tmp_path, capsys):
    cases = [
        (model_dir, ["--to", " Paris"], "is not in the prompt"),
        (model_dir, ["--layer", "7"], "--layer 7 is out of range"),
        (model_dir, ["--layer", "1", "--head", "4"], "--head 4 is out of range"),
        (model_dir, ["--to", " Sydney", "--from", "99"], "--from 99 is outside"),
        (model_dir, ["--from", "2"], "give --to TEXT as well"),
        (mamba_dir, [], "no softmax attention"),
    ]
    for folder, extra, message in cases:
        argv = ["attention", "--model", str(folder), "--prompt", PROMPT, "--out", str(tmp_path)]
        code = main([*argv, *extra])
        err = capsys.readouterr().err
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("tokenprobe: error:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (extra, err)
        assert "Traceback" not in err


def test_the_installed_command_runs(model_dir, tmp_path):
    exe = shutil.which("tokenprobe", path=os.path.dirname(sys.executable))
    assert exe is not None
    out = tmp_path / "attn-to"
    done = subprocess.run(
        [exe, "attention", "--model", str(model_dir), "--prompt", PROMPT, "--to", " Canberra",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "most attention to ' Canberra'" in done.stdout
    assert (out / "attention_to.parquet").is_file() and (out / "attention_layer.png").is_file()


def test_a_4096_token_report_section_is_one_small_image(tmp_path):
    n = 4096
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(1, n, n, generator=gen).masked_fill(
        ~torch.tril(torch.ones(n, n, dtype=torch.bool)), float("-inf")
    )
    weights = scores.softmax(-1)
    tokens = [f" t{i}" for i in range(n)]
    meta = {"tokens": tokens, "attention_layers": [0], "stored": "asked", "options": {"head": 0}}
    result = AttentionResult(tokens, [0], 1, Pattern.from_dense({0: weights}, [0]), meta=meta)
    sections = sections_of(result)
    assert sections and all("image" in s and "values" not in s for s in sections)
    size = len(json.dumps(sections))
    assert size < 1_500_000, size  # a dense table of 8M cells would be ~100 MB
    page = render([result])
    assert len(page) < 1_600_000 and page.count("<img") == 0  # drawn by the script, one each
    assert len(result.to_frame()) == n * (n + 1) // 2
    # the pooled image keeps the largest weight of each block: the diagonal's first cell
    np.testing.assert_allclose(result.pattern.dense(0, 0, n)[0, 0], 1.0)
