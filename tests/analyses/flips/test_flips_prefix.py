"""Prompted flip rates continue each perturbed copy from its unperturbed text's key/value cache
(tokenprobe/prefix): on families with rotary, learned and ALiBi positions and sliding windows,
every copy's verbaliser logits equal one full forward of its whole prompt, batched and one
copy at a time, and the flips equal a run of whole copies; a cache that cannot continue, a
continuation that does not match, or one that saves no work runs whole copies and says why."""

from __future__ import annotations

import itertools
import random
import warnings

import numpy as np
import pytest
import zoo
from conftest import TEST_DEVICE, make_tokenizer
from prefix_ref import TEMPLATE, TEXTS, WORDS, copies, whole

import tokenprobe
from tokenprobe import PromptedClassifier
from tokenprobe.errors import TokenprobeWarning
from tokenprobe.prefix import CACHED_COST, CONTINUED, Prefix, split, tiles


@pytest.fixture(scope="module")
def bpe():
    return make_tokenizer()


def _scores(clf, ids, bases, budget):
    clf.begin_run()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = clf.scores(ids, budget, bases)
    said = [str(w.message) for w in caught if issubclass(w.category, TokenprobeWarning)]
    return got, said


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bloom", "mistral-sliding", "gemma2"])
@pytest.mark.parametrize("perturbation", ["delete", "filler", "mask"])
def test_every_continued_copy_equals_its_full_forward(arch, perturbation, bpe):
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE)
    clf = PromptedClassifier(lm, WORDS, template=TEMPLATE)
    ids, bases = copies(clf, perturbation)
    ref = whole(clf, ids)
    assert np.ptp(ref, axis=0).max() > 1e-2  # the copies differ, so equality means something
    for budget in (4096, 1):
        got, said = _scores(clf, ids, bases, budget)
        np.testing.assert_allclose(got, ref, atol=2e-4, err_msg=f"budget {budget}")
        assert clf.prefix_note() == CONTINUED and not said, (clf.prefix_note(), said)


def test_flip_rates_record_it_and_flip_as_whole_copies_do(bpe):
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE)
    clf = PromptedClassifier(lm, WORDS, template=TEMPLATE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = tokenprobe.flip_rates(clf, TEXTS, perturbation="delete", progress=False)
        clf.continue_copies = False
        plain = tokenprobe.flip_rates(clf, TEXTS, perturbation="delete", progress=False)
    assert res.meta["earlier_positions"] == CONTINUED
    assert "continued from its text's cache" in res.meta["batching"]
    assert plain.meta["earlier_positions"].startswith("not recorded")
    assert res.occurrences.equals(plain.occurrences)
    assert res.occurrences["flipped"].any()  # some flips: the comparison means something


def test_a_state_space_model_runs_whole_copies_and_says_so(bpe):
    lm = zoo.make_causal("mamba", bpe, device=TEST_DEVICE)
    clf = PromptedClassifier(lm, WORDS, template=TEMPLATE)
    ids, bases = copies(clf, "delete")
    got, said = _scores(clf, ids, bases, 4096)
    np.testing.assert_allclose(got, whole(clf, ids), atol=2e-4)
    assert len([m for m in said if "earlier positions of each perturbed copy" in m]) == 1, said
    assert "LinearAttentionLayer" in clf.prefix_note(), clf.prefix_note()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = tokenprobe.flip_rates(clf, TEXTS, progress=False)
    assert res.meta["earlier_positions"].startswith("recomputed: it returns a DynamicCache")


def test_a_continuation_that_differs_falls_back(bpe, monkeypatch):
    """A cache whose keys are off (the bug a wrong slice would make) is caught by the checks:
    every copy still equals its full forward, and the note says which prefix length failed."""
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE)
    clf = PromptedClassifier(lm, WORDS, template=TEMPLATE)
    ids, bases = copies(clf, "filler")
    right = Prefix._cache

    def wrong(self, rows, start):
        cache = right(self, rows, start)
        cache.layers[0].keys = cache.layers[0].keys.roll(1, dims=-2)
        return cache

    monkeypatch.setattr(Prefix, "_cache", wrong)
    got, said = _scores(clf, ids, bases, 4096)
    np.testing.assert_allclose(got, whole(clf, ids), atol=2e-4)
    assert clf.prefix_note().startswith("recomputed after continuing from the cache of")
    assert "differs from the unperturbed run" in clf.prefix_note(), clf.prefix_note()
    assert len(said) == 1, said


def test_turned_off_or_not_worth_it_runs_whole_copies(bpe):
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE)
    off = PromptedClassifier(lm, WORDS, template=TEMPLATE, reuse_prefix=False)
    ids, bases = copies(off, "delete")
    got, said = _scores(off, ids, bases, 4096)
    np.testing.assert_allclose(got, whole(off, ids), atol=2e-4)
    assert "prefix cache is turned off" in off.prefix_note() and not said
    clf = PromptedClassifier(lm, WORDS, template=TEMPLATE)
    short = [[5, 6], [7, 6], [5, 7]]  # copies of one two-token text: nothing to save
    got, said = _scores(clf, short, [0, 0, 0], 4096)
    np.testing.assert_allclose(got, whole(clf, short), atol=2e-4)
    assert clf.prefix_note().startswith("recomputed: continuing would not save work"), (
        clf.prefix_note()
    )


def test_tiles_are_the_cheapest_grouping():
    """The tiling's cost is the least over every split of the sorted first changes into runs
    of neighbours (brute force), and each copy starts at or before its first change."""
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(1, 7)
        starts = [rng.randint(0, 12) for _ in range(n)]
        lengths = [s + rng.randint(1, 9) for s in starts]
        budget, forward = rng.choice([1, 16, 64, 4096]), rng.choice([0.0, 8.0, 32.0])
        got, cost = tiles(starts, lengths, budget, forward)
        assert all(g <= s for g, s in zip(got, starts, strict=True))
        units = sorted(set(starts))
        best = min(
            _cost(units, cuts, starts, lengths, budget, forward)
            for k in range(len(units))
            for cuts in itertools.combinations(range(1, len(units)), k)
        )
        assert cost == pytest.approx(best)
        assert cost == pytest.approx(
            _cost(units, _cuts(units, got, starts), starts, lengths, budget, forward)
        )


def _cost(units, cuts, starts, lengths, budget, forward):
    """The cost of running the tiles units[a:b] (split at `cuts`) each from its lowest unit, in
    the batches `split` makes (with each tile's check row, as wide as its widest copy)."""
    total, edges = 0.0, [0, *cuts, len(units)]
    for a, b in itertools.pairwise(edges):
        p, members = units[a], set(units[a:b])
        widths = [
            n - p + p // CACHED_COST for s, n in zip(starts, lengths, strict=True) if s in members
        ]
        widths += [max(widths)] if p else []
        total += sum(
            len(g) * max(widths[i] for i in g) + forward for g in split(widths, budget, forward)
        )
    return total


def _cuts(units, got, starts):
    tile = dict(zip(starts, got, strict=True))
    return tuple(i for i in range(1, len(units)) if tile[units[i]] != tile[units[i - 1]])
