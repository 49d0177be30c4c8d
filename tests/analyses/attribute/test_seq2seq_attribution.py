"""Encoder-decoder attribution on three families (T5, BART, Marian) against the model's own
forward: ablation one forward per cell, saliency and input x gradient by autograd of the
model's own log-probability, integrated gradients' completeness, batches equal to one input
at a time, a shorter target giving the same rows, and the installed command on saved folders
(the zoo-wide run is test_seq2seq_attribution_zoo.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zoo
from seq2seq_attr_ref import (
    SOURCE,
    TARGET,
    ablation_by_hand,
    grads_by_hand,
    run,
    score_with_ids,
)

import tokenprobe
from tokenprobe import TokenprobeError

FAST = ["t5", "bart", "marian"]
_MODELS: dict[str, tokenprobe.LoadedModel] = {}


@pytest.fixture
def lm(request, tokenizer):
    arch = request.param
    if arch not in _MODELS:
        _MODELS[arch] = zoo.make_seq2seq(arch, tokenizer)
    return _MODELS[arch]


@pytest.mark.parametrize("lm", FAST, indirect=True)
def test_ablation_is_one_forward_per_cell(lm):
    res = run(lm, method="ablation")
    n, f = len(res.meta["prompt_ids"]), res.meta["forced"]
    m = len(res.rows)
    assert [x["side"] for x in res.features] == ["source"] * n + ["target"] * (f + m - 1)
    np.testing.assert_allclose(res.scores, ablation_by_hand(lm, res), atol=2e-4, rtol=1e-4)
    assert np.abs(res.scores[:, n:]).max() > 0.1  # the target prefix matters
    # a decoder input at or after a row's own position cannot change it
    for j in range(m):
        assert np.all(res.scores[j, n + f + j :] == 0)
    # no prefix cache on an encoder-decoder: meta.json says each perturbed input ran whole
    assert res.meta["earlier_positions"].startswith("recomputed: every decoder position")
    off = run(lm, method="ablation", reuse_prefix=False)
    assert "turned off" in off.meta["earlier_positions"]
    np.testing.assert_array_equal(off.scores, res.scores)


@pytest.mark.parametrize("lm", FAST, indirect=True)
def test_gradients_are_autograd_of_the_models_own_logprob(lm):
    sal, ixg = grads_by_hand(lm, run(lm, method="ablation"))
    ours_sal = run(lm, method="saliency").scores
    ours_ixg = run(lm, method="input_x_gradient").scores
    np.testing.assert_allclose(ours_sal, sal, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(ours_ixg, ixg, atol=1e-3, rtol=1e-3)
    assert np.abs(ixg).max() > 0.5


# the tiny random T5's log-probabilities move tens of nats within 1/40 of the path from the
# unk embeddings (its gradients are checked by autograd above): no affordable step count
# converges there
SMOOTH = ["bart", "marian"]


@pytest.mark.parametrize("lm", SMOOTH, indirect=True)
def test_integrated_gradients_add_up_on_both_sides(lm):
    """Completeness: the attributions of every source token and decoder input add up to
    f(x) - f(baseline), the baseline scored by the model on all-unk ids on both sides."""
    res = run(lm, method="integrated_gradients", steps=64, ig_baseline="unk")
    meta = res.meta
    unk = lm.tokenizer.unk_token_id
    n, dec_in = len(meta["prompt_ids"]), len(meta["decoder_ids"]) - 1
    f0 = score_with_ids(lm, [unk] * n, [unk] * dec_in, res)
    f1 = score_with_ids(lm, meta["prompt_ids"], meta["decoder_ids"][:-1], res)
    np.testing.assert_allclose(res.target_scores, f1, atol=1e-4)
    np.testing.assert_allclose(meta["method_details"]["score_difference"], f1 - f0, atol=1e-3)
    gap = np.abs(res.scores.sum(axis=1) - (f1 - f0))
    assert np.all(gap <= 0.02 + 0.01 * np.abs(f1 - f0)), (gap, f1 - f0)
    for side in ("source", "target"):  # each side carries part of it
        cols = [c for c, x in enumerate(res.features) if x["side"] == side]
        assert np.abs(res.scores[:, cols]).max() > 0.01


@pytest.mark.filterwarnings("ignore:integrated gradients have not converged")
@pytest.mark.parametrize("lm", FAST, indirect=True)
@pytest.mark.parametrize("method", ["shapley", "occlusion", "integrated_gradients"])
def test_batches_equal_one_input_at_a_time(lm, method):
    settings = dict(method=method, samples=4, steps=8, baseline="unk", source="A quick fox.")
    batched = run(lm, **settings)
    alone = run(lm, **settings, batch_tokens=1)
    scale = max(1.0, float(np.abs(alone.scores).max()))
    np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-5 * scale, rtol=1e-4)
    assert alone.meta["forward_passes"] > batched.meta["forward_passes"]


@pytest.mark.parametrize("lm", ["marian"], indirect=True)
def test_a_longer_target_keeps_the_earlier_rows(lm):
    short = run(lm, method="saliency", target="The capital")
    long = run(lm, method="saliency", target=TARGET)
    k = len(short.rows)
    assert long.rows[:k] == short.rows and len(long.rows) > k
    n = len(short.meta["prompt_ids"])
    cols = n + short.meta["forced"] + k - 1
    np.testing.assert_allclose(long.scores[:k, :cols], short.scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lm", ["bart"], indirect=True)
def test_spans_on_either_side_and_a_foil(lm):
    res = run(lm, method="ablation", features=["quick brown", "capital"], baseline="unk")
    assert [x["side"] for x in res.features] == ["source", "target"]
    assert res.features[1]["positions"] == [res.meta["forced"] + 1]
    unk = lm.tokenizer.unk_token_id
    src, dec = res.meta["prompt_ids"], res.meta["decoder_ids"]
    quick = res.features[0]["positions"]
    dropped = [unk if i in quick else t for i, t in enumerate(src)]
    f1 = score_with_ids(lm, src, dec[:-1], res)
    np.testing.assert_allclose(
        res.scores[:, 0], f1 - score_with_ids(lm, dropped, dec[:-1], res), atol=1e-4
    )
    foil = lm.tokenizer.decode([40])
    contrast = run(lm, method="saliency", foil=foil)
    assert contrast.meta["foil_id"] == 40
    with torch.no_grad():  # log p(target) - log p(foil), both read where the row is predicted
        logits = lm.model(
            input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec[:-1]])
        ).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    f = res.meta["forced"]
    by_hand = [
        float(logp[f + j - 1, dec[f + j]] - logp[f + j - 1, 40]) for j in range(len(res.rows))
    ]
    np.testing.assert_allclose(contrast.target_scores, by_hand, atol=1e-4)
    with pytest.raises(TokenprobeError, match="neither the source nor the target"):
        run(lm, features=["zebra"])


@pytest.mark.parametrize("lm", ["t5"], indirect=True)
def test_generate_attributes_the_models_own_greedy_output(lm):
    res = run(lm, method="saliency", target=None, generate=5)
    with torch.no_grad():
        made = lm.model.generate(
            torch.tensor([res.meta["prompt_ids"]]), max_new_tokens=5, do_sample=False
        )[0].tolist()
    assert res.meta["decoder_ids"] == made[: len(res.meta["decoder_ids"])]
    assert res.meta["generated"] and len(res.rows) == len(res.meta["decoder_ids"]) - 1
    frame = res.to_frame()
    assert set(frame["side"]) == {"source", "target"}
    again = type(res).from_frame(frame, {**res.meta, **res.extra_meta()})
    assert [x["side"] for x in again.features] == [x["side"] for x in res.features]
    ((_, heatmap),) = res.views()
    assert heatmap.frame == (len(res.meta["prompt_ids"]), len(res.features))
    heatmap.figure()


def test_target_lang_forces_the_language_code(tokenizer):
    lm = zoo.make_seq2seq("mbart", tokenizer)
    res = run(lm, method="ablation", target="Der", target_lang="de_DE")
    code = lm.tokenizer.convert_tokens_to_ids("de_DE")
    assert res.meta["decoder_ids"][:2] == [lm.tokenizer.eos_token_id, code]
    assert [x["text"] for x in res.features if x["side"] == "target"][1] == "de_DE"
    causal = zoo.make_causal("llama", tokenizer)
    with pytest.raises(TokenprobeError, match="target_lang is for encoder-decoder models"):
        tokenprobe.attribute(causal, "hi", target=" there", target_lang="de_DE")


@pytest.mark.parametrize(
    ("arch", "extra"),
    [("t5", ["--target", TARGET, "--method", "integrated_gradients", "--steps", "4"]),
     ("marian", ["--generate", "4", "--method", "ablation"])],
)  # fmt: skip
def test_the_installed_command_on_a_saved_folder(arch, extra, tokenizer, tmp_path):
    made = _MODELS.get(arch) or zoo.make_seq2seq(arch, tokenizer)
    made.model.save_pretrained(tmp_path / arch)
    made.tokenizer.save_pretrained(tmp_path / arch)
    command = Path(sys.executable).with_name("tokenprobe")
    out = tmp_path / "out"
    done = subprocess.run(
        [str(command), "attribute", "--model", str(tmp_path / arch), "--prompt", SOURCE]
        + [*extra, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    frame = pd.read_parquet(out / "attribute.parquet")
    assert set(frame["side"]) == {"source", "target"}
    assert (out / "attribute.png").is_file()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seq2seq"] and meta["generated"] == ("--generate" in extra)
    from tokenprobe.cli.report import write_report

    page = write_report(out, tmp_path / "report.html", "t", overwrite=False)
    assert "source tokens | target prefix" in page.read_text()


class StopAfter:
    """A batch hook that interrupts the run after `n` model batches, as Ctrl-C would."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt


@pytest.mark.parametrize("lm", ["marian"], indirect=True)
@pytest.mark.parametrize(
    ("method", "kwargs"),
    [("shapley", {"samples": 6, "batch_tokens": 60}), ("saliency", {"batch_tokens": 60})],
)
def test_an_interrupted_run_resumes(lm, tmp_path, method, kwargs):
    settings = dict(method=method, **kwargs)
    full = run(lm, **settings)
    with pytest.raises(KeyboardInterrupt):
        run(lm, **settings, checkpoint=tmp_path, _after_batch=StopAfter(2))
    assert list((tmp_path / "attribute.partial").glob("part-*.npz"))
    resumed = run(lm, **settings, checkpoint=tmp_path, resume=True)
    assert resumed.meta["forward_passes"] < full.meta["forward_passes"]
    np.testing.assert_allclose(resumed.scores, full.scores, atol=1e-5)
    assert not (tmp_path / "attribute.partial").exists()


@pytest.mark.parametrize("lm", FAST, indirect=True)
def test_the_early_targets_take_their_gradients_from_the_first_half_alone(lm, monkeypatch):
    """The targets read in the decoder's first half are scored by a run of that half alone
    (their backwards skip the later positions): the same attributions as the whole run, and
    where that run differs (a decoder that is not causal), the whole run's, said in meta.json."""
    from tokenprobe.analyses.attribute import seq2seq_gradients as grads

    settings = dict(method="integrated_gradients", steps=4, target=" and then the cat sat")
    res = run(lm, **settings)
    assert res.meta["method_details"]["decoder_first_half"] == grads.EARLY_USED
    monkeypatch.setattr(grads, "EARLY_MIN", 10**6)
    whole = run(lm, **settings)
    assert whole.meta["method_details"]["decoder_first_half"] == "no gradient batch ran"
    # float rounding of the shorter run (bit-equal on BART and Marian), which the tiny random
    # T5's steep path amplifies to 1e-5 of its largest attribution
    top = float(np.abs(whole.scores).max())
    np.testing.assert_allclose(res.scores, whole.scores, atol=1e-4 * top, rtol=1e-4)
    monkeypatch.setattr(grads, "EARLY_MIN", 4)
    monkeypatch.setattr(grads, "float_tolerance", lambda dtype: -1.0)  # every state "differs"
    differs = run(lm, **settings)
    assert differs.meta["method_details"]["decoder_first_half"].startswith("not used: the deco")
    np.testing.assert_allclose(differs.scores, whole.scores, atol=1e-6, rtol=1e-4)


SOURCES = ["A quick brown fox.", "The cat sat on the mat by the door.", "Hello there, friend."]


@pytest.mark.parametrize("lm", FAST, indirect=True)
def test_a_data_file_of_sources_equals_one_source_at_a_time(lm):
    """attribute_rows generates a chunk's targets in one padded `generate` (checked against
    one source alone): every row's target and attributions equal `attribute` alone."""
    from tokenprobe.analyses.attribute import rows

    rows._GENERATION.pop(lm.model, None)
    settings = dict(method="saliency", generate=4, progress=False)
    table = rows.attribute_rows(lm, SOURCES, **settings)
    assert table.meta["generation"] == rows.TOGETHER
    for i, source in enumerate(SOURCES):
        alone = tokenprobe.attribute(lm, source, **settings)
        row = table.result(i)
        assert row.meta["decoder_ids"] == alone.meta["decoder_ids"]
        assert [x["side"] for x in row.features] == [x["side"] for x in alone.features]
        np.testing.assert_allclose(row.scores, alone.scores, atol=1e-6, rtol=1e-5)
    one = rows.attribute_rows(lm, SOURCES[:1], **settings)
    assert one.meta["generation"] == "one source alone (nothing to generate together)"
    given = rows.attribute_rows(lm, SOURCES[:2], [TARGET, " hi"], method="ablation")
    assert "generation" not in given.meta
    alone = run(lm, method="ablation", source=SOURCES[0])
    assert given.result(0).meta["decoder_ids"] == alone.meta["decoder_ids"]
    np.testing.assert_allclose(given.result(0).scores, alone.scores, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("lm", ["t5"], indirect=True)
def test_generation_that_differs_padded_falls_back_to_one_source_alone(lm, monkeypatch):
    """Where padded generation writes another output than the source alone, each source is
    generated alone (the same targets as `attribute`), said once and in meta.json."""
    from tokenprobe.analyses.attribute import rows

    real = rows.generate_together

    def padded_differs(lm_, sources, prefix, n):
        made = real(lm_, sources, prefix, n)
        return [[*m[:-1], m[-1] + 1] for m in made] if len(sources) > 1 else made

    monkeypatch.setattr(rows, "generate_together", padded_differs)
    rows._GENERATION.pop(lm.model, None)
    with pytest.warns(tokenprobe.TokenprobeWarning, match="every source is generated alone"):
        table = rows.attribute_rows(lm, SOURCES, generate=3, method="saliency")
    assert table.meta["generation"].startswith("one source alone: generated with")
    for i, source in enumerate(SOURCES):
        alone = tokenprobe.attribute(lm, source, generate=3, method="saliency")
        assert table.result(i).meta["decoder_ids"] == alone.meta["decoder_ids"]
    rows._GENERATION.pop(lm.model, None)


@pytest.mark.parametrize("lm", ["t5"], indirect=True)
def test_a_bad_row_of_sources_is_one_line_naming_it(lm, tokenizer):
    from tokenprobe.analyses.attribute.rows import attribute_rows

    with pytest.raises(
        TokenprobeError, match=r"all 2 rows: an encoder-decoder has no chat template"
    ):
        attribute_rows(lm, ["A fox.", "B"], generate=2, chat=True)
    with pytest.raises(TokenprobeError, match=r"row 1: the prompt is empty"):
        attribute_rows(lm, ["A fox.", " "], generate=2)
    causal = zoo.make_causal("llama", tokenizer)
    with pytest.raises(TokenprobeError, match="target_lang is for encoder-decoder models"):
        attribute_rows(causal, ["hi"], generate=2, target_lang="de_DE")


def test_the_installed_command_on_a_data_file_of_sources(tokenizer, tmp_path):
    """`attribute --data FILE --generate N` on a saved Marian folder equals the library."""
    from tokenprobe.analyses.attribute.rows import attribute_rows

    made = _MODELS.get("marian") or zoo.make_seq2seq("marian", tokenizer)
    made.model.save_pretrained(tmp_path / "marian")
    made.tokenizer.save_pretrained(tmp_path / "marian")
    data = tmp_path / "sources.txt"
    data.write_text("\n".join(SOURCES) + "\n")
    out = tmp_path / "out"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("tokenprobe")), "attribute", "--model"]
        + [str(tmp_path / "marian"), "--data", str(data), "--generate", "3"]
        + ["--method", "saliency", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    frame = pd.read_parquet(out / "attribute.parquet")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["data_rows"] == 3 and meta["seq2seq"] and "generation" in meta
    want = attribute_rows(made, SOURCES, generate=3, method="saliency").to_frame()
    assert sorted(frame["row"].unique()) == [0, 1, 2]
    np.testing.assert_allclose(frame["score"], want["score"], atol=1e-5, rtol=1e-4)
    assert set(frame["side"]) == {"source", "target"}
