"""The built-in SmolLM2-135M-Instruct end to end (slow: converts the GGUF once, then seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tokenprobe
from tokenprobe.cli import main

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of Australia?"


@pytest.fixture(scope="module")
def smol():
    return tokenprobe.load("smollm2", device="cpu")


def test_greedy_answer_and_lens_agree(smol):
    inp = tokenprobe.prepare(smol, QUESTION, chat=True)
    ids = torch.tensor([inp.input_ids])
    with torch.no_grad():
        generated = smol.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False
        )
    answer = smol.tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Canberra" in answer
    res = tokenprobe.logit_lens(smol, inp, targets=[" Canberra", " Sydney"])
    assert res.n_rows == 31 and res.layer_labels[-1] == "output"
    assert res.top_ids[-1, -1, 0] == int(generated[0, ids.shape[1]])
    assert res.meta["output_check"] == "ok"


def test_lens_matches_by_hand_on_smollm2(smol):
    inp = tokenprobe.prepare(smol, "The Eiffel Tower is in the city of")
    res = tokenprobe.logit_lens(smol, inp, top_k=5)
    with torch.no_grad():
        out = smol.model(torch.tensor([inp.input_ids]), output_hidden_states=True)
        rows = [smol.model.lm_head(smol.model.model.norm(h[0])) for h in out.hidden_states[:-1]] + [
            out.logits[0]
        ]
    logits = torch.stack(rows)
    ent = torch.distributions.Categorical(logits=logits).entropy().numpy()
    np.testing.assert_allclose(res.entropy, ent, atol=1e-4)
    np.testing.assert_array_equal(res.top_ids[:, :, 0], logits.argmax(-1).numpy())


def test_converted_cache_matches_the_gguf(smol):
    from transformers import AutoModelForCausalLM

    from tokenprobe.model import builtin_gguf

    gguf = builtin_gguf("smollm2")
    direct = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    ids = torch.tensor([smol.tokenizer.encode("Hello, my name is")])
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, smol.model(ids).logits)


def test_cli_on_the_builtin_model(tmp_path, capsys, smol):
    out = tmp_path / "lens"
    code = main(
        [
            "lens",
            "--model",
            "smollm2",
            "--chat",
            "--prompt",
            QUESTION,
            "--dummy",
            "6",
            "--target",
            " Canberra",
            "--target",
            " Sydney",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert (
        meta["model"]["name"] == "SmolLM2-135M-Instruct"
        and meta["marked"][1] - meta["marked"][0] == 6
    )
    assert (out / "lens.png").stat().st_size > 50_000


def test_a_gguf_path_loads_through_the_same_cache(smol):
    from tokenprobe.model import builtin_gguf

    lm = tokenprobe.load(str(builtin_gguf("smollm2")), device="cpu")
    assert lm.folder == smol.folder  # converted once, found again by path, size and mtime
    ids = torch.tensor([[28120, 30, 957]])
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, smol.model(ids).logits)


def test_similarity_command_on_the_builtin_model(tmp_path, capsys):
    out = tmp_path / "sim"
    text = (
        "Tools: hammer, wrench, level, pliers _PAUSE_ Fruits: orange, peach, banana, plum _PAUSE_"
    )
    code = main(
        [
            "similarity",
            "--model",
            "smollm2",
            "--text",
            text,
            "--marker",
            "_PAUSE_",
            "--occurrence",
            "2",
            "--window",
            "16",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    result = tokenprobe.load_result(out)
    assert result.cosine.shape == (31, 16)
    # the first marker is 11 tokens back; at layer 0 both markers share one embedding
    d = result.tokens.index("_PAUSE_")
    assert result.cosine[0, d] == pytest.approx(1.0, abs=1e-5)


def test_operator_token_is_driven_by_examples_with_the_same_operator(smol):
    """The seed's finding on the demo prompt: the answer's ' x' comes from the x examples."""
    from importlib import resources

    prompt = resources.files("tokenprobe").joinpath("data/cot.txt").read_text(encoding="utf-8")
    spans = ["8 x 48 = 384", "3 x 4 = 12", "6 - 4 = 2", "$85 - $50 = $35"]
    res = tokenprobe.attribute(
        smol, prompt, generate=6, features=spans, method="shapley", samples=24
    )
    assert res.meta["target"].strip().startswith("7 x 5")
    row = res.rows.index(" x")
    times, minus = res.scores[row, :2], res.scores[row, 2:]
    assert times.min() > 2 * minus.max()


def test_prompted_classifier_beats_chance_on_the_sample(smol):
    from tokenprobe.analyses.flips import tokenize_words
    from tokenprobe.data import read_table

    frame = read_table("sample:emotion").head(120)
    labels = ["anger", "joy", "optimism", "sadness"]
    clf = tokenprobe.PromptedClassifier(smol, labels)
    preds = clf.predict([tokenize_words(smol.tokenizer, t).ids for t in frame["text"]], 4096)
    accuracy = np.mean([labels[p] == g for p, g in zip(preds, frame["label"], strict=True)])
    assert accuracy > 0.55  # chance is 0.25; 0.73 on all 440 rows when measured


def test_the_shipped_tuned_lens_reads_every_layer_better_than_the_logit_lens(smol):
    """The lens in the package (`--lens builtin`, trained on the model's own samples) on text
    it never saw (the emotion sample's short posts): lower KL to the model's output at every
    inner layer, and in float16 on disk, small enough to ship."""
    from importlib import resources

    from tokenprobe.tuned import load_lens

    folder = resources.files("tokenprobe").joinpath("data/lenses/smollm2")
    lens = load_lens("builtin", smol)
    assert lens.info["format"] == "tokenprobe" and lens.n_blocks == smol.n_blocks
    assert folder.joinpath("tuned-lens.safetensors").stat().st_size < 25 * 2**20  # type: ignore[attr-defined]
    # two sequences of 256 tokens: measured there, the tuned lens's KL is at least 1.7 nats
    # below the logit lens's at every inner layer and 0.21 of it on average
    res = tokenprobe.lens_eval(
        smol, "builtin", "sample:emotion", tokens=512, seq_len=256, progress=False
    )
    logit, tuned = res.kl[0, :-1], res.kl[1, :-1]
    assert (tuned < logit).all(), np.round(np.stack([logit, tuned]), 2)
    assert tuned.mean() < 0.75 * logit.mean()


def test_the_shipped_sae_reconstructs_text_it_never_saw(smol):
    """`--sae builtin` (trained on the model's own samples) on real text it never saw, the
    emotion sample's posts, by hand: FVE from `hidden_states`, and the cross-entropy loss
    recovered with the reconstruction spliced in by a hook written here (against zeros), from
    position 1 on as it was trained; in float16 on disk, small enough to ship."""
    from importlib import resources

    from tokenprobe.data import read_table
    from tokenprobe.sae import load_sae

    folder = resources.files("tokenprobe").joinpath("data/saes/smollm2")
    assert folder.joinpath("sae_weights.safetensors").stat().st_size < 25 * 2**20  # type: ignore[attr-defined]
    sae = load_sae("builtin")
    assert (sae.d_in, sae.d_sae, str(sae.site), sae.k) == (576, 8192, "resid 15", 32)
    texts = [t for t in read_table("sample:emotion")["text"].head(64) if len(t) > 40]
    block = smol.require_adapter().blocks[14]  # resid 15: the stream after block 15
    err = var = 0.0
    ratios: list[torch.Tensor] = []
    losses: dict[str, list[float]] = {"clean": [], "spliced": [], "zero": []}
    for text in texts:
        ids = torch.tensor([smol.tokenizer(text)["input_ids"]])
        with torch.no_grad():  # the clean run gives the states and the clean loss
            clean = smol.model(ids, labels=ids, output_hidden_states=True)
            x = clean.hidden_states[15][0, 1:]
            recon = sae.decode(sae.encode(x), x)
        losses["clean"].append(float(clean.loss))
        err += float(((x - recon) ** 2).sum())
        ratios.append((x - recon).norm(dim=-1) / x.norm(dim=-1))
        var += float(((x - x.mean(0)) ** 2).sum())
        for name, new in (("spliced", recon), ("zero", torch.zeros_like(x))):

            def splice(_m, _a, out, new=new):
                hidden = out[0] if isinstance(out, tuple) else out
                hidden = hidden.clone()
                hidden[0, 1:] = new
                return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

            handle = block.register_forward_hook(splice)
            try:
                with torch.no_grad():
                    losses[name].append(float(smol.model(ids, labels=ids).loss))
            finally:
                handle.remove()
    fve = 1 - err / var
    clean, spliced, zero = (float(np.mean(losses[k])) for k in ("clean", "spliced", "zero"))
    recovered = (zero - spliced) / (zero - clean)
    ratio = float(torch.cat(ratios).median())
    # measured when shipped: FVE 0.991 (one outsized state carries most of the variance),
    # median error ratio 0.355, CE 5.61 clean, 5.94 spliced, 14.62 zero-ablated: 96% recovered
    assert fve > 0.95 and ratio < 0.45 and recovered > 0.9, (fve, ratio, clean, spliced, zero)


def test_the_shipped_sae_on_the_demo_prompt(smol, tmp_path):
    """`features --sae builtin` through the command: 32 features per position, a finite error
    below the state's norm, and the exact ablations correlated with activation x gradient."""
    out = tmp_path / "feat"
    argv = ["features", "--sae", "builtin", "--prompt", "The Eiffel Tower is in the city of",
            "--target", " Paris", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((out / "meta.json").read_text())
    import pandas as pd

    positions = pd.read_parquet(out / "features_positions.parquet")
    assert (positions["l0"][1:] == 32).all()
    assert (positions["error_ratio"][1:] < 1).all()
    # position 0 (the attention sink) was left out of training, so it is left out here
    assert meta["skip_first"] == 1 and positions.loc[0, ["l0", "error_ratio"]].isna().all()
    assert pd.read_parquet(out / "features.parquet")["position"].min() == 1
    assert meta["correlation"] > 0.5, meta["correlation"]
