"""train-sae (issue 27): a TopK autoencoder trained on a tiny Llama's residual stream learns
(its loss falls, its held-out FVE clears a bar), its held-out numbers equal plain forwards with
a hook written here and Hugging Face's own loss, its SAELens folder loads in `load_sae` (and in
sae-lens, where installed) encoding like the trained weights, an interrupted and resumed run
equals an uninterrupted one bit for bit, and bad input is one line each."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_cli
import torch
from conftest import make_model, texts
from safetensors.torch import load_file
from test_bad_input import assert_one_error, run_any
from test_cli import run

import tokenprobe
import tokenprobe.sae.train as train_module
from tokenprobe import TokenprobeError, TokenprobeWarning, load_sae
from tokenprobe.analyses.train_sae import TrainSaeOptions, train_sae
from tokenprobe.tuned.corpus import pack

model_dir = test_cli.model_dir  # the tiny Llama folder the commands run on
TOKENPROBE = Path(sys.executable).with_name("tokenprobe")
SAE_PYTHON = Path(__file__).resolve().parents[3] / ".venv-sae" / "bin" / "python"
SETTINGS = {"layer": 2, "latents": 64, "k": 4, "seq_len": 32, "batch_size": 16}


@pytest.fixture(scope="module")
def lm(tokenizer):
    return make_model("llama", copy.deepcopy(tokenizer))


@pytest.fixture(scope="module")
def trained(lm):
    """60 steps on texts(0) (353 sequences, seen 2.7 times), measured on 8 held-out sequences
    of texts(1)."""
    with pytest.warns(TokenprobeWarning, match="they are reused 2.7 times"):
        return train_sae(lm, texts(0, 400), eval_data=texts(1, 60), tokens=32 * 16 * 60,
                         eval_tokens=256, progress=False, **SETTINGS)  # fmt: skip


def topk_reference(w: dict[str, torch.Tensor], k: int, x: torch.Tensor) -> torch.Tensor:
    """The textbook TopK autoencoder: relu of the centred encoding, the k largest kept."""
    pre = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    values, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, values)


def test_training_lowers_the_loss_and_explains_most_variance(trained):
    table = trained.to_frame()
    assert len(table) == 60 and table["tokens"].iloc[-1] == 60 * 16 * 32
    first, last = table["fve"].iloc[:8].mean(), table["fve"].iloc[-8:].mean()
    assert last > first + 0.1, (first, last)
    assert (table["l0"] <= 4).all() and table["l0"].iloc[-1] > 3.5
    q = trained.quality
    assert q["fve"] > 0.45 and 3.5 < q["l0"] <= 4, q
    assert 0 <= q["never_fired_held_out"] < 64 and q["dead_latents"] == 0


def test_held_out_numbers_equal_plain_forwards_with_a_hook_written_here(lm, trained):
    """CE clean is Hugging Face's own loss; spliced and ablated replace block 1's output (the
    residual stream after 2 blocks) from position 1 on (`skip_first`) in one plain forward per
    sequence."""
    w = {"W_enc": trained.dictionary.w_enc, "b_enc": trained.dictionary.b_enc,
         "W_dec": trained.dictionary.w_dec, "b_dec": trained.dictionary.b_dec}  # fmt: skip
    sequences = pack(texts(1, 60), lm.tokenizer, 32, max_sequences=8)
    block = lm.model.model.layers[1]
    states, sums = [], {"clean": 0.0, "spliced": 0.0, "ablated": 0.0}

    def edit(how):
        def hook(_m, _a, out):
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            if how == "spliced":
                states.append(h[:, 1:].clone())
                h[:, 1:] = topk_reference(w, 4, h[:, 1:]) @ w["W_dec"] + w["b_dec"]
            elif how == "ablated":
                h[:, 1:] = 0
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return hook

    with torch.no_grad():
        for ids in sequences:
            for how in sums:
                handle = block.register_forward_hook(edit(how))
                try:
                    loss = lm.model(input_ids=ids[None], labels=ids[None], use_cache=False).loss
                finally:
                    handle.remove()
                sums[how] += float(loss) / len(sequences)
    q = trained.quality
    for ours, how in (
        ("ce_clean", "clean"),
        ("ce_spliced", "spliced"),
        ("ce_zero_ablated", "ablated"),
    ):
        assert q[ours] == pytest.approx(sums[how], abs=1e-5), ours
    x = torch.cat(states).flatten(0, -2)
    recon = topk_reference(w, 4, x) @ w["W_dec"] + w["b_dec"]
    fve = 1 - float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert q["fve"] == pytest.approx(fve, abs=1e-5)
    ratio = float(((x - recon).norm(dim=-1) / x.norm(dim=-1)).median())
    assert q["error_ratio_median"] == pytest.approx(ratio, abs=1e-5)
    gap = sums["ablated"] - sums["clean"]
    assert q["ce_recovered"] == pytest.approx((sums["ablated"] - sums["spliced"]) / gap, abs=1e-4)


def test_the_saelens_folder_loads_and_encodes_like_the_trained_weights(trained, tmp_path):
    trained.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert (
        cfg["architecture"] == "topk" and cfg["k"] == 4 and (cfg["d_in"], cfg["d_sae"]) == (32, 64)
    )
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    loaded = load_sae(tmp_path / "sae")
    assert str(loaded.site) == "resid 2" and loaded.activation == "topk"
    want = cfg["metadata"]["training"]["skip_first"]  # what `features` will leave out
    assert loaded.trained_skip_first == want == 1  # the default
    w = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    d = trained.dictionary
    for name, ours in (
        ("W_enc", d.w_enc),
        ("b_enc", d.b_enc),
        ("W_dec", d.w_dec),
        ("b_dec", d.b_dec),
    ):
        assert torch.equal(w[name], ours), name
    assert torch.allclose(d.w_dec.norm(dim=1), torch.ones(64), atol=1e-6)  # unit decoder rows
    x = torch.randn(20, 32) * 3
    assert torch.equal(loaded.encode(x), topk_reference(w, 4, x))
    assert torch.equal(loaded.decode(loaded.encode(x)), d.decode(d.encode(x)))
    back = tokenprobe.load_result(tmp_path / "sae")
    assert back.to_frame().equals(trained.to_frame()) and back.dictionary is not None
    if not SAE_PYTHON.is_file():
        pytest.skip("sae-lens is not installed in .venv-sae: its loading is not checked")
    code = (
        "import sys, torch; from sae_lens import SAE; s = SAE.load_from_disk(sys.argv[1]); "
        "x = torch.load(sys.argv[2]); print(type(s).__name__, s.cfg.metadata.hook_name); "
        "torch.save((s.encode(x).detach(), s.decode(s.encode(x)).detach()), sys.argv[3])"
    )
    torch.save(x, tmp_path / "x.pt")
    done = subprocess.run(
        [str(SAE_PYTHON), "-c", code, str(tmp_path / "sae"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["TopKSAE", "blocks.1.hook_resid_post"]
    acts, recon = torch.load(tmp_path / "y.pt")
    assert torch.allclose(acts, loaded.encode(x), atol=1e-5)
    assert torch.allclose(recon, loaded.decode(loaded.encode(x)), atol=1e-5)


# ------------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text("\n".join(texts(0, 200)), encoding="utf-8")
    (folder / "short.txt").write_text("hello world", encoding="utf-8")
    return folder


def argv(model_dir, corpus, out, *extra: str) -> list[str]:
    return ["train-sae", "--model", str(model_dir), "--layer", "2", "--data",
            str(corpus / "train.txt"), "--latents", "48", "--k", "4", "--tokens", "1280",
            "--seq-len", "32", "--batch", "4", "--eval-tokens", "128", "--auxk-alpha", "0.5",
            "--dead-tokens", "200", "--checkpoint-every", "2", "--out", str(out), *extra]  # fmt: skip


def test_resume_after_an_interrupted_training_equals_an_uninterrupted_run(
    model_dir, corpus, tmp_path, capsys, monkeypatch
):
    """With AuxK on (dead after 200 tokens), so the dead-latent counters must resume too."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    code, _, err = run(capsys, *argv(model_dir, corpus, whole))
    assert code == 0, err

    def stop_at_5(step: int) -> None:
        if step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "step_done", stop_at_5)
    code, _, err = run(capsys, *argv(model_dir, corpus, parts))
    assert code == 130 and "(the training state after step 4 of 10)" in err, err
    monkeypatch.undo()
    code, _, err = run(capsys, *argv(model_dir, corpus, parts))
    assert code == 2 and "--resume" in err
    code, _, err = run(capsys, *argv(model_dir, corpus, parts, "--resume"))
    assert code == 0, err
    assert not (parts / "train_sae.partial").exists()
    a = load_file(str(whole / "sae_weights.safetensors"))
    b = load_file(str(parts / "sae_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    table_a, table_b = (
        pd.read_parquet(whole / "train_sae.parquet"),
        pd.read_parquet(parts / "train_sae.parquet"),
    )
    assert len(table_a) == 10 and table_a.equals(table_b)
    assert (table_a["auxk"] > 0).any()  # the AuxK loss ran
    meta_a, meta_b = (json.loads((f / "meta.json").read_text()) for f in (whole, parts))
    assert meta_a["quality"] == meta_b["quality"]


def test_the_installed_command_writes_a_folder_features_reads(model_dir, corpus, tmp_path):
    out = tmp_path / "sae"

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(TOKENPROBE), *args], capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip

    done = command(*argv(model_dir, corpus, out), "--site", "resid 2")
    assert done.returncode == 2 and "give one of --layer" in done.stderr, done.stderr
    done = command(*argv(model_dir, corpus, out))
    assert done.returncode == 0, done.stderr
    assert "train-sae: 48 latents, k 4 at resid 2, 10 steps; held-out FVE" in done.stdout
    names = {p.name for p in out.iterdir()}
    assert {
        "cfg.json",
        "sae_weights.safetensors",
        "train_sae.parquet",
        "train_sae.png",
        "meta.json",
    } <= names
    assert (out / "train_sae.png").stat().st_size > 10_000
    meta = json.loads((out / "meta.json").read_text())
    q = meta["quality"]
    assert set(q) >= {
        "fve",
        "l0",
        "dead_latents",
        "ce_clean",
        "ce_spliced",
        "ce_zero_ablated",
        "ce_recovered",
    }
    assert q["ablation"].startswith("zero") and q["tokens"] == 4 * 31  # position 0 skipped
    table = pd.read_parquet(out / "train_sae.parquet")
    assert list(table.columns) == ["step", "tokens", "fve", "l0", "dead_fraction", "loss", "auxk"]
    feat = tmp_path / "feat"
    done = command("features", "--model", str(model_dir), "--sae", str(out), "--prompt",
                   "the quick brown fox jumps over the lazy dog", "--out", str(feat))  # fmt: skip
    assert done.returncode == 0, done.stderr
    meta = json.loads((feat / "meta.json").read_text())
    assert meta["dictionary"]["reads"] == "resid 2"
    assert meta["skip_first"] == 1  # the position train-sae left out, left out here too


def test_bad_input_is_one_line_each(model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "t"
    cases = [
        (argv(model_dir, corpus, out, "--layer", "9"), "--layer 9 is not a residual layer of this model: give 0 to 3"),
        (argv(model_dir, corpus, out, "--k", "64"), "--k 64 is more than the --latents 48: give k <= latents"),
        (argv(model_dir, corpus, out, "--data", str(corpus / "short.txt")), "fewer than one sequence of --seq-len 32"),
        (argv(model_dir, corpus, out, "--tokens", "100"), "--tokens 100 is below one batch"),
        (argv(model_dir, corpus, out, "--lr", "-1"), "--lr must be above 0, not -1"),
    ]  # fmt: skip
    for args, message in cases:
        code, _, err = run_any(capsys, *args)
        assert_one_error(code, err, message)
    no_layer = argv(model_dir, corpus, out)
    del no_layer[3:5]  # --layer 2
    for value, message in (("mlp 7", "is past this model's blocks: give a block from 0 to 2"),
                           ("head 1", "is not a site: give one of resid, attn, mlp, mlp-in")):  # fmt: skip
        code, _, err = run_any(capsys, *no_layer, "--site", value)
        assert_one_error(code, err, message)
    shutil.rmtree(out, ignore_errors=True)


def test_a_settings_object_equals_its_keywords(lm):
    options = TrainSaeOptions(tokens=32 * 16 * 2, eval_tokens=0, **SETTINGS)
    a = train_sae(lm, texts(0, 200), options=options, progress=False)
    b = train_sae(lm, texts(0, 200), tokens=32 * 16 * 2, eval_tokens=0, progress=False, **SETTINGS)
    assert a.quality is None and torch.equal(a.dictionary.w_enc, b.dictionary.w_enc)
    assert np.array_equal(a.to_frame().to_numpy(), b.to_frame().to_numpy())
    with pytest.raises(TokenprobeError, match="give one of layer "):
        TrainSaeOptions(latents=8)
