"""Attribution against captum (which we did not write), exact Shapley values, and brute force."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_bad_input import assert_one_error, no_model_load, run_any  # noqa: F401  (fixture)

import tokenprobe
from tokenprobe import TokenprobeError, attribute

PROMPT = "Tools: hammer, wrench, level, pliers. Fruits: orange, peach"
TARGET = ", banana, plum."
SPANS = ["hammer", "wrench", "level", "orange"]


def teacher_forced(model, prompt_ids: torch.Tensor, target_ids: list[int]) -> torch.Tensor:
    """(B, m) log-probabilities of the target tokens after each prompt, by hand."""
    tgt = torch.tensor(target_ids, device=prompt_ids.device).expand(prompt_ids.shape[0], -1)
    logits = model(torch.cat([prompt_ids, tgt], dim=1)).logits
    n = prompt_ids.shape[1]
    logp = torch.log_softmax(logits[:, n - 1 : -1].float(), dim=-1)
    return logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)


def ids_of(lm, text):
    return lm.tokenizer(text)["input_ids"]


def feature_mask(res, n: int, device: torch.device) -> torch.Tensor:
    """captum's feature mask: our features 0..F-1, every other token in group F."""
    mask = torch.full((1, n), len(res.features), dtype=torch.long, device=device)
    for f, feat in enumerate(res.features):
        mask[0, feat["positions"]] = f
    return mask


def test_ablation_equals_captum_feature_ablation(tiny):
    from captum.attr import FeatureAblation

    res = attribute(tiny, PROMPT, target=TARGET, features=SPANS, method="ablation", baseline="pad")
    prompt = torch.tensor([ids_of(tiny, PROMPT)], device=tiny.device)
    target = tiny.tokenizer.encode(TARGET, add_special_tokens=False)
    with torch.no_grad():
        fa = FeatureAblation(lambda ids: teacher_forced(tiny.model, ids, target))
        mask = feature_mask(res, prompt.shape[1], tiny.device)
        for r in range(len(target)):
            theirs = fa.attribute(
                prompt, baselines=tiny.tokenizer.pad_token_id, target=r, feature_mask=mask
            )
            per_feature = [
                float(theirs[0, res.features[f]["positions"][0]]) for f in range(len(SPANS))
            ]
            np.testing.assert_allclose(res.scores[r], per_feature, atol=2e-5, rtol=1e-4)


def test_integrated_gradients_match_captum_layer_ig(tiny):
    from captum.attr import LayerIntegratedGradients

    res = attribute(
        tiny, PROMPT, target=TARGET, method="integrated_gradients", steps=16, ig_baseline="pad"
    )
    prompt = torch.tensor([ids_of(tiny, PROMPT)], device=tiny.device)
    target = tiny.tokenizer.encode(TARGET, add_special_tokens=False)
    lig = LayerIntegratedGradients(
        lambda ids: teacher_forced(tiny.model, ids, target), tiny.model.get_input_embeddings()
    )
    baseline = torch.full_like(prompt, tiny.tokenizer.pad_token_id)
    for r in range(len(target)):
        theirs = lig.attribute(
            prompt, baselines=baseline, target=r, n_steps=16, method="gausslegendre"
        )
        # the layer's output covers the target tokens too; they are not interpolated (zero)
        per_token = theirs[0].sum(-1).detach().cpu().numpy()
        assert np.all(per_token[prompt.shape[1] :] == 0)
        per_token = per_token[: prompt.shape[1]]
        scale = max(1.0, float(np.abs(per_token).max()))
        np.testing.assert_allclose(res.scores[r], per_token, atol=2e-4 * scale, rtol=2e-3)


def test_16_bit_weights_warn_that_rounding_blurs_small_scores(llama):
    llama.model.to(torch.bfloat16)
    with pytest.warns(UserWarning, match="load the model in float32") as caught:
        res = attribute(llama, PROMPT, target=TARGET, features=SPANS, method="ablation")
    assert caught[0].filename == __file__  # the caller's line, past the settings' wrapper
    assert res.scores.dtype == np.float64 and np.isfinite(res.scores).all()


def test_batched_backward_gives_the_per_row_gradients(llama, monkeypatch):
    """The GPU's single vmapped backward (forced here on the CPU) equals one backward per row,
    for grouped rows and for probability scores too."""
    from tokenprobe.analyses.attribute import gradients as attr_module

    kwargs = dict(target=TARGET, features=SPANS, target_spans=[", banana", " plum."], steps=4)
    for score in ("logprob", "prob"):
        loop = attribute(llama, PROMPT, method="integrated_gradients", score=score, **kwargs)
        monkeypatch.setattr(attr_module, "_batched_backward", lambda device: True)
        batched = attribute(llama, PROMPT, method="integrated_gradients", score=score, **kwargs)
        monkeypatch.undo()
        np.testing.assert_allclose(batched.scores, loop.scores, rtol=1e-5, atol=1e-7)


def test_gradients_fall_back_to_the_models_own_logits(llama, monkeypatch):
    """Where the adapter cannot rebuild the model's logits, the gradient path decodes with the
    model itself and gets the same attributions (rows grouped, so row sums are covered too)."""
    kwargs = dict(target=TARGET, features=SPANS, target_spans=[", banana", " plum."], steps=8)
    ref = attribute(llama, PROMPT, method="integrated_gradients", **kwargs)
    adapter_cls = type(llama.require_adapter())
    vocab = llama.model.config.vocab_size
    monkeypatch.setattr(
        adapter_cls, "logits", lambda self, h, apply_norm=True: h.new_zeros(*h.shape[:-1], vocab)
    )
    res = attribute(llama, PROMPT, method="integrated_gradients", **kwargs)
    assert res.scores.shape == (2, len(SPANS))
    np.testing.assert_allclose(res.scores, ref.scores, rtol=1e-4, atol=1e-6)
    gaps = [r.meta["method_details"]["completeness_gap"] for r in (res, ref)]
    np.testing.assert_allclose(gaps[0], gaps[1], rtol=1e-4, atol=1e-6)


def test_gradient_methods_against_autograd_by_hand(llama):
    prompt = ids_of(llama, PROMPT)
    target = llama.tokenizer.encode(TARGET, add_special_tokens=False)
    emb = (
        llama.model.get_input_embeddings()(torch.tensor([prompt], device=llama.device))
        .detach()
        .requires_grad_(True)
    )
    tgt_emb = llama.model.get_input_embeddings()(
        torch.tensor([target], device=llama.device)
    ).detach()
    logits = llama.model(inputs_embeds=torch.cat([emb, tgt_emb], dim=1)).logits
    n = len(prompt)
    logp = torch.log_softmax(logits[0, n - 1 : -1], dim=-1)
    (grad,) = torch.autograd.grad(logp[2, target[2]], emb)
    sal = attribute(llama, PROMPT, target=TARGET, method="saliency")
    ixg = attribute(llama, PROMPT, target=TARGET, method="input_x_gradient")
    np.testing.assert_allclose(
        sal.scores[2], grad[0].abs().sum(-1).cpu().numpy(), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        ixg.scores[2], (grad[0] * emb[0]).sum(-1).detach().cpu().numpy(), rtol=1e-4, atol=1e-6
    )


def test_ig_completeness_gap_shrinks_with_steps(llama):
    gaps = []
    for steps in (2, 4, 8, 64):
        res = attribute(
            llama, PROMPT, target=TARGET, features=SPANS, method="integrated_gradients", steps=steps
        )
        gaps.append(res.meta["method_details"]["completeness_gap_max_abs"])
    assert res.meta["method_details"]["ig_baseline"] == "unk"
    assert gaps[3] < gaps[2] < gaps[1] < gaps[0]
    assert gaps[3] < 1e-3 * max(abs(d) for d in res.meta["method_details"]["score_difference"])


def test_zero_baseline_is_reported_when_it_does_not_converge(llama):
    # The path from an all-zero embedding passes where RMSNorm divides by ~0: the gap stays
    # large at any step count, and the result says so instead of hiding it.
    res = attribute(
        llama, PROMPT, target=TARGET, method="integrated_gradients", steps=64, ig_baseline="zero"
    )
    assert res.meta["method_details"]["completeness_gap_max_abs"] > 0.1


def _subset_values(lm, features, target) -> dict[frozenset, np.ndarray]:
    """Row scores with only the features of each subset present (removal baseline), by hand."""
    prompt = ids_of(lm, PROMPT)
    out = {}
    for k in range(len(features) + 1):
        for subset in itertools.combinations(range(len(features)), k):
            drop = {
                p for f in range(len(features)) if f not in subset for p in features[f]["positions"]
            }
            ids = torch.tensor(
                [[t for i, t in enumerate(prompt) if i not in drop]], device=lm.device
            )
            with torch.no_grad():
                out[frozenset(subset)] = teacher_forced(lm.model, ids, target)[0].cpu().numpy()
    return out


def exact_shapley(lm, features, target) -> np.ndarray:
    """Shapley values from the subset formula (not the permutation one the code uses)."""
    n = len(features)
    v = _subset_values(lm, features, target)
    phi = np.zeros((len(target), n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for subset in itertools.combinations(others, k):
                weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                phi[:, i] += weight * (v[frozenset(subset) | {i}] - v[frozenset(subset)])
    return phi


def test_shapley_equals_exact_enumeration_for_4_features(llama):
    res = attribute(llama, PROMPT, target=TARGET, features=SPANS, method="shapley", samples=24)
    assert res.meta["method_details"]["exact"] is True
    target = llama.tokenizer.encode(TARGET, add_special_tokens=False)
    np.testing.assert_allclose(res.scores, exact_shapley(llama, res.features, target), atol=2e-5)
    np.testing.assert_array_equal(res.stderr, 0)


def test_sampled_shapley_is_efficient_and_within_its_error(llama):
    spans = SPANS + ["pliers", "peach"]
    res = attribute(
        llama, PROMPT, target=TARGET, features=spans, method="shapley", samples=60, seed=3
    )
    assert res.meta["method_details"]["exact"] is False
    target = llama.tokenizer.encode(TARGET, add_special_tokens=False)
    v = _subset_values(llama, res.features, target)
    # efficiency: the values add up to f(all) - f(none), exactly for every permutation
    np.testing.assert_allclose(
        res.scores.sum(axis=1), v[frozenset(range(6))] - v[frozenset()], atol=1e-5
    )
    exact = exact_shapley(llama, res.features, target)
    z = np.abs(res.scores - exact) / np.maximum(res.stderr, 1e-9)
    assert (z < 3.5).mean() > 0.9
    again = attribute(
        llama, PROMPT, target=TARGET, features=spans, method="shapley", samples=60, seed=3
    )
    np.testing.assert_array_equal(again.scores, res.scores)  # seeded


class StopAfter:
    """A batch hook that interrupts the run after `n` model batches, as Ctrl-C would."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("method", "kwargs", "stop", "changed"),
    [
        ("shapley", {"samples": 12, "seed": 1, "batch_tokens": 60}, 4, {"seed": 2}),
        ("integrated_gradients", {"steps": 8, "batch_tokens": 100}, 2, {"steps": 16}),
    ],
)
def test_interrupted_attribution_resumes_without_recomputing(
    llama, tmp_path, method, kwargs, stop, changed
):
    run = dict(target=TARGET, features=SPANS + ["pliers"], method=method, **kwargs)
    full = attribute(llama, PROMPT, **run)
    with pytest.raises(KeyboardInterrupt):
        attribute(llama, PROMPT, **run, checkpoint=tmp_path, _after_batch=StopAfter(stop))
    partial = tmp_path / "attribute.partial"
    assert list(partial.glob("part-*.npz"))  # what was finished is on disk
    with pytest.raises(TokenprobeError, match="pass resume"):
        attribute(llama, PROMPT, **run, checkpoint=tmp_path)
    name = next(iter(changed))
    with pytest.raises(TokenprobeError, match=f"other settings \\(different {name}\\)"):
        attribute(llama, PROMPT, **{**run, **changed}, checkpoint=tmp_path, resume=True)
    resumed = attribute(llama, PROMPT, **run, checkpoint=tmp_path, resume=True)
    assert 0 < resumed.meta["forward_passes"] < full.meta["forward_passes"] - stop + 2
    # other batches pad differently, which moves float32 results by ~1e-7
    np.testing.assert_allclose(resumed.scores, full.scores, atol=1e-5)
    np.testing.assert_allclose(resumed.target_scores, full.target_scores, atol=1e-5)
    assert not partial.exists()


def test_bad_method_options_leave_no_checkpoint_behind(llama, tmp_path):
    run = dict(target=TARGET, features=SPANS, method="integrated_gradients", checkpoint=tmp_path)
    with pytest.raises(TokenprobeError, match="steps must be at least 1"):
        attribute(llama, PROMPT, **run, steps=0)
    assert not (tmp_path / "attribute.partial").exists()
    attribute(llama, PROMPT, **run, steps=4)  # the corrected command needs no --resume


def test_occlusion_window_one_equals_token_ablation(llama):
    occ = attribute(llama, PROMPT, target=TARGET, method="occlusion", window=1, baseline="unk")
    abl = attribute(llama, PROMPT, target=TARGET, method="ablation", baseline="unk")
    np.testing.assert_allclose(occ.scores, abl.scores, atol=1e-6)
    wide = attribute(llama, PROMPT, target=TARGET, method="occlusion", window=3, stride=2)
    assert wide.meta["method_details"]["windows"] == len(ids_of(llama, PROMPT)) // 2


def test_batched_scores_equal_one_at_a_time(tiny):
    from tokenprobe.analyses.attribute import Problem, build_features

    prompt = ids_of(tiny, PROMPT)
    target = tiny.tokenizer.encode(TARGET, add_special_tokens=False)
    feats = build_features(tiny.tokenizer, prompt, PROMPT, [(0, 0)] * len(prompt), None)
    pb = Problem(tiny, prompt, target, feats, [[j] for j in range(len(target))], [""] * len(target))
    prompts = [prompt, prompt[:4], prompt[2:], prompt[:-3]]
    together = pb.score_prompts(prompts).numpy()
    for p, row in zip(prompts, together, strict=True):
        with torch.no_grad():
            alone = teacher_forced(tiny.model, torch.tensor([p], device=tiny.device), target)
            alone = alone[0].cpu().numpy()
        np.testing.assert_allclose(row, alone, atol=2e-5)


def test_target_spans_group_rows(llama):
    tokens = attribute(llama, PROMPT, target=TARGET, features=SPANS, method="ablation")
    spans = attribute(
        llama,
        PROMPT,
        target=TARGET,
        features=SPANS,
        method="ablation",
        target_spans=["banana", "plum"],
    )
    assert spans.rows == ["banana", "plum"]
    for r, positions in enumerate(spans.row_positions):
        np.testing.assert_allclose(spans.scores[r], tokens.scores[positions].sum(axis=0), atol=1e-5)
    probs = attribute(llama, PROMPT, target=TARGET, features=SPANS, score="prob")
    np.testing.assert_allclose(probs.target_scores, np.exp(tokens.target_scores), rtol=1e-5)


def test_generate_uses_the_greedy_continuation(llama):
    res = attribute(llama, PROMPT, generate=4, method="ablation", features=SPANS)
    ids = torch.tensor([ids_of(llama, PROMPT)], device=llama.device)
    with torch.no_grad():
        out = llama.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False
        )
    assert res.meta["target_ids"] == out[0, ids.shape[1] :].tolist()
    assert len(res.rows) == 4


def test_every_prompt_token_is_a_feature_without_spans(llama):
    res = attribute(llama, PROMPT, target=TARGET, method="ablation")
    assert len(res.features) == len(ids_of(llama, PROMPT))
    assert "".join(f["text"] for f in res.features) == PROMPT


def test_a_result_saved_under_the_old_kind_attr_still_loads_and_is_replaced_whole(llama, tmp_path):
    """Before the one-name rename the kind was `attr` (attr.parquet, attr.png): such a folder
    loads, and saving over it leaves none of its old files behind."""
    res = attribute(llama, PROMPT, target=TARGET, method="ablation")
    old = tmp_path / "old"
    res.save(old)
    meta = json.loads((old / "meta.json").read_text())
    for ext in ("parquet", "png"):
        (old / f"attribute.{ext}").rename(old / f"attr.{ext}")
    meta.update(kind="attr", files=["attr.parquet", "meta.json", "attr.png"])
    (old / "meta.json").write_text(json.dumps(meta))
    back = tokenprobe.load_result(old)
    assert isinstance(back, tokenprobe.AttributionResult)
    np.testing.assert_array_equal(back.scores, res.scores)
    res.save(old, overwrite=True)
    assert sorted(p.name for p in old.iterdir()) == [
        "attribute.parquet",
        "attribute.png",
        "meta.json",
    ]


def test_save_load_and_figure(llama, tmp_path):
    res = attribute(llama, PROMPT, target=TARGET, features=SPANS, method="shapley", samples=10)
    res.save(tmp_path / "attr", formats=["png", "svg"])
    back = tokenprobe.load_result(tmp_path / "attr")
    np.testing.assert_array_equal(back.scores, res.scores)
    np.testing.assert_array_equal(back.stderr, res.stderr)
    assert back.rows == res.rows and [f["text"] for f in back.features] == SPANS
    frame = back.to_frame()
    assert {
        "feature_text",
        "feature_start",
        "feature_end",
        "target",
        "score",
        "stderr",
        "method",
    } <= set(frame.columns)
    assert PROMPT[frame.feature_start[0] : frame.feature_end[0]] == "hammer"
    fig = res.plot()
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert f"{res.scores[0, 0]:.4f}" in texts and len(texts) == res.scores.size
    assert fig.axes[1].get_ylabel() == "Token Attribution"
    lo, hi = fig.axes[0].collections[0].get_clim()
    assert lo == -hi == pytest.approx(-np.abs(res.scores).max())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": ["hammer", "drill"]}, "features 'drill' is not in the prompt"),
        ({"features": ["hammer, wrench", "wrench"]}, "spans 'hammer, wrench' and 'wrench' overlap"),
        ({"target": "  "}, "the target is empty"),
        (
            {"method": "lime"},
            "unknown method 'lime': use one of ablation, shapley, occlusion, saliency",
        ),
        ({"target": " word" * 130}, "longer than the model's context of 128"),
        ({"target_spans": ["kiwi"]}, "target_spans 'kiwi' is not in the target"),
        ({"generate": 3}, "give a target to score or generate N"),
    ],
)
def test_bad_inputs(llama, kwargs, message):
    args = {"target": TARGET, **kwargs}
    with pytest.raises(TokenprobeError, match=message) as err:
        attribute(llama, PROMPT, **args)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ settings (issue 25)

BAD_SETTINGS = [
    ({"samples": 2.5}, "`samples` must be a whole number, not 2.5"),
    ({"steps": True}, "`steps` must be a whole number, not True"),
    ({"window": "3"}, "`window` must be a whole number, not '3'"),
    ({"samples": float("nan")}, "`samples` must be a whole number, not nan"),
    ({"stride": float("inf")}, "`stride` must be a whole number, not inf"),
    ({"steps": 0}, "`steps` must be at least 1, not 0"),
    ({"samples": 0}, "`samples` must be at least 1, not 0"),
    ({"target": None, "generate": 0}, "`generate` must be at least 1, not 0"),
    ({"seed": -1}, "`seed` must be at least 0, not -1"),
    ({"seed": 2**63}, "`seed` must be at most 9223372036854775807"),
    ({"batch_tokens": 0}, "`batch_tokens` must be at least 1, not 0"),
    ({"ig_baseline": "ones"}, "`ig_baseline` must be one of unk, pad, zero, not 'ones'"),
    ({"score": "odds"}, "`score` must be one of logprob, prob, not 'odds'"),
    ({"chat": 1}, "`chat` must be True or False, not 1"),
    ({"foil": 3}, "`foil` must be text, not 3"),
    ({"method": "lime"}, "unknown method 'lime': use one of ablation, shapley, occlusion"),
    ({"baseline": ""}, "`baseline` must be one of remove, pad, unk, mask or a replacement"),
    (
        {"generate": 2},
        "give a `target` to score or `generate` N to attribute the model's own answer, not both",
    ),
]


@pytest.mark.parametrize(("values", "words"), BAD_SETTINGS)
def test_a_bad_setting_is_refused_before_any_model_work(values, words):
    """Refused as the settings are built: no model is needed to find out (None stands in)."""
    from tokenprobe import attribute_rows
    from tokenprobe.analyses.attribute import AttributionOptions

    settings = {"target": TARGET, **values}
    message = words.replace("`", "")
    for call in (
        lambda: attribute(None, PROMPT, **settings),
        lambda: attribute_rows(None, [PROMPT], **settings),
        lambda: AttributionOptions(**settings),
    ):
        with pytest.raises(TokenprobeError) as err:
            call()
        assert message in str(err.value) and "\n" not in str(err.value)


def test_options_must_be_attribution_options():
    with pytest.raises(TokenprobeError, match="options must be AttributionOptions, not dict"):
        attribute(None, PROMPT, options={"target": TARGET})
    with pytest.raises(TypeError, match="'sample'"):  # a misspelt setting, as for any keyword
        attribute(None, PROMPT, target=TARGET, sample=3)


def test_options_object_equals_keywords(llama):
    from tokenprobe import attribute_rows
    from tokenprobe.analyses.attribute import AttributionOptions

    run = {"target": TARGET, "features": SPANS, "method": "shapley", "samples": 6, "seed": 3}
    by_keywords = attribute(llama, PROMPT, **run)
    by_object = attribute(llama, PROMPT, options=AttributionOptions(**run))
    both = attribute(  # the keywords replace the object's settings
        llama,
        PROMPT,
        options=AttributionOptions(**{**run, "seed": 9, "samples": 2}),
        seed=3,
        samples=6,
    )
    for res in (by_object, both):
        np.testing.assert_array_equal(res.scores, by_keywords.scores)
        np.testing.assert_array_equal(res.stderr, by_keywords.stderr)
        assert res.meta["options"] == by_keywords.meta["options"]
    assert by_keywords.meta["options"]["spans"] == SPANS  # meta.json's names, as before
    prompts = [PROMPT, "Tools: hammer, wrench. Fruits: kiwi"]
    rows = {"method": "ablation", "features": ["hammer", "wrench"], "progress": False}
    kw = attribute_rows(llama, prompts, [TARGET, " plum"], **rows)
    obj = attribute_rows(
        llama,
        prompts,
        [TARGET, " plum"],
        options=AttributionOptions(method="ablation", features=["hammer", "wrench"]),
        progress=False,
    )
    pd.testing.assert_frame_equal(obj.frame, kw.frame)


def test_the_signatures_show_every_setting_with_its_default():
    import inspect

    from tokenprobe import attribute_rows

    for func in (attribute, attribute_rows):
        params = inspect.signature(func).parameters
        assert params["samples"].default == 64 and params["ig_baseline"].default == "unk"
        assert params["method"].default == "ablation" and params["batch_tokens"].default == 4096
        assert params["options"].default is None and params["checkpoint"].default is None


def test_figure_settings_object_equals_keywords(llama, tmp_path):
    from tokenprobe.analyses.attribute import AttributionFigure

    res = attribute(llama, PROMPT, target=TARGET, features=SPANS, method="ablation")
    ((_, by_keywords),) = res.views(cmap="viridis", title="T", annotate=False)
    ((_, by_object),) = res.views(AttributionFigure(cmap="viridis", title="T", annotate=False))
    for view in (by_keywords, by_object):
        assert (view.cmap, view.title, view.annotate) == ("viridis", "T", False)
    with pytest.raises(TokenprobeError, match="annotate must be True or False, not 'yes'"):
        res.views(annotate="yes")
    with pytest.raises(TypeError, match="'zoom'"):
        res.views(zoom="0:2")
    # a folder saved by the previous version: meta.json's plot_options drawn as they were
    res.save(tmp_path / "a", formats=["png"], plot_options={"cmap": "magma", "title": "old"})
    back = tokenprobe.load_result(tmp_path / "a")
    ((_, view),) = back.views(**back.meta["plot_options"])
    assert (view.cmap, view.title) == ("magma", "old")
    assert back.sections()[0]["kind"] == "attribute"


CLI_PROMPT = ["attribute", "--prompt", "Tools: hammer, wrench"]
BAD_FLAGS = [
    (
        ["--target", " x", "--samples", "2.5"],
        "argument --samples: expected a whole number, not '2.5'",
    ),
    (["--target", " x", "--steps", "nan"], "argument --steps: expected a whole number, not 'nan'"),
    (["--target", " x", "--window", "0"], "argument --window: must be at least 1, not 0"),
    (["--generate", "0"], "argument --generate: must be at least 1, not 0"),
    (["--target", " x", "--seed", "-1"], "argument --seed: must be at least 0, not -1"),
    (["--target", " x", "--ig-baseline", "ones"], "argument --ig-baseline: invalid choice: 'ones'"),
    (["--target", " x", "--score", "odds"], "argument --score: invalid choice: 'odds'"),
    (["--target", " x", "--method", "lime"], "unknown method 'lime': use one of ablation, shapley"),
    (["--target", " x", "--baseline", ""], "--baseline must be one of remove, pad, unk, mask"),
    (["--target", " x", "--generate", "2"], "give a --target to score or --generate N to"),
    (["--target", " x", "--batch-tokens", "0"], "argument --batch-tokens: must be at least 1"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS)
def test_a_bad_flag_is_one_line_before_the_model_loads(
    argv, message, capsys, tmp_path, no_model_load
):
    code, _, err = run_any(capsys, *CLI_PROMPT, *argv, "--out", str(tmp_path / "o"))
    assert_one_error(code, err, message)
