"""Flip rates against a brute-force loop (one text, one perturbation, one forward at a time)."""

from __future__ import annotations

import copy
import re

import numpy as np
import pandas as pd
import pytest
import torch

from tokenprobe import (
    LoadedModel,
    PromptedClassifier,
    SequenceClassifier,
    TokenprobeError,
    flip_rates,
)
from tokenprobe.analyses.flips import bucket_of, rates_table, tokenize_words
from tokenprobe.stats import wilson

TEXTS = [
    "I couldn't believe the capital of Australia is Canberra, not Sydney!",
    "Tools: hammer, wrench, level, pliers.",
    "The quick brown fox jumps over the lazy dog",
    "Hello world",
    "Fruits: orange, peach, banana, plum. Tabs and newlines.",
    "!!!",  # no words: skipped and counted
]
LABELS = ["anger", "joy", "sadness"]


@pytest.fixture
def seq_clf(tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        num_labels=3,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {v: k for k, v in config.id2label.items()}
    model = LlamaForSequenceClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(6.0)
    return SequenceClassifier(LoadedModel.wrap(model, copy.deepcopy(tokenizer), name="tiny-seq"))


@pytest.fixture
def prompted(llama):
    # the tiny vocabulary has these as single tokens, so no verbaliser warning
    return PromptedClassifier(
        llama, LABELS, [" the", " of", " is"], template="Text: {text}\nAnswer:"
    )


def brute_force(classify, tokenizer, texts, buckets, how="delete", replacement=()):
    """One text, one perturbation, one forward at a time; words re-derived here."""
    rows = []
    for i, text in enumerate(texts):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        words = [(m.group().lower(), m.span()) for m in re.finditer(r"\w+", text)]
        if not words:
            continue
        original = classify(ids)
        for w, (word, (s, e)) in enumerate(words):
            toks = [k for k, (a, b) in enumerate(offsets) if b > a and a < e and b > s]
            new = (
                ids[: toks[0]]
                + (list(replacement) if how != "delete" else [])
                + ids[toks[-1] + 1 :]
            )
            rows.append((i, word, w, (buckets * w) // len(words), original, classify(new)))
    return rows


def seq_classify(clf):
    def run(ids):
        with torch.no_grad():
            return int(clf.lm.model(torch.tensor([ids], device=clf.lm.device)).logits.argmax(-1))

    return run


def prompted_classify(clf):
    def run(ids):
        full = clf.prefix_ids + list(ids) + clf.suffix_ids
        with torch.no_grad():
            logits = clf.lm.model(torch.tensor([full], device=clf.lm.device)).logits[0, -1]
        return int(logits[clf.verbaliser_ids].argmax())

    return run


@pytest.mark.parametrize("kind", ["sequence", "prompted"])
def test_rates_equal_a_brute_force_loop(kind, seq_clf, prompted):
    clf = seq_clf if kind == "sequence" else prompted
    classify = seq_classify(clf) if kind == "sequence" else prompted_classify(clf)
    res = flip_rates(clf, TEXTS, buckets=4, batch_tokens=64, chunk_texts=2)
    expected = brute_force(classify, clf.lm.tokenizer, TEXTS, 4)
    got = res.occurrences
    assert len(got) == len(expected)
    for row, (i, word, w, b, orig, pert) in zip(got.itertuples(), expected, strict=True):
        assert (row.text_id, row.word, row.word_index, row.bucket) == (i, word, w, b)
        assert (row.original, row.perturbed) == (LABELS[orig], LABELS[pert])
        assert row.flipped == (orig != pert)
    assert res.occurrences["flipped"].any()  # the test can tell flips from none
    assert res.meta["texts_empty_skipped"] == 1
    # the rates table adds up the same rows
    exp = pd.DataFrame(expected, columns=["t", "word", "w", "bucket", "o", "p"])
    exp["class"] = [LABELS[o] for o in exp.o]
    exp["flip"] = exp.o != exp.p
    agg = exp.groupby(["class", "word", "bucket"])["flip"].agg(["sum", "count"]).reset_index()
    merged = res.rates.merge(agg, on=["class", "word", "bucket"])
    assert len(merged) == len(res.rates) == len(agg)
    assert (merged["flips"] == merged["sum"]).all() and (
        merged["occurrences"] == merged["count"]
    ).all()


def test_mask_and_filler_perturbations(seq_clf):
    tok = seq_clf.lm.tokenizer
    res = flip_rates(seq_clf, TEXTS[:3], perturbation="mask", buckets=3)
    expected = brute_force(seq_classify(seq_clf), tok, TEXTS[:3], 3, "mask", [tok.unk_token_id])
    assert [r.perturbed for r in res.occurrences.itertuples()] == [LABELS[e[5]] for e in expected]
    filler = flip_rates(seq_clf, TEXTS[:3], perturbation="filler", filler="the", buckets=3)
    expected = brute_force(
        seq_classify(seq_clf),
        tok,
        TEXTS[:3],
        3,
        "filler",
        tok.encode(" the", add_special_tokens=False),
    )
    assert [r.perturbed for r in filler.occurrences.itertuples()] == [
        LABELS[e[5]] for e in expected
    ]


def test_bucket_boundaries_for_short_texts():
    # n < B: the buckets are spread, not packed at the start
    assert [bucket_of(i, 3, 10) for i in range(3)] == [0, 3, 6]
    assert [bucket_of(i, 1, 10) for i in range(1)] == [0]
    assert [bucket_of(i, 10, 10) for i in range(10)] == list(range(10))
    assert [bucket_of(i, 20, 10) for i in range(20)] == [i // 2 for i in range(20)]
    assert max(bucket_of(i, 7, 10) for i in range(7)) == 8


def test_words_map_to_the_tokens_they_cover(tokenizer):
    inp = tokenize_words(tokenizer, "I couldn't believe it")
    assert inp.words == ["i", "couldn", "t", "believe", "it"]
    covered = [tokenizer.decode([inp.ids[k] for k in toks]).strip() for toks in inp.word_tokens]
    assert covered[1].startswith("couldn") and "believe" in covered[3]


def test_prefix_cache_reuse_gives_identical_predictions(llama):
    texts = [tokenize_words(llama.tokenizer, t).ids for t in TEXTS[:5]]
    texts += [t[:-2] for t in texts if len(t) > 3]  # different lengths in one batch
    template = "Question. Text: {text}\nAnswer:"
    cached = PromptedClassifier(llama, LABELS, [" the", " of", " is"], template=template)
    plain = PromptedClassifier(
        llama, LABELS, [" the", " of", " is"], template=template, reuse_prefix=False
    )
    a = cached.scores(texts, batch_tokens=40)
    b = plain.scores(texts, batch_tokens=40)
    np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_array_equal(cached.predict(texts, 40), plain.predict(texts, 40))
    assert np.ptp(a, axis=0).max() > 0.1  # scores differ between texts, so equality means something


def test_resume_after_interruption_gives_the_same_tables(seq_clf, tmp_path):
    full = flip_rates(seq_clf, TEXTS, buckets=5, chunk_texts=2)

    def stop(k):
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        flip_rates(seq_clf, TEXTS, buckets=5, chunk_texts=2, checkpoint=tmp_path, _after_chunk=stop)
    parts = sorted((tmp_path / "flips.partial").glob("part-*.parquet"))
    assert len(parts) == 2
    with pytest.raises(TokenprobeError, match="pass resume"):
        flip_rates(seq_clf, TEXTS, buckets=5, chunk_texts=2, checkpoint=tmp_path)
    with pytest.raises(TokenprobeError, match=r"other settings \(different buckets\)"):
        flip_rates(seq_clf, TEXTS, buckets=4, chunk_texts=2, checkpoint=tmp_path, resume=True)
    seen = []
    resumed = flip_rates(
        seq_clf,
        TEXTS,
        buckets=5,
        chunk_texts=2,
        checkpoint=tmp_path,
        resume=True,
        _after_chunk=seen.append,
    )
    assert seen == [2]  # only the unfinished chunk ran
    pd.testing.assert_frame_equal(resumed.occurrences, full.occurrences)
    pd.testing.assert_frame_equal(resumed.rates, full.rates)
    assert not (tmp_path / "flips.partial").exists()


def test_wilson_interval_against_the_formula():
    low, high = wilson(np.array([0, 5, 10]), np.array([10, 10, 10]))
    assert low[0] == 0 and high[2] == pytest.approx(1)
    assert (low[1], high[1]) == pytest.approx((0.2366, 0.7634), abs=1e-4)


def test_gold_labels_accuracy_and_grouping(seq_clf):
    gold = ["joy", "anger", "sadness", "joy", "anger", "joy"]
    res = flip_rates(seq_clf, TEXTS, gold, group="gold")
    preds = res.occurrences.drop_duplicates("text_id").set_index("text_id")["original"]
    assert res.meta["accuracy"] == pytest.approx(
        np.mean([preds[i] == gold[i] for i in preds.index])
    )
    assert set(res.rates["class"]) <= set(gold)
    again = rates_table(res.occurrences, LABELS, "gold")
    pd.testing.assert_frame_equal(again, res.rates)


def test_save_load_and_one_figure_per_class(seq_clf, tmp_path):
    res = flip_rates(seq_clf, TEXTS, buckets=4)
    written = res.save(tmp_path / "f", formats=["png"])
    assert {p.name for p in written.values()} >= {"flips.parquet", "rates.parquet", "meta.json"}
    for cls in res.classes():
        assert (tmp_path / "f" / f"flips_{cls}.png").exists()
    from tokenprobe import Result

    back = Result.load(tmp_path / "f")
    pd.testing.assert_frame_equal(back.rates, res.rates)
    fig = back.plot(label=res.classes()[0], min_count=1)
    assert fig.axes[0].get_xlabel() == "position bucket" and fig.axes[1].get_ylabel() == "flip rate"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"texts": []}, "the data set is empty"),
        ({"texts": ["!!!", "..."]}, "every text is empty after tokenization"),
        (
            {"texts": TEXTS, "gold": ["joy"] * 5 + ["fear"]},
            "labels in the data are not in labels: fear",
        ),
        ({"texts": TEXTS, "perturbation": "shuffle"}, "unknown perturbation 'shuffle'"),
        ({"texts": TEXTS, "perturbation": "filler"}, "perturbation filler needs a word"),
        ({"texts": TEXTS, "buckets": 0}, "buckets must be at least 1"),
        ({"texts": TEXTS, "group": "gold"}, "group gold needs gold labels"),
    ],
)
def test_bad_inputs(seq_clf, kwargs, message):
    with pytest.raises(TokenprobeError, match=message):
        flip_rates(seq_clf, **kwargs)


def test_verbaliser_problems(llama):
    with pytest.warns(UserWarning, match="is split into"):
        PromptedClassifier(llama, ["a", "b"], [" Queanbeyan", " the"])
    with pytest.raises(TokenprobeError, match="begin with the same token"):
        PromptedClassifier(llama, ["a", "b"], [" the", " the"])
    for template in ("no slot", "{text} and {text}"):
        with pytest.raises(TokenprobeError, match="placeholder exactly once"):
            PromptedClassifier(llama, ["a"], template=template)


def test_a_class_with_too_few_occurrences_gets_a_clear_figure(seq_clf):
    res = flip_rates(seq_clf, TEXTS[:2], buckets=4)
    fig = res.plot(label=res.classes()[0], min_count=50)
    assert "lower --min-count" in fig.axes[0].texts[0].get_text()
