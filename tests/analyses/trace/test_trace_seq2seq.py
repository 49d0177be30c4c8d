"""Causal tracing of encoder-decoder models (t5, bart, marian here; every family of
`zoo.SEQ2SEQ` in test_trace_seq2seq_zoo.py): every cell of the encoder, decoder and
cross-attention grids equals one plain forward pass of the model with the clean state written
in by a hook written here (the cross-attention modules named here by family, not found by the
analysis); batched equals one at a time; the clean score is the model's own probability;
restoring a whole last encoder layer, or the decoder's input with a clean encoder, gives the
clean score back; noise goes on the encoder's token embeddings before the family's scale;
the command on saved folders, and the settings that do not apply refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import zoo

from tokenprobe import TokenprobeError, causal_trace
from tokenprobe.loading import load_result

CLEAN = "The quick brown fox jumps"
CORRUPTED = "The quick brown dog jumps"  # the same 6 tokens but one
DECODER_TEXT = "A fox"
TARGET = " over"
KW = dict(
    corrupted=CORRUPTED, target=TARGET, decoder_text=DECODER_TEXT, metric="logprob", progress=False
)
FAST = ("t5", "bart", "marian")
# each family's cross-attention module inside a decoder block, named here
CROSS = {
    **{a: "encoder_attn" for a in zoo.SEQ2SEQ},
    **{
        a: "layer.1.EncDecAttention"
        for a in ("t5", "t5-untied", "mt5", "umt5", "longt5", "switch_transformers")
    },
    "nllb-moe": "cross_attention",
    "t5gemma": "cross_attn",
}
_MODELS: dict = {}


def model(arch: str, tokenizer):
    if arch not in _MODELS:
        _MODELS[arch] = zoo.make_seq2seq(arch, tokenizer)
    return _MODELS[arch]


def quiet(**kw):
    """The trace with the warnings a random model earns (an implausible target) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return causal_trace(kw.pop("lm"), kw.pop("prompt", CLEAN), **{**KW, **kw})


def _put(state: torch.Tensor, p: int, value: torch.Tensor, time_major: bool) -> torch.Tensor:
    new = state.clone()
    if time_major:
        new[p, 0] = value
    else:
        new[0, p] = value
    return new


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _with(out, state):
    return (state, *out[1:]) if isinstance(out, tuple) else state


def where(lm, arch: str, grid: str, layer: int):
    """(module, "pre" or "post") holding a grid's state at `layer`, found here by name."""
    a = lm.require_seq2seq()
    if grid == "cross":
        return a.decoder.blocks[layer].get_submodule(CROSS[arch]), "post"
    blocks = (a.encoder if grid == "encoder" else a.decoder).blocks
    return (blocks[0], "pre") if layer == 0 else (blocks[layer - 1], "post")


def run(lm, source: str, decoder_ids: list[int], hooks=()) -> torch.Tensor:
    """The model's own last-position log-probabilities, with `hooks` (module, kind, fn)."""
    handles = []
    for module, kind, fn in hooks:
        if kind == "pre":
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(fn))
    try:
        with torch.no_grad():
            ids = torch.tensor([lm.tokenizer(source)["input_ids"]])
            # (use_cache=False: FSMT builds its decoder's causal mask only then)
            out = lm.model(
                input_ids=ids, decoder_input_ids=torch.tensor([decoder_ids]), use_cache=False
            )
    finally:
        for h in handles:
            h.remove()
    return torch.log_softmax(out.logits[0, -1].double(), -1)


def clean_state(lm, arch, grid, layer, decoder_ids) -> torch.Tensor:
    """The clean run's state of one row, as the module hands it on (time-major for FSMT)."""
    module, kind = where(lm, arch, grid, layer)
    kept = []

    def pre(_m, args, kwargs):
        kept.append(args[0] if args else kwargs["hidden_states"])

    def post(_m, _a, out):
        kept.append(_first(out))

    run(lm, CLEAN, decoder_ids, [(module, kind, pre if kind == "pre" else post)])
    return kept[0]


def brute_force(lm, arch, grid, layer, p, decoder_ids, clean: torch.Tensor) -> float:
    """One forward of the corrupted source with the clean state written at (layer, p)."""
    module, kind = where(lm, arch, grid, layer)
    tm = lm.require_seq2seq().time_major
    value = clean[p, 0] if tm else clean[0, p]

    def pre(_m, args, kwargs):
        if args:
            return (_put(args[0], p, value, tm), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": _put(kwargs["hidden_states"], p, value, tm)}

    def post(_m, _a, out):
        return _with(out, _put(_first(out), p, value, tm))

    hook = pre if kind == "pre" else post
    return float(run(lm, CORRUPTED, decoder_ids, [(module, kind, hook)])[KW_TARGET(lm)])


def KW_TARGET(lm) -> int:  # noqa: N802
    return lm.tokenizer(text_target=TARGET, add_special_tokens=False)["input_ids"][0]


def check_against_brute_force(lm, arch: str) -> None:
    """Every cell of every grid against its own forward; clean and corrupted scores too."""
    result = quiet(lm=lm, batch_tokens=64)
    decoder_ids = result.meta["decoder_ids"]
    target = KW_TARGET(lm)
    assert result.clean_score == pytest.approx(float(run(lm, CLEAN, decoder_ids)[target]), abs=1e-4)
    corrupted = float(run(lm, CORRUPTED, decoder_ids)[target])
    assert result.corrupted_score == pytest.approx(corrupted, abs=1e-4)
    assert abs(result.clean_score - result.corrupted_score) > 1e-2, "the corruption changes nothing"
    changed = 0
    for grid in ("encoder", "decoder", "cross"):
        scores = result.scores[grid]
        assert scores.shape == (
            3 if grid != "cross" else 2,
            len(result.tokens_of(grid)),
        )
        for layer in range(scores.shape[0]):
            clean = clean_state(lm, arch, grid, layer, decoder_ids)
            for p in range(scores.shape[1]):
                ref = brute_force(lm, arch, grid, layer, p, decoder_ids, clean)
                assert scores[layer, p] == pytest.approx(ref, abs=2e-4), (grid, layer, p)
                changed += abs(ref - corrupted) > 1e-3
    assert changed >= 5  # restoring does something, so a wrong cell would show


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", FAST)
def test_every_cell_equals_one_patched_forward(arch, tokenizer, one_thread):
    check_against_brute_force(model(arch, tokenizer), arch)


@pytest.mark.parametrize("arch", FAST)
def test_batched_equals_one_at_a_time_and_whole_layers_recover_the_clean_score(arch, tokenizer):
    lm = model(arch, tokenizer)
    batched = quiet(lm=lm, batch_tokens=4096)
    alone = quiet(lm=lm, batch_tokens=1)
    for grid in ("encoder", "decoder", "cross"):
        assert torch.allclose(
            torch.tensor(batched.scores[grid]), torch.tensor(alone.scores[grid]), atol=1e-5
        )
    every = quiet(lm=lm, positions="all")
    clean = every.clean_score
    assert every.scores["encoder"][-1, 0] == pytest.approx(clean, abs=1e-5)  # last encoder layer
    assert every.scores["decoder"][0, 0] != pytest.approx(clean, abs=1e-3)  # encoder corrupted
    assert every.scores["encoder"][0, 0] == pytest.approx(clean, abs=1e-5)  # the embeddings
    # the other way: corrupting the decoder's input changes nothing, the encoder decides
    corrupt = quiet(lm=lm, positions="all", direction="corrupt")
    assert corrupt.scores["decoder"][0, 0] == pytest.approx(clean, abs=1e-5)
    assert corrupt.scores["encoder"][-1, 0] == pytest.approx(every.corrupted_score, abs=1e-5)


@pytest.mark.parametrize("arch", ("t5", "marian"))
def test_noise_goes_on_the_source_embeddings_before_the_familys_scale(arch, tokenizer):
    """The corrupted run is the model's own forward from (embeddings + noise) x its scale
    (Marian's embed_scale: inputs_embeds are not scaled by the model); restoring the
    embeddings layer everywhere gives the clean score."""
    lm = model(arch, tokenizer)
    result = quiet(lm=lm, corrupted=None, corrupt="noise", subject="brown fox", samples=2, seed=3)
    a, b = result.meta["marked"]
    assert result.tokens[a:b] == [" brow", "n", " fox"]
    embed = lm.model.get_encoder().embed_tokens
    scale = result.meta["encoder_embed_scale"]
    assert scale == (1.0 if arch == "t5" else pytest.approx(32**0.5))
    ids = torch.tensor([lm.tokenizer(CLEAN)["input_ids"]])
    with torch.no_grad():
        rows = torch.linspace(0, embed.weight.shape[0] - 1, 400).long()
        std = float(embed(rows[None]).std()) * 3
    assert result.meta["noise_std"] == pytest.approx(std, rel=1e-5)
    draws = torch.randn(
        (2, b - a, embed.weight.shape[1]), generator=torch.Generator().manual_seed(3)
    )
    target = KW_TARGET(lm)
    for s in range(2):
        x = embed(ids).detach().clone()
        x[0, a:b] += draws[s] * std
        with torch.no_grad():
            out = lm.model(
                inputs_embeds=x * scale,
                decoder_input_ids=torch.tensor([result.meta["decoder_ids"]]),
                use_cache=False,
            )
        ref = float(torch.log_softmax(out.logits[0, -1].double(), -1)[target])
        assert result.meta["corrupted_scores"][s] == pytest.approx(ref, abs=1e-4)
    assert abs(result.meta["corrupted_scores"][0] - result.clean_score) > 1e-2
    every = quiet(lm=lm, corrupted=None, subject="brown fox", samples=2, positions="all")
    assert every.scores["encoder"][0, 0] == pytest.approx(every.clean_score, abs=1e-5)


def test_the_table_and_figures_round_trip(tokenizer, tmp_path):
    lm = model("bart", tokenizer)
    result = quiet(lm=lm, components=["cross", "resid"])
    frame = result.to_frame()
    assert list(frame["stack"].unique()) == ["encoder", "decoder", "cross-attention"]
    assert set(frame["component"]) == {"resid", "cross"}
    enc = frame[frame["stack"] == "encoder"]
    assert list(enc["token"][:6]) == result.tokens and len(result.tokens) == 6
    dec = frame[frame["stack"] == "decoder"]
    assert list(dec["token"][:3]) == result.meta["decoder_tokens"]
    result.save(tmp_path / "out")
    back = load_result(tmp_path / "out")
    assert back.components == ["encoder", "decoder", "cross"]
    for g in back.components:
        assert (back.scores[g] == result.scores[g]).all()
    assert back.tokens_of("cross") == result.meta["decoder_tokens"]
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert names == ["trace_cross.png", "trace_decoder.png", "trace_encoder.png"]
    views = dict(back.views())
    assert [c.endswith("*") for c in views["trace_encoder"].cols] == [False] * 4 + [True, False]
    assert not any(c.endswith("*") for c in views["trace_decoder"].cols)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert "cross-attention" in meta["grids"]["encoder"] and meta["seq2seq"]
    assert pd.read_parquet(tmp_path / "out" / "trace.parquet").shape[0] == len(frame)
    from tokenprobe.cli.report import write_report

    html = write_report(tmp_path / "out", tmp_path / "r.html", "t", False).read_text()
    assert "cross-attention" in html and "decoder token" in html
    only = quiet(lm=lm, components=["cross"])
    assert only.components == ["cross"] and only.scores["cross"].shape == (2, 3)


def test_settings_that_do_not_apply_are_refused(tokenizer):
    lm = model("t5", tokenizer)
    for kw, words in (
        (dict(chat=True), "chat and system wrap"),
        (dict(components=["mlp"]), "components mlp are traced in decoder-only"),
        (dict(method="estimate"), "method estimate is not available"),
        (dict(corrupted="The dog"), "must have the same token length"),
        (dict(subject="cat", corrupted=None), "subject 'cat' is not in the prompt"),
    ):
        with pytest.raises(TokenprobeError, match=words):
            quiet(lm=lm, **kw)


def test_a_causal_model_refuses_the_encoder_decoder_settings(llama):
    for kw, words in (
        (dict(decoder_text="x"), "decoder_text apply only to encoder-decoder"),
        (dict(target_lang="de"), "target_lang apply only"),
        (
            dict(components=["cross"]),
            "components cross is an encoder-decoder's cross-attention; this model is decoder-only",
        ),
    ):
        with pytest.raises(TokenprobeError, match=words):
            causal_trace(llama, CLEAN, target=TARGET, subject="quick", progress=False, **kw)


def command(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("tokenprobe")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("arch", ("t5", "bart"))
def test_the_command_on_a_saved_folder(arch, tokenizer, tmp_path):
    made = model(arch, tokenizer)
    folder = tmp_path / arch
    made.model.save_pretrained(folder)
    made.tokenizer.save_pretrained(folder)
    base = ["trace", "--model", str(folder), "--prompt", CLEAN, "--target", TARGET]
    done = command(*base, "--corrupt", "noise", "--subject", "brown fox", "--samples", "2",
                   "--decoder-text", DECODER_TEXT, "--out", str(tmp_path / "out"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert {"trace.parquet", "meta.json", "trace_encoder.png", "trace_cross.png"} <= {
        p.name for p in out.iterdir()
    }
    assert set(pd.read_parquet(out / "trace.parquet")["stack"]) == {
        "encoder", "decoder", "cross-attention"
    }  # fmt: skip
    if arch != "t5":
        return
    refused = command(*base, "--corrupted", CORRUPTED, "--chat", "--out", str(tmp_path / "o2"))
    lines = [x for x in refused.stderr.splitlines() if "memory:" not in x]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert lines[0].startswith("tokenprobe: error: ") and "--chat and --system wrap" in lines[0]
