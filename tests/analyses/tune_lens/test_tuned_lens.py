"""The tuned lens (issue 17): training lowers every layer's held-out KL, an identity lens is the
logit lens, files round-trip exactly in both formats (and, where the tuned-lens package is
installed, between it and tokenprobe), a resumed training equals an uninterrupted one, and the
commands' bad input is one line each; each command's settings are declared once
(`TuneLensOptions`, `LensEvalOptions`) and refused alike from Python and the command line."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import test_bad_input
import test_cli
import torch
from conftest import make_model, randomised, texts
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
from tokenprobe.analyses.lens_eval.options import LensEvalOptions
from tokenprobe.analyses.tune_lens.options import TuneLensOptions
from tokenprobe.tuned import lens_format

model_dir = test_cli.model_dir  # the tiny model folder the commands run on
no_model_load = test_bad_input.no_model_load  # loading a model fails the test


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
    loaded = tokenprobe.load_result(tmp_path / "lens")
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
    loaded = tokenprobe.load_result(out)
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


# ----------------------------------------------------------------------------------- settings

NAN, INF = float("nan"), float("inf")
ONE_BATCH = {"tokens": 128, "seq_len": 32, "batch_size": 4}  # one step of training

# (settings, the message: the parameter named first), for tune_lens and lens_eval
TUNE_REFUSED = {
    "tokens 2.5": ({"tokens": 2.5}, "tokens must be a whole number, not 2.5"),
    "tokens True": ({"tokens": True}, "tokens must be a whole number, not True"),
    "tokens '3'": ({"tokens": "3"}, "tokens must be a whole number, not '3'"),
    "lr nan": ({**ONE_BATCH, "lr": NAN}, "lr must be a finite number, not nan"),
    "weight_decay inf": ({**ONE_BATCH, "weight_decay": INF}, "weight_decay must be a finite"),
    "lr 0": ({**ONE_BATCH, "lr": 0.0}, "lr must be above 0, not 0"),
    "precision half": ({**ONE_BATCH, "precision": "half"}, "precision must be one of auto, "),
    "momentum 1": ({**ONE_BATCH, "momentum": 1.0}, "momentum must be at most 0.999, not 1.0"),
    "seq_len 1": ({**ONE_BATCH, "seq_len": 1}, "seq_len must be at least 2, not 1"),
    "batch_size 0": ({**ONE_BATCH, "batch_size": 0}, "batch_size must be at least 1, not 0"),
    "seed -1": ({**ONE_BATCH, "seed": -1}, "seed must be at least 0, not -1"),
    "checkpoint_every 0": ({**ONE_BATCH, "checkpoint_every": 0}, "checkpoint_every must be at "),
    "batch_tokens 0": ({**ONE_BATCH, "batch_tokens": 0}, "batch_tokens must be at least 1"),
    "memory_mb 0": ({**ONE_BATCH, "memory_mb": 0.0}, "memory_mb must be positive, not 0"),
    "below one batch": ({**ONE_BATCH, "tokens": 100}, "tokens 100 is below one batch"),
}
EVAL_REFUSED = {
    "tokens 2.5": ({"tokens": 2.5}, "tokens must be a whole number, not 2.5"),
    "tokens True": ({"tokens": True}, "tokens must be a whole number, not True"),
    "tokens '3'": ({"tokens": "3"}, "tokens must be a whole number, not '3'"),
    "tokens 0": ({"tokens": 0}, "tokens must be at least 1, not 0"),
    "memory_mb nan": ({"memory_mb": NAN}, "memory_mb must be a finite number, not nan"),
    "memory_mb inf": ({"memory_mb": INF}, "memory_mb must be a finite number, not inf"),
    "seq_len 1": ({"seq_len": 1}, "seq_len must be at least 2, not 1"),
    "text_column 3": ({"text_column": 3}, "text_column must be text, not 3"),
    "batch_tokens nan": ({"batch_tokens": NAN}, "batch_tokens must be a whole number, not nan"),
}


@pytest.mark.parametrize("case", TUNE_REFUSED)
def test_tune_lens_refuses_a_bad_setting_naming_it(case, lm, tmp_path):
    """Refused as the settings are built: before any text is read or anything is written."""
    values, message = TUNE_REFUSED[case]
    with pytest.raises(tokenprobe.TokenprobeError, match=f"^{message}"):
        tune_lens(lm, str(tmp_path / "no-such-data.txt"), out=tmp_path / "out", **values)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", EVAL_REFUSED)
def test_lens_eval_refuses_a_bad_setting_naming_it(case, lm, tmp_path):
    """Refused before the lens folder (here: none) or the text is read."""
    values, message = EVAL_REFUSED[case]
    with pytest.raises(tokenprobe.TokenprobeError, match=f"^{message}"):
        lens_eval(lm, str(tmp_path / "no-lens"), texts(1), **values)


def test_a_settings_object_equals_its_keywords(lm):
    settings = {**ONE_BATCH, "tokens": 256, "lr": 0.5, "seed": 3}
    given = tune_lens(lm, texts(0), options=TuneLensOptions(**settings), progress=False)
    keywords = tune_lens(lm, texts(0), **settings, progress=False)
    assert np.array_equal(given.losses, keywords.losses)
    a, b = given.lens.state_dict(), keywords.lens.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # keywords replace the object's settings
    mixed = tune_lens(
        lm, texts(0), options=TuneLensOptions(**{**settings, "lr": 9.0}), lr=0.5, progress=False
    )
    assert np.array_equal(mixed.losses, keywords.losses)
    lens = randomised(TunedLens(lm.n_blocks, 32))
    frames = [
        lens_eval(lm, lens, texts(1), options=LensEvalOptions(tokens=256, seq_len=32)).to_frame(),
        lens_eval(lm, lens, texts(1), tokens=256, seq_len=32).to_frame(),
    ]
    pd.testing.assert_frame_equal(*frames)


def test_the_settings_are_the_flags():
    """Every setting but the library-only `batch_tokens` (the common --batch-tokens) is a flag
    of its command, with the declaration's default; `tokens` has none for tune-lens."""
    from tokenprobe.registry import ANALYSES

    for name, cls in (("tune_lens", TuneLensOptions), ("lens_eval", LensEvalOptions)):
        spec = ANALYSES[name]
        shown = ("cli_flag", "default", "minimum", "maximum", "choices", "required", "help")
        flags = {o.param: [getattr(o, k) for k in shown] for o in spec.options if o.role == "run"}
        declared = {o.param: [getattr(o, k) for k in shown] for o in cls.options()}
        assert flags == declared and "batch_tokens" not in flags
        assert spec.run.settings is cls
        assert spec.default("batch_tokens") == 4096
    assert TuneLensOptions.options("tokens")[0].required
    with pytest.raises(TypeError, match="tokens"):
        TuneLensOptions()


TUNE_CLI_REFUSED = {
    "--tokens 2.5": (["--tokens", "2.5"], "argument --tokens: expected a whole number, not '2.5'"),
    "--tokens True": (["--tokens", "True"], "argument --tokens: expected a whole number"),
    "--lr nan": (["--lr", "nan"], "argument --lr: must be a finite number, not 'nan'"),
    "--precision half": (["--precision", "half"], "argument --precision: invalid choice: 'half'"),
    "--momentum 1": (["--momentum", "1"], "--momentum must be at most 0.999, not 1.0"),
    "--lr 0": (["--lr", "0"], "--lr must be above 0, not 0"),
    "--batch 0": (["--batch", "0"], "argument --batch: must be at least 1, not 0"),
    "--warmup-steps -1": (["--warmup-steps", "-1"], "argument --warmup-steps: must be at least 0"),
    "--memory-mb 0": (["--memory-mb", "0"], "argument --memory-mb: must be at least 1, not 0"),
    "--tokens 100": (["--tokens", "100"], "--tokens 100 is below one batch (--batch 4 x --seq-len"),
}
EVAL_CLI_REFUSED = {
    "--tokens 2.5": (["--tokens", "2.5"], "argument --tokens: expected a whole number, not '2.5'"),
    "--tokens 0": (["--tokens", "0"], "argument --tokens: must be at least 1, not 0"),
    "--memory-mb inf": (["--memory-mb", "inf"], "argument --memory-mb: expected a whole number"),
    "--seq-len 1": (["--seq-len", "1"], "--seq-len must be at least 2, not 1"),
}


@pytest.mark.parametrize("case", TUNE_CLI_REFUSED)
def test_tune_lens_flags_are_refused_in_one_line_before_the_model_loads(
    case, model_dir, corpus, tmp_path, capsys, no_model_load
):
    extra, message = TUNE_CLI_REFUSED[case]
    code, _, err = run_any(capsys, *tune_argv(model_dir, corpus, tmp_path / "t", *extra))
    assert_one_error(code, err, message)


@pytest.mark.parametrize("case", EVAL_CLI_REFUSED)
def test_lens_eval_flags_are_refused_in_one_line_before_the_model_loads(
    case, model_dir, corpus, tmp_path, capsys, no_model_load
):
    extra, message = EVAL_CLI_REFUSED[case]
    save_lens(TunedLens(3, 32), tmp_path / "lens")
    argv = ["lens-eval", "--model", str(model_dir), "--lens", str(tmp_path / "lens")]
    argv += ["--data", str(corpus / "heldout.csv"), "--out", str(tmp_path / "e"), *extra]
    code, _, err = run_any(capsys, *argv)
    assert_one_error(code, err, message)
