"""The command line end to end on a tiny model saved to a folder, and its one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import tokenprobe
from tokenprobe import TokenprobeError
from tokenprobe.checkpoint import Checkpoint
from tokenprobe.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import make_model, make_tokenizer

    lm = make_model("llama", make_tokenizer())
    folder = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_errors(capsys, command: str, model: str, out, cases) -> None:
    """Each (argv, message) case exits with status 2 and exactly one error line holding message."""
    for argv, message in cases:
        code, _, err = run(capsys, command, "--model", model, "--out", str(out), *argv)
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("tokenprobe: error:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (argv, err)
        assert "Traceback" not in err


def test_lens_command_writes_table_figures_and_meta(model_dir, tmp_path, capsys):
    out = tmp_path / "lens"
    code, stdout, _ = run(
        capsys,
        "lens",
        "--model",
        str(model_dir),
        "--chat",
        "--prompt",
        "What is the capital of Australia?",
        "--dummy",
        "3",
        "--target",
        " Canberra",
        "--target",
        " Sydney",
        "--out",
        str(out),
        "--format",
        "png",
        "svg",
        "pdf",
        "--device",
        "cpu",
    )
    assert code == 0
    for name in ["lens.parquet", "lens.png", "lens.svg", "lens.pdf", "meta.json"]:
        assert (out / name).stat().st_size > 0, name
    table = pd.read_parquet(out / "lens.parquet")
    meta = json.loads((out / "meta.json").read_text())
    n_pos = len(meta["token_ids"])
    assert len(table) == 4 * n_pos  # 3 blocks + output row
    assert {
        "layer",
        "position",
        "token",
        "entropy",
        "top1",
        "top1_prob",
        "top5",
        "top5_prob",
        "prob[ Canberra]",
        "rank[ Canberra]",
        "prob[ Sydney]",
        "rank[ Sydney]",
    } <= set(table.columns)
    assert (
        meta["kind"] == "lens" and meta["options"]["dummy"] == 3 and meta["options"]["chat"] is True
    )
    assert meta["marked"] == [n_pos - 3, n_pos]
    assert meta["model"]["source"] == str(model_dir)
    assert "tokenprobe" in meta["versions"]
    assert str(out / "lens.png") in stdout


def test_several_prompts_get_one_folder_each(model_dir, tmp_path, capsys):
    code, _, _ = run(
        capsys,
        "lens",
        "--model",
        str(model_dir),
        "--prompt",
        "Hello world",
        "--prompt",
        "The quick brown fox",
        "--out",
        str(tmp_path / "many"),
    )
    assert code == 0
    assert (tmp_path / "many" / "prompt_01" / "lens.png").exists()
    assert (tmp_path / "many" / "prompt_02" / "lens.parquet").exists()


def test_prompt_file(model_dir, tmp_path, capsys):
    path = tmp_path / "p.txt"
    path.write_text("Tools: hammer, wrench", encoding="utf-8")
    code, _, _ = run(
        capsys,
        "lens",
        "--model",
        str(model_dir),
        "--prompt-file",
        str(path),
        "--out",
        str(tmp_path / "o"),
        "--zoom",
        "1:4",
        "--no-frame",
    )
    assert code == 0
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["prompt"] == "Tools: hammer, wrench"


def _bad_cases(model_dir, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    long_prompt = "word " * 300
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "lens.parquet").write_text("x")
    m = str(model_dir)
    return [
        (["--model", "no-such-model-xyz", "--prompt", "hi"], "unknown model 'no-such-model-xyz'"),
        (
            ["--model", "org/not-cached-model", "--prompt", "hi"],
            "not in the local Hugging Face cache",
        ),
        (["--model", str(tmp_path / "missing.gguf"), "--prompt", "hi"], "GGUF file not found"),
        (["--model", str(tmp_path), "--prompt", "hi"], "folder without config.json"),
        (["--model", str(latin1), "--prompt", "hi"], "is a file, not a model"),
        (
            ["--model", m, "--prompt", "hi", "--dummy", "2", "--dummy-after", "Canberra"],
            "is not in the prompt",
        ),
        (["--model", m, "--prompt", long_prompt], "longer than the model's context of 128"),
        (["--model", m, "--prompt", ""], "the prompt is empty"),
        (["--model", m], "no prompt: give --prompt"),
        (["--model", m, "--prompt-file", str(tmp_path / "nope.txt")], "no such file"),
        (["--model", m, "--prompt-file", str(latin1)], "is not UTF-8 text"),
        (["--model", m, "--prompt", "hi", "--zoom", "abc"], "is not START:END"),
        (["--model", m, "--prompt", "hi there", "--zoom", "5:500"], "is outside the"),
        (["--model", m, "--prompt", "hi", "--out", str(existing)], "pass --overwrite"),
        (["--model", m, "--prompt", "hi", "--target", ""], "a target in --target is empty"),
        (["--model", m, "--prompt", "hi", "--device", "tpu"], "unknown device 'tpu'"),
    ]


def test_bad_inputs_give_one_line(model_dir, tmp_path, capsys):
    for argv, message in _bad_cases(model_dir, tmp_path):
        code, _, err = run(capsys, "lens", "--out", str(tmp_path / "out-bad"), *argv)
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("tokenprobe: error:")]
        assert code == 2, (argv, err)
        assert len(lines) == 1 and message in lines[0], (argv, err)
        assert "Traceback" not in err


@pytest.mark.parametrize("command", ["lens", "similarity", "attribute", "flips"])
def test_batch_tokens_below_one_is_refused_by_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--batch-tokens", "0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "argument --batch-tokens: must be at least 1, not 0" in err.splitlines()[-1]


def test_a_token_budget_below_one_is_a_clear_error_from_python(model_dir):
    lm = tokenprobe.load(str(model_dir), device="cpu")
    with pytest.raises(TokenprobeError, match="batch_tokens.*at least 1, not 0"):
        tokenprobe.logit_lens(lm, "Tools: hammer", batch_tokens=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error(model_dir, tmp_path, capsys):
    code, _, err = run(
        capsys,
        "lens",
        "--model",
        str(model_dir),
        "--prompt",
        "hi",
        "--device",
        "cuda",
        "--out",
        str(tmp_path / "x"),
    )
    assert code == 2 and "sees no CUDA GPU: use --device cpu" in err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "lens" in out and "demo" in out


def test_similarity_command_on_a_data_set(model_dir, tmp_path, capsys):
    data = tmp_path / "texts.csv"
    pd.DataFrame({"body": ["a b _PAUSE_ c _PAUSE_", "x _PAUSE_ y _PAUSE_ z", "no markers"]}).to_csv(
        data, index=False
    )
    out = tmp_path / "sim"
    argv = ["similarity", "--model", str(model_dir), "--data", str(data), "--text-column", "body"]
    argv += ["--out", str(out)]
    code, stdout, err = run(capsys, *argv, "--occurrence", "2", "--window", "4", "--centre")
    assert code == 0, err
    assert "1 of 3 texts have fewer than 2" in err
    table = pd.read_parquet(out / "similarity.parquet")
    assert {"layer", "distance", "token", "cosine", "count"} <= set(table.columns)
    assert table["count"].max() == 2
    meta = json.loads((out / "meta.json").read_text())
    assert (
        meta["texts_used"] == 2 and meta["options"]["centre"] is True and meta["data"] == str(data)
    )
    assert (out / "similarity.png").exists()
    code, _, err = run(capsys, *argv, "--resume")
    assert code == 2 and "pass --overwrite" in err  # nothing to resume: finished outputs stay


def test_similarity_command_resumes_an_interrupted_run(model_dir, tmp_path, capsys, monkeypatch):
    texts = [f"{w} a _PAUSE_ b" for w in ("one", "two", "three")]
    data = tmp_path / "texts.csv"
    pd.DataFrame({"text": texts}).to_csv(data, index=False)
    out = tmp_path / "sim"
    lm = tokenprobe.load(str(model_dir))

    def stop(k):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # as the command would run it, stopped after 1 text
        tokenprobe.past_similarity(
            lm, texts, window=3, checkpoint=out, chunk_texts=1, _after_chunk=stop
        )
    argv = ["similarity", "--model", str(model_dir), "--data", str(data), "--window", "3"]
    code, _, err = run(capsys, *argv, "--out", str(out))
    assert code == 2 and "pass --resume" in err
    original = Checkpoint.write

    def write_then_stop(self, *a, **kw):
        original(self, *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "write", write_then_stop)
    code, _, err = run(capsys, *argv, "--out", str(out), "--resume")
    assert code == 130
    assert f"finished work is kept in {out / 'similarity.partial'}" in err and "--resume" in err
    monkeypatch.undo()
    code, _, err = run(capsys, *argv, "--out", str(out), "--resume")
    assert code == 0, err
    assert not (out / "similarity.partial").exists()
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "whole"))
    assert code == 0, err
    resumed = pd.read_parquet(out / "similarity.parquet")
    whole = pd.read_parquet(tmp_path / "whole" / "similarity.parquet")
    assert resumed["count"].tolist() == whole["count"].tolist() and whole["count"].max() == 3
    assert abs(resumed["cosine"] - whole["cosine"]).max() < 1e-6


def test_similarity_bad_inputs(model_dir, tmp_path, capsys):
    data = tmp_path / "t.csv"
    pd.DataFrame({"body": ["a _PAUSE_"], "label": [1]}).to_csv(data, index=False)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    m = str(model_dir)
    cases = [
        (["--data", str(data)], "has no column 'text'; its columns are: body, label"),
        (["--data", str(empty)], "is empty"),
        (["--data", str(tmp_path / "none.jsonl")], "no such file"),
        (["--text", "no marker", "--window", "3"], "the text has 0 '_PAUSE_' marker(s)"),
        (["--text", "a _PAUSE_", "--occurrence", "2"], "fewer than --occurrence 2"),
        (["--text", "a _PAUSE_", "--window", "0"], "--window must be at least 1"),
        ([], "give one of --text TEXT or --data FILE"),
        (["--text", "a _PAUSE_", "--resume"], "--resume continues a --data run"),
    ]
    assert_one_line_errors(capsys, "similarity", m, tmp_path / "o", cases)


def test_attribute_command(model_dir, tmp_path, capsys):
    out = tmp_path / "attr"
    code, stdout, err = run(
        capsys,
        "attribute",
        "--model",
        str(model_dir),
        "--prompt",
        "Tools: hammer, wrench. Fruits: orange",
        "--span",
        "hammer",
        "--span",
        "wrench",
        "--target",
        ", peach",
        "--method",
        "shapley",
        "--samples",
        "8",
        "--out",
        str(out),
        "--format",
        "png",
        "pdf",
    )
    assert code == 0, err
    table = pd.read_parquet(out / "attribute.parquet")
    assert list(table["feature_text"].unique()) == ["hammer", "wrench"]
    assert table["method"].unique().tolist() == ["shapley"] and table["stderr"].notna().all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["options"]["samples"] == 8 and meta["target"] == ", peach"
    assert (out / "attribute.pdf").exists()


def test_attribute_command_resumes_an_interrupted_run(model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "attr"
    argv = ["attribute", "--model", str(model_dir), "--prompt", "Tools: hammer, wrench, level"]
    argv += ["--target", ", peach", "--method", "shapley", "--samples", "6", "--out", str(out)]
    argv += ["--batch-tokens", "40"]
    original = Checkpoint.append

    def append_then_stop(self, *a, **kw):  # Ctrl-C right after the first scores are written
        original(self, *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr("tokenprobe.analyses.attribute.problem.FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(Checkpoint, "append", append_then_stop)
    code, _, err = run(capsys, *argv)
    assert code == 130 and f"finished work is kept in {out / 'attribute.partial'}" in err
    monkeypatch.undo()
    code, _, err = run(capsys, *argv, "--resume")
    assert code == 0, err
    assert not (out / "attribute.partial").exists()
    resumed = pd.read_parquet(out / "attribute.parquet")
    code, _, err = run(capsys, *argv[:-2], "--out", str(tmp_path / "whole"))
    assert code == 0, err
    whole = pd.read_parquet(tmp_path / "whole" / "attribute.parquet")
    assert abs(resumed["score"] - whole["score"]).max() < 1e-5
    code, _, err = run(capsys, *argv, "--resume")
    assert code == 2 and "pass --overwrite" in err  # nothing to resume: finished outputs stay


def test_attribute_bad_inputs(model_dir, tmp_path, capsys):
    m = str(model_dir)
    base = ["--prompt", "Tools: hammer, wrench", "--target", " level"]
    cases = [
        ([*base, "--span", "drill"], "--span 'drill' is not in the prompt"),
        ([*base, "--span", "hammer, wrench", "--span", "wrench"], "overlap"),
        ([*base, "--method", "lime"], "unknown method 'lime': use one of ablation, shapley"),
        (["--prompt", "Tools: hammer", "--target", ""], "the target is empty"),
        (["--prompt", "Tools: hammer"], "give a --target to score or --generate N"),
        (["--target", " x"], "give one of --prompt TEXT, --prompt-file FILE or --data FILE"),
        (["--prompt", "Tools", "--target", " x" * 200], "longer than the model's context"),
    ]
    assert_one_line_errors(capsys, "attribute", m, tmp_path / "o", cases)


# a small labelled data set in a column not called "text"
FLIPS_DATA = pd.DataFrame(
    {
        "body": [
            "Tools: hammer, wrench",
            "The quick brown fox",
            "Hello world",
            "Fruits: orange, peach",
        ],
        "label": ["joy", "anger", "joy", "anger"],
    }
)


def test_flips_command_with_a_prompted_classifier(model_dir, tmp_path, capsys):
    data = tmp_path / "t.jsonl"
    FLIPS_DATA.to_json(data, orient="records", lines=True)
    out = tmp_path / "flips"
    argv = [
        "flips",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--text-column",
        "body",
        "--labels",
        "joy= the",
        "anger= of",
        "--template",
        "Text: {text}\nAnswer:",
        "--buckets",
        "4",
        "--out",
        str(out),
        "--perturb",
        "filler",
        "the",
    ]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    occ = pd.read_parquet(out / "flips.parquet")
    rates = pd.read_parquet(out / "rates.parquet")
    assert {"text_id", "word", "word_index", "bucket", "original", "perturbed", "flipped"} <= set(
        occ.columns
    )
    assert {
        "class",
        "word",
        "bucket",
        "flips",
        "occurrences",
        "rate",
        "wilson_low",
        "wilson_high",
    } <= set(rates.columns)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["accuracy"] is not None and meta["classifier"]["verbalisers"] == [" the", " of"]
    assert meta["options"]["perturbation"] == "filler" and meta["options"]["filler"] == "the"
    assert any(p.name.startswith("flips_") and p.suffix == ".png" for p in out.iterdir())
    code, _, err = run(capsys, *argv, "--resume")
    assert code == 2 and "pass --overwrite" in err  # nothing to resume: finished outputs stay


def test_flips_bad_inputs(model_dir, tmp_path, capsys):
    data = tmp_path / "t.csv"
    pd.DataFrame({"body": ["a b", "c d"], "label": ["joy", "fear"]}).to_csv(data, index=False)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,joy\n".encode("latin-1"))
    m = str(model_dir)
    cases = [
        (["--data", str(data)], "has no column 'text'; its columns are: body, label"),
        (
            ["--data", str(data), "--text-column", "body", "--labels", "joy", "anger"],
            "labels in the data are not in --labels: fear",
        ),
        (
            ["--data", str(data), "--text-column", "body", "--label-column", "gold"],
            "has no column 'gold'",
        ),
        (["--data", str(latin), "--labels", "joy"], "is not UTF-8 text"),
        (["--data", str(tmp_path / "nothing.csv")], "no such file"),
        (
            ["--data", str(data), "--text-column", "body", "--perturb", "filler"],
            "--perturb takes delete, mask, or filler WORD",
        ),
    ]
    assert_one_line_errors(capsys, "flips", m, tmp_path / "o", cases)


def test_attribute_dtype_auto_means_float32(model_dir, tmp_path, capsys, monkeypatch):
    """attribute loads float32 for --dtype auto (on a GPU too: auto elsewhere means bfloat16
    there), and an explicit 16-bit dtype runs with a warning about what rounding costs."""
    import tokenprobe.model

    seen = []
    real_load = tokenprobe.model.load

    def recording_load(name, **kwargs):
        seen.append(kwargs.get("dtype"))
        return real_load(name, **kwargs)

    monkeypatch.setattr(tokenprobe.model, "load", recording_load)
    argv = ["attribute", "--model", str(model_dir), "--prompt", "Tools: hammer", "--target", " x"]
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert seen == ["float32"] and "rounding" not in err
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "b"), "--dtype", "bfloat16")
    assert code == 0, err
    assert seen[-1] == "bfloat16" and "--dtype float32" in err


def test_demo_attributes_in_float32_when_auto_loads_16_bits(
    model_dir, tmp_path, capsys, monkeypatch
):
    """As on a GPU, where --dtype auto loads bfloat16: the demo's attribution runs on a float32
    copy (like `attribute`), the other analyses on the bfloat16 model."""
    import json
    import shutil

    import tokenprobe.cli
    import tokenprobe.model

    folder = tmp_path / "long-context"  # the demo's few-shot prompt is longer than 128 tokens
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    real_load = tokenprobe.model.load
    seen = []

    def gpu_like_load(name, **kwargs):
        seen.append(kwargs.get("dtype"))
        if kwargs.get("dtype") == "auto":
            kwargs["dtype"] = "bfloat16"
        return real_load(name, **kwargs)

    monkeypatch.setattr(tokenprobe.model, "load", gpu_like_load)
    specs = tokenprobe.cli.demo_specs()
    # the tiny tokenizer gives two of the demo's verbalisers the same first token, and ' Paris'
    # and ' Rome' too; its model has 2 blocks, not 30; the built-in SAE fits only the built-in model
    specs |= {"flips": [], "logit_attribution": [], "attention": [], "features": []}
    monkeypatch.setattr(tokenprobe.cli.demo, "demo_specs", lambda: specs)
    out = tmp_path / "demo"
    code, _, err = run(capsys, "demo", "--model", str(folder), "--out", str(out))
    assert code == 0, err
    assert seen == ["auto", "float32"]
    meta = {d.name: json.loads((d / "meta.json").read_text()) for d in out.iterdir() if d.is_dir()}
    assert meta["attr_cot"]["model"]["dtype"] == "float32"
    assert meta["lens_australia"]["model"]["dtype"] == "bfloat16"
