"""The causal trace against a brute-force loop (one forward pass per cell, a hook written here)
on every family of the conformance matrix; restoring a whole layer gives the clean score back;
attribution patching is exact on a model that is linear in every state; noise is seeded;
batched equals one at a time; bad input is one line; save, load, figures and the report.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import zoo
from conftest import TEST_DEVICE
from test_cli import model_dir, run  # noqa: F401  (the tiny model folder fixture)
from test_conformance import HEADS
from torch import nn

import tokenprobe
import tokenprobe.analyses.trace
from tokenprobe import LoadedModel, TokenprobeError, causal_trace
from tokenprobe.analyses.trace import (
    Comparison,
    TraceFigure,
    TraceOptions,
    Tracer,
    TraceResult,
    embedding_std,
)
from tokenprobe.analyses.trace import tiles as tiles_module
from tokenprobe.loading import load_result

CLEAN = "What is the capital of Australia? The capital is"
CORRUPTED = "What is the capital of orange? The capital is"  # the same 10 tokens but one
TARGET, FOIL = " Canberra", " Sydney"

# the attention and MLP module of each family's blocks, by attribute name (written here, not
# taken from the analysis's discovery); None: the family has no such module
_STD = ("self_attn", "mlp")
MODULES = {
    **{arch: _STD for arch in zoo.CAUSAL},
    **{a: ("attn", "mlp") for a in ("gpt2", "gpt_neo", "gptj", "gpt_bigcode", "codegen")},
    "gpt_neox": ("attention", "mlp"),
    **{a: ("self_attn", "fc2") for a in ("opt", "opt-project", "opt-350m")},
    **{a: ("self_attention", "mlp") for a in ("bloom", "falcon", "falcon-alibi")},
    "mpt": ("attn", "ffn"),
    "jamba": ("self_attn", "feed_forward"),
    "mamba": (None, None),
    "mamba2": (None, None),
}
ADDS_RESIDUAL = {("bloom", "attn"), ("bloom", "mlp"), ("mpt", "mlp")}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Hidden-32 models gain nothing from a second thread, and a busy machine makes OpenMP's
    waiting threads cost seconds per forward pass: this file runs on one (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bpe():
    from conftest import make_tokenizer

    return make_tokenizer()


def _arch(lm) -> str:
    return lm.name.removeprefix("tiny-")


def _components(arch: str) -> list[str]:
    return ["resid"] if MODULES[arch][0] is None else ["resid", "attn", "mlp"]


# ----------------------------------------------------------------------------- brute force


# the block lists of the sweep's families (the "trust, again" issue), by HF module path
BLOCKS = {**{a: h[0] for a, h in HEADS.items()}, **{a: "model.layers" for a in zoo.SWEEP}}
BLOCKS |= {"rwkv": "rwkv.blocks", "xlstm": "backbone.blocks"}


def _module(lm, component: str, layer: int):
    """(module, "input" | "output") holding the state of a cell's row, or None."""
    arch = _arch(lm)
    blocks = lm.model.get_submodule(BLOCKS[arch])
    if component == "resid":
        return (blocks[0], "input") if layer == 0 else (blocks[layer - 1], "output")
    name = MODULES[arch][0 if component == "attn" else 1]
    return (getattr(blocks[layer], name), "output") if hasattr(blocks[layer], name) else None


def _hook(lm, component: str, layer: int, change):
    """Hook `change(state, residual or None) -> state` on a row's state."""
    module, where = _module(lm, component, layer)
    if where == "input":

        def pre(_m, args, kwargs):
            if args:
                return (change(args[0], None), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": change(kwargs["hidden_states"], None)}

        return module.register_forward_pre_hook(pre, with_kwargs=True)
    adds = (_arch(lm), component) in ADDS_RESIDUAL

    def post(_m, args, kwargs, out):
        state = out[0] if isinstance(out, tuple) else out
        res = (
            inspect.signature(module.forward).bind(*args, **kwargs).arguments["residual"]
            if adds
            else None
        )
        new = change(state, res)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    return module.register_forward_hook(post, with_kwargs=True)


def _at(state: torch.Tensor, p: int) -> tuple:
    return (p,) if state.dim() == 2 else (0, p)  # OPT's fc2 sees (tokens, width)


def _logprob(lm, ids: list[int], hooks=(), noise=None) -> float:
    """log p(TARGET) after `ids`, with hooks (and noise (span, values) on the embeddings)."""
    handles = [_hook(lm, *h) for h in hooks]
    if noise is not None:
        (a, b), values = noise

        def add(_m, _args, out):
            out = out.clone()
            out[0, a:b] += values.to(out.dtype)
            return out

        handles.append(lm.model.get_input_embeddings().register_forward_hook(add))
    try:
        with torch.no_grad():
            logits = lm.model(
                input_ids=torch.tensor([ids], device=lm.device), use_cache=False
            ).logits
    finally:
        for h in handles:
            h.remove()
    target = lm.tokenizer.encode(TARGET, add_special_tokens=False)[0]
    return float(torch.log_softmax(logits[0, -1].double(), -1)[target])


def _states(lm, ids: list[int], component: str, rows: int, noise=None) -> list:
    """Each row's state in a plain run (output - residual for modules that add it)."""
    kept: list = []
    hooks = []
    for k in range(rows):
        if _module(lm, component, k) is None:
            kept.append(None)
            continue
        kept.append([])
        hooks.append(
            (component, k, lambda s, r, k=k: kept[k].append(s if r is None else s - r) or s)
        )
    _logprob(lm, ids, hooks, noise)
    return [x[0].clone() if x else None for x in kept]


def _restore(p: int, value: torch.Tensor):
    def change(state, res):
        new = state.clone()
        new[_at(state, p)] = value[_at(value, p)] + (0 if res is None else res[_at(res, p)])
        return new

    return change


def brute_force(lm, clean, base, component: str, noises=(None,), window: int = 1) -> np.ndarray:
    """One forward pass per (cell, noise sample): the clean states of the window's rows at one
    position written into the base run (`noises`: each sample's noise on the base run)."""
    rows = lm.n_blocks + (component == "resid")
    source = _states(lm, clean, component, rows)
    out = np.full((rows, len(clean)), np.nan)
    for k in range(rows):
        if source[k] is None:
            continue
        lo, hi = max(0, k - window // 2), min(rows, k - (-window // 2))
        for p in range(len(clean)):
            hooks = [
                (component, j, _restore(p, source[j]))
                for j in range(lo, hi)
                if source[j] is not None
            ]
            out[k, p] = np.mean([_logprob(lm, base, hooks, n) for n in noises])
    return out


# ----------------------------------------------------------------------------- the matrix


@pytest.fixture(params=list(zoo.CAUSAL))
def lm(request, bpe):
    return zoo.make_causal(request.param, bpe, device=TEST_DEVICE)


def _ids(lm, text: str) -> list[int]:
    return lm.tokenizer(text)["input_ids"]


@pytest.fixture
def finest_tiles(monkeypatch):
    """Batches of one cell each (a forward pass costs nothing in the tiling's cost model), so
    that every cell runs from its own layer and its own position's caches."""
    monkeypatch.setattr(tiles_module, "FORWARD_TOKENS", {"cpu": 0.0, "other": 0.0})


# state-space models have no key/value cache to continue from, and Jamba's cache holds its
# Mamba blocks' states besides keys and values (they do not continue exactly in transformers
# 5); every other family continues from the cached positions
NO_PAST = {"mamba", "mamba2", "jamba"}


def test_every_cell_equals_one_forward_per_cell(lm, monkeypatch):
    """Both the default tiling and the finest one (every cell its own batch, continuing from
    the cached states of its layer and of the positions before it) equal the brute force."""
    comps = _components(_arch(lm))
    kw = dict(
        corrupted=CORRUPTED, target=TARGET, metric="logprob", components=comps, progress=False
    )
    res = causal_trace(lm, CLEAN, **kw)
    monkeypatch.setattr(tiles_module, "FORWARD_TOKENS", {"cpu": 0.0, "other": 0.0})
    finest = causal_trace(lm, CLEAN, **kw)
    clean, bad = _ids(lm, CLEAN), _ids(lm, CORRUPTED)
    assert res.meta["lower_blocks"] == "reused from the cached run"
    past = "recomputed" if _arch(lm) in NO_PAST else "continued from the cached run"
    assert res.meta["earlier_positions"].startswith(past), res.meta["earlier_positions"]
    assert res.clean_score == pytest.approx(_logprob(lm, clean), abs=1e-4)
    assert res.corrupted_score == pytest.approx(_logprob(lm, bad), abs=1e-4)
    for c in comps:
        want = brute_force(lm, clean, bad, c)
        np.testing.assert_allclose(res.scores[c], want, atol=2e-4, rtol=1e-4, err_msg=c)
        np.testing.assert_allclose(
            finest.scores[c], want, atol=2e-4, rtol=1e-4, err_msg=f"{c}, finest"
        )


# Gemma 3n's four-stream blocks are traced in tests/test_sweep_adapter.py
SWEEP = [a for a in zoo.SWEEP if a != "gemma3n"]


@pytest.mark.matrix
@pytest.mark.parametrize("arch", SWEEP)
def test_the_sweeps_families_equal_one_forward_per_cell(arch, bpe, monkeypatch):
    """The families of 2026's sweep, default tiles and finest: a shortcut that does not hold
    (Gemma 4's shared key/value layers cannot skip the lower blocks, and run only the kept
    positions under logits_to_keep) is switched off with its reason in meta.json."""
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE)
    kw = dict(
        corrupted=CORRUPTED, target=TARGET, metric="logprob", components=["resid"], progress=False
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = causal_trace(lm, CLEAN, **kw)
    monkeypatch.setattr(tiles_module, "FORWARD_TOKENS", {"cpu": 0.0, "other": 0.0})
    finest = causal_trace(lm, CLEAN, **kw)
    want = brute_force(lm, _ids(lm, CLEAN), _ids(lm, CORRUPTED), "resid")
    np.testing.assert_allclose(res.scores["resid"], want, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(finest.scores["resid"], want, atol=2e-4, rtol=1e-4, err_msg="finest")
    said = [str(w.message) for w in caught if "recomputed for every batch" in str(w.message)]
    for key in ("lower_blocks", "earlier_positions"):
        if res.meta[key].startswith("recomputed"):  # why, in meta.json and once on stderr
            why = res.meta[key].split(": ", 1)[1]
            assert len(why) > 10 and sum(why in m for m in said) == 1, (res.meta[key], said)
    if arch == "gemma4-shared-kv":
        assert "KeyError" in res.meta["lower_blocks"], res.meta["lower_blocks"]
    if arch == "minimax":  # its linear-attention states live beside the cache's layers
        assert "MiniMaxCache" in res.meta["earlier_positions"], res.meta["earlier_positions"]
    if arch in ("gemma4", "doge-window"):
        assert res.meta["earlier_positions"].startswith("continued"), res.meta["earlier_positions"]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bloom", "gemma3"])
def test_the_corrupt_direction_equals_one_forward_per_cell(arch, bpe, finest_tiles):
    """Corrupted states written into the clean run, each cell in its own batch (so continuing
    from the clean run's cache)."""
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE)
    res = causal_trace(
        lm,
        CLEAN,
        corrupted=CORRUPTED,
        target=TARGET,
        metric="logprob",
        direction="corrupt",
        components=_components(arch),
        progress=False,
    )
    assert res.meta["earlier_positions"].startswith("continued from the cached run")
    clean, bad = _ids(lm, CLEAN), _ids(lm, CORRUPTED)
    for c in _components(arch):
        want = brute_force(lm, bad, clean, c)
        np.testing.assert_allclose(res.scores[c], want, atol=2e-4, rtol=1e-4, err_msg=c)


@pytest.mark.parametrize("arch", ["llama", "bloom", "opt", "jamba"])
def test_a_subject_split_between_cache_and_continuation(arch, bpe, finest_tiles):
    """Noise on a subject of several tokens, restored cell by cell in batches of one: the
    batches that start inside the subject continue from a cache holding part of its noise.
    Scored as a probability (the checks compare states, so the metric's scale cannot hide a
    cache that does not continue exactly)."""
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE)
    subject = "the capital of Australia"
    res = causal_trace(
        lm,
        CLEAN,
        corrupt="noise",
        subject=subject,
        target=TARGET,
        metric="prob",
        samples=2,
        seed=3,
        noise=2.0,
        progress=False,
    )
    a, b = res.meta["marked"]  # the subject's span
    assert b - a >= 3
    width = lm.model.get_input_embeddings().weight.shape[1]
    draws = (
        torch.randn((2, b - a, width), generator=torch.Generator().manual_seed(3))
        * embedding_std(lm)
        * 2.0
    )
    clean = _ids(lm, CLEAN)
    want = np.mean(
        [
            np.exp(brute_force(lm, clean, clean, "resid", [((a, b), d.to(lm.device))]))
            for d in draws
        ],
        0,
    )
    np.testing.assert_allclose(res.scores["resid"], want, atol=1e-6, rtol=1e-4)
    assert res.meta["earlier_positions"].startswith(
        "recomputed" if arch == "jamba" else "continued"
    )


def test_a_cache_that_does_not_continue_exactly_is_not_used(bpe, finest_tiles):
    """Phi-3's longrope picks its rotary factors by the longest position in a pass: a prefix
    within the original context is cached with other factors than the full prompt uses. The
    prefix check sees it, and those cells are recomputed (equal to the brute force)."""
    import transformers

    tok = bpe
    torch.manual_seed(0)
    config = transformers.Phi3Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        sliding_window=None,
        original_max_position_embeddings=16,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0] * 4,
            "long_factor": [1.0, 4.0, 16.0, 64.0],
            "original_max_position_embeddings": 16,
        },
    )
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config, attr, getattr(tok, attr))
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    zoo._scale(model, 8.0, head=4.0)
    lm = LoadedModel.wrap(model.eval().to(TEST_DEVICE), tok, name="tiny-phi3")
    text = CLEAN + " a city in the south east of the country and the capital is"
    bad = text.replace("Australia", "orange")
    assert len(_ids(lm, text)) > 16
    res = causal_trace(lm, text, corrupted=bad, target=TARGET, metric="logprob", progress=False)
    assert res.meta["earlier_positions"].startswith("recomputed after the cache of"), res.meta[
        "earlier_positions"
    ]
    want = brute_force(lm, _ids(lm, text), _ids(lm, bad), "resid")
    np.testing.assert_allclose(res.scores["resid"], want, atol=2e-4, rtol=1e-4)


def test_the_tiling_continues_from_both_caches(bpe, monkeypatch):
    """On a model deep and long enough for it, the default tiling's batches start above the
    lowest layer and after the first position (the shortcuts pay), and equal the brute force."""
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE, layers=6)
    seen: list[tuple[int, int]] = []
    patched = Tracer._patched

    def spy(self, picked, cells, start, offset):
        seen.append((start, offset))
        return patched(self, picked, cells, start, offset)

    monkeypatch.setattr(Tracer, "_patched", spy)
    text = CLEAN + " the city that is in the south east of the country and"
    res = causal_trace(
        lm,
        text,
        corrupted=text.replace("Australia", "orange"),
        target=TARGET,
        metric="logprob",
        progress=False,
    )
    assert len(seen) > 2 and any(s > 0 and o > 0 for s, o in seen), seen
    ids = _ids(lm, text)
    want = brute_force(lm, ids, _ids(lm, text.replace("Australia", "orange")), "resid")
    np.testing.assert_allclose(res.scores["resid"], want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bloom", "opt", "falcon-alibi", "jamba"])
def test_noise_and_window_equal_one_forward_per_cell(arch, bpe, finest_tiles):
    """Noise samples averaged (the noise as documented: seeded normal draws x noise x the
    std of the embedding's output), and a window of two blocks for attn and mlp; each cell in
    its own batch, so that the subject's noise is split between cache and continuation."""
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE)
    comps = _components(arch)
    res = causal_trace(
        lm,
        CLEAN,
        corrupt="noise",
        subject="Australia",
        target=TARGET,
        metric="logprob",
        samples=2,
        seed=7,
        noise=2.0,
        window=2,
        components=comps,
        progress=False,
    )
    clean = _ids(lm, CLEAN)
    assert res.meta["marked"] == [5, 6]
    width = lm.model.get_input_embeddings().weight.shape[1]
    draws = torch.randn((2, 1, width), generator=torch.Generator().manual_seed(7))
    draws = draws * embedding_std(lm) * 2.0
    noises = [((5, 6), draws[s].to(lm.device)) for s in range(2)]
    assert res.corrupted_score == pytest.approx(
        np.mean([_logprob(lm, clean, (), n) for n in noises]), abs=1e-4
    )
    for c in comps:
        ref = brute_force(lm, clean, clean, c, noises, window=2)
        np.testing.assert_allclose(res.scores[c], ref, atol=2e-4, rtol=1e-4, err_msg=c)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "bloom", "mamba", "opt-350m"])
def test_restoring_every_position_of_a_layer_gives_the_clean_score(arch, bpe):
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE)
    clean, bad = _ids(lm, CLEAN), _ids(lm, CORRUPTED)
    target = lm.tokenizer.encode(TARGET, add_special_tokens=False)[0]
    for direction in ("restore", "corrupt"):
        tracer = Tracer(lm, Comparison(clean, bad, target, None, "logprob", direction), ["resid"])
        cells = [
            [(tracer.index[("resid", k)], p) for p in range(len(clean))] for k in range(lm.n_layers)
        ]
        got = tracer.score_cells(cells, batch_tokens=4096)
        want = tracer.clean_score if direction == "restore" else tracer.corrupted_scores[0]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_batched_equals_one_at_a_time(bpe):
    lm = zoo.make_causal("qwen2", bpe, device=TEST_DEVICE)
    kw = dict(
        corrupt="noise",
        subject="Australia",
        target=TARGET,
        foil=FOIL,
        samples=3,
        components=["resid", "mlp"],
        direction="corrupt",
        progress=False,
    )
    together = causal_trace(lm, CLEAN, batch_tokens=4096, **kw)
    alone = causal_trace(lm, CLEAN, batch_tokens=1, **kw)  # one row (cell x sample) per batch
    for c in ("resid", "mlp"):
        np.testing.assert_allclose(together.scores[c], alone.scores[c], atol=1e-5, rtol=1e-5)


def test_noise_is_reproducible_under_its_seed(bpe):
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE)
    kw = dict(
        corrupt="noise", subject="capital of Australia", target=TARGET, samples=2, progress=False
    )
    a, b = causal_trace(lm, CLEAN, seed=1, **kw), causal_trace(lm, CLEAN, seed=1, **kw)
    c = causal_trace(lm, CLEAN, seed=2, **kw)
    np.testing.assert_array_equal(a.scores["resid"], b.scores["resid"])
    assert a.corrupted_score == b.corrupted_score != c.corrupted_score
    assert not np.allclose(a.scores["resid"], c.scores["resid"])


# ----------------------------------------------------------------------------- the estimate


class _Norm(nn.Module):
    """A final 'norm' that is the identity, so that the model stays linear."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h


class _Mix(nn.Module):
    """'Attention' with fixed weights: each position gets the mean of a linear map of the
    positions up to it. Returns a tuple, as attention modules do."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.v = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, None]:
        n = h.shape[1]
        weights = torch.tril(torch.ones(n, n, dtype=h.dtype, device=h.device))
        weights = weights / weights.sum(-1, keepdim=True)
        return weights @ self.v(h), None


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.self_attn, self.mlp = _Mix(width), nn.Linear(width, width)

    def forward(self, hidden_states: torch.Tensor, **_: object) -> torch.Tensor:
        h = hidden_states + self.self_attn(hidden_states)[0]
        return h + self.mlp(h)


class LinearLM(nn.Module):
    """A causal LM whose logits are affine in every state (embeddings, block outputs,
    attention and MLP outputs): attribution patching is exact for the logit difference."""

    def __init__(self, vocab: int, width: int = 16, blocks: int = 3) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=blocks, max_position_embeddings=128)
        self.embed_tokens = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList(_Block(width) for _ in range(blocks))
        self.norm = _Norm()
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=0):
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h)
        h = self.norm(h)
        return SimpleNamespace(logits=self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h))


@pytest.mark.parametrize("how", ["prompt", "noise restore", "noise corrupt"])
def test_the_estimate_is_exact_for_a_model_linear_in_its_states(how, bpe):
    torch.manual_seed(0)
    lm = LoadedModel.wrap(LinearLM(len(bpe)).double().to(TEST_DEVICE), bpe, name="linear")
    kw = (
        dict(corrupted=CORRUPTED)
        if how == "prompt"
        else dict(corrupt="noise", subject="Australia", samples=3)
    )
    res = causal_trace(
        lm,
        CLEAN,
        target=TARGET,
        foil=FOIL,
        method="both",
        progress=False,
        components=["resid", "attn", "mlp"],
        direction=how.split()[-1].replace("prompt", "restore"),
        **kw,
    )
    for c in ("resid", "attn", "mlp"):
        np.testing.assert_allclose(res.estimates[c], res.scores[c], atol=1e-8, rtol=1e-8, err_msg=c)
    assert res.meta["estimate_correlation"]["all"] == pytest.approx(1.0, abs=1e-9)
    alone = causal_trace(
        lm,
        CLEAN,
        target=TARGET,
        foil=FOIL,
        method="estimate",
        progress=False,
        components=["resid", "attn", "mlp"],
        direction=how.split()[-1].replace("prompt", "restore"),
        **kw,
    )
    for c in ("resid", "attn", "mlp"):
        np.testing.assert_allclose(alone.scores[c], res.estimates[c], atol=1e-12)


def test_the_estimate_correlates_on_a_real_architecture(bpe):
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE)
    res = causal_trace(
        lm,
        CLEAN,
        corrupted=CORRUPTED,
        target=TARGET,
        foil=FOIL,
        method="both",
        components=["resid", "attn", "mlp"],
        progress=False,
    )
    corr = res.meta["estimate_correlation"]
    assert set(corr) == {"resid", "attn", "mlp", "all"} and corr["all"] > 0.5, corr


# ----------------------------------------------------------------------------- results


@pytest.fixture(scope="module")
def traced(bpe):
    lm = zoo.make_causal("gpt2", bpe, device=TEST_DEVICE)
    return causal_trace(
        lm,
        CLEAN,
        corrupt="noise",
        subject="Australia",
        target=TARGET,
        samples=2,
        components=["resid", "attn", "mlp"],
        method="both",
        progress=False,
    )


def test_save_and_load_round_trip_with_a_figure_per_component(traced, tmp_path):
    written = traced.save(tmp_path / "t", formats=["png", "svg"])
    names = {p.name for p in written.values()}
    assert {
        "trace.parquet",
        "meta.json",
        "trace_resid.png",
        "trace_attn.svg",
        "trace_mlp.png",
    } <= names
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    for key in ("clean_score", "corrupted_score", "metric", "estimate_correlation", "marked"):
        assert meta[key] is not None, key
    back = load_result(tmp_path / "t")
    assert type(back).__name__ == "TraceResult" and back.components == traced.components
    assert back.tokens == traced.tokens
    for c in traced.components:
        np.testing.assert_array_equal(back.scores[c], traced.scores[c])
        np.testing.assert_array_equal(back.estimates[c], traced.estimates[c])
    table = back.to_frame()
    assert list(table.columns[:7]) == [
        "component",
        "layer",
        "head",  # empty (NA) but for head components
        "position",
        "token",
        "score",
        "normalised",
    ]
    assert len(table) == (3 + 2 + 2) * len(traced.tokens) and table["head"].isna().all()


def test_figures_and_report_sections(traced):
    views = dict(traced.views())
    assert set(views) == {"trace_resid", "trace_attn", "trace_mlp"}
    assert [views[f"trace_{c}"].cmap for c in ("resid", "attn", "mlp")] == [
        "Purples",
        "Reds",
        "Greens",
    ]
    resid = views["trace_resid"]
    assert (
        resid.colorbar == "p(▁Canberra)" and resid.frame == (5, 6) and resid.cols[5].endswith("*")
    )
    assert resid.ylabel.startswith("layer") and resid.shape == (3, len(traced.tokens))
    norm = dict(traced.views(show="normalised"))["trace_mlp"]
    assert "normalised" in norm.colorbar
    sections = traced.sections()
    assert len(sections) == 3 and all(s["kind"] == "trace" for s in sections)
    assert "normalised" in sections[0]["tips"][0][0] and "estimate" in sections[0]["tips"][0][0]
    fig = traced.plot()
    assert fig.axes[-1].get_ylabel() == "p(▁Canberra)"


# ----------------------------------------------------------------------------- the command line


def test_trace_command_writes_table_figures_and_meta(model_dir, tmp_path, capsys):
    out = tmp_path / "trace"
    code, stdout, err = run(
        capsys,
        "trace",
        "--model",
        str(model_dir),
        "--prompt",
        CLEAN,
        "--corrupted",
        CORRUPTED,
        "--target",
        TARGET,
        "--foil",
        FOIL,
        "--component",
        "resid",
        "mlp",
        "attn",
        "--method",
        "both",
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert code == 0, err
    for name in (
        "trace.parquet",
        "trace_resid.png",
        "trace_attn.png",
        "trace_mlp.png",
        "meta.json",
    ):
        assert (out / name).stat().st_size > 0, name
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metric"] == "diff" and meta["marked"] == [5, 6] and "causal trace" in stdout


def _one_error(capsys, argv, message) -> None:
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as exc:  # the parser's own checks
        code, err = int(exc.code or 0), capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("tokenprobe: error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], (argv, err)
    assert "Traceback" not in err


def test_bad_input_is_one_line(model_dir, tmp_path, capsys):
    base = ["trace", "--model", str(model_dir), "--out", str(tmp_path / "x"), "--prompt", CLEAN]
    cases = [
        (
            [
                "--corrupted",
                "What is the capital of the orange? The capital is",
                "--target",
                TARGET,
            ],
            "the corrupted prompt is 11 tokens and the prompt 10; --corrupted must have the same token "
            "length (they diverge at position 5: ' the' vs ' Australia')",
        ),
        (
            ["--corrupt", "noise", "--subject", "Austria", "--target", TARGET],
            "--subject 'Austria' is not in the prompt",
        ),
        (
            ["--corrupted", CORRUPTED, "--target", TARGET, "--foil", TARGET],
            "--foil ' Canberra' is the same token",
        ),
        (
            ["--corrupted", CORRUPTED, "--target", TARGET, "--foil", " Canberra and"],
            "their first tokens are the same",
        ),
        (["--corrupted", CLEAN, "--target", TARGET], "nothing is corrupted"),
        (["--target", TARGET], "nothing to corrupt: give --corrupted TEXT"),
        (["--corrupted", CORRUPTED], "--target is required"),
        (["--corrupted", CORRUPTED, "--target", TARGET, "--metric", "diff"], "give --foil TEXT"),
        (
            [
                "--subject",
                "Australia",
                "--corrupted",
                CORRUPTED,
                "--corrupt",
                "noise",
                "--target",
                TARGET,
            ],
            "not both",
        ),
        (
            ["--corrupted", CORRUPTED, "--target", TARGET, "--window", "0"],
            "--window: must be at least 1",
        ),
        (
            ["--corrupt", "noise", "--subject", "Australia", "--target", TARGET, "--noise", "inf"],
            "argument --noise: must be a finite number, not 'inf'",
        ),
        (
            ["--corrupt", "noise", "--subject", "Australia", "--target", TARGET, "--noise", "nan"],
            "argument --noise: must be a finite number, not 'nan'",
        ),
        (
            [
                "--corrupt",
                "noise",
                "--subject",
                "Australia",
                "--target",
                TARGET,
                "--noise",
                "1e308",
            ],
            "--noise 1e+308 x the embeddings' standard deviation is not a finite number in float32: give a smaller --noise",
        ),
    ]
    for argv, message in cases:
        _one_error(capsys, [*base, *argv], message)


def test_a_target_of_several_tokens_is_scored_by_its_first_with_a_warning(
    model_dir,
    tmp_path,
    capsys,
):
    code, _, err = run(
        capsys,
        "trace",
        "--model",
        str(model_dir),
        "--out",
        str(tmp_path / "x"),
        "--prompt",
        CLEAN,
        "--corrupted",
        CORRUPTED,
        "--target",
        " Canberra, not",
    )
    assert code == 0, err
    warned = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warned) == 1 and "--target ' Canberra, not' is 3 tokens" in warned[0], err
    assert "first token ' Canberra'" in warned[0]


def test_library_errors_name_parameters(bpe):
    lm = zoo.make_causal("mamba", bpe, device=TEST_DEVICE)
    with pytest.raises(
        TokenprobeError, match="components attn: the blocks of this model have no attention"
    ):
        causal_trace(
            lm, CLEAN, corrupted=CORRUPTED, target=TARGET, components=["attn"], progress=False
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TokenprobeError, match="samples must be at least 1"):
            causal_trace(lm, CLEAN, corrupt="noise", subject="Australia", target=TARGET, samples=0)
    for noise in (float("inf"), 1e300):
        with pytest.raises(TokenprobeError, match="noise"):
            causal_trace(
                lm,
                CLEAN,
                corrupt="noise",
                subject="Australia",
                target=TARGET,
                noise=noise,
                progress=False,
            )


# ----------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_eiffel_tower_trace():
    """ROME's picture on the demo prompt: restoring a subject token in the early and middle
    layers brings ' Paris' back (in SmolLM2 it is 'iffel', not the last subject token ' Tower'),
    and so does the last position at the last layer."""
    lm = tokenprobe.load("smollm2", device="cpu")
    res = causal_trace(
        lm,
        "The Eiffel Tower is in the city of",
        target=" Paris",
        corrupt="noise",
        subject="Eiffel Tower",
        samples=3,
        progress=False,
    )
    norm = res.normalised(res.scores["resid"])
    a, b = res.meta["marked"]
    assert res.clean_score > 0.2 and res.corrupted_score < res.clean_score / 2
    assert np.nanmax(norm[1:12, a:b]) > 0.5  # a subject token, early-middle layers
    assert np.nanmax(norm[1:12, b:-1]) < 0.2  # not the tokens after it
    assert norm[-1, -1] == pytest.approx(1.0, abs=1e-4)  # the last position at the last layer


def test_review_cases_subject_repeats_and_close_scores(model_dir, tmp_path, capsys):
    lm = tokenprobe.load(str(model_dir))
    # a subject found only in the chat template after the prompt is not the prompt's
    with pytest.raises(TokenprobeError, match="is not in the prompt"):
        causal_trace(
            lm,
            "the cat sat on",
            target=" mat",
            corrupt="noise",
            subject="assistant",
            chat=True,
            samples=1,
            progress=False,
        )
    with pytest.warns(tokenprobe.TokenprobeWarning, match="occurs more than once"):
        result = causal_trace(
            lm,
            "cat and cat sat on",
            target=" mat",
            corrupt="noise",
            subject="cat",
            samples=1,
            noise=0.001,
            progress=False,
        )
    assert result.meta["marked"][0] == 0  # the first occurrence
    # noise this small leaves the corrupted score at the clean one: the normalised values warn
    with pytest.warns(tokenprobe.TokenprobeWarning, match="scores are close"):
        causal_trace(
            lm,
            "the cat sat on",
            target=" mat",
            corrupt="noise",
            subject="cat",
            samples=2,
            noise=1e-6,
            progress=False,
        )
    # --component repeated keeps every component asked for
    code, _, err = run(
        capsys,
        "trace",
        "--model",
        str(model_dir),
        "--prompt",
        "the cat sat on",
        "--target",
        " mat",
        "--subject",
        "cat",
        "--samples",
        "1",
        "--component",
        "attn",
        "--component",
        "mlp",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, err
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["options"]["components"] == ["attn", "mlp"]


def test_noise_settings_with_a_corrupted_prompt_are_said_to_be_ignored(bpe):
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE)
    kw = dict(corrupted=CORRUPTED, target=TARGET, progress=False, method="estimate")
    with pytest.warns(UserWarning, match=r"samples, seed only apply to noise corruption"):
        causal_trace(lm, CLEAN, samples=3, seed=5, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        try:
            causal_trace(lm, CLEAN, samples=10, **kw)  # the default: nothing to say
        except UserWarning as w:
            assert "only apply to noise" not in str(w), w


def test_counts_that_are_not_whole_numbers_are_one_line(bpe):
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE)
    noise = dict(corrupt="noise", subject="Australia", target=TARGET, progress=False)
    for name, value in (("samples", 2.5), ("samples", True), ("window", 1.5), ("seed", 0.5)):
        with pytest.raises(
            TokenprobeError, match=f"^{name} must be a whole number, not {value!r}$"
        ):
            causal_trace(lm, CLEAN, **{**noise, name: value})
    with pytest.raises(TokenprobeError, match="^window must be a whole number"):
        causal_trace(lm, CLEAN, corrupted=CORRUPTED, target=TARGET, window=2.0, progress=False)


# ----------------------------------------------------------------------------- settings, declared once

NOISED = dict(corrupt="noise", subject="Australia", target=TARGET)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("samples", 2.5, "^samples must be a whole number, not 2.5$"),
        ("samples", True, "^samples must be a whole number, not True$"),
        ("window", "3", "^window must be a whole number, not '3'$"),
        ("seed", 10**23, f"^seed must be at most {2**63 - 1}, not {10**23}$"),
        ("seed", -1, "^seed must be at least 0, not -1$"),
        ("noise", float("nan"), "^noise must be a finite number, not nan$"),
        ("noise", float("inf"), "^noise must be a finite number, not inf$"),
        ("noise", "3", "^noise must be a number, not '3'$"),
        ("noise", 0.0, "^noise must be above 0, not 0$"),
        ("samples", 0, "^samples must be at least 1, not 0$"),
        ("window", 0, "^window must be at least 1, not 0$"),
        ("method", "fast", "^method must be one of exact, estimate, both, not 'fast'$"),
        ("direction", "up", "^direction must be one of restore, corrupt, not 'up'$"),
        ("metric", "rank", "^metric must be one of prob, logprob, diff, not 'rank'$"),
        ("corrupt", "blur", "^corrupt must be one of prompt, noise, not 'blur'$"),
        (
            "components",
            ["resid", "ffn"],
            "^components must be one of resid, attn, mlp, head, head-k, head-v, cross, not 'ffn'$",
        ),
        ("components", [], "^components is empty"),
        ("chat", 1, "^chat must be True or False, not 1$"),
        ("target", 5, "^target must be text, not 5$"),
        ("batch_tokens", 0, "^batch_tokens must be at least 1, not 0$"),
    ],
)
def test_a_bad_setting_is_refused_naming_it_before_the_model_runs(name, value, message):
    """Checked as the settings are built: `lm` is never touched (None would fail at once)."""
    with pytest.raises(TokenprobeError, match=message):
        causal_trace(None, CLEAN, **{**NOISED, name: value})
    with pytest.raises(TokenprobeError, match=message):
        TraceOptions(**{**NOISED, name: value})
    with pytest.raises(TokenprobeError, match=message):  # replacing a setting of a built one
        causal_trace(None, CLEAN, options=TraceOptions(**NOISED), **{name: value})


def test_options_and_keyword_settings_are_the_same_run(bpe):
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE)
    kw = dict(samples=2, seed=4, window=2, components=["mlp", "resid"], method="both")
    options = TraceOptions(**NOISED, **kw)
    by_options = causal_trace(lm, CLEAN, options=options, progress=False)
    by_keywords = causal_trace(lm, CLEAN, **NOISED, **kw, progress=False)
    base = TraceOptions(**NOISED, samples=3)
    mixed = causal_trace(lm, CLEAN, options=base, **kw, progress=False)  # keywords win
    for other in (by_keywords, mixed):
        pd.testing.assert_frame_equal(by_options.to_frame(), other.to_frame(), check_exact=True)
        same = ("created", "versions")
        assert {k: v for k, v in by_options.meta.items() if k not in same} == {
            k: v for k, v in other.meta.items() if k not in same
        }
    assert by_options.meta["options"]["samples"] == 2 and by_options.components == ["mlp", "resid"]
    with pytest.raises(TokenprobeError, match="^options must be TraceOptions, not dict$"):
        causal_trace(lm, CLEAN, options=dict(NOISED))
    with pytest.raises(TypeError, match="unexpected keyword argument 'sample'"):
        causal_trace(lm, CLEAN, **NOISED, sample=2)


def test_the_signature_shows_every_setting_with_its_default():
    params = inspect.signature(causal_trace).parameters
    for f in dataclasses.fields(TraceOptions):
        assert params[f.name].default == f.default, f.name
    assert params["samples"].default == 10 and params["components"].default is None
    # none given: resid (an encoder-decoder: its encoder's and decoder's resid, and cross)
    assert TraceOptions(target="x", subject="y").traced == ["resid"]
    assert {"options", "checkpoint", "resume", "progress"} <= set(params)
    spec = tokenprobe.analyses.trace.SPEC
    assert spec.default("batch_tokens") == 2048
    assert spec.flags()["resume"] == "--resume"  # `resume` is no setting, but messages name it
    views = inspect.signature(TraceResult.views).parameters
    assert list(views) == ["self", "figure", "settings"]


def test_the_figure_settings_are_checked_and_old_plot_options_draw(traced, tmp_path):
    by_object = dict(traced.views(TraceFigure(show="normalised", title="T")))["trace_mlp"]
    by_keywords = dict(traced.views(show="normalised", title="T"))["trace_mlp"]
    assert by_object.title == by_keywords.title == "T"
    np.testing.assert_array_equal(by_object.values, by_keywords.values)
    with pytest.raises(TokenprobeError, match="^show must be one of score, normalised, not 'raw'$"):
        traced.views(show="raw")
    with pytest.raises(TokenprobeError, match="^annotate must be True or False, not 'yes'$"):
        traced.views(annotate="yes")
    # a result saved by the previous version: meta.json's plot_options as `views` took them
    traced.save(tmp_path / "old", formats=[], plot_options={"show": "normalised"})
    back = load_result(tmp_path / "old")
    drawn = dict(back.views(**back.meta["plot_options"]))["trace_resid"]
    assert "normalised" in drawn.colorbar
    assert back.sections()[0]["kind"] == "trace"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--samples", "2.5"], "argument --samples: expected a whole number, not '2.5'"),
        (["--samples", "0"], "argument --samples: must be at least 1, not 0"),
        (["--seed", "-1"], "argument --seed: must be at least 0, not -1"),
        (["--window", "True"], "argument --window: expected a whole number, not 'True'"),
        (["--noise", "nan"], "argument --noise: must be a finite number, not 'nan'"),
        (["--noise", "-1"], "argument --noise: must be above 0, not -1"),
        (["--method", "fast"], "argument --method: invalid choice: 'fast'"),
        (["--component", "resid", "ffn"], "argument --component: invalid choice: 'ffn'"),
        (["--show", "raw"], "argument --show: invalid choice: 'raw'"),
        (["--corrupted", CORRUPTED], "give --corrupted TEXT or --corrupt noise, not both"),
        (["--foil", ""], "--foil is empty"),
        (["--metric", "diff"], "--metric diff is the logit difference target - foil: give --foil"),
    ],
)
def test_a_bad_flag_is_one_line_before_the_model_loads(
    argv, message, tmp_path, capsys, monkeypatch
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(tokenprobe.model, "load", no_model)
    base = ["trace", "--out", str(tmp_path / "x"), "--prompt", CLEAN, "--target", TARGET]
    _one_error(capsys, [*base, "--corrupt", "noise", "--subject", "Australia", *argv], message)


def test_an_implausible_target_is_warned_about_once(bpe, model_dir, tmp_path, capsys):
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE)
    kw = dict(corrupted=CORRUPTED, components=["resid", "mlp"], method="both", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        causal_trace(lm, CLEAN, target=TARGET, **kw)
    said = [str(w.message) for w in caught if "implausible" in str(w.message)]
    assert len(said) == 1 and caught[0].filename == __file__, said  # pointed at the caller
    ids = torch.tensor([lm.tokenizer(CLEAN)["input_ids"]], device=lm.device)
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0, -1].double()
    p = float(torch.softmax(logits, -1)[lm.tokenizer.encode(TARGET)[0]])
    rank = int((logits > logits[lm.tokenizer.encode(TARGET)[0]]).sum()) + 1
    assert p < 1e-3 and rank > 10
    assert said[0].startswith(
        f"the target ' Canberra' is implausible in the clean run (probability {p:.2g}, rank {rank})"
    )
    assert "check target (a leading space" in said[0] and "or chat (" in said[0]
    top = lm.tokenizer.decode([int(logits.argmax())])  # the clean run's own answer: no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        causal_trace(lm, CLEAN, target=top, **kw)
    assert not [w for w in caught if "implausible" in str(w.message)]
    # on the command line the parameters are the flags
    code, _, err = run(
        capsys,
        "trace",
        "--model",
        str(model_dir),
        "--prompt",
        "the cat sat on",
        "--target",
        " mat",
        "--subject",
        "cat",
        "--samples",
        "2",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, err
    (line,) = [ln for ln in err.splitlines() if "implausible" in ln]
    assert line.startswith("tokenprobe: warning: the target ' mat' is implausible in the clean run")
    assert "check --target (a leading space, as in ' Paris'?) or --chat (" in line
