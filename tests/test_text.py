"""Inputs: chat rendering without a double BOS, dummy insertion, token text for people and HTML."""

from __future__ import annotations

import pytest

from tokenprobe import TokenprobeError, prepare
from tokenprobe.text import display_token, html_token, token_texts

PROMPT = "What is the capital of Australia?"


def test_plain_prompt_tokens_match_the_tokenizer(llama):
    inp = prepare(llama, PROMPT)
    assert inp.input_ids == llama.tokenizer(PROMPT)["input_ids"]
    assert "".join(inp.tokens) == PROMPT
    assert inp.marked is None


def test_chat_prompt_has_one_bos(llama):
    tok = llama.tokenizer
    inp = prepare(llama, PROMPT, chat=True)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False
    )
    assert inp.text == rendered
    assert (
        inp.input_ids.count(tok.bos_token_id) == 2
    )  # the user turn and the assistant turn, no extra
    assert inp.input_ids[0] == tok.bos_token_id and inp.input_ids[1] != tok.bos_token_id
    assert "".join(inp.tokens) == rendered


def test_chat_without_template_is_a_clear_error(llama):
    llama.tokenizer.chat_template = None
    with pytest.raises(TokenprobeError, match="no chat template: drop chat"):
        prepare(llama, PROMPT, chat=True)


@pytest.mark.parametrize("n", [1, 6])
def test_dummies_go_at_the_end_by_default(llama, n):
    base = prepare(llama, PROMPT, chat=True)
    with pytest.warns(UserWarning, match="untrained"):
        inp = prepare(llama, PROMPT, chat=True, dummy=n)
    marker = llama.tokenizer.convert_tokens_to_ids("_PAUSE_")
    assert inp.input_ids == base.input_ids + [marker] * n
    assert inp.marked == (len(base.input_ids), len(base.input_ids) + n)
    assert inp.tokens[-1] == "_PAUSE_"


def test_dummies_after_and_before_a_substring(llama):
    base = prepare(llama, PROMPT)
    marker_ids = None
    with pytest.warns(UserWarning):
        after = prepare(llama, PROMPT, dummy=3, dummy_after="capital")
    marker_ids = [llama.tokenizer.convert_tokens_to_ids("_PAUSE_")] * 3
    cut = base.tokens.index(" capital") + 1
    assert after.input_ids == base.input_ids[:cut] + marker_ids + base.input_ids[cut:]
    assert after.marked == (cut, cut + 3)
    before = prepare(llama, PROMPT, dummy=2, dummy_before="Australia")
    at = base.tokens.index(" Australia")  # the token holding the space before the word
    assert before.input_ids == base.input_ids[:at] + marker_ids[:2] + base.input_ids[at:]
    assert "".join(t for t in before.tokens if t != "_PAUSE_") == PROMPT


def test_marker_already_in_vocabulary_is_not_added(llama):
    n = len(llama.tokenizer)
    inp = prepare(llama, PROMPT, dummy=2, dummy_token="<|endoftext|>")
    assert len(llama.tokenizer) == n
    assert inp.input_ids[-2:] == [llama.tokenizer.convert_tokens_to_ids("<|endoftext|>")] * 2


def test_added_marker_is_one_token_with_a_mean_embedding(llama):
    old = llama.model.get_input_embeddings().weight.detach().clone()
    with pytest.warns(UserWarning, match="untrained"):
        inp = prepare(llama, "pliers _PAUSE_ orange", dummy=1, dummy_token="<meta>")
    meta_id = llama.tokenizer.convert_tokens_to_ids("<meta>")
    emb = llama.model.get_input_embeddings().weight
    assert emb.shape[0] == old.shape[0] + 1
    assert (emb[meta_id] - old.mean(0)).abs().max() < 1e-6
    assert inp.input_ids.count(meta_id) == 1
    assert llama.tokenizer.encode("a <meta> b", add_special_tokens=False).count(meta_id) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   \n"}, "prompt is empty"),
        (
            {"prompt": PROMPT, "dummy": 2, "dummy_after": "Canberra"},
            "dummy_after 'Canberra' is not in the prompt",
        ),
        (
            {"prompt": PROMPT, "dummy": 2, "dummy_before": "Sydney"},
            "dummy_before 'Sydney' is not in the prompt",
        ),
        ({"prompt": PROMPT, "dummy": -1}, "dummy must be 0 or more"),
        ({"prompt": "word " * 200}, "longer than the model's context of 128: shorten it"),
    ],
)
def test_bad_inputs_are_one_clear_line(llama, kwargs, message):
    with pytest.raises(TokenprobeError, match=message) as err:
        prepare(llama, **kwargs)
    assert "\n" not in str(err.value)


def test_display_token_makes_whitespace_visible_and_cuts():
    assert display_token(" the") == "▁the"
    assert display_token("\n\n") == "↵↵"
    assert display_token("\t") == "→"
    assert display_token("\x00") == "\\x00"
    assert display_token(" Australia", 6) == "▁Aust…"
    assert display_token("") == "∅"


def test_partial_utf8_tokens_show_their_bytes(tokenizer):
    ids = tokenizer.encode("✓", add_special_tokens=False)
    texts = token_texts(tokenizer, ids)
    assert len(ids) > 1  # the tiny vocabulary splits the check mark into byte tokens
    assert all(t.startswith("\\x") for t in texts)
    assert "".join(texts).replace("\\x", "") == "✓".encode().hex()


def test_html_token_escapes_markup():
    assert html_token("<script>alert(1)</script>") == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert (
        html_token('"><img src=x onerror=alert(1)>')
        == "&quot;&gt;&lt;img▁src=x▁onerror=alert(1)&gt;"
    )


def test_token_texts_equal_one_decode_per_token(tokenizer):
    """The batched backend decode gives what decoding each token alone gives, specials included;
    so does the fallback for tokenizers without a Rust backend."""
    ids = list(range(len(tokenizer)))
    alone = [
        tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for i in ids
    ]
    texts = token_texts(tokenizer, ids)
    assert [t for t, a in zip(texts, alone, strict=True) if "\ufffd" not in a] == [
        a for a in alone if "\ufffd" not in a
    ]
    assert texts[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

    class Slow:  # the same tokenizer seen without its backend
        def __getattr__(self, name):
            if name == "backend_tokenizer":
                raise AttributeError(name)
            return getattr(tokenizer, name)

    assert token_texts(Slow(), ids) == texts
