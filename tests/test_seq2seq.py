"""Encoder-decoder models, every family of `zoo.SEQ2SEQ`, against the model's own forward: the
adapter's decoder head rebuilds the model's logits from the recorded last decoder state, the
recorded streams are the model's own hidden states where those are defined alike, a batch
equals one input at a time, the prepared decoder ids begin as the model's `generate` begins,
and a saved folder loads and is refused in one line by the analyses that do not take it yet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import zoo

import tokenprobe
from tokenprobe import TokenprobeError
from tokenprobe.model.seq2seq_input import pad_batch
from tokenprobe.text import prepare_seq2seq

ARCHS = list(zoo.SEQ2SEQ)
SOURCES = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of Australia?",
    "Hello world!",
]
TARGETS = ["The capital of Australia is Canberra", "Tools: hammer", "I"]
REFUSED = "does not support encoder-decoder models yet"
_MODELS: dict[str, tokenprobe.LoadedModel] = {}


@pytest.fixture
def lm(request, tokenizer):
    arch = request.param
    if arch not in _MODELS:
        _MODELS[arch] = zoo.make_seq2seq(arch, tokenizer)
    return _MODELS[arch]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return bool((a.float() - b.float()).abs().max() <= tol * max(1.0, float(b.abs().max())))


def forward(lm, inp, **kw):
    with torch.no_grad(), lm.require_seq2seq().record() as streams:
        out = lm.model(
            input_ids=torch.tensor([inp.input_ids]),
            decoder_input_ids=torch.tensor([inp.decoder_ids]),
            output_hidden_states=True,
            use_cache=False,
            **kw,
        )
    return out, streams


@pytest.mark.parametrize("lm", ARCHS, indirect=True)
def test_decoder_logits_from_the_last_state_are_the_models(lm):
    adapter = lm.require_seq2seq()
    inp = prepare_seq2seq(lm, SOURCES[0], target=TARGETS[0])
    out, streams = forward(lm, inp)
    assert len(streams.decoder) == adapter.n_blocks + 1 == 3
    assert len(streams.encoder) == adapter.n_encoder_blocks + 1 == 3
    assert close(adapter.logits(streams.decoder[-1]), out.logits)
    assert float(out.logits.std()) > 1.0  # far from uniform: a wrong head changes the answer
    # each part the family has matters: leaving it out does not rebuild the logits
    last = streams.decoder[-1]
    if adapter.decoder.final_norm_path:
        assert not close(adapter.logits(last, apply_norm=False), out.logits, 1e-2)
    if adapter.logits_bias is not None:
        adapter.logits_bias, bias = None, adapter.logits_bias
        assert not close(adapter.logits(last), out.logits, 1e-2)
        adapter.logits_bias = bias
    if adapter.output_scale != 1.0:
        adapter.output_scale, scale = 1.0, adapter.output_scale
        assert not close(adapter.logits(last), out.logits, 1e-2)
        adapter.output_scale = scale


@pytest.mark.parametrize("lm", ARCHS, indirect=True)
def test_recorded_streams_are_the_models_hidden_states(lm):
    """Layers 0..L-1 are the model's `*_hidden_states` entries; its last entry is the last
    block's output after the stack's final norm (T5, mBART, Pegasus, ...: normed; BART,
    Marian, ...: no norm). Pegasus-X's own encoder entries keep the padding to its block size
    (and its last is a tuple with the global tokens): compared on the source's positions."""
    adapter = lm.require_seq2seq()
    inp = prepare_seq2seq(lm, SOURCES[1], target=TARGETS[1])
    out, streams = forward(lm, inp)
    sides = (
        (streams.decoder, out.decoder_hidden_states, adapter.decoder.final_norm),
        (streams.encoder, out.encoder_hidden_states, adapter.encoder.final_norm),
    )
    for ours, theirs, norm in sides:
        assert len(ours) == len(theirs)
        for i, (state, ref) in enumerate(zip(ours, theirs, strict=True)):
            ref = (ref[0] if isinstance(ref, tuple) else ref)[:, : state.shape[1]]
            mine = norm(state) if i == len(ours) - 1 else state
            assert close(mine, ref, 1e-5), i
    assert streams.encoder[0].shape[1] == len(inp.input_ids)
    assert streams.decoder[0].shape[1] == len(inp.decoder_ids)


@pytest.mark.parametrize("lm", ARCHS, indirect=True)
def test_a_padded_batch_equals_one_at_a_time(lm):
    adapter = lm.require_seq2seq()
    inputs = [prepare_seq2seq(lm, s, target=t) for s, t in zip(SOURCES, TARGETS, strict=True)]
    assert (
        len({len(i.input_ids) for i in inputs}) == 3
        and len({len(i.decoder_ids) for i in inputs}) == 3
    )
    batch = pad_batch(
        [i.input_ids for i in inputs], [i.decoder_ids for i in inputs], lm.model.config.pad_token_id
    )
    with torch.no_grad(), adapter.record() as streams:
        logits = lm.model(**batch, use_cache=False).logits
    for b, inp in enumerate(inputs):
        alone, one = forward(lm, inp)
        n, m = len(inp.input_ids), len(inp.decoder_ids)
        assert close(logits[b, :m], alone.logits[0], 1e-3), b
        for layer in range(adapter.n_blocks + 1):
            assert close(streams.decoder[layer][b, :m], one.decoder[layer][0], 1e-3), (b, layer)
            assert close(streams.encoder[layer][b, :n], one.encoder[layer][0], 1e-3), (b, layer)


@pytest.mark.parametrize("lm", ARCHS, indirect=True)
def test_decoder_ids_begin_as_generate_begins(lm):
    """Start token and forced token (the language code of mBART-50, M2M100, NLLB) as the
    model's own `generate` writes them; then the target's tokens, no EOS."""
    inp = prepare_seq2seq(lm, SOURCES[0], target=TARGETS[0])
    tok = lm.tokenizer
    assert inp.input_ids == tok(SOURCES[0])["input_ids"]
    assert inp.forced == (2 if lm.name.removeprefix("tiny-") in zoo.FORCED else 1)
    with torch.no_grad():
        made = lm.model.generate(
            torch.tensor([inp.input_ids]), max_new_tokens=inp.forced, do_sample=False
        )
    assert made[0, : inp.forced].tolist() == inp.decoder_ids[: inp.forced]
    target = tok(text_target=TARGETS[0], add_special_tokens=False)["input_ids"]
    assert inp.decoder_ids[inp.forced :] == target and inp.decoder_ids[-1] != tok.eos_token_id
    assert inp.decoder_tokens == [tok.decode([i]) for i in inp.decoder_ids]
    bare = prepare_seq2seq(lm, SOURCES[0])
    assert bare.decoder_ids == inp.decoder_ids[: inp.forced] and bare.target is None


def test_a_target_language_replaces_the_forced_token(tokenizer):
    lm = _MODELS.get("mbart") or zoo.make_seq2seq("mbart", tokenizer)
    lm.tokenizer.add_special_tokens({"additional_special_tokens": ["fr_XX"]})
    french = lm.tokenizer.convert_tokens_to_ids("fr_XX")
    inp = prepare_seq2seq(lm, SOURCES[0], target_lang="fr_XX", target="Le")
    assert inp.decoder_ids[:2] == [lm.tokenizer.eos_token_id, french]
    with pytest.raises(TokenprobeError, match=r"target_lang 'xx_YY' is not a token"):
        prepare_seq2seq(lm, SOURCES[0], target_lang="xx_YY")
    with pytest.raises(TokenprobeError, match="the source text is empty"):
        prepare_seq2seq(lm, "  ")
    with pytest.raises(TokenprobeError, match="longer than the model's context of 4"):
        prepare_seq2seq(lm, SOURCES[0], max_length=4)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_saved_folder_loads_and_the_command_refuses_it(arch, tokenizer, tmp_path):
    made = _MODELS.get(arch) or zoo.make_seq2seq(arch, tokenizer)
    made.model.save_pretrained(tmp_path / arch)
    made.tokenizer.save_pretrained(tmp_path / arch)
    lm = tokenprobe.load(str(tmp_path / arch), device="cpu")
    assert lm.is_seq2seq and lm.adapter is None and lm.seq2seq is not None
    inp = prepare_seq2seq(lm, SOURCES[0], target=TARGETS[0])
    out, streams = forward(lm, inp)
    again, _ = forward(made, inp)
    assert close(out.logits, again.logits, 1e-5)
    assert close(lm.require_seq2seq().logits(streams.decoder[-1]), out.logits)
    with pytest.raises(TokenprobeError, match=REFUSED):
        lm.require_adapter()
    if arch not in ("t5", "bart", "marian", "m2m_100"):  # the command: 12 s a family on 2 cores
        return
    command = Path(sys.executable).with_name("tokenprobe")
    done = subprocess.run(
        [str(command), "logit-attribution", "--model", str(tmp_path / arch), "--prompt", "hi"]
        + ["--target", " x", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stderr.splitlines() if "memory:" not in line]  # an info line
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("tokenprobe: error: ")
    assert f"the logit_attribution analysis {REFUSED} (those that do: {supported()})" in lines[0]
    assert (
        f"{tmp_path / arch} is an encoder-decoder model ({type(made.model).__name__})" in lines[0]
    )


def supported() -> str:
    """The analyses whose registration declares they take an encoder-decoder model."""
    from tokenprobe.analyses import ANALYSES

    return ", ".join(a.name for a in ANALYSES.values() if a.seq2seq) or "none yet"


def test_an_analysis_that_does_not_declare_seq2seq_refuses_one_in_the_library(tokenizer):
    from tokenprobe.analyses import ANALYSES

    lm = _MODELS.get("t5") or zoo.make_seq2seq("t5", tokenizer)
    refused = [a for a in ANALYSES.values() if not a.seq2seq]
    assert refused, "every analysis takes an encoder-decoder: nothing left to refuse"
    spec = next(a for a in refused if a.name == "logit_attribution")
    with pytest.raises(TokenprobeError, match=f"the logit_attribution analysis {REFUSED}"):
        spec.run(lm, "hi")
