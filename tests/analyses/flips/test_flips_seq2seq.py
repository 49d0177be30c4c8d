"""Flip rates with an encoder-decoder asked a question (T5, BART, Marian here; every family in
test_flips_seq2seq_zoo.py): the filled template is the source exactly as the tokenizer gives it,
the decoder begins as the model's own `generate` does, and every occurrence's prediction equals
one forward of the model alone on the perturbed source; batched equals one at a time."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zoo
from test_flips import TEXTS, brute_force

from tokenprobe import TokenprobeError
from tokenprobe.analyses.flips import PromptedClassifier, flip_rates

LABELS = ["anger", "joy", "sadness"]
VERBALISERS = [" the", " of", " is"]  # one token each in the tiny vocabulary
TEMPLATE = "Text:\n{text}\nAnswer:"  # no BPE merge across the text's edges
FAST = ["t5", "bart", "marian"]
_MODELS: dict[str, object] = {}


def wrapped(tokenizer):
    """The tiny tokenizer made to put <s> before and </s> after a source, as BART's does."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tokenizer)
    bos, eos = tok.bos_token, tok.eos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        special_tokens=[(bos, tok.bos_token_id), (eos, tok.eos_token_id)],
    )
    return tok


def model(arch: str, tokenizer):
    if arch not in _MODELS:
        _MODELS[arch] = zoo.make_seq2seq(arch, wrapped(tokenizer) if arch == "bart" else tokenizer)
    return _MODELS[arch]


def generate_start(lm, source: list[int]) -> list[int]:
    """The ids the model's own greedy `generate` begins its answer with, before its first
    free choice: the decoder start token and any forced token."""
    out = lm.model.generate(
        torch.tensor([source]), max_new_tokens=2, do_sample=False, num_beams=1, min_length=0
    )
    forced = lm.model.generation_config.forced_bos_token_id
    return [int(i) for i in out[0][: 2 if forced is not None else 1]]


def classify_alone(clf, tok):
    """One forward of the model alone per source: the source the tokenizer gives for the
    whole prompt, the decoder's start as generate begins, the verbalisers' first tokens."""

    def run(ids: list[int]) -> int:
        source = clf.prefix_ids + list(ids) + clf.suffix_ids
        decoder = torch.tensor([clf.decoder_ids])
        with torch.no_grad():
            logits = clf.lm.model(input_ids=torch.tensor([source]), decoder_input_ids=decoder)
        return int(logits.logits[0, -1, clf.verbaliser_ids].argmax())

    return run


def check(arch: str, tokenizer, texts: list[str] = TEXTS):
    lm = model(arch, tokenizer)
    clf = PromptedClassifier(lm, LABELS, VERBALISERS, template=TEMPLATE)
    tok = lm.tokenizer
    text_ids = tok(TEXTS[2], add_special_tokens=False)["input_ids"]
    whole = tok(TEMPLATE.format(text=TEXTS[2]))["input_ids"]
    assert clf.prefix_ids + text_ids + clf.suffix_ids == whole  # the tokenizer's own source
    assert clf.decoder_ids == generate_start(lm, whole)
    assert clf.verbaliser_ids == [tok(text_target=v, add_special_tokens=False)["input_ids"][0]
                                  for v in VERBALISERS]  # fmt: skip
    res = flip_rates(clf, texts, buckets=4, batch_tokens=64, chunk_texts=2)
    expected = brute_force(classify_alone(clf, tok), tok, texts, 4)
    got = res.occurrences
    assert len(got) == len(expected) > 5
    for row, (i, word, w, b, orig, pert) in zip(got.itertuples(), expected, strict=True):
        assert (row.text_id, row.word, row.word_index, row.bucket) == (i, word, w, b)
        assert (row.original, row.perturbed) == (LABELS[orig], LABELS[pert]), (arch, row)
    one = flip_rates(clf, texts, buckets=4, batch_tokens=1)  # one text per batch
    pd.testing.assert_frame_equal(one.occurrences, got)
    assert "checked against one" in res.meta["batching"], res.meta["batching"]
    assert res.meta["classifier"]["decoder_ids"] == clf.decoder_ids
    return res


@pytest.mark.parametrize("arch", FAST)
def test_occurrences_equal_one_forward_alone_each(arch, tokenizer):
    res = check(arch, tokenizer)
    if arch == "bart":  # the wrapped source: <s> first, </s> last
        clf = PromptedClassifier(model(arch, tokenizer), LABELS, VERBALISERS, template=TEMPLATE)
        tok = clf.lm.tokenizer
        assert clf.prefix_ids[0] == tok.bos_token_id and clf.suffix_ids[-1] == tok.eos_token_id
    if arch != "bart":  # its random final_logits_bias decides alone between these three
        assert res.occurrences["flipped"].any()  # the test can tell flips from none


def test_chat_is_refused_in_one_line(tokenizer):
    lm = model("t5", tokenizer)
    with pytest.raises(TokenprobeError, match="encoder-decoder model: it has no chat template"):
        PromptedClassifier(lm, LABELS, VERBALISERS, template=TEMPLATE, chat=True)


def test_the_command_on_a_saved_t5_folder(tokenizer, tmp_path):
    lm = model("t5", tokenizer)
    folder = tmp_path / "t5"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    data = tmp_path / "data.csv"
    pd.DataFrame({"text": TEXTS[:5], "label": ["joy", "anger", "joy", "sadness", "joy"]}).to_csv(
        data, index=False
    )
    command = Path(sys.executable).with_name("tokenprobe")
    base = [str(command), "flips", "--model", str(folder), "--data", str(data), "--labels"]
    labels = [f"{a}={v}" for a, v in zip(LABELS, VERBALISERS, strict=True)]
    out = tmp_path / "out"
    done = subprocess.run(
        [*base, *labels, "--template", TEMPLATE, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    table = pd.read_parquet(out / "flips.parquet")
    alone = flip_rates(
        PromptedClassifier(lm, LABELS, VERBALISERS, template=TEMPLATE),
        TEXTS[:5],
        ["joy", "anger", "joy", "sadness", "joy"],
    )
    assert np.array_equal(table["perturbed"], alone.occurrences["perturbed"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classifier"]["decoder_ids"] == [lm.model.config.decoder_start_token_id]
    refused = subprocess.run(
        [*base, *labels, "--chat", "--out", str(tmp_path / "chat")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [x for x in refused.stderr.splitlines() if "memory:" not in x]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "it has no chat template" in lines[0]
