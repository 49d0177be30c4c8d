"""The lens of every encoder-decoder family of `zoo.SEQ2SEQ` (the matrix tier; T5, BART and
Marian also in the fast tier: test_lens_seq2seq.py): a padded batch of three inputs of
different source and decoder lengths, each against the model's own forward by hand and
against itself run alone, the forced language token of mBART-50, M2M100 and NLLB included."""

from __future__ import annotations

import numpy as np
import pytest
import zoo
from test_lens_seq2seq import DECODER, SOURCES, check_against_hand, model, run_lens

from tokenprobe.text import prepare_seq2seq


@pytest.mark.parametrize("arch", list(zoo.SEQ2SEQ))
def test_every_family_batched_alone_and_by_hand(arch, tokenizer):
    lm = model(arch, tokenizer)
    lang = zoo.FORCED.get(arch)
    inputs = [
        prepare_seq2seq(lm, s, target=t, target_lang=lang)
        for s, t in zip(SOURCES, DECODER, strict=True)
    ]
    assert inputs[0].forced == (2 if lang else 1)
    together = run_lens(lm, inputs)
    for inp, res in zip(inputs, together, strict=True):
        check_against_hand(lm, res, inp)
        alone = run_lens(lm, inp)
        np.testing.assert_allclose(res.entropy, alone.entropy, atol=1e-4)
        np.testing.assert_allclose(res.logit_diff, alone.logit_diff, atol=1e-3)
        assert res.meta["output_check"] == "ok" and res.n_rows == 3
    if lang:  # the setting gives the same decoder input as the prepared one
        given = run_lens(lm, SOURCES[0], decoder_text=DECODER[0], target_lang=lang)
        assert given.token_ids == inputs[0].decoder_ids
        np.testing.assert_allclose(given.entropy, together[0].entropy, atol=1e-4)
