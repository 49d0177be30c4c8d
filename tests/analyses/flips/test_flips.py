"""Flip rates against a brute-force loop (one text, one perturbation, one forward at a time)."""

from __future__ import annotations

import copy
import inspect
import re

import numpy as np
import pandas as pd
import pytest
import test_bad_input
import test_cli
import torch
from test_bad_input import assert_one_error, run_any

from tokenprobe import (
    FlipResult,
    LoadedModel,
    PromptedClassifier,
    SequenceClassifier,
    TokenprobeError,
    flip_rates,
)
from tokenprobe.analyses.flips import bucket_of, rates_table, tokenize_words
from tokenprobe.analyses.flips.options import FlipFigure, FlipOptions
from tokenprobe.loading import load_result
from tokenprobe.stats import wilson

model_dir = test_cli.model_dir  # the tiny model folder the command-line cases run on
no_model_load = test_bad_input.no_model_load  # loading a model fails the test

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

    back = load_result(tmp_path / "f")
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


# ------------------------------------------------------------------- settings, declared once

NAN, INF = float("nan"), float("inf")
BAD_SETTINGS = {  # refused as `FlipOptions` is built: before the classifier runs anything
    "a fraction": ({"buckets": 2.5}, "`buckets` must be a whole number, not 2.5"),
    "True": ({"buckets": True}, "`buckets` must be a whole number, not True"),
    "text": ({"buckets": "3"}, "`buckets` must be a whole number, not '3'"),
    "nan": ({"buckets": NAN}, "`buckets` must be a whole number, not nan"),
    "inf": ({"chunk_texts": INF}, "`chunk_texts` must be a whole number, not inf"),
    "a number for text": ({"perturbation": 3}, "`perturbation` must be text, not 3"),
    "below a limit": ({"buckets": 0}, "`buckets` must be at least 1, not 0"),
    "beyond an int64": ({"buckets": 2**63}, "`buckets` must be at most 9223372036854775807"),
    "no batch": ({"batch_tokens": 0}, "`batch_tokens` must be at least 1, not 0"),
    "no chunk": ({"chunk_texts": -1}, "`chunk_texts` must be at least 1, not -1"),
    "a choice": ({"group": "all"}, "`group` must be one of predicted, gold, not 'all'"),
    "a perturbation": ({"perturbation": "shuffle"}, "unknown `perturbation` 'shuffle': use"),
    "no filler": ({"perturbation": "filler", "filler": " "}, "`perturbation` filler needs a word"),
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_a_bad_setting_is_refused_naming_it(case):
    kwargs, message = BAD_SETTINGS[case]
    shown = re.escape(message.replace("`", ""))  # a Python caller reads the bare name
    with pytest.raises(TokenprobeError, match=shown) as caught:
        flip_rates(None, TEXTS, **kwargs)  # no classifier: refused before any is used
    assert message in caught.value.template  # the parameter named, for the flag to replace
    with pytest.raises(TokenprobeError, match=shown):
        FlipOptions(**kwargs)


def _tiny_result() -> FlipResult:
    rows = [(0, "a", 0, "joy", "joy"), (0, "b", 1, "joy", "anger")]
    rows += [(1, "a", 0, "anger", "joy"), (1, "b", 1, "anger", "anger")]
    occ = pd.DataFrame(rows, columns=["text_id", "word", "word_index", "original", "perturbed"])
    flipped = occ["original"] != occ["perturbed"]
    occ = occ.assign(n_words=2, bucket=occ["word_index"], gold=None, flipped=flipped)
    return FlipResult(occ, rates_table(occ, LABELS, "predicted"), LABELS, buckets=2)


BAD_FIGURES = {
    "a fraction": ({"top": 1.5}, "`top` must be a whole number, not 1.5"),
    "True": ({"min_count": True}, "`min_count` must be a whole number, not True"),
    "nan": ({"top": NAN}, "`top` must be a whole number, not nan"),
    "inf": ({"min_count": INF}, "`min_count` must be a whole number, not inf"),
    "below a limit": ({"min_count": 0}, "`min_count` must be at least 1, not 0"),
    "a choice": ({"rank": "best"}, "`rank` must be one of support, rate, frequency, not 'best'"),
    "a number for text": ({"cmap": 1}, "`cmap` must be text, not 1"),
}


@pytest.mark.parametrize("case", BAD_FIGURES)
def test_a_bad_figure_setting_is_refused_naming_it(case):
    kwargs, message = BAD_FIGURES[case]
    shown = re.escape(message.replace("`", ""))
    result = _tiny_result()
    for draw in (result.views, lambda **kw: result.plot("joy", **kw), FlipFigure):
        with pytest.raises(TokenprobeError, match=shown):
            draw(**kwargs)


def test_figure_settings_as_an_object_or_as_keywords_draw_the_same():
    result = _tiny_result()
    by_object = dict(result.views(FlipFigure(top=1, rank="frequency", min_count=1, title="T")))
    by_keywords = dict(result.views(top=1, rank="frequency", min_count=1, title="T"))
    assert list(by_object) == list(by_keywords) == ["flips_anger", "flips_joy"]
    for name, view in by_object.items():
        assert (view.rows, view.title) == (by_keywords[name].rows, "T") and len(view.rows) == 1
    # what meta.json kept of an older run's figures (all three, defaults too) still draws
    old = dict(result.views(**{"top": 40, "rank": "support", "min_count": 3}))
    assert [v.rows for v in old.values()] == [v.rows for v in dict(result.views()).values()]
    with pytest.raises(TypeError, match="no such setting"):
        result.views(colour="diff")


def test_options_as_an_object_equal_the_same_settings_as_keywords(seq_clf):
    settings = {"buckets": 3, "perturbation": "mask", "chunk_texts": 2, "batch_tokens": 64}
    by_object = flip_rates(seq_clf, TEXTS, options=FlipOptions(**settings))
    by_keywords = flip_rates(seq_clf, TEXTS, **settings)
    pd.testing.assert_frame_equal(by_object.occurrences, by_keywords.occurrences)
    pd.testing.assert_frame_equal(by_object.rates, by_keywords.rates)
    assert by_object.meta["options"] == by_keywords.meta["options"]
    both = flip_rates(seq_clf, TEXTS, options=FlipOptions(buckets=7), **settings)
    pd.testing.assert_frame_equal(both.rates, by_keywords.rates)  # keywords replace settings
    signature = inspect.signature(flip_rates).parameters
    assert signature["buckets"].default == 10 and signature["batch_tokens"].default == 4096
    with pytest.raises(TypeError, match="unexpected keyword argument 'bucket'"):
        flip_rates(seq_clf, TEXTS, bucket=3)


BAD_FLAGS = {  # one line naming the flag, exit status 2, the model never loaded
    "--buckets 2.5": (["--buckets", "2.5"], "argument --buckets: expected a whole number"),
    "--buckets nan": (["--buckets", "nan"], "argument --buckets: expected a whole number"),
    "--buckets -3": (["--buckets", "-3"], "argument --buckets: must be at least 1, not -3"),
    "--top 1.5": (["--top", "1.5"], "argument --top: expected a whole number, not '1.5'"),
    "--min-count inf": (["--min-count", "inf"], "argument --min-count: expected a whole number"),
    "--group all": (["--group", "all"], "argument --group: invalid choice: 'all'"),
    "--rank best": (["--rank", "best"], "argument --rank: invalid choice: 'best'"),
    "--perturb shuffle": (["--perturb", "shuffle"], "unknown --perturb 'shuffle': use delete"),
}


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_a_bad_flag_is_one_line(case, model_dir, tmp_path, capsys, no_model_load):
    argv, message = BAD_FLAGS[case]
    data = tmp_path / "t.csv"
    pd.DataFrame({"text": ["a b", "c d"], "label": ["joy", "fear"]}).to_csv(data, index=False)
    argv = ["--model", str(model_dir), "--out", str(tmp_path / "o"), "--data", str(data), *argv]
    code, _, err = run_any(capsys, "flips", *argv)
    assert_one_error(code, err, message)  # before the model loads: `no_model_load`
