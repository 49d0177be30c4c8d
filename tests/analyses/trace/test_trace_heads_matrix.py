"""Per-head patching on every family of the zoo with attention heads (grouped-query,
sliding-window, ALiBi, soft-capping, parallel and post-norm blocks, Jamba's hybrid): every
query-head cell, each position and all at once, equals one plain forward pass per cell with the
head's columns restored by a hook written in test_trace_heads.py; key and value heads likewise
where the family has separate key/value projections (at the projection's output, or at OLMo
3's whole-width key norm's output: test_trace_heads.KEY_SITE). Two blocks and five tokens keep
it quick.
"""

from __future__ import annotations

import pytest
import zoo
from conftest import TEST_DEVICE
from test_trace_heads import CLEAN, KW, bpe, check_against_brute_force, one_thread  # noqa: F401

from tokenprobe import TokenprobeError, causal_trace

NO_HEADS = {"mamba", "mamba2"}
FUSED = {"gpt2", "gpt_bigcode", "gpt_neox", "bloom", "falcon", "falcon-alibi", "mpt", "phi3", "codegen"}  # fmt: skip
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("arch", [a for a in zoo.CAUSAL if a not in NO_HEADS])
def test_every_head_cell_equals_one_forward_per_cell(arch, bpe, monkeypatch):  # noqa: F811
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE, layers=2)
    kv = [] if arch in FUSED else ["head-k", "head-v"]
    check_against_brute_force(lm, ["head", *kv], monkeypatch)
    if arch in FUSED:
        with pytest.raises(TokenprobeError, match="one fused projection"):
            causal_trace(lm, CLEAN, components=["head-v"], **KW)


@pytest.mark.parametrize("arch", sorted(NO_HEADS))
def test_a_model_without_heads_is_refused(arch, bpe):  # noqa: F811
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE, layers=2)
    with pytest.raises(TokenprobeError, match="components head: the blocks of this model"):
        causal_trace(lm, CLEAN, components=["head"], **KW)
