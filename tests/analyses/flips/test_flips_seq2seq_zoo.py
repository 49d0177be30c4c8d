"""Flip rates with every encoder-decoder family of the zoo asked a question: each occurrence's
prediction equals one forward of the model alone, batched equals one at a time (the checks of
test_flips_seq2seq.py)."""

from __future__ import annotations

import pytest
import zoo
from test_flips import TEXTS
from test_flips_seq2seq import FAST, check


@pytest.mark.parametrize("arch", [a for a in zoo.SEQ2SEQ if a not in FAST])
def test_occurrences_equal_one_forward_alone_each(arch, tokenizer):
    check(arch, tokenizer, TEXTS[1:3])  # 13 words
