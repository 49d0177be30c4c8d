"""Past similarity of every encoder-decoder family of `zoo.SEQ2SEQ` (the matrix tier; T5, BART
and Marian also in the fast tier: test_similarity_seq2seq.py): a marker in the source and one
in the decoder text against brute force from the model's own forward, and a data set of each
side batched against one text at a time."""

from __future__ import annotations

import pytest
import zoo
from test_similarity_seq2seq import check_batched, check_source_and_decoder, model


@pytest.mark.parametrize("arch", list(zoo.SEQ2SEQ))
def test_every_family_against_brute_force_and_alone(arch, tokenizer):
    lm = model(arch, tokenizer)
    check_source_and_decoder(lm)
    check_batched(lm, "source")
    # Switch Transformers' decoder states under a padded source differ from one text alone by
    # 2.6e-4 (relative), past the 1e-4 the run checks for: it runs each text alone, and says so
    check_batched(lm, "decoder", padded=arch != "switch_transformers")
