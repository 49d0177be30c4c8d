"""`attribute --foil`: a row's score is log p(target) - log p(foil) at the same position.

Every method but saliency is linear in the score it attributes, so the contrastive attribution
must equal the attribution of the target less the attribution of the foil as a target (the
same prompt, features and seed); the row's own score is checked against the model's logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_model, make_tokenizer
from test_cli import assert_one_line_errors, model_dir  # noqa: F401  (fixture)

import tokenprobe
from tokenprobe import TokenprobeWarning

PROMPT = "the cat sat on the"
TARGET, FOIL = " dog", " the"  # one token each in the test tokenizer


@pytest.fixture(scope="module")
def lm():
    return make_model("llama", make_tokenizer())


def test_target_and_foil_are_single_tokens(lm):
    for text in (TARGET, FOIL):
        assert len(lm.tokenizer.encode(text, add_special_tokens=False)) == 1


@pytest.mark.filterwarnings("ignore:integrated gradients have not converged")
@pytest.mark.parametrize(
    "method", ["ablation", "occlusion", "shapley", "input_x_gradient", "integrated_gradients"]
)
def test_contrastive_equals_target_less_foil(lm, method):
    kw = {
        "method": method,
        "samples": 6,
        "steps": 8,
        "progress": False,
    }  # IG: few steps, same on both sides
    both = tokenprobe.attribute(lm, PROMPT, target=TARGET, foil=FOIL, **kw)
    target = tokenprobe.attribute(lm, PROMPT, target=TARGET, **kw)
    foil = tokenprobe.attribute(lm, PROMPT, target=FOIL, **kw)
    np.testing.assert_allclose(both.scores, target.scores - foil.scores, atol=2e-5)
    np.testing.assert_allclose(
        both.target_scores, target.target_scores - foil.target_scores, atol=1e-5
    )
    assert both.meta["options"]["foil"] == FOIL and "less the foil" in both.meta["definition"]


def test_the_row_score_is_the_log_probability_difference_from_the_model(lm):
    result = tokenprobe.attribute(
        lm, PROMPT, target=TARGET, foil=FOIL, method="ablation", progress=False
    )
    ids = result.meta["prompt_ids"]
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    logp = torch.log_softmax(logits, dim=-1)
    t, f = (lm.tokenizer.encode(x, add_special_tokens=False)[0] for x in (TARGET, FOIL))
    np.testing.assert_allclose(result.target_scores[0], float(logp[t] - logp[f]), atol=1e-5)
    prob = tokenprobe.attribute(
        lm, PROMPT, target=TARGET, foil=FOIL, method="ablation", score="prob", progress=False
    )
    np.testing.assert_allclose(
        prob.target_scores[0], float(logp[t].exp() - logp[f].exp()), atol=1e-6
    )


def test_a_foil_of_several_tokens_counts_its_first_with_a_warning(lm):
    with pytest.warns(TokenprobeWarning, match="foil ' cat' is 3 tokens"):
        tokenprobe.attribute(
            lm, PROMPT, target=TARGET, foil=" cat", method="ablation", progress=False
        )


def test_bad_foils_are_one_line(model_dir, tmp_path, capsys):
    base = ["--prompt", PROMPT, "--target", TARGET, "--method", "ablation"]
    assert_one_line_errors(
        capsys,
        "attribute",
        str(model_dir),
        tmp_path / "o",
        [
            ([*base, "--foil", TARGET], "is the target"),
            ([*base, "--foil", ""], "the foil is empty"),
        ],
    )


@pytest.mark.filterwarnings("ignore:integrated gradients have not converged")
@pytest.mark.parametrize("method", ["ablation", "input_x_gradient"])
def test_contrastive_on_every_family(tiny, method):
    # the gradient path rebuilds logits through each family's head (soft-cap included)
    kw = {"method": method, "progress": False}
    both = tokenprobe.attribute(tiny, PROMPT, target=TARGET, foil=FOIL, **kw)
    target = tokenprobe.attribute(tiny, PROMPT, target=TARGET, **kw)
    foil = tokenprobe.attribute(tiny, PROMPT, target=FOIL, **kw)
    np.testing.assert_allclose(both.scores, target.scores - foil.scores, atol=5e-5)
    np.testing.assert_allclose(
        both.target_scores, target.target_scores - foil.target_scores, atol=1e-5
    )
