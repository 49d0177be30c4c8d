"""The attention analysis on every encoder-decoder family of the zoo, each stack (encoder,
decoder, cross): its weights equal the model's own `output_attentions` under eager attention
(a copy of the model switched to eager, run here), each query row sums to 1, the decoder's
self-attention keeps nothing above the diagonal, and the sdpa model is put back as it was; an
encoder whose attention is local or block-sparse is refused in one line."""

from __future__ import annotations

import copy

import pytest
import torch
import zoo

from tokenprobe import TokenprobeError
from tokenprobe.analyses.attention import attention

SOURCE = "The quick brown fox jumps over the lazy dog, and the dog sleeps."
TARGET = "Der schnelle"
OUTPUTS = {
    "encoder": "encoder_attentions",
    "decoder": "decoder_attentions",
    "cross": "cross_attentions",
}
# encoders whose self-attention is not one softmax over the source: LED's sliding window,
# LongT5's local blocks, Pegasus-X's block-local attention with global tokens
LOCAL = {"led", "longt5", "pegasus_x"}


@pytest.mark.parametrize("arch", list(zoo.SEQ2SEQ))
def test_every_stack_equals_output_attentions_under_eager(arch, tokenizer):
    lm = zoo.make_seq2seq(arch, tokenizer)
    before = lm.model.config._attn_implementation
    model = copy.deepcopy(lm.model)
    model.set_attn_implementation("eager")
    for stack in OUTPUTS:
        if stack == "encoder" and arch in LOCAL:
            with pytest.raises(TokenprobeError, match="not one softmax over the keys") as info:
                attention(lm, SOURCE, decoder_text=TARGET, stack=stack)
            assert "\n" not in str(info.value)
            continue
        result = attention(lm, SOURCE, decoder_text=TARGET, stack=stack)
        meta = result.meta
        with torch.inference_mode():
            out = model(
                input_ids=torch.tensor([meta["input_ids"]]),
                decoder_input_ids=torch.tensor([meta["decoder_ids"]]),
                use_cache=False,
                output_attentions=True,
            )
        eager = [a[0].float() for a in getattr(out, OUTPUTS[stack])]
        n, m = len(result.tokens), len(result.keys)
        assert result.layers == list(range(len(eager))) and len(eager) == 2
        for layer, theirs in enumerate(eager):
            assert theirs.shape == (result.heads, n, m), (stack, theirs.shape)
            for head in range(result.heads):
                ours = torch.from_numpy(result.pattern.dense(layer, head, n, m))
                kept = ~ours.isnan()
                lower = torch.tril(torch.ones(n, m, dtype=torch.bool))
                assert torch.equal(kept, lower) if stack == "decoder" else bool(kept.all())
                torch.testing.assert_close(ours[kept], theirs[head][kept], atol=1e-6, rtol=0)
                sums = torch.nan_to_num(ours).sum(-1)
                torch.testing.assert_close(sums, torch.ones(n), atol=1e-5, rtol=0)
        check = meta["eager_check"]
        assert check.get("passed") or "skipped" in check
        assert lm.model.config._attn_implementation == before
