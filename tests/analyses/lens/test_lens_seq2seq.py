"""The lens of encoder-decoder models on T5, BART and Marian (every family of `zoo.SEQ2SEQ`:
test_lens_seq2seq_zoo.py), against the model's own forward: its inner decoder rows are the
decoder's `output_hidden_states` through the adapter's head, its output row is the model's
logits, which the head rebuilds from the last decoder block; a batch equals one input at a
time; the command writes the table and figure of a saved folder and refuses in one line what
an encoder-decoder cannot take."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zoo

import tokenprobe
from tokenprobe import LensResult, TokenprobeError, lens_rows, logit_lens
from tokenprobe.cli import main
from tokenprobe.report import render
from tokenprobe.text import prepare_seq2seq

FAST = ["t5", "bart", "marian"]
SOURCES = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of Australia?",
    "Hello world!",
]
DECODER = ["The capital of Australia is Canberra", "Tools: hammer", "I"]  # three lengths
TARGETS = [" the", " fox"]
FOIL = " dog"
_MODELS: dict[str, tokenprobe.LoadedModel] = {}


def model(arch: str, tokenizer) -> tokenprobe.LoadedModel:
    if arch not in _MODELS:
        _MODELS[arch] = zoo.make_seq2seq(arch, tokenizer)
    return _MODELS[arch]


@pytest.fixture
def lm(request, tokenizer):
    return model(request.param, tokenizer)


def side_id(lm, text: str) -> int:
    return lm.tokenizer(text_target=text, add_special_tokens=False)["input_ids"][0]


def by_hand(lm, inp) -> torch.Tensor:
    """(decoder layers + 1, decoder positions, vocabulary) logits the slow obvious way, from
    the model's own forward: layer i is `decoder_hidden_states[i]` through the adapter's
    head, the last row the model's logits (which that head rebuilds from the last block)."""
    adapter = lm.require_seq2seq()
    with torch.no_grad(), adapter.record() as streams:
        out = lm.model(
            input_ids=torch.tensor([inp.input_ids]),
            decoder_input_ids=torch.tensor([inp.decoder_ids]),
            output_hidden_states=True,
            use_cache=False,
        )
        own = out.logits[0].float()
        rebuilt = adapter.logits(streams.decoder[-1])[0]
        rows = [adapter.logits(h[0]) for h in out.decoder_hidden_states[: adapter.n_blocks]]
    scale = max(1.0, float(own.abs().max()))
    assert float((rebuilt - own).abs().max()) <= 1e-4 * scale  # at every decoder position
    assert len(out.decoder_hidden_states) == adapter.n_blocks + 1
    return torch.stack([*rows, own])


def check_against_hand(lm, res: LensResult, inp, top_k: int = 3) -> None:
    """Every statistic of every (decoder layer, decoder position) cell against `by_hand`."""
    logits = by_hand(lm, inp).double()
    assert res.entropy.shape == logits.shape[:2]
    assert res.tokens == inp.decoder_tokens and res.token_ids == inp.decoder_ids
    log_p = torch.log_softmax(logits, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    np.testing.assert_allclose(res.entropy, entropy.numpy(), atol=2e-4, rtol=1e-4)
    top_p, top_i = log_p.exp().topk(top_k, dim=-1)
    np.testing.assert_allclose(res.top_probs, top_p.numpy(), atol=2e-5)
    assert (res.top_ids[..., 0] == top_i[..., 0].numpy()).mean() > 0.95  # ties may swap
    tids = [side_id(lm, t) for t in TARGETS]
    np.testing.assert_allclose(
        res.target_probs, log_p.exp()[..., tids].numpy(), atol=2e-6, rtol=1e-3
    )
    chosen = logits[..., tids]  # rank: 1 + logits above the target's
    ranks = (logits[..., None, :] > chosen[..., None]).sum(-1) + 1
    assert (res.target_ranks == ranks.numpy()).mean() > 0.99
    diff = logits[..., tids[0]] - logits[..., side_id(lm, FOIL)]
    scale = max(1.0, float(diff.abs().max()))
    np.testing.assert_allclose(res.logit_diff, diff.numpy(), atol=1e-4 * scale, rtol=0)
    assert float(diff.abs().max()) > 1.0  # large logits: a wrong head changes the answer


def run_lens(lm, given, **kw):
    return logit_lens(lm, given, targets=TARGETS, foil=FOIL, top_k=3, **kw)


@pytest.mark.parametrize("lm", FAST, indirect=True)
def test_decoder_rows_are_the_models_own(lm):
    inp = prepare_seq2seq(lm, SOURCES[0], target=DECODER[0])
    res = run_lens(lm, SOURCES[0], decoder_text=DECODER[0])
    check_against_hand(lm, res, inp)
    adapter = lm.require_seq2seq()
    assert res.n_rows == adapter.n_blocks + 1 and res.layer_labels[-1] == "output"
    assert res.side == "decoder" and res.meta["output_check"] == "ok"
    assert res.meta["source_ids"] == inp.input_ids and "left out" in res.meta["encoder_layers"]
    frame = res.to_frame()
    assert set(frame["side"]) == {"decoder"} and len(frame) == res.n_rows * res.n_positions


@pytest.mark.parametrize("lm", FAST, indirect=True)
def test_a_batch_equals_one_at_a_time_and_the_hand(lm):
    inputs = [prepare_seq2seq(lm, s, target=t) for s, t in zip(SOURCES, DECODER, strict=True)]
    together = run_lens(lm, inputs)
    apart = run_lens(lm, inputs, batch_tokens=1, memory_mb=0.01)  # alone, row by row
    for inp, a, b in zip(inputs, together, apart, strict=True):
        check_against_hand(lm, a, inp)
        np.testing.assert_allclose(a.entropy, b.entropy, atol=1e-4)
        np.testing.assert_allclose(a.logit_diff, b.logit_diff, atol=1e-3)
        np.testing.assert_array_equal(a.target_ranks, b.target_ranks)


def test_the_rows_of_a_data_file_are_each_a_lens(tokenizer):
    lm = model("t5", tokenizer)
    rows = lens_rows(lm, SOURCES, decoder_text=DECODER[1], targets=TARGETS, figures=1)
    frame = rows.to_frame()
    for i, source in enumerate(SOURCES):
        alone = logit_lens(lm, source, decoder_text=DECODER[1], targets=TARGETS)
        mine = frame[frame["row"] == i].drop(columns="row").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, alone.to_frame(), atol=1e-4, check_dtype=False)


def test_save_and_load_keep_the_side(tokenizer, tmp_path):
    lm = model("marian", tokenizer)
    res = run_lens(lm, SOURCES[1], decoder_text=DECODER[1])
    res.save(tmp_path / "lens", formats=["png"])
    back = tokenprobe.load_result(tmp_path / "lens")
    assert isinstance(back, LensResult) and back.side == "decoder"
    assert back.tokens == res.tokens and back.meta["source_tokens"] == res.meta["source_tokens"]
    np.testing.assert_array_equal(back.logit_diff, res.logit_diff)
    (_, heatmap), *_ = back.views()
    assert heatmap.xlabel == "decoder token" and "decoder layers" in heatmap.title
    page = render([back])  # the report's section: the decoder's tokens on its axis
    assert "decoder token" in page and "encoder layers left out" in page


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"lens": "builtin"}, "^lens on an encoder-decoder model .*a tuned lens is trained"),
        ({"chat": True}, "^chat on an encoder-decoder model"),
        ({"system": "be brief"}, "^system on an encoder-decoder model"),
        ({"dummy": 2}, "^dummy on an encoder-decoder model"),
    ],
)
def test_what_an_encoder_decoder_cannot_take_is_one_line(tokenizer, settings, words):
    lm = model("t5", tokenizer)
    with pytest.raises(TokenprobeError, match=words) as caught:
        logit_lens(lm, SOURCES[0], **settings)
    assert "\n" not in str(caught.value)


def test_inputs_of_the_other_kind_and_causal_only_settings_are_refused(tokenizer, llama):
    lm = model("t5", tokenizer)
    with pytest.raises(TokenprobeError, match="a PreparedInput is not an input of an encoder"):
        logit_lens(lm, tokenprobe.text.prepare(llama, "hi"))
    with pytest.raises(TokenprobeError, match="a Seq2SeqInput is not an input of a causal LM"):
        logit_lens(llama, prepare_seq2seq(lm, "hi"))
    for name in ("decoder_text", "target_lang"):
        with pytest.raises(TokenprobeError, match=f"^{name} is for encoder-decoder models"):
            logit_lens(llama, "hi", **{name: "de"})
    with pytest.raises(TokenprobeError, match="the prompt is empty"):
        logit_lens(lm, "  ")


# ------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("seq2seq")
    for arch in ("t5", "marian"):
        made = model(arch, tokenizer)
        made.model.save_pretrained(root / arch)
        made.tokenizer.save_pretrained(root / arch)
    return root


@pytest.mark.parametrize("arch", ["t5", "marian"])
def test_the_installed_command_writes_the_decoders_lens(arch, folders, tmp_path):
    command = Path(sys.executable).with_name("tokenprobe")
    out = tmp_path / "out"
    done = subprocess.run(
        [str(command), "lens", "--model", str(folders / arch), "--prompt", SOURCES[0]]
        + ["--target", " the", "--decoder-text", DECODER[0], "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "lens.parquet").is_file() and (out / "lens.png").stat().st_size > 1000
    frame = pd.read_parquet(out / "lens.parquet")
    assert set(frame["side"]) == {"decoder"}
    back = tokenprobe.load_result(out)
    alone = logit_lens(_MODELS[arch], SOURCES[0], targets=[" the"], decoder_text=DECODER[0])
    np.testing.assert_allclose(back.entropy, alone.entropy, atol=1e-4)


def error_line(capsys, *argv: str) -> str:
    code = main(list(argv))
    lines = [x for x in capsys.readouterr().err.splitlines() if "memory:" not in x]
    assert code == 2 and len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--lens", "builtin"], "--lens on an encoder-decoder model"),
        (["--chat"], "--chat on an encoder-decoder model"),
        (["--dummy", "2"], "--dummy on an encoder-decoder model"),
    ],
)
def test_the_command_refuses_in_one_line(flags, words, folders, tmp_path, capsys):
    model_flags = ["--model", str(folders / "t5"), "--prompt", "hi", "--out", str(tmp_path / "o")]
    line = error_line(capsys, "lens", *model_flags, *flags)
    assert line.startswith("tokenprobe: error: ") and words in line


def test_the_installed_command_refuses_decoder_text_on_a_causal_lm(tmp_path, tokenizer):
    import copy

    from conftest import make_model

    made = make_model("llama", copy.deepcopy(tokenizer))
    made.model.save_pretrained(tmp_path / "llama")
    made.tokenizer.save_pretrained(tmp_path / "llama")
    command = Path(sys.executable).with_name("tokenprobe")
    done = subprocess.run(
        [str(command), "lens", "--model", str(tmp_path / "llama"), "--prompt", "hi"]
        + ["--decoder-text", "Das", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [x for x in done.stderr.splitlines() if "memory:" not in x]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "--decoder-text is for encoder-decoder models" in lines[0]
