"""Per-head patching (`components` head, head-k, head-v; `positions` each or all) against a
brute-force loop: one plain forward pass per cell, the head's columns of the output
projection's input (or of the key/value projection's output; of OLMo's whole-width key norm's
output) overwritten with the clean run's by a hook written here; and that restoring one key or
value head there changes only that head's keys/values as the attention function sees them.
Also: the heads' estimates add up to the attention output's (the output projection is linear),
save/load, figures, the installed command and its refusals.
The same brute force on every family of the zoo is in test_trace_heads_matrix.py, resuming
head cells in test_trace_resume.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo
from conftest import TEST_DEVICE
from test_cli import model_dir, run  # noqa: F401  (the tiny model folder fixture)
from test_conformance import HEADS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tokenprobe import TokenprobeError, causal_trace
from tokenprobe.analyses.trace import TraceResult
from tokenprobe.analyses.trace import tiles as tiles_module
from tokenprobe.loading import load_result

CLEAN = "The capital of Australia is"
CORRUPTED = "The capital of orange is"  # the same 5 tokens but one
TARGET = " Canberra"
KW = dict(corrupted=CORRUPTED, target=TARGET, metric="logprob", progress=False)

# each family's attention output projection, by path inside a block (written here, not taken
# from the analysis's discovery); the query heads' outputs are its input's columns
OUT = {
    **{arch: "self_attn.o_proj" for arch in zoo.CAUSAL},
    **{a: "attn.c_proj" for a in ("gpt2", "gpt_bigcode")},
    **{a: "attn.out_proj" for a in ("gptj", "codegen", "mpt")},
    "gpt_neo": "attn.attention.out_proj",
    "gpt_neox": "attention.dense",
    **{a: "self_attention.dense" for a in ("bloom", "falcon", "falcon-alibi")},
    **{a: "self_attn.out_proj" for a in ("opt", "opt-project", "opt-350m")},
    "phi": "self_attn.dense",
}
HEAD_COUNT = ("num_attention_heads", "n_head", "n_heads")
# a key head's state, by family (read off transformers' attention code, not taken from the
# analysis): the key projection's output, except where a norm over ALL key heads together
# follows it (OLMo 2/3: Olmo2RMSNorm(key heads x head width) on k_proj's output), whose output
# holds one head's normalised key; a per-head norm (Qwen3: width head_dim) keeps k_proj's
KEY_SITE = {"olmo2": "k_norm", "olmo3": "k_norm"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread (restored after)."""
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


def _config_number(lm, names: tuple[str, ...]) -> int:
    config = lm.model.config
    return next(getattr(config, n) for n in names if isinstance(getattr(config, n, None), int))


def head_modules(lm, component: str) -> list[tuple[torch.nn.Module | None, int]]:
    """Per block: (the module whose input (head) or output (head-k, head-v) holds the heads,
    or None; the number of heads)."""
    arch = _arch(lm)
    blocks = lm.model.get_submodule(HEADS[arch][0])
    name = OUT[arch]
    heads = _config_number(lm, HEAD_COUNT)
    if component != "head":
        site = KEY_SITE.get(arch, "k_proj") if component == "head-k" else "v_proj"
        name = f"{name.rpartition('.')[0]}.{site}"
        heads = _config_number(lm, ("num_key_value_heads", *HEAD_COUNT))
    found = []
    for block in blocks:
        try:
            found.append((block.get_submodule(name), heads))
        except AttributeError:  # Jamba's state-space blocks
            found.append((None, heads))
    return found


def _hook(module, component: str, change):
    """`change(x)` on the module's input (head) or output (head-k, head-v)."""
    if component == "head":
        return module.register_forward_pre_hook(lambda _m, args: (change(args[0]), *args[1:]))
    return module.register_forward_hook(lambda _m, _a, out: change(out))


def _logprob(lm, ids: list[int], hooks=()) -> float:
    handles = [_hook(*h) for h in hooks]
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids], device=lm.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    target = lm.tokenizer.encode(TARGET, add_special_tokens=False)[0]
    return float(torch.log_softmax(logits.logits[0, -1].double(), -1)[target])


def _restore(value: torch.Tensor, cols: slice, positions):
    def change(x):
        new = x.clone()
        new[0, positions, cols] = value[0, positions, cols]
        return new

    return change


def brute_force(lm, component: str, every: bool = False) -> np.ndarray:
    """One forward pass per (block, head, position) cell (per (block, head) with `every`): the
    clean run's columns of that head written into the corrupted run. (blocks, heads, columns)."""
    clean, bad = lm.tokenizer(CLEAN)["input_ids"], lm.tokenizer(CORRUPTED)["input_ids"]
    mods = head_modules(lm, component)
    kept: dict[int, torch.Tensor] = {}

    def keep(b):
        return lambda x: kept.__setitem__(b, x.clone()) or x

    _logprob(lm, clean, [(m, component, keep(b)) for b, (m, _) in enumerate(mods) if m])
    n_heads = max(h for _, h in mods)
    columns = 1 if every else len(clean)
    out = np.full((len(mods), n_heads, columns), np.nan)
    for b, (module, heads) in enumerate(mods):
        if module is None:
            continue
        d = kept[b].shape[-1] // heads
        for h in range(heads):
            for q in range(columns):
                where = slice(None) if every else q
                change = _restore(kept[b], slice(h * d, (h + 1) * d), where)
                out[b, h, q] = _logprob(lm, bad, [(module, component, change)])
    return out


def check_against_brute_force(lm, components, monkeypatch) -> None:
    """Default tiles and the finest ones (every cell its own batch, from its own block and
    position), each position and all at once, equal the brute force."""
    each = causal_trace(lm, CLEAN, components=components, **KW)
    every = causal_trace(lm, CLEAN, components=components, positions="all", **KW)
    monkeypatch.setattr(tiles_module, "FORWARD_TOKENS", {"cpu": 0.0, "other": 0.0})
    finest = causal_trace(lm, CLEAN, components=components, **KW)
    assert each.meta["lower_blocks"] == "reused from the cached run"
    for c in components:
        want = brute_force(lm, c)
        assert each.scores[c].shape == want.shape, c
        for res, name in ((each, "default"), (finest, "finest")):
            np.testing.assert_allclose(res.scores[c], want, atol=2e-4, rtol=1e-4, err_msg=name)
        np.testing.assert_allclose(
            every.scores[c], brute_force(lm, c, every=True), atol=2e-4, rtol=1e-4, err_msg=c
        )


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_query_heads_equal_one_forward_per_cell(arch, bpe, monkeypatch):
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE, layers=2)
    check_against_brute_force(lm, ["head"], monkeypatch)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "olmo2", "opt"])
def test_key_and_value_heads_equal_one_forward_per_cell(arch, bpe, monkeypatch):
    """Grouped-query llama (2 key/value heads for 4 query heads), qwen3 (a per-head norm after
    the key projection), olmo2 (a norm over both key heads: patched after it), OPT (biases, as
    many key/value heads as query heads)."""
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE, layers=2)
    check_against_brute_force(lm, ["head-k", "head-v"], monkeypatch)
    res = causal_trace(lm, CLEAN, components=["head", "head-k"], **KW)
    kv = _config_number(lm, ("num_key_value_heads", *HEAD_COUNT))
    assert res.meta["heads"]["head-k"]["heads"] == kv
    assert res.meta["heads"]["head"]["heads"] == _config_number(lm, HEAD_COUNT)
    site = KEY_SITE.get(arch, "k_proj")
    assert res.meta["heads"]["head-k"]["paths"][1].endswith(f".1.self_attn.{site} output")
    assert ("norm's output" in res.meta["heads"]["head-k"]["site"]) == (arch in KEY_SITE)


def _attention_sees(lm, ids, hooks, monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The keys and values (batch, key heads, positions, width) each block's attention function
    is handed in one forward pass (after norms and rotary), recorded by wrapping it."""
    impl = lm.model.config._attn_implementation
    inner = ALL_ATTENTION_FUNCTIONS.get_interface(impl, None)
    assert inner is not None, impl
    seen = []

    def wrapper(module, query, key, value, *args, **kwargs):
        seen.append((key.detach().clone(), value.detach().clone()))
        return inner(module, query, key, value, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setitem(ALL_ATTENTION_FUNCTIONS._local_mapping, impl, wrapper)
        _logprob(lm, ids, hooks)
    return seen


def off_head_changes(lm, component: str, mods, monkeypatch) -> tuple[float, float]:
    """One forward per (block, head g, position q) cell, head g's columns at q restored from the
    clean run at `mods`' sites: the largest change of what block b's attention sees outside
    (g, q) from the corrupted run's, and the largest gap at (g, q) from the clean run's."""
    clean, bad = lm.tokenizer(CLEAN)["input_ids"], lm.tokenizer(CORRUPTED)["input_ids"]
    kept: dict[int, torch.Tensor] = {}
    keep = [
        (m, component, lambda x, b=b: kept.__setitem__(b, x.clone()) or x)
        for b, (m, _) in enumerate(mods)
    ]
    which = 0 if component == "head-k" else 1
    want = [kv[which] for kv in _attention_sees(lm, clean, keep, monkeypatch)]
    base = [kv[which] for kv in _attention_sees(lm, bad, [], monkeypatch)]
    off = gap = 0.0
    for b, (module, heads) in enumerate(mods):
        d = kept[b].shape[-1] // heads
        for g in range(heads):
            for q in range(len(bad)):
                change = _restore(kept[b], slice(g * d, (g + 1) * d), q)
                seen = _attention_sees(lm, bad, [(module, component, change)], monkeypatch)
                got = seen[b][which]
                gap = max(gap, _most(got[0, g, q] - want[b][0, g, q]))
                got[0, g, q] = base[b][0, g, q]
                off = max(off, _most(got - base[b]))
                assert all(torch.equal(s[which], base[i]) for i, s in enumerate(seen[:b]))
    assert max(_most(w - c) for w, c in zip(want, base, strict=True)) > 1e-2  # runs differ
    return off, gap


def _most(x: torch.Tensor) -> float:
    return float(x.abs().max())


@pytest.mark.parametrize("arch", ["llama", "qwen3", "olmo2", "olmo3"])
def test_restoring_a_key_or_value_head_changes_that_head_alone(arch, bpe, monkeypatch):
    """At this file's sites, restoring head g at position q gives block b's attention the
    corrupted run's keys (values) everywhere but (g, q), and the clean run's there."""
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE, layers=2)
    for component in ("head-k", "head-v"):
        off, gap = off_head_changes(lm, component, head_modules(lm, component), monkeypatch)
        assert off < 1e-5 and gap < 1e-5, (component, off, gap)


def test_olmo2s_key_projection_would_not_isolate_a_head(bpe, monkeypatch):
    """The control: OLMo 2's k_norm spans both key heads, so restoring one head's columns of
    k_proj's output (the site before the fix) changes the other head's keys too."""
    lm = zoo.make_causal("olmo2", bpe, device=TEST_DEVICE, layers=2)
    mods = [(block.self_attn.k_proj, 2) for block in lm.model.model.layers]
    off, _ = off_head_changes(lm, "head-k", mods, monkeypatch)
    assert off > 1e-3


def test_a_key_norm_of_another_width_is_refused(bpe):
    """A norm over the key heads that is neither per head nor over the whole projection's
    output as one vector (here a LayerNorm over (heads, width) at once) cannot be cut by head."""
    lm = zoo.make_causal("olmo2", bpe, device=TEST_DEVICE, layers=2)
    for block in lm.model.model.layers:
        block.self_attn.k_norm = torch.nn.LayerNorm((2, 8))
    with pytest.raises(TokenprobeError, match=r"self_attn.k_norm normalises 16 values together"):
        causal_trace(lm, CLEAN, components=["head-k"], **KW)


def test_the_heads_estimates_add_up_to_the_attention_outputs(bpe):
    """The output projection is linear: attribution patching's terms of a block's heads at a
    position sum to its attention output's (llama's attention returns the projection's output),
    and a cell of every position is the sum of the positions' terms."""
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE, layers=3)
    res = causal_trace(lm, CLEAN, components=["attn", "head"], method="estimate", **KW)
    every = causal_trace(
        lm, CLEAN, components=["attn", "head"], method="estimate", positions="all", **KW
    )
    base = res.corrupted_score
    heads, attn = res.scores["head"] - base, res.scores["attn"] - base
    np.testing.assert_allclose(heads.sum(axis=1), attn, atol=1e-5)
    np.testing.assert_allclose(every.scores["head"][..., 0] - base, heads.sum(-1), atol=1e-5)
    assert np.abs(heads).max() > 1e-2  # terms that wrong code would change


def test_save_load_and_figures(bpe, tmp_path):
    lm = zoo.make_causal("jamba", bpe, device=TEST_DEVICE, layers=2)  # block 0 has no heads
    comps = ["resid", "head", "head-v"]
    for positions in ("each", "all"):
        res = causal_trace(lm, CLEAN, components=comps, positions=positions, method="both", **KW)
        assert np.isnan(res.scores["head"][0]).all() and np.isfinite(res.scores["head"][1]).all()
        out = tmp_path / positions
        res.save(out)
        back = load_result(out)
        assert isinstance(back, TraceResult) and back.tokens == res.tokens
        for c in comps:
            np.testing.assert_array_equal(back.scores[c], res.scores[c])
            np.testing.assert_array_equal(back.estimates[c], res.estimates[c])
        frame = back.to_frame()
        assert frame["head"].isna().tolist() == (frame["component"] == "resid").tolist()
        assert frame["position"].isna().all() == (positions == "all")
        views = dict(back.views())
        shape = (2, 4) if positions == "all" else (8, len(res.tokens))
        assert views["trace_head"].values.shape == shape
        assert (out / "trace_head-v.png").stat().st_size > 0
        sections = back.sections()
        tips = [t for row in sections[1]["tips"] for t in row]
        assert sum("head 3 of block 1\n" in t for t in tips) == len(tips) // 8
        assert sum("no head 3 of block 0" in t for t in tips) == len(tips) // 8
        assert json.loads((out / "meta.json").read_text())["heads"]["head"]["paths"][0] is None


def test_a_window_with_heads_is_refused(bpe):
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE, layers=2)
    with pytest.raises(TokenprobeError, match="window"):
        causal_trace(lm, CLEAN, components=["head"], window=3, **KW)


def _installed(*argv: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("tokenprobe")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([str(exe), *argv], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_the_installed_command_and_its_refusals(model_dir, bpe, tmp_path):  # noqa: F811
    base = ["trace", "--prompt", CLEAN, "--corrupted", CORRUPTED, "--target", TARGET]
    done = _installed(
        *base, "--model", str(model_dir), "--component", "head", "head-k", "--positions", "all",
        "--out", str(tmp_path / "heads"), "--device", "cpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "heads" / "meta.json").read_text())
    assert meta["positions"] == "all" and meta["heads"]["head-k"]["heads"] == 2
    assert (tmp_path / "heads" / "trace_head.png").stat().st_size > 0
    for arch, component, message in (
        ("mamba", "head", "--component head: the blocks of this model"),
        ("gpt2", "head-k", "one fused projection (transformer.h.0.attn.c_attn)"),
    ):
        folder = tmp_path / arch
        lm = zoo.make_causal(arch, bpe)
        lm.model.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
        done = _installed(
            *base, "--model", str(folder), "--component", component, "--out",
            str(tmp_path / f"out-{arch}"), "--device", "cpu",
        )  # fmt: skip
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("tokenprobe: error:")]
        assert done.returncode == 2 and len(errors) == 1 and message in errors[0], done.stderr
        assert "Traceback" not in done.stderr
