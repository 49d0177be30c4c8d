"""Batched = one at a time, checked while a run runs ("trust, again", padding and the prefix
cache): ablation and prompted flips on models that left padding, pad id 0, `position_ids`,
`logits_to_keep` or a shared prefix cache get wrong, each against a brute-force loop over the
model's own forward (one input alone, unpadded); and a model broken on purpose, so that the
run-time check must fall back and say so in meta.json."""

from __future__ import annotations

import contextlib
import inspect
import re
import warnings

import numpy as np
import pytest
import torch
import zoo
from conftest import TEST_DEVICE, make_tokenizer

import tokenprobe
from tokenprobe import PromptedClassifier
from tokenprobe.errors import TokenprobeWarning

PROMPT = "Tools: hammer, wrench, level, pliers. Fruits: orange, peach"
TARGET = ", banana, plum."
SPANS = ["hammer", "wrench", "level, pliers", "Fruits: orange"]  # of different lengths
TEXTS = ["I couldn't believe the capital of Australia is Canberra", "Hello world"]
WORDS = ["capital", "hammer", "orange"]  # one token each in the test tokenizer
TEMPLATE = "Classify: {labels}.\nText: {text}\nAnswer:"


@pytest.fixture(scope="module")
def bpe():
    return make_tokenizer()


def _causal(arch: str, tokenizer, **overrides):
    """zoo's tiny model of `arch`, its config changed by `overrides`."""
    factory, what = zoo.SWEEP[arch]

    def changed(vocab: int):
        config = factory(vocab)
        for k, v in overrides.items():
            setattr(config, k, v)
        return config

    zoo.SWEEP[arch] = (changed, what)
    try:
        return zoo.make_causal(arch, tokenizer, device=TEST_DEVICE)
    finally:
        zoo.SWEEP[arch] = (factory, what)


# MiniMax with a linear-attention layer first, whose cache has fewer linear states than layers
# (batch_repeat_interleave raised IndexError). (Falcon-H1's test size is tests/zoo.py's own.)
SMALL = {
    "minimax": {"layer_types": ["linear_attention", "full_attention"]},
}


def _bart_decoder(tokenizer):
    """BART's decoder alone (BartForCausalLM): learned positions, no `position_ids` keyword."""
    import copy

    from transformers import BartConfig, BartForCausalLM

    from tokenprobe import LoadedModel

    tok = copy.deepcopy(tokenizer)
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=len(tok),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        is_decoder=True,
        is_encoder_decoder=False,
        **{k: getattr(tok, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")},
    )
    model = BartForCausalLM(config).eval()
    zoo._scale(model, 8.0)
    return LoadedModel.wrap(model.to(TEST_DEVICE), tok, name="tiny-bart-decoder")


def _model(arch: str, tokenizer):
    if arch == "bart-decoder":
        return _bart_decoder(tokenizer)
    return _causal(arch, tokenizer, **SMALL.get(arch, {}))


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------------------- ablation


def _target_logprobs(lm, prompt_ids: list[int], target_ids: list[int]) -> np.ndarray:
    """Teacher-forced log-probabilities of the target: one input alone, the model's forward."""
    ids = torch.tensor([prompt_ids + target_ids], device=lm.device)
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    n = len(prompt_ids)
    return np.array([logp[n - 1 + j, t].item() for j, t in enumerate(target_ids)])


def _ablation_reference(lm, res) -> tuple[np.ndarray, np.ndarray]:
    prompt_ids, target_ids = res.meta["prompt_ids"], res.meta["target_ids"]
    full = _target_logprobs(lm, prompt_ids, target_ids)
    cols = []
    for f in res.features:
        drop = set(f["positions"])
        kept = [t for i, t in enumerate(prompt_ids) if i not in drop]
        cols.append(full - _target_logprobs(lm, kept, target_ids))
    return full, np.stack(cols, axis=1)


@pytest.mark.parametrize(
    "arch", ["rwkv", "xlstm", "recurrent_gemma", "doge-window", "bart-decoder"]
)
def test_ablation_equals_one_forward_per_ablated_feature(arch, bpe):
    lm = _model(arch, bpe)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tokenprobe.attribute(lm, PROMPT, target=TARGET, features=SPANS, method="ablation")
    full, ref = _ablation_reference(lm, res)
    np.testing.assert_allclose(res.target_scores, full, atol=1e-4)
    np.testing.assert_allclose(res.scores, ref, atol=2e-4)
    assert np.abs(ref).max() > 1e-2  # the features matter, so equality means something
    note = res.meta["batching"]
    assert "(checked against one input alone)" in note or note.startswith("one input at a time (")
    # a warning where a path differed (Doge's window), none where one only did not apply
    # (RWKV, xLSTM and BART's decoder take no position ids: right padding, as fast, runs)
    said = [w for w in caught if issubclass(w.category, TokenprobeWarning)]
    assert len(said) == ("differs from one input alone" in note)


# ----------------------------------------------------------------------------- prompted flips


def _variants(tokenizer, text: str) -> list[list[int]]:
    """The text's ids and a copy with each word deleted, words found here."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    out = [ids]
    for m in re.finditer(r"\w+", text):
        s, e = m.span()
        toks = {k for k, (a, b) in enumerate(offsets) if b > a and a < e and b > s}
        out.append([t for k, t in enumerate(ids) if k not in toks])
    return out


def _verbaliser_logits(clf, ids: list[int]) -> np.ndarray:
    full = torch.tensor([clf.prefix_ids + ids + clf.suffix_ids], device=clf.lm.device)
    with torch.no_grad():
        logits = clf.lm.model(input_ids=full).logits[0, -1].float()
    return logits[clf.verbaliser_ids].cpu().numpy()


@pytest.mark.parametrize("arch", ["rwkv", "xlstm", "falcon_h1", "minimax"])
def test_prompted_flips_equal_one_text_at_a_time(arch, bpe):
    lm = _model(arch, bpe)
    with _quiet():
        clf = PromptedClassifier(lm, WORDS, template=TEMPLATE)
        res = tokenprobe.flip_rates(clf, TEXTS, batch_tokens=4096)
    occ = res.occurrences
    spread = []
    for t, text in enumerate(TEXTS):
        variants = _variants(lm.tokenizer, text)
        ref = np.stack([_verbaliser_logits(clf, v) for v in variants])
        spread.append(np.ptp(ref, axis=0).max())
        mine = occ[occ["text_id"] == t].sort_values("word_index")
        assert (mine["original"] == WORDS[int(ref[0].argmax())]).all()
        assert mine["perturbed"].tolist() == [WORDS[int(r.argmax())] for r in ref[1:]]
        with _quiet():  # the scores, too, in one batch (and the short text's one by one)
            for budget in (4096, 1) if len(variants) < 4 else (4096,):
                fresh = PromptedClassifier(lm, WORDS, template=TEMPLATE)
                np.testing.assert_allclose(fresh.scores(variants, budget), ref, atol=2e-4)
    assert max(spread) > 1e-2  # deletions move the scores, so equality means something
    assert "checked against one input alone" in res.meta["batching"]


def test_a_cache_that_breaks_a_batch_is_not_reused(bpe):
    """Falcon-H1's cache repeats its attention layers for a batch but not its state-space
    states: the run continues from no cache, says why once, and records it."""
    lm = _model("falcon_h1", bpe)
    clf = PromptedClassifier(lm, WORDS, template=TEMPLATE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tokenprobe.flip_rates(clf, TEXTS, batch_tokens=4096)
    said = [str(w.message) for w in caught if issubclass(w.category, TokenprobeWarning)]
    cache = [m for m in said if "prefix's cache: fails" in m]
    assert len(cache) == 1, said  # said once; the copies' continuation says its own fallback
    assert len(said) <= 2 and all(
        "prefix's cache" in m or "earlier positions" in m for m in said
    ), said
    assert res.meta["classifier"]["prefix_cache_reused"] is False
    assert "prefix's cache: fails" in res.meta["batching"]


# ----------------------------------------------------------------------------- the run-time check


def _pad_sensitive(lm, where: str):
    """The model changed on purpose so that padding moves its logits: by a fixed direction
    times the number of masked positions before each row's last token ("left": left padding
    breaks, right padding does not) or anywhere in the row ("any": every padded batch breaks).
    One input alone, with no mask, is the model unchanged."""
    base = type(lm.model)
    direction = torch.randn(lm.model.config.vocab_size, generator=torch.Generator().manual_seed(0))

    class PadSensitive(base):
        def forward(self, *args, attention_mask=None, **kwargs):
            out = base.forward(self, *args, attention_mask=attention_mask, **kwargs)
            if attention_mask is not None:
                mask = attention_mask.bool()
                if where == "left":
                    cols = torch.arange(mask.shape[1], device=mask.device)
                    last = (mask * cols).argmax(dim=1, keepdim=True)
                    pads = (~mask & (cols <= last)).sum(dim=1)
                else:
                    pads = (~mask).sum(dim=1)
                shift = pads[:, None, None].to(out.logits.dtype) * direction.to(out.logits.device)
                out.logits = out.logits + shift
            return out

    PadSensitive.forward.__signature__ = inspect.signature(base.forward)  # the same keywords
    lm.model.__class__ = PadSensitive
    return lm


@pytest.fixture
def llama(bpe):
    return zoo.make_causal("llama", bpe, device=TEST_DEVICE)


def _tokenprobe_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TokenprobeWarning)]


def test_a_model_that_pads_right_runs_padded_batches_without_a_word(llama):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tokenprobe.attribute(llama, PROMPT, target=TARGET, features=SPANS)
        clf = PromptedClassifier(llama, WORDS, template=TEMPLATE)
        flips = tokenprobe.flip_rates(clf, TEXTS)
    assert not _tokenprobe_warnings(caught)
    assert (
        res.meta["batching"]
        == "left-padded batches with position ids (checked against one input alone)"
    )
    assert flips.meta["batching"] == (
        "right-padded batches after a copy of the prefix's cache (checked against one input alone)"
    )


@pytest.mark.parametrize(
    ("where", "path"),
    [
        ("left", "right-padded batches (checked against one input alone)"),
        ("any", "one input at a time"),
    ],
)
def test_the_first_batch_is_checked_and_the_run_falls_back(llama, where, path):
    lm = _pad_sensitive(llama, where)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tokenprobe.attribute(lm, PROMPT, target=TARGET, features=SPANS, method="ablation")
    said = _tokenprobe_warnings(caught)
    assert len(said) == 1 and path in said[0], said  # said once, not once a batch
    assert res.meta["batching"].startswith(path)
    assert (
        "left-padded batches with position ids: differs from one input alone"
        in res.meta["batching"]
    )
    full, ref = _ablation_reference(lm, res)
    np.testing.assert_allclose(res.target_scores, full, atol=1e-4)
    np.testing.assert_allclose(res.scores, ref, atol=2e-4)
    # Shapley values (many batches of many lengths) equal those of batches of one input
    with _quiet():
        run = dict(target=TARGET, features=SPANS, method="shapley", samples=6)
        many = tokenprobe.attribute(lm, PROMPT, **run)
        single = tokenprobe.attribute(lm, PROMPT, **run, batch_tokens=1)
    np.testing.assert_allclose(many.scores, single.scores, atol=2e-5)


@pytest.mark.parametrize("reuse_prefix", [True, False], ids=["prefix-cache", "no-cache"])
def test_prompted_flips_fall_back_on_a_model_that_padding_breaks(llama, reuse_prefix):
    lm = _pad_sensitive(llama, "any")
    clf = PromptedClassifier(lm, WORDS, template=TEMPLATE, reuse_prefix=reuse_prefix)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tokenprobe.flip_rates(clf, TEXTS, batch_tokens=4096, chunk_texts=1)
    said = _tokenprobe_warnings(caught)
    assert len(said) == 1 and "one input at a time" in said[0], said
    assert res.meta["batching"].startswith("one input at a time (")
    assert ("prefix's cache: differs" in res.meta["batching"]) == reuse_prefix
    assert res.meta["classifier"]["prefix_cache_reused"] is False
    for t, text in enumerate(TEXTS):
        ref = [int(_verbaliser_logits(clf, v).argmax()) for v in _variants(lm.tokenizer, text)]
        mine = res.occurrences[res.occurrences["text_id"] == t].sort_values("word_index")
        assert (mine["original"] == WORDS[ref[0]]).all()
        assert mine["perturbed"].tolist() == [WORDS[r] for r in ref[1:]]


SIMILARITY_TEXTS = [
    "a b _PAUSE_ c d e f _PAUSE_",
    "Tools: hammer, wrench, level, pliers. _PAUSE_ Fruits _PAUSE_ orange",
    "Hello _PAUSE_ world _PAUSE_",
]


@pytest.mark.parametrize("arch", ["doge-window", "llama"])
def test_similarity_checks_its_padded_batches(arch, bpe):
    """Doge's dynamic mask window is shorter than the texts: a padded batch changed a middle
    text's states (cosines off by 0.19); the run-time check sees it and runs each text alone,
    saying so once and in meta.json. Llama's padded batches pass the check."""
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        alone = [
            tokenprobe.past_similarity(lm, t, occurrence=2, window=5) for t in SIMILARITY_TEXTS
        ]
        together = tokenprobe.past_similarity(lm, SIMILARITY_TEXTS, occurrence=2, window=5)
    want = np.nanmean(np.stack([a.cosine for a in alone]), axis=0)
    np.testing.assert_allclose(together.cosine, want, atol=1e-5)
    said = [str(w.message) for w in caught if "each text runs alone" in str(w.message)]
    if arch == "doge-window":
        assert together.meta["batching"].startswith("one text at a time"), together.meta["batching"]
        assert len(said) == 1
    else:
        assert together.meta["batching"] == "padded batches (checked against one text alone)"
        assert not said


def test_a_marker_that_cannot_be_added_is_one_line(bpe):
    """transformers cannot resize xLSTM's embeddings (its init looks for `embeddings`)."""
    lm = zoo.make_causal("xlstm", bpe, device=TEST_DEVICE)
    with pytest.raises(
        tokenprobe.TokenprobeError, match="cannot add a row to xLSTMForCausalLM's embeddings"
    ):
        tokenprobe.past_similarity(lm, SIMILARITY_TEXTS[0], occurrence=2, window=5)
