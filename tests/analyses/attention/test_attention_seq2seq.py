"""The attention analysis on encoder-decoder models (t5, bart, marian here; every family in
test_attention_seq2seq_zoo.py): each stack's weights against the model's own
`output_attentions` from the saved folder loaded with eager attention, rows summing to 1, the
`--to` table against a sum over those weights, the installed command writing its table and
figures, and one-line refusals (exit 2) of what does not apply."""

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
from conftest import make_model

from tokenprobe import TokenprobeError
from tokenprobe.analyses.attention import attention
from tokenprobe.cli import main
from tokenprobe.loading import load_result
from tokenprobe.report import sections_of

SOURCE = "The cat sat on the mat. The dog sat on the rug."
TARGET = "Die Katze sa"
FAMILIES = ("t5", "bart", "marian")
OUTPUTS = {
    "encoder": "encoder_attentions",
    "decoder": "decoder_attentions",
    "cross": "cross_attentions",
}
_FOLDERS: dict[str, object] = {}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    """arch -> (LoadedModel, saved folder)."""
    for arch in FAMILIES:
        lm = zoo.make_seq2seq(arch, tokenizer)
        folder = tmp_path_factory.mktemp(f"tiny-{arch}")
        lm.model.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
        _FOLDERS[arch] = (lm, folder)
    return _FOLDERS


def eager_attentions(folder, meta, stack):
    """The stack's weights, every layer (heads, queries, keys) of batch row 0, from the saved
    model loaded with eager attention and asked for `output_attentions`."""
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([meta["input_ids"]]),
            decoder_input_ids=torch.tensor([meta["decoder_ids"]]),
            use_cache=False,
            output_attentions=True,
        )
    return [a[0].float() for a in getattr(out, OUTPUTS[stack])]


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("stack", ["cross", "encoder", "decoder"])
def test_every_stack_equals_the_models_own_output_attentions(folders, arch, stack):
    lm, folder = folders[arch]
    to = " cat" if stack != "decoder" else " Kat"
    result = attention(lm, SOURCE, decoder_text=TARGET, stack=stack, to=to)
    meta = result.meta
    eager = eager_attentions(folder, meta, stack)
    n, m = len(result.tokens), len(result.keys)
    queries = meta["source_tokens"] if stack == "encoder" else meta["decoder_tokens"]
    keys = meta["decoder_tokens"] if stack == "decoder" else meta["source_tokens"]
    assert result.tokens == queries and result.keys == keys and result.layers == [0, 1]
    assert result.stack == stack and meta["eager_check"]["passed"]
    for layer, theirs in enumerate(eager):
        assert theirs.shape == (result.heads, n, m)
        for head in range(result.heads):
            ours = torch.from_numpy(result.pattern.dense(layer, head, n, m))
            kept = ~ours.isnan()
            if stack == "decoder":  # causal: the lower triangle, nothing above it
                assert torch.equal(kept, torch.tril(torch.ones(n, m, dtype=torch.bool)))
            else:
                assert bool(kept.all())
            torch.testing.assert_close(ours[kept], theirs[head][kept], atol=1e-6, rtol=0)
            sums = torch.nan_to_num(ours).sum(-1)
            torch.testing.assert_close(sums, torch.ones(n), atol=1e-5, rtol=0)
    frame = result.to_frame()
    assert set(frame["stack"]) == {stack} and list(frame.columns)[0] == "stack"
    # --to: from the last query to the key tokens covering the text, summed
    span = meta["to_keys"]
    assert to.strip() in "".join(keys[k] for k in span).replace("▁", " ")
    want = np.array([[float(e[h, n - 1, span].sum()) for h in range(result.heads)] for e in eager])
    np.testing.assert_allclose(result.to_table, want, atol=1e-6, rtol=0)


def test_max_cells_keeps_what_was_asked_on_cross_attention(folders):
    lm, _ = folders["bart"]
    whole = attention(lm, SOURCE, decoder_text=TARGET)
    n, m = len(whole.tokens), len(whole.keys)
    one = attention(lm, SOURCE, decoder_text=TARGET, layer=1, head=2, max_cells=n * m)
    assert set(one.pattern.layer) == {1} and set(one.pattern.head) == {2}
    assert "over --max-cells" in one.meta["eager_check"]["skipped"]  # not all held for it
    assert whole.meta["eager_check"]["passed"]
    np.testing.assert_array_equal(one.pattern.dense(1, 2, n, m), whole.pattern.dense(1, 2, n, m))
    rows = attention(lm, SOURCE, decoder_text=TARGET, to=" dog", max_cells=n * m)
    assert (
        set(rows.pattern.query) == {n - 1} and rows.meta["stored"] == "the --from query's row only"
    )
    assert [s for s, _ in rows.views()] == ["attention_to"]
    with pytest.raises(TokenprobeError, match="over --max-cells"):
        attention(lm, SOURCE, decoder_text=TARGET, max_cells=n * m)


def _refused(argv, capsys, message):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("tokenprobe: error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], (argv, err)
    assert "Traceback" not in err


def test_refusals_are_one_line_with_exit_2(folders, tmp_path, capsys, tokenizer):
    _, folder = folders["t5"]
    base = ["attention", "--model", str(folder), "--prompt", SOURCE, "--out", str(tmp_path)]
    cases = [
        (["--chat"], "is not a chat"),
        (["--layer", "2"], "--layer 2 is out of range"),
        (["--head", "9"], "--head 9 is out of range"),
        (["--to", " horse"], "is not in the source"),
        (["--stack", "decoder", "--to", " cat"], "is not in the decoder's input"),
        (["--stack", "encoder", "--from", "99", "--to", " cat"], "--from 99 is outside"),
        (["--target-lang", "xx_YY"], "is not a token of this tokenizer"),
    ]
    for extra, message in cases:
        _refused([*base, *extra], capsys, message)
    causal = tmp_path / "llama"
    made = make_model("llama", tokenizer)
    made.model.save_pretrained(causal)
    made.tokenizer.save_pretrained(causal)
    argv = ["attention", "--model", str(causal), "--prompt", SOURCE, "--out", str(tmp_path)]
    _refused([*argv, "--stack", "cross"], capsys, "--stack is for encoder-decoder models")
    _refused([*argv, "--decoder-text", "x"], capsys, "--decoder-text is for encoder-decoder")


@pytest.mark.parametrize("arch", ["t5", "marian"])
def test_the_installed_command_writes_the_table_and_figures(folders, arch, tmp_path):
    _, folder = folders[arch]
    exe = shutil.which("tokenprobe", path=os.path.dirname(sys.executable))
    assert exe is not None
    out = tmp_path / "attn"
    done = subprocess.run(
        [exe, "attention", "--model", str(folder), "--prompt", SOURCE, "--decoder-text", TARGET,
         "--to", " cat", "--layer", "1", "--head", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "cross-attention" in done.stdout and "most attention to ' cat'" in done.stdout
    names = {p.name for p in out.iterdir()}
    assert {"attention.parquet", "attention_to.parquet", "meta.json"} <= names
    assert {"attention_head.png", "attention_layer.png", "attention_to.png"} <= names
    frame = pd.read_parquet(out / "attention.parquet")
    meta = json.loads((out / "meta.json").read_text())
    n, m = len(meta["decoder_ids"]), len(meta["input_ids"])
    assert set(frame["stack"]) == {"cross"} and len(frame) == 2 * meta["heads"] * n * m
    eager = eager_attentions(folder, meta, "cross")
    cells = zip(*(frame[c] for c in ("layer", "head", "query", "key")), strict=True)
    theirs = [float(eager[b][h, q, k]) for b, h, q, k in cells]
    np.testing.assert_allclose(frame["weight"].to_numpy(), theirs, atol=1e-6, rtol=0)
    # the folder reads back (the report's input) with both sides' tokens and every figure
    again = load_result(out)
    assert again.stack == "cross" and again.keys == meta["source_tokens"]
    assert [name for name, _ in again.views()] == [
        "attention_head",
        "attention_layer",
        "attention_to",
    ]
    assert all("image" in s for s in sections_of(again)[:2])
