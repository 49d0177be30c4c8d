"""Past similarity against a brute-force numpy computation from the model's hidden states."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pandas as pd
import pytest
import test_bad_input
import test_cli
import torch
from test_bad_input import assert_one_error, run_any

from tokenprobe import TokenprobeError, past_similarity
from tokenprobe.analyses.similarity import (
    SimilarityFigure,
    SimilarityOptions,
    SimilarityResult,
    insert_markers,
)
from tokenprobe.loading import load_result

model_dir = test_cli.model_dir  # the tiny model folder the command-line cases run on
no_model_load = test_bad_input.no_model_load  # loading a model fails the test

# Named by hand so the reference does not share the adapter's discovery.
BLOCKS = {
    "LlamaForCausalLM": "model.layers",
    "Qwen2ForCausalLM": "model.layers",
    "Gemma2ForCausalLM": "model.layers",
    "GPT2LMHeadModel": "transformer.h",
    "GPTNeoXForCausalLM": "gpt_neox.layers",
}
TEXT = "Tools: hammer, wrench, level, pliers _PAUSE_ Fruits: orange, peach, banana, plum _PAUSE_"


def layer_states(lm, ids: list[int]) -> np.ndarray:
    """(layers, positions, hidden): hidden_states[0..L-1] plus the last block's own output."""
    captured = []
    handle = lm.model.get_submodule(BLOCKS[type(lm.model).__name__])[-1].register_forward_hook(
        lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        hs = lm.model(
            torch.tensor([ids], device=lm.device), output_hidden_states=True
        ).hidden_states
    handle.remove()
    states = [h[0] for h in hs[:-1]] + [captured[0][0]]
    return np.stack([h.cpu().numpy() for h in states]).astype(np.float64)


def brute(lm, ids, anchor, window, centre=False, skip_first=True, future=False):
    h = layer_states(lm, ids)
    if centre:
        h = h - (h[:, 1:] if skip_first else h).mean(axis=1, keepdims=True)
    out = np.full((h.shape[0], window), np.nan)
    for layer in range(h.shape[0]):
        for d in range(1, window + 1):
            q = anchor + d if future else anchor - d
            if 0 <= q < h.shape[1]:
                a, b = h[layer, anchor], h[layer, q]
                out[layer, d - 1] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return out


def ids_and_marker(lm, text):
    ids = lm.tokenizer(text)["input_ids"]
    return ids, lm.tokenizer.convert_tokens_to_ids("_PAUSE_")


@pytest.mark.parametrize("centre", [False, True])
def test_matches_brute_force(tiny, centre):
    with pytest.warns(UserWarning, match="untrained"):
        res = past_similarity(tiny, TEXT, occurrence=2, window=12, centre=centre)
    ids, marker = ids_and_marker(tiny, TEXT)
    anchor = [i for i, t in enumerate(ids) if t == marker][1]
    np.testing.assert_allclose(res.cosine, brute(tiny, ids, anchor, 12, centre=centre), atol=2e-5)
    assert res.tokens[anchor - [i for i, t in enumerate(ids) if t == marker][0] - 1] == "_PAUSE_"
    assert list(res.count) == [1] * 12
    assert res.layer_labels == [str(i) for i in range(tiny.model.config.num_hidden_layers + 1)]


def test_centre_with_first_position_and_future_direction(llama):
    res = past_similarity(
        llama,
        TEXT,
        occurrence=1,
        window=6,
        centre=True,
        centre_skip_first=False,
        direction="future",
    )
    ids, marker = ids_and_marker(llama, TEXT)
    anchor = ids.index(marker)
    np.testing.assert_allclose(
        res.cosine, brute(llama, ids, anchor, 6, True, False, future=True), atol=2e-5
    )


def test_padding_is_masked_not_zero(llama):
    text = "Tools _PAUSE_ hammer"
    res = past_similarity(llama, text, window=10)
    ids, marker = ids_and_marker(llama, text)
    anchor = ids.index(marker)
    assert anchor < 10
    assert np.isnan(res.cosine[:, anchor:]).all() and np.isfinite(res.cosine[:, :anchor]).all()
    assert list(res.count) == [1] * anchor + [0] * (10 - anchor)
    assert res.tokens[anchor:] == [None] * (10 - anchor)
    frame = res.to_frame()
    assert frame["cosine"].isna().sum() == (10 - anchor) * len(res.layer_labels)


def test_occurrence_counts_markers_in_order(llama):
    text = "a _PAUSE_ b c _PAUSE_ d e f _PAUSE_"
    res3 = past_similarity(llama, text, occurrence=3, window=3)
    ids, marker = ids_and_marker(llama, text)
    third = [i for i, t in enumerate(ids) if t == marker][2]
    np.testing.assert_allclose(res3.cosine, brute(llama, ids, third, 3), atol=2e-5)
    with pytest.raises(TokenprobeError, match="3 '_PAUSE_' marker\\(s\\), fewer than occurrence 4"):
        past_similarity(llama, text, occurrence=4)


def test_mean_over_texts_keeps_counts(llama):
    texts = ["a b c d _PAUSE_ e", "Tools _PAUSE_", "no marker here", "x y _PAUSE_ z _PAUSE_"]
    with pytest.warns(UserWarning, match="1 of 4 texts have fewer than 1"):
        res = past_similarity(llama, texts, window=6)
    per_text = []
    for text in texts:
        ids, marker = ids_and_marker(llama, text)
        if marker in ids:
            per_text.append(brute(llama, ids, ids.index(marker), 6))
    stack = np.stack(per_text)
    counts = np.isfinite(stack[:, 0, :]).sum(axis=0)
    np.testing.assert_array_equal(res.count, counts)
    with np.errstate(invalid="ignore"):
        expected = np.nansum(stack, axis=0) / counts
    expected[:, counts == 0] = np.nan
    np.testing.assert_allclose(res.cosine, expected, atol=2e-5)
    assert res.meta["texts_skipped"] == 1 and res.meta["texts_used"] == 3
    assert res.tokens == [None] * 6  # over a data set the x axis is distances


def test_resume_after_interruption_gives_the_same_mean(llama, tmp_path):
    texts = [f"{w} a b _PAUSE_ c {w}" for w in ("one", "two", "three", "four", "five")]
    full = past_similarity(llama, texts, window=4, centre=True)

    def stop(k):
        if k == 1:
            raise KeyboardInterrupt

    run = dict(window=4, centre=True, chunk_texts=2, checkpoint=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        past_similarity(llama, texts, **run, _after_chunk=stop)
    assert len(list((tmp_path / "similarity.partial").glob("part-*.npz"))) == 2
    with pytest.raises(TokenprobeError, match="pass resume"):
        past_similarity(llama, texts, **run)
    with pytest.raises(TokenprobeError, match=r"other settings \(different centre\)"):
        past_similarity(llama, texts, **{**run, "centre": False}, resume=True)
    with pytest.raises(TokenprobeError, match=r"other settings \(different texts\)"):
        past_similarity(llama, texts[::-1], **run, resume=True)
    seen = []
    resumed = past_similarity(llama, texts, **run, resume=True, _after_chunk=seen.append)
    assert seen == [2]  # only the fifth text was left
    # other batches pad differently, which moves float32 results by ~1e-7
    np.testing.assert_allclose(resumed.cosine, full.cosine, atol=1e-6)
    np.testing.assert_array_equal(resumed.count, full.count)
    assert not (tmp_path / "similarity.partial").exists()


def test_a_damaged_checkpoint_is_one_clear_error(llama, tmp_path):
    texts = ["a _PAUSE_ b", "c d _PAUSE_"]

    def stop(k):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        past_similarity(
            llama, texts, window=2, checkpoint=tmp_path, chunk_texts=1, _after_chunk=stop
        )
    folder = tmp_path / "similarity.partial"
    (folder / "part-00000.npz").write_bytes(b"cut off")
    with pytest.raises(
        TokenprobeError, match=r"part-00000.npz is damaged .* run again without resume"
    ):
        past_similarity(llama, texts, window=2, checkpoint=tmp_path, resume=True)
    (folder / "settings.json").write_text("{", encoding="utf-8")
    with pytest.raises(TokenprobeError, match=r"settings.json is damaged"):
        past_similarity(llama, texts, window=2, checkpoint=tmp_path, resume=True)


def test_inserted_markers_are_one_token_each(llama):
    text = "Tools: hammer, wrench. Fruits: orange, peach."
    every = insert_markers(llama, text, "_PAUSE_", every=3)
    after = insert_markers(llama, text, "_PAUSE_", after=".")
    past_similarity(llama, after, window=2)  # adds the marker to the tokenizer
    marker = llama.tokenizer.convert_tokens_to_ids("_PAUSE_")
    n_tokens = len(llama.tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = llama.tokenizer(every, add_special_tokens=False)["input_ids"]
    assert ids.count(marker) == n_tokens // 3 == every.count("_PAUSE_")
    assert [t for t in ids if t != marker] == llama.tokenizer(text, add_special_tokens=False)[
        "input_ids"
    ]
    assert llama.tokenizer(after, add_special_tokens=False)["input_ids"].count(marker) == 2
    res = past_similarity(llama, text, insert_after=".", occurrence=2, window=4)
    assert res.meta["options"]["insert_after"] == "."


def test_multi_token_marker_uses_its_last_token(llama):
    text = "one two ### three four ###"
    res = past_similarity(llama, text, marker="###", add_marker=False, window=3)
    ids = llama.tokenizer(text)["input_ids"]
    pattern = llama.tokenizer.encode("###", add_special_tokens=False)
    start = next(i for i in range(len(ids)) if ids[i : i + len(pattern)] == pattern)
    np.testing.assert_allclose(
        res.cosine, brute(llama, ids, start + len(pattern) - 1, 3), atol=2e-5
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"texts": "no marker at all"}, "the text has 0 '_PAUSE_' marker\\(s\\)"),
        ({"texts": ["none here", "nor here"]}, "none of the 2 texts has 1 '_PAUSE_' marker"),
        ({"texts": TEXT, "window": 0}, "window must be at least 1"),
        ({"texts": TEXT, "occurrence": 0}, "occurrence counts from 1"),
        ({"texts": [], "window": 3}, "the data set is empty"),
        ({"texts": TEXT, "direction": "sideways"}, "direction must be one of past, future"),
        ({"texts": "x " * 200 + "_PAUSE_"}, "longer than the model's context of 128"),
    ],
)
def test_bad_inputs(llama, kwargs, message):
    with pytest.raises(TokenprobeError, match=message):
        past_similarity(llama, **kwargs)


def test_save_load_roundtrip(llama, tmp_path):
    res = past_similarity(llama, "a b _PAUSE_ c", window=5, centre=True)
    res.save(tmp_path / "sim", formats=["png"])

    back = load_result(tmp_path / "sim")
    np.testing.assert_array_equal(back.cosine, res.cosine)
    np.testing.assert_array_equal(back.count, res.count)
    assert back.tokens == res.tokens and back.centre and back.marker == "_PAUSE_"
    assert (tmp_path / "sim" / "similarity.png").stat().st_size > 10_000


# ------------------------------------------------------------------- settings, declared once

NAN, INF = float("nan"), float("inf")
BAD_SETTINGS = {  # refused as `SimilarityOptions` is built: before the model does any work
    "a fraction for a count": ({"window": 2.5}, "`window` must be a whole number, not 2.5"),
    "True for a count": ({"occurrence": True}, "`occurrence` must be a whole number, not True"),
    "text for a count": ({"window": "3"}, "`window` must be a whole number, not '3'"),
    "nan for a count": ({"insert_every": NAN}, "`insert_every` must be a whole number, not nan"),
    "inf for a count": ({"chunk_texts": INF}, "`chunk_texts` must be a whole number, not inf"),
    "a count for a switch": ({"centre": 1}, "`centre` must be True or False, not 1"),
    "a number for text": ({"marker": 3}, "`marker` must be text, not 3"),
    "below a limit": ({"window": 0}, "`window` must be at least 1, not 0"),
    "below a limit, its own words": ({"occurrence": 0}, "`occurrence` counts from 1, not 0"),
    "no insert every 0 tokens": ({"insert_every": 0}, "`insert_every` must be at least 1, not 0"),
    "beyond an int64": ({"window": 2**63}, "`window` must be at most 9223372036854775807"),
    "outside the choices": (
        {"direction": "sideways"},
        "`direction` must be one of past, future, not 'sideways'",
    ),
    "batch_tokens": ({"batch_tokens": 0}, "`batch_tokens` must be at least 1, not 0"),
    "both ways of inserting": (
        {"insert_every": 2, "insert_after": "."},
        "give `insert_every` or `insert_after`, not both",
    ),
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_a_bad_setting_is_refused_naming_it(case):
    kwargs, message = BAD_SETTINGS[case]
    shown = re.escape(message.replace("`", ""))  # a Python caller reads the bare name
    with pytest.raises(TokenprobeError, match=shown) as caught:
        past_similarity(None, TEXT, **kwargs)  # no model: refused before any is used
    assert message in caught.value.template  # the parameter named, for the flag to replace
    with pytest.raises(TokenprobeError, match=shown):
        SimilarityOptions(**kwargs)


def _tiny_result() -> SimilarityResult:
    cosine = np.array([[0.5, -0.25], [0.1, np.nan]], dtype=np.float32)
    return SimilarityResult(
        layer_labels=["0", "1"],
        cosine=cosine,
        count=np.array([1, 0]),
        tokens=[None, None],
        marker="_PAUSE_",
        occurrence=1,
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (NAN, "vmax must be a finite number, not nan"),
        (INF, "vmax must be a finite number, not inf"),
        (-INF, "vmax must be a finite number, not -inf"),
        (True, "vmax must be a number, not True"),
        ("1", "vmax must be a number, not '1'"),
        (0.0, "vmax must be above 0, not 0"),
    ],
)
def test_a_bad_figure_setting_is_refused_naming_it(value, message):
    with pytest.raises(TokenprobeError, match=re.escape(message)):
        _tiny_result().views(vmax=value)
    with pytest.raises(TokenprobeError, match=re.escape(message)):
        SimilarityFigure(vmax=value)
    with pytest.raises(TypeError, match="no such setting"):
        _tiny_result().views(colour="diff")


def test_figure_settings_as_an_object_or_as_keywords_draw_the_same():
    result = _tiny_result()
    ((_, by_object),) = result.views(SimilarityFigure(vmax=2.0, title="T", cmap="magma"))
    ((_, by_keywords),) = result.views(vmax=2.0, title="T", cmap="magma")
    assert (by_object.vmin, by_object.vmax, by_object.title, by_object.cmap) == (
        -2.0,
        2.0,
        "T",
        "magma",
    )
    assert (by_keywords.vmin, by_keywords.vmax, by_keywords.title) == (-2.0, 2.0, "T")
    ((_, default),) = result.views()
    assert default.vmax == 0.5 and default.cmap == "viridis"


def test_options_as_an_object_equal_the_same_settings_as_keywords(llama):
    settings = {"window": 5, "centre": True, "direction": "future", "occurrence": 1}
    by_object = past_similarity(llama, TEXT, options=SimilarityOptions(**settings))
    by_keywords = past_similarity(llama, TEXT, **settings)
    pd.testing.assert_frame_equal(by_object.to_frame(), by_keywords.to_frame())
    assert by_object.meta["options"] == by_keywords.meta["options"]
    # keywords given with `options` replace its settings
    both = past_similarity(llama, TEXT, options=SimilarityOptions(window=3), **settings)
    pd.testing.assert_frame_equal(both.to_frame(), by_keywords.to_frame())
    signature = inspect.signature(past_similarity).parameters
    assert signature["window"].default == 16 and signature["marker"].default == "_PAUSE_"
    with pytest.raises(TypeError, match="unexpected keyword argument 'windows'"):
        past_similarity(llama, TEXT, windows=3)


BAD_FLAGS = {  # one line naming the flag, exit status 2, the model never loaded
    "--window 2.5": (["--window", "2.5"], "argument --window: expected a whole number, not '2.5'"),
    "--window nan": (["--window", "nan"], "argument --window: expected a whole number, not 'nan'"),
    "--window 0": (["--window", "0"], "--window must be at least 1, not 0"),
    "--occurrence 0": (["--occurrence", "0"], "--occurrence counts from 1, not 0"),
    "--insert-every 0": (["--insert-every", "0"], "--insert-every must be at least 1, not 0"),
    "--insert-every -2": (["--insert-every", "-2"], "--insert-every must be at least 1, not -2"),
    "--direction sideways": (
        ["--direction", "sideways"],
        "argument --direction: invalid choice: 'sideways'",
    ),
    "--batch-tokens inf": (
        ["--batch-tokens", "inf"],
        "argument --batch-tokens: expected a whole number, not 'inf'",
    ),
    "both ways of inserting": (
        ["--insert-every", "2", "--insert-after", "."],
        "give --insert-every or --insert-after, not both",
    ),
}


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_a_bad_flag_is_one_line_before_the_model_loads(
    case, model_dir, tmp_path, capsys, no_model_load
):
    argv, message = BAD_FLAGS[case]
    code, _, err = run_any(
        capsys,
        "similarity",
        "--model",
        str(model_dir),
        "--out",
        str(tmp_path / "o"),
        "--text",
        "a b _PAUSE_ c",
        *argv,
    )
    assert_one_error(code, err, message)
