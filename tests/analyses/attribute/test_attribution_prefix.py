"""Attribution's prefix continuation on one model: Shapley continued equals Shapley whole, a
continuation that differs falls back (said once, the scores unchanged), and the command line's
--no-prefix-cache runs every prompt whole (the zoo-wide run: test_attribution_prefix_zoo.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zoo
from conftest import TEST_DEVICE

import tokenprobe
from tokenprobe.errors import TokenprobeWarning
from tokenprobe.prefix import CONTINUED, Prefix

PROMPT = "the hammer was fine and the saw was sharp, but the drill broke on the first day"
TARGET = " and then"


@pytest.fixture(scope="module")
def lm(tokenizer):
    return zoo.make_causal("llama", tokenizer, device=TEST_DEVICE)


def _run(lm, **settings):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tokenprobe.attribute(lm, PROMPT, target=TARGET, progress=False, **settings)
    said = [str(w.message) for w in caught if issubclass(w.category, TokenprobeWarning)]
    return res, [m for m in said if "earlier positions of each perturbed copy" in m]


def test_shapley_continued_equals_shapley_whole(lm):
    settings = dict(method="shapley", samples=3, seed=1)
    whole, _ = _run(lm, reuse_prefix=False, **settings)
    got, said = _run(lm, **settings)
    assert np.abs(whole.scores).max() > 0.05
    np.testing.assert_allclose(got.scores, whole.scores, atol=3e-4, rtol=1e-3)
    assert (
        got.meta["earlier_positions"] in (CONTINUED,)
        or "would not save work" in (got.meta["earlier_positions"])
    )
    assert not said


def test_a_continuation_that_differs_falls_back(lm, monkeypatch):
    """A cache whose last layer's values are off (as a cache of another prompt would be) is
    caught by the checks: the scores equal the whole prompts', and the note says which prefix
    length failed."""
    whole, _ = _run(lm, method="ablation", reuse_prefix=False)
    made = Prefix._cache
    monkeypatch.setattr(Prefix, "_cache", lambda *a: _doubled_values(made(*a)))
    got, said = _run(lm, method="ablation")
    np.testing.assert_allclose(got.scores, whole.scores, atol=3e-4, rtol=1e-3)
    note = got.meta["earlier_positions"]
    assert note.startswith("recomputed after continuing from the cache of"), note
    assert len(said) == 1, said


def _doubled_values(cache):
    last = cache.layers[-1]
    last.values = last.values * 2
    return cache


def test_the_command_line_turns_it_off(lm, tmp_path):
    """--no-prefix-cache reaches the run (meta.json says so) and changes no score."""
    import json

    from tokenprobe.cli import main

    folder = tmp_path / "llama"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    outs = {}
    for name, extra in (("on", []), ("off", ["--no-prefix-cache"])):
        out = tmp_path / name
        argv = ["attribute", "--model", str(folder), "--prompt", PROMPT, "--target", TARGET]
        assert main([*argv, "--method", "ablation", *extra, "--out", str(out)]) in (0, None)
        outs[name] = json.loads((out / "meta.json").read_text())
    assert outs["on"]["earlier_positions"] == CONTINUED
    assert outs["off"]["earlier_positions"].startswith("recomputed: the prefix cache")
