"""Prompted flip rates continue each perturbed copy from its unperturbed text's key/value
cache on every causal family of the conformance zoo: every copy's verbaliser logits equal one
full forward of its whole prompt (batched and one copy at a time); the families whose cache
cannot continue (state-space and hybrid layers) run whole copies and say why."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import zoo
from conftest import TEST_DEVICE, make_tokenizer
from prefix_ref import TEMPLATE, WORDS, copies, whole

from tokenprobe import PromptedClassifier
from tokenprobe.errors import TokenprobeWarning
from tokenprobe.prefix import CONTINUED

# families whose copies cannot continue from a cache, and why (the note's words)
WHOLE = {
    "mamba": "LinearAttentionLayer",
    "mamba2": "LinearAttentionLayer",
    "jamba": "LinearAttentionLayer",
}


@pytest.fixture(scope="module")
def bpe():
    return make_tokenizer()


@pytest.mark.parametrize("arch", sorted(zoo.CAUSAL))
def test_every_continued_copy_equals_its_full_forward(arch, bpe):
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for perturbation in ("delete", "filler"):
            clf = PromptedClassifier(lm, WORDS, template=TEMPLATE)
            ids, bases = copies(clf, perturbation)
            ref = whole(clf, ids)
            assert np.ptp(ref, axis=0).max() > 1e-2  # copies differ: equality means something
            for budget in (4096, 1):
                clf.begin_run()
                with torch.no_grad():
                    got = clf.scores(ids, budget, bases)
                np.testing.assert_allclose(got, ref, atol=2e-4, err_msg=f"{perturbation} {budget}")
                note = clf.prefix_note()
                if arch in WHOLE:
                    assert note.startswith("recomputed: "), note
                else:
                    assert note == CONTINUED, note
    said = [str(w.message) for w in caught if issubclass(w.category, TokenprobeWarning)]
    fell_back = [m for m in said if "earlier positions of each perturbed copy" in m]
    assert bool(fell_back) == (arch in WHOLE), fell_back
