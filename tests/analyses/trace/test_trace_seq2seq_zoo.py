"""Causal tracing on every encoder-decoder family of `zoo.SEQ2SEQ` (T5-like, BART-like, FSMT's
time-major blocks, LED's and Pegasus-X's padded encoders, the mixtures of experts, T5Gemma):
every cell of the encoder, decoder and cross-attention grids equals one plain forward pass with
the clean state written in by a hook written in test_trace_seq2seq.py, at the cross-attention
module named there by family; a whole last encoder layer restored gives the clean score back.
Two blocks a side and six source tokens keep it quick."""

from __future__ import annotations

import pytest
import zoo
from test_trace_seq2seq import CROSS, check_against_brute_force, model, one_thread, quiet  # noqa: F401

from tokenprobe.model.seq2seq import cross_attention


@pytest.mark.parametrize("arch", list(zoo.SEQ2SEQ))
def test_every_family_against_brute_force(arch, tokenizer, one_thread):  # noqa: F811
    lm = model(arch, tokenizer)
    blocks = lm.require_seq2seq().decoder.blocks
    assert [cross_attention(b) for b in blocks] == [
        (CROSS[arch], b.get_submodule(CROSS[arch])) for b in blocks
    ]
    check_against_brute_force(lm, arch)
    every = quiet(lm=lm, positions="all", components=["resid"])
    assert every.scores["encoder"][-1, 0] == pytest.approx(every.clean_score, abs=1e-5)
    assert every.scores["decoder"][-1, 0] == pytest.approx(every.clean_score, abs=1e-5)
    assert every.scores["decoder"][0, 0] != pytest.approx(every.clean_score, abs=1e-3)
