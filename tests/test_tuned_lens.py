"""The tuned lens (issue 17): training lowers every layer's held-out KL, an identity lens is the
logit lens, files round-trip exactly in both formats (and, where the tuned-lens package is
installed, between it and tokenprobe), a resumed training equals an uninterrupted one, and the
commands' bad input is one line each."""

from __future__ import annotations

import copy
import json
import random
import warnings

import numpy as np
import pandas as pd
import pytest
import test_cli
import torch
from conftest import make_model
from test_bad_input import assert_one_error, run_any
from test_cli import run

import tokenprobe
import tokenprobe.tuned.train as train_module
from tokenprobe import (
    TunedDecoder,
    TunedLens,
    lens_eval,
    load_lens,
    logit_lens,
    save_lens,
    tune_lens,
)
from tokenprobe.analyses.lens import LogitDecoder
from tokenprobe.tuned import lens_format

model_dir = test_cli.model_dir  # the tiny model folder the commands run on

WORDS = (
    "the capital of australia is canberra not sydney tools hammer wrench level pliers fruits "
    "orange peach banana plum quick brown fox jumps over lazy dog hello world"
).split()


def texts(seed: int, n: int = 40) -> list[str]:
    """Sentences of the tiny tokenizer's words; another seed gives held-out text."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + "." for _ in range(n)]


def randomised(lens: TunedLens, seed: int = 0) -> TunedLens:
    """The lens with random translators (an identity lens would hide wrong keys or transposes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return lens


@pytest.fixture(scope="module")
def lm(tokenizer):
    return make_model("llama", copy.deepcopy(tokenizer))


@pytest.fixture(scope="module")
def trained(lm):
    return tune_lens(lm, texts(0, 80), tokens=64 * 32 * 4, seq_len=32, batch_size=4, progress=False)


# ------------------------------------------------------------------------------------- training


def test_a_trained_lens_lowers_held_out_kl_for_every_layer(lm, trained):
    result = lens_eval(lm, trained.lens, texts(1), tokens=2048, seq_len=32, progress=False)
    n = lm.n_blocks
    logit, tuned = result.kl[0, :n], result.kl[1, :n]
    assert (tuned < logit).all(), (logit, tuned)
    assert result.kl[:, n].tolist() == [0.0, 0.0]  # the output row is the model itself
    assert trained.losses.shape == (64, n)
    assert (trained.losses[-8:].mean(0) < trained.losses[:8].mean(0)).all()


class LayerByLayer(LogitDecoder):
    """The logit lens decoded one layer at a time, as every non-shared decoder is."""

    shared = False


def test_an_identity_lens_reproduces_the_logit_lens_exactly(lm):
    """Bit for bit against the logit lens decoded layer by layer; against the default logit
    lens, which unembeds all layers in one matrix product, to float32 rounding (the product's
    blocking depends on its row count)."""
    prompt = "What is the capital of Australia? The capital is"
    identity = TunedDecoder(TunedLens(lm.n_blocks, 32), lm.adapter)
    tuned = logit_lens(lm, prompt, targets=[" Canberra"], decoder=identity)
    per_layer = logit_lens(lm, prompt, targets=[" Canberra"], decoder=LayerByLayer(lm.adapter))
    batched = logit_lens(lm, prompt, targets=[" Canberra"])
    for name in ("entropy", "top_ids", "top_probs", "target_probs", "target_ranks"):
        assert np.array_equal(getattr(per_layer, name), getattr(tuned, name)), name
        assert np.allclose(getattr(batched, name), getattr(tuned, name), atol=1e-5, rtol=0), name


def test_a_trained_lens_changes_the_inner_rows_only(lm, trained):
    prompt = "the quick brown fox jumps over the lazy dog"
    plain = logit_lens(lm, prompt)
    tuned = logit_lens(lm, prompt, decoder=TunedDecoder(trained.lens, lm.adapter))
    assert np.array_equal(plain.entropy[-1], tuned.entropy[-1])
    assert not np.allclose(plain.entropy[:-1], tuned.entropy[:-1])


# ---------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("fmt", ["tokenprobe", "tuned-lens"])
def test_save_load_round_trip_is_exact(fmt, lm, tmp_path):
    lens = randomised(TunedLens(lm.n_blocks, 32, {"model": lm.name}))
    save_lens(lens, tmp_path, formats=[fmt])
    assert lens_format(tmp_path) == fmt
    back = load_lens(tmp_path, lm)
    for (k, a), (k2, b) in zip(lens.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    h = torch.randn(5, 32)
    for layer in range(lm.n_blocks):
        ours = TunedDecoder(lens, lm.adapter).decode(h, layer)
        assert torch.equal(ours, TunedDecoder(back, lm.adapter).decode(h, layer))


def test_a_tune_lens_folder_loads_in_both_formats(lm, trained, tmp_path):
    trained.save(tmp_path / "lens")
    for name in (
        "tuned-lens.json",
        "tuned-lens.safetensors",
        "config.json",
        "params.pt",
        "tuned_lens.parquet",
    ):
        assert (tmp_path / "lens" / name).is_file(), name
    ours = load_lens(tmp_path / "lens", lm)
    (tmp_path / "lens" / "tuned-lens.json").unlink()  # only the package's files are left
    theirs = load_lens(tmp_path / "lens", lm)
    assert theirs.info["format"] == "tuned-lens"
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    loaded = tokenprobe.Result.load(tmp_path / "lens")
    assert np.array_equal(loaded.losses, trained.losses)


def test_files_of_the_tuned_lens_package_decode_to_its_numbers(lm, tmp_path):
    """Both ways: a lens the package saved loads here, and one saved here loads there; each
    decodes every layer to the package's own numbers."""
    nn = pytest.importorskip(
        "tuned_lens.nn",
        reason="the tuned-lens package is a test-only extra: pip install --no-deps tuned-lens",
    )
    theirs = nn.TunedLens.from_model(lm.model)
    with torch.no_grad():
        for p in theirs.layer_translators.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    theirs.save(tmp_path / "theirs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its unembed_hash is the one we compute: no warning
        ours = load_lens(tmp_path / "theirs", lm)
    h = torch.randn(2, 7, 32)
    with torch.no_grad():
        for layer in range(lm.n_blocks):
            expected = theirs(h, idx=layer)
            assert torch.equal(TunedDecoder(ours, lm.adapter).decode(h, layer), expected)
    save_lens(
        randomised(TunedLens(lm.n_blocks, 32, {"model": lm.name})),
        tmp_path / "ours",
        formats=["tuned-lens"],
    )
    again = nn.TunedLens.from_model_and_pretrained(lm.model, str(tmp_path / "ours"))
    mine = load_lens(tmp_path / "ours", lm)
    with torch.no_grad():
        for layer in range(lm.n_blocks):
            got = TunedDecoder(mine, lm.adapter).decode(h, layer)
            assert torch.equal(got, again(h, idx=layer))


# ------------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text("\n".join(texts(0, 60)), encoding="utf-8")
    pd.DataFrame({"text": texts(1, 20)}).to_csv(folder / "heldout.csv", index=False)
    (folder / "short.txt").write_text("hello world", encoding="utf-8")
    return folder


def tune_argv(model_dir, corpus, out, *extra: str) -> list[str]:
    return [
        "tune-lens",
        "--model",
        str(model_dir),
        "--data",
        str(corpus / "train.txt"),
        "--tokens",
        "1280",
        "--seq-len",
        "32",
        "--batch",
        "4",
        "--checkpoint-every",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def test_resume_after_an_interrupted_training_equals_an_uninterrupted_run(
    model_dir, corpus, tmp_path, capsys, monkeypatch
):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    code, _, err = run(capsys, *tune_argv(model_dir, corpus, whole))
    assert code == 0, err

    def stop_at_5(step: int) -> None:
        if step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "step_done", stop_at_5)
    code, _, err = run(capsys, *tune_argv(model_dir, corpus, parts))
    assert code == 130 and "finished work is kept in" in err and "--resume" in err, err
    assert "the training state after step" in err, err
    monkeypatch.undo()
    code, _, err = run(capsys, *tune_argv(model_dir, corpus, parts))
    assert code == 2 and "--resume" in err
    code, _, err = run(capsys, *tune_argv(model_dir, corpus, parts, "--resume"))
    assert code == 0, err
    assert not (parts / "tuned_lens.partial").exists()
    a, b = torch.load(whole / "params.pt"), torch.load(parts / "params.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    table_a = pd.read_parquet(whole / "tuned_lens.parquet")
    table_b = pd.read_parquet(parts / "tuned_lens.parquet")
    assert len(table_a) == 10 * 3 and table_a.equals(table_b)


def test_lens_eval_writes_its_table_figure_and_report_section(model_dir, corpus, tmp_path, capsys):
    lens_dir, out = tmp_path / "lens", tmp_path / "eval"
    code, _, err = run(capsys, *tune_argv(model_dir, corpus, lens_dir))
    assert code == 0, err
    argv = [
        "lens-eval",
        "--model",
        str(model_dir),
        "--lens",
        str(lens_dir),
        "--data",
        str(corpus / "heldout.csv"),
        "--seq-len",
        "32",
        "--tokens",
        "512",
        "--out",
        str(out),
    ]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert "lens-eval: mean KL" in stdout
    table = pd.read_parquet(out / "lens_eval.parquet")
    assert list(table.columns) == ["layer", "label", "lens", "kl", "ce", "tokens"]
    assert len(table) == 2 * 4 and set(table["lens"]) == {"logit", "tuned"}
    assert table.loc[table["label"] == "output", "kl"].tolist() == [0.0, 0.0]
    assert (table["ce"] > 0).all() and (out / "lens_eval.png").stat().st_size > 10_000
    meta = json.loads((out / "meta.json").read_text())
    assert meta["lens"]["path"] == str(lens_dir) and meta["lens"]["format"] == "tokenprobe"
    loaded = tokenprobe.Result.load(out)
    assert np.allclose(
        loaded.kl, table.pivot(index="lens", columns="layer", values="kl").to_numpy()
    )
    sections = loaded.sections()
    assert [s["rows"] for s in sections] == [["logit lens", "tuned lens"]] * 2
    assert all(s["kind"] == "lens_eval" and len(s["cols"]) == 4 for s in sections)


def test_bad_input_is_one_line_each(model_dir, corpus, tmp_path, capsys):
    other_blocks, other_width, neither = (
        tmp_path / "blocks",
        tmp_path / "width",
        tmp_path / "neither",
    )
    save_lens(TunedLens(5, 32), other_blocks)
    save_lens(TunedLens(3, 16), other_width, formats=["tuned-lens"])
    neither.mkdir()
    (neither / "config.json").write_text("{}")
    evaluate = [
        "lens-eval",
        "--model",
        str(model_dir),
        "--data",
        str(corpus / "heldout.csv"),
        "--seq-len",
        "32",
        "--out",
        str(tmp_path / "e"),
    ]
    cases = [
        ([*evaluate, "--lens", str(other_blocks)], "trained for a model with 5 blocks; "),
        ([*evaluate, "--lens", str(other_width)], "trained for a model of hidden size 16; "),
        (
            [*evaluate, "--lens", str(neither)],
            "is not a tuned lens: it holds neither tuned-lens.json",
        ),
        ([*evaluate, "--lens", str(tmp_path / "nothing")], "no such folder"),
        (
            tune_argv(
                model_dir,
                corpus,
                tmp_path / "t",
                "--data",
                str(corpus / "short.txt"),
                "--seq-len",
                "64",
            ),
            "fewer than one sequence of --seq-len 64: give more text or a smaller --seq-len",
        ),
        (
            tune_argv(model_dir, corpus, tmp_path / "t", "--tokens", "100"),
            "--tokens 100 is below one batch (--batch 4 x --seq-len 32 = 128 tokens): give at least 128",
        ),
        (
            tune_argv(model_dir, corpus, tmp_path / "t", "--seq-len", "1"),
            "--seq-len must be at least 2, not 1",
        ),
    ]
    for argv, message in cases:
        code, _, err = run_any(capsys, *argv)
        assert_one_error(code, err, message)


def test_non_finite_numbers_never_reach_a_lens(lm, model_dir, corpus, tmp_path, capsys):
    """inf and nan flags are refused by the flag itself; a training that diverges (a finite
    but huge --lr) stops with one line and saves nothing; a lens with NaN weights is neither
    saved nor read."""
    for flag, value in (("--lr", "inf"), ("--weight-decay", "nan"), ("--momentum", "nan")):
        code, _, err = run_any(capsys, *tune_argv(model_dir, corpus, tmp_path / "t", flag, value))
        assert_one_error(code, err, f"argument {flag}: must be a finite number, not '{value}'")
    code, _, err = run_any(capsys, *tune_argv(model_dir, corpus, tmp_path / "huge", "--lr", "1e30"))
    assert_one_error(code, err, "training diverged: the loss is not finite at step")
    assert (
        not list((tmp_path / "huge").glob("*.safetensors"))
        and not (tmp_path / "huge" / "params.pt").exists()
    )
    broken = randomised(TunedLens(lm.n_blocks, 32))
    with torch.no_grad():
        broken.translators[1].weight[0, 0] = float("nan")
    with pytest.raises(tokenprobe.TokenprobeError, match="not finite .* layers 1: train it again"):
        save_lens(broken, tmp_path / "nan")
    save_lens(randomised(TunedLens(lm.n_blocks, 32)), tmp_path / "nan")  # then damaged on disk
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "nan" / "tuned-lens.safetensors"))
    weights["translators.0.bias"][3] = float("inf")
    save_file(weights, str(tmp_path / "nan" / "tuned-lens.safetensors"))
    with pytest.raises(tokenprobe.TokenprobeError, match="not finite"):
        load_lens(tmp_path / "nan", lm)


def test_overwrite_in_one_format_removes_the_previous_lens_in_the_other(
    model_dir, corpus, tmp_path, capsys
):
    """A two-format lens trained again with --overwrite --lens-format tokenprobe: the old
    tuned-lens files go (a load would otherwise find either lens), other files stay."""
    out = tmp_path / "t"
    code, _, err = run_any(capsys, *tune_argv(model_dir, corpus, out))
    assert code == 0, err
    assert (out / "config.json").is_file() and (out / "params.pt").is_file()
    (out / "notes.txt").write_text("mine")
    code, _, err = run_any(
        capsys, *tune_argv(model_dir, corpus, out, "--overwrite", "--lens-format", "tokenprobe")
    )
    assert code == 0, err
    assert not (out / "config.json").exists() and not (out / "params.pt").exists()
    assert (out / "tuned-lens.safetensors").is_file() and (out / "notes.txt").read_text() == "mine"
