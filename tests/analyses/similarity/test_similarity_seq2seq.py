"""Past similarity of encoder-decoder models on T5, BART and Marian (every family of
`zoo.SEQ2SEQ`: test_similarity_seq2seq_zoo.py), against a brute-force numpy computation from
the model's own forward: a marker in the source is compared within the encoder's states, a
marker in the decoder text within the decoder's; a data set batched equals one text at a time;
the command writes the table and figure of a saved folder and refuses in one line."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zoo

import tokenprobe
from tokenprobe import SimilarityResult, TokenprobeError, past_similarity
from tokenprobe.cli import main
from tokenprobe.text import prepare_seq2seq

FAST = ["t5", "bart", "marian"]
SOURCES = [
    "Tools: hammer, wrench _PAUSE_ level, pliers. Fruits: orange _PAUSE_ peach",
    "The quick brown fox _PAUSE_ jumps",
    "a b c d e f _PAUSE_ g h",
]
PLAIN = ["Tools: hammer, wrench, level.", "The quick brown fox", "What is the capital?"]
DECODER = "Das Haus ist _PAUSE_ wunderbar _PAUSE_ heute"
_MODELS: dict[str, tokenprobe.LoadedModel] = {}


def model(arch: str, tokenizer) -> tokenprobe.LoadedModel:
    if arch not in _MODELS:
        _MODELS[arch] = zoo.make_seq2seq(arch, tokenizer)
    return _MODELS[arch]


def states(lm, inp, side: str) -> np.ndarray:
    """(layers, positions, width) of one stack, float64, from the model's own forward: its
    `*_hidden_states` entries 0..L-1, then its last block's output caught by a hook on the
    block named by hand (T5-like stacks keep theirs in `block`, the others in `layers`)."""
    stack = lm.model.get_encoder() if side == "source" else lm.model.get_decoder()
    blocks = stack.block if hasattr(stack, "block") else stack.layers
    caught = []
    hook = blocks[-1].register_forward_hook(
        lambda _m, _i, o: caught.append(o[0] if isinstance(o, tuple) else o)
    )
    try:
        with torch.no_grad():
            out = lm.model(
                input_ids=torch.tensor([inp.input_ids]),
                decoder_input_ids=torch.tensor([inp.decoder_ids]),
                output_hidden_states=True,
                use_cache=False,
            )
    finally:
        hook.remove()
    n = len(inp.input_ids if side == "source" else inp.decoder_ids)
    hidden = out.encoder_hidden_states if side == "source" else out.decoder_hidden_states
    last = caught[-1]
    if last.shape[0] != 1:  # FSMT's blocks pass (positions, batch, width)
        last = last.transpose(0, 1)
    rows = [(h[0] if isinstance(h, tuple) else h)[0, :n] for h in hidden[:-1]] + [last[0, :n]]
    return np.stack([r.double().numpy() for r in rows])


def brute(h: np.ndarray, anchor: int, window: int, centre=False, future=False) -> np.ndarray:
    if centre:
        h = h - h[:, 1:].mean(axis=1, keepdims=True)
    out = np.full((h.shape[0], window), np.nan)
    for layer in range(h.shape[0]):
        for d in range(1, window + 1):
            q = anchor + d if future else anchor - d
            if 0 <= q < h.shape[1]:
                a, b = h[layer, anchor], h[layer, q]
                out[layer, d - 1] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return out


def reference(lm, source, side, window, occurrence=1, decoder=None, **kw) -> np.ndarray:
    """One text's cosines the slow obvious way: the marker's position found in the side's ids."""
    inp = prepare_seq2seq(lm, source, target=decoder)
    ids = inp.input_ids if side == "source" else inp.decoder_ids
    marker = lm.tokenizer.convert_tokens_to_ids("_PAUSE_")
    anchor = [i for i, t in enumerate(ids) if t == marker][occurrence - 1]
    return brute(states(lm, inp, side), anchor, window, **kw)


def check_source_and_decoder(lm, window: int = 6) -> None:
    """A marker in the source (encoder states) and one in the decoder text (decoder states),
    each against `reference`, centred and not, past and future."""
    res = past_similarity(lm, SOURCES[0], occurrence=2, window=window)  # adds the marker
    assert res.side == "source" and res.meta["token_ids"] == res.meta["source_ids"]
    expected = reference(lm, SOURCES[0], "source", window, occurrence=2)
    np.testing.assert_allclose(res.cosine, expected, atol=2e-5)
    res = past_similarity(lm, PLAIN[0], decoder_text=DECODER, window=window, centre=True)
    assert res.side == "decoder" and res.meta["decoder_ids"] == res.meta["token_ids"]
    expected = reference(lm, PLAIN[0], "decoder", window, decoder=DECODER, centre=True)
    np.testing.assert_allclose(res.cosine, expected, atol=2e-5)
    res = past_similarity(
        lm, PLAIN[1], decoder_text=DECODER, window=window, direction="future", occurrence=2
    )
    expected = reference(lm, PLAIN[1], "decoder", window, 2, decoder=DECODER, future=True)
    np.testing.assert_allclose(res.cosine, expected, atol=2e-5)
    assert np.isnan(res.cosine).any() and np.isfinite(res.cosine).any()  # past the end: padded
    assert float(np.nanmax(res.cosine) - np.nanmin(res.cosine)) > 0.1  # cells differ


def check_batched(lm, side: str, window: int = 5, padded: bool = True) -> None:
    """A data set in one padded batch, and one text at a time, against the brute-force mean
    (`padded` False: the run may find the padded batch inexact and run each text alone)."""
    texts, decoder = (SOURCES, None) if side == "source" else (PLAIN, DECODER)
    together = past_similarity(lm, texts, decoder_text=decoder, window=window)
    apart = past_similarity(lm, texts, decoder_text=decoder, window=window, batch_tokens=1)
    assert together.side == apart.side == side
    per = np.stack([reference(lm, t, side, window, decoder=decoder) for t in texts])
    counts = np.isfinite(per[:, 0]).sum(axis=0)
    with np.errstate(invalid="ignore"):
        expected = np.nansum(per, axis=0) / counts
    expected[:, counts == 0] = np.nan
    np.testing.assert_array_equal(together.count, counts)
    np.testing.assert_allclose(together.cosine, expected, atol=5e-5)
    np.testing.assert_allclose(apart.cosine, together.cosine, atol=5e-5)
    # three source lengths (the compared side's, or the other's): a padded batch ran, checked
    ran = together.meta["batching"]
    assert ran.startswith("padded batches") or (not padded and ran.startswith("one text at"))


@pytest.mark.parametrize("arch", FAST)
def test_source_and_decoder_markers_against_brute_force(arch, tokenizer):
    check_source_and_decoder(model(arch, tokenizer))


@pytest.mark.parametrize("arch", FAST)
@pytest.mark.parametrize("side", ["source", "decoder"])
def test_a_data_set_batched_equals_one_at_a_time(arch, side, tokenizer):
    check_batched(model(arch, tokenizer), side)


def test_the_side_is_a_column_and_survives_save_and_load(tokenizer, tmp_path):
    lm = model("marian", tokenizer)
    res = past_similarity(lm, PLAIN[2], decoder_text=DECODER, side="decoder", window=4)
    assert set(res.to_frame()["side"]) == {"decoder"}
    res.save(tmp_path / "s", formats=["png"])
    back = tokenprobe.load_result(tmp_path / "s")
    assert isinstance(back, SimilarityResult) and back.side == "decoder"
    np.testing.assert_array_equal(back.cosine, res.cosine)
    (_, heatmap), *_ = back.views()
    assert heatmap.ylabel == "Decoder layer" and "decoder" in heatmap.title


def test_inserted_markers_go_to_the_compared_side(tokenizer):
    lm = model("t5", tokenizer)
    res = past_similarity(lm, PLAIN[0], decoder_text="Das Haus ist", side="decoder",
                          insert_every=2, window=3)  # fmt: skip
    assert (
        res.side == "decoder" and res.meta["source_ids"] == prepare_seq2seq(lm, PLAIN[0]).input_ids
    )
    res = past_similarity(lm, PLAIN[0], insert_every=2, window=3)
    assert res.side == "source"


def test_what_makes_no_sense_is_one_line(tokenizer, llama):
    lm = model("t5", tokenizer)
    cases = [
        ({"decoder_text": DECODER}, SOURCES[0], "is in the source and in decoder_text: give side"),
        ({"side": "decoder"}, SOURCES[0], "side decoder compares the decoder's states: give"),
        ({"side": "decoder", "decoder_text": "Das"}, PLAIN[0], "the decoder input"),
        ({"executor": object()}, SOURCES[0], "runs here only, not on Ray workers"),
    ]
    for settings, text, words in cases:
        with pytest.raises(TokenprobeError, match=words) as caught:
            past_similarity(lm, text, **settings)
        assert "\n" not in str(caught.value)
    for settings in ({"side": "source"}, {"decoder_text": "x"}, {"target_lang": "de"}):
        name = next(iter(settings))
        with pytest.raises(TokenprobeError, match=f"^{name} is for encoder-decoder models"):
            past_similarity(llama, SOURCES[0], **settings)


# ------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("seq2seq")
    for arch in ("t5", "marian"):
        made = zoo.make_seq2seq(arch, copy.deepcopy(tokenizer))
        made.model.save_pretrained(root / arch)
        made.tokenizer.save_pretrained(root / arch)
    return root


def command(*argv: str) -> subprocess.CompletedProcess:
    installed = Path(sys.executable).with_name("tokenprobe")
    return subprocess.run(
        [str(installed), "similarity", *argv], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("arch", ["t5", "marian"])
def test_the_installed_command_writes_the_table_and_figure(arch, folders, tmp_path):
    out = tmp_path / "out"
    done = command("--model", str(folders / arch), "--text", PLAIN[0], "--decoder-text",
                   DECODER, "--window", "4", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (out / "similarity.png").stat().st_size > 1000
    frame = pd.read_parquet(out / "similarity.parquet")
    assert set(frame["side"]) == {"decoder"} and frame["cosine"].notna().any()


def test_the_installed_command_refuses_in_one_line(folders, tmp_path):
    done = command("--model", str(folders / "t5"), "--text", SOURCES[0], "--decoder-text",
                   DECODER, "--out", str(tmp_path / "o"))  # fmt: skip
    lines = [x for x in done.stderr.splitlines() if "memory:" not in x and "Warning" not in x]
    lines = [x for x in lines if x.startswith("tokenprobe: error")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "is in the source and in --decoder-text: give --side source or decoder" in lines[0]


def test_the_command_refuses_side_on_a_causal_lm(tmp_path, tokenizer, capsys):
    from conftest import make_model

    made = make_model("llama", copy.deepcopy(tokenizer))
    made.model.save_pretrained(tmp_path / "llama")
    made.tokenizer.save_pretrained(tmp_path / "llama")
    code = main(["similarity", "--model", str(tmp_path / "llama"), "--text", SOURCES[0],
                 "--side", "source", "--out", str(tmp_path / "o")])  # fmt: skip
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("tokenprobe: error")]
    assert code == 2 and len(lines) == 1 and "--side is for encoder-decoder models" in lines[0]
