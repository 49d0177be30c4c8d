"""The head and the residual stream of the sweep's families the adapter got wrong ("trust,
again", part 3): logit multipliers and soft-caps under config names it did not read
(Falcon-H1, RecurrentGemma, xLSTM), a head it cannot rebuild (an error, not inner rows), and
Gemma 3n's four-stream (AltUp) blocks, whose streams the model merges before its final norm.

Every reference is written here from the model's own modules and forward (named by their
Hugging Face paths), never from tokenprobe's code.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zoo
from conftest import TEST_DEVICE
from torch import nn

import tokenprobe
from tokenprobe import TokenprobeError
from tokenprobe.analyses.trace import Comparison, Tracer
from tokenprobe.analyses.trace import tiles as tiles_module

PROMPT = "What is the capital of Australia? The capital of Australia is"
TARGETS = [" Canberra", " Sydney"]
CLEAN = "What is the capital of Australia? The capital is"
CORRUPTED = "What is the capital of orange? The capital is"  # the same 10 tokens but one


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Hidden-32 models gain nothing from a second thread (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bpe():
    from conftest import make_tokenizer

    return make_tokenizer()


def _ids(lm, text: str) -> torch.Tensor:
    return torch.tensor([lm.tokenizer(text)["input_ids"]], device=lm.device)


def _softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(x / cap) * cap


# family -> (blocks, final norm, the logit post-processing as the family's forward applies it)
HEADS = {
    "falcon_h1": (
        "model.layers",
        "model.final_layernorm",
        lambda model, x: x * model.model.lm_head_multiplier,
    ),
    "recurrent_gemma": (
        "model.layers",
        "model.final_norm",
        lambda model, x: _softcap(x, model.config.logits_soft_cap),
    ),
    "xlstm": (
        "backbone.blocks",
        "backbone.out_norm",
        lambda model, x: _softcap(x, model.config.output_logit_soft_cap),
    ),
}


def _block_states(model, blocks_path: str, ids: torch.Tensor) -> tuple[list[torch.Tensor], Any]:
    """The first block's input, then each block's output (hooks on the family's blocks), and
    the model's output."""
    blocks = model.get_submodule(blocks_path)
    grabbed: list[torch.Tensor] = []

    def pre(_m, args, kwargs):
        grabbed.append(args[0] if args else kwargs["hidden_states"])

    def post(_m, _i, out):
        grabbed.append(out[0] if isinstance(out, tuple) else out)

    handles = [blocks[0].register_forward_pre_hook(pre, with_kwargs=True)]
    handles += [b.register_forward_hook(post) for b in blocks]
    try:
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return grabbed, out


def _entropy(logits: torch.Tensor) -> np.ndarray:
    logp = torch.log_softmax(logits.double(), -1)
    return (-(logp.exp() * logp).sum(-1)).cpu().numpy()


def _check_rows(res, ref: list[torch.Tensor], lm) -> None:
    """Every row of the lens against the reference logits (rows, positions, vocabulary)."""
    ref_entropy = np.stack([_entropy(x) for x in ref])
    np.testing.assert_allclose(res.entropy, ref_entropy, atol=2e-4, rtol=1e-4)
    tids = [lm.tokenizer.encode(t, add_special_tokens=False)[0] for t in TARGETS]
    ref_probs = np.stack([torch.softmax(x.double(), -1)[:, tids].cpu().numpy() for x in ref])
    np.testing.assert_allclose(res.target_probs, ref_probs, atol=1e-5, rtol=1e-4)
    # the lens's top token has the largest reference logit (a saturated soft-cap ties many)
    for row, x in enumerate(ref):
        picked = x.double().gather(-1, torch.as_tensor(res.top_ids[row, :, :1], device=x.device))
        np.testing.assert_allclose(picked[:, 0].cpu(), x.double().amax(-1).cpu(), atol=1e-4)
    assert float(ref_entropy[:-1].std()) > 0.05  # the model is not flat: wrong decoding shows


# ----------------------------------------------------------------------------- logit scaling


@pytest.mark.parametrize("arch", list(HEADS))
def test_the_lens_decodes_with_the_familys_multiplier_or_soft_cap(arch, bpe):
    lm = zoo.make_causal(arch, bpe, device=TEST_DEVICE)
    blocks, norm, post = HEADS[arch]
    model = lm.model
    ids = _ids(lm, PROMPT)
    states, out = _block_states(model, blocks, ids)
    head = model.get_output_embeddings()
    with torch.no_grad():
        ref = [post(model, head(model.get_submodule(norm)(h[0])).float()) for h in states]
    # the reference rebuilds the model's own logits from its last block's output
    torch.testing.assert_close(ref[-1], out.logits[0].float(), atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tokenprobe.logit_lens(lm, PROMPT, targets=TARGETS, top_k=3)
    assert not [w for w in caught if "logits" in str(w.message)]  # no mismatch warning
    assert res.meta["output_check"] == "ok"
    # layers 0..L-1 decoded by hand, then the model's own logits as the output row
    _check_rows(res, ref[:-1] + [out.logits[0].float()], lm)


def test_the_model_head_is_found_by_checking_when_the_config_name_is_new(bpe):
    """A logit divisor under a config name the adapter does not read: the output check finds
    it among the config's values and decodes every row with it."""
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE)
    lm.model.config.logits_mup_width_multiplier = 0.5
    wrapped = tokenprobe.LoadedModel.wrap(
        _Scaled(lm.model, lambda x: x / lm.model.config.logits_mup_width_multiplier),
        lm.tokenizer,
        name="tiny-llama-divided",
    )
    res = tokenprobe.logit_lens(wrapped, PROMPT, targets=TARGETS, top_k=3)
    assert res.meta["output_check"].startswith("ok: logits divided by"), res.meta["output_check"]
    assert "logits_mup_width_multiplier" in res.meta["output_check"]
    ids = _ids(lm, PROMPT)
    states, out = _block_states(lm.model, "model.layers", ids)
    with torch.no_grad():
        ref = [lm.model.lm_head(lm.model.model.norm(h[0])).float() / 0.5 for h in states[:-1]]
    _check_rows(res, ref + [out.logits[0].float() / 0.5], lm)


class _Scaled(nn.Module):
    """A causal LM whose forward changes its logits after the head (`change`)."""

    def __init__(self, inner: nn.Module, change) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.change = change

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = self.change(out.logits)
        return out


@pytest.mark.parametrize(
    "change, hint",
    [
        (lambda x: x * 0.37, "0.37 x the rebuilt ones"),  # a multiplier no config value names
        (lambda x: x + 0.01 * x**2, ""),  # nothing a multiplier or soft-cap can rebuild
    ],
)
def test_a_head_the_adapter_cannot_rebuild_is_an_error(bpe, change, hint):
    lm = zoo.make_causal("llama", bpe, device=TEST_DEVICE)
    wrapped = tokenprobe.LoadedModel.wrap(_Scaled(lm.model, change), lm.tokenizer, name="odd")
    with pytest.raises(TokenprobeError) as err:
        tokenprobe.logit_lens(wrapped, PROMPT)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("_Scaled: its head as found (inner.model.norm -> unembedding")
    assert "does not rebuild the model's own logits" in message and "model.norm" in message
    assert hint in message


# ----------------------------------------------------------------------------- Gemma 3n


@pytest.fixture(scope="module")
def gemma3n(bpe):
    return zoo.make_causal("gemma3n", bpe, device=TEST_DEVICE)


def _merge(model, state: torch.Tensor) -> torch.Tensor:
    """Gemma3nTextModel.forward's merge of the four streams before its final norm: stream 0,
    and each other stream through its altup_unembed_projection rescaled to stream 0's
    root-mean-square magnitude, averaged."""
    text = model.model
    first = state[0]
    target = torch.mean(first**2, dim=-1, keepdim=True) ** 0.5
    parts = [first]
    for i, projection in enumerate(text.altup_unembed_projections, start=1):
        x = projection(state[i])
        parts.append(
            x * target / torch.sqrt(torch.mean(x**2, dim=-1, keepdim=True).clamp(min=1e-5))
        )
    return torch.stack(parts).mean(dim=0)


def _gemma3n_decode(model, merged: torch.Tensor) -> torch.Tensor:
    logits = model.lm_head(model.model.norm(merged)).float()
    return _softcap(logits, model.config.final_logit_softcapping)


def _gemma3n_streams(lm, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each layer's four streams (4, 1, positions, width) and the model's logits."""
    states, out = _block_states(lm.model, "model.layers", ids)
    assert all(s.dim() == 4 and s.shape[0] == 4 for s in states)
    return states, out.logits


def test_gemma3n_lens_decodes_the_merged_streams(gemma3n):
    ids = _ids(gemma3n, PROMPT)
    states, logits = _gemma3n_streams(gemma3n, ids)
    with torch.no_grad():
        ref = [_gemma3n_decode(gemma3n.model, _merge(gemma3n.model, s))[0] for s in states]
    torch.testing.assert_close(ref[-1], logits[0].float(), atol=1e-5, rtol=1e-5)
    res = tokenprobe.logit_lens(gemma3n, PROMPT, targets=TARGETS, top_k=3)
    assert res.meta["output_check"] == "ok"
    _check_rows(res, ref[:-1] + [logits[0].float()], gemma3n)
    # the adapter's last-layer state decodes to the model's logits to the last bit
    adapter = gemma3n.require_adapter()
    with torch.no_grad(), adapter.record(last_only=True) as hidden:
        out = gemma3n.model(input_ids=ids, use_cache=False)
    assert torch.equal(adapter.logits(hidden[-1]), out.logits.float())
    # batched with padding, and one row of logits at a time, as alone
    prompts = [PROMPT, "Hello world", "Tools: hammer, wrench, level"]
    alone = [tokenprobe.logit_lens(gemma3n, p) for p in prompts]
    for together in (
        tokenprobe.logit_lens(gemma3n, prompts),
        tokenprobe.logit_lens(gemma3n, prompts, memory_mb=0.01),
    ):
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_allclose(a.entropy, b.entropy, atol=2e-4)


def test_gemma3n_similarity_compares_the_merged_streams(gemma3n):
    text = "Tools: hammer, wrench _PAUSE_ Fruits: orange, peach _PAUSE_ more"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the marker is a new token
        res = tokenprobe.past_similarity(gemma3n, text, marker="_PAUSE_", occurrence=2, window=6)
    ids = _ids(gemma3n, text)
    marker = gemma3n.tokenizer.convert_tokens_to_ids("_PAUSE_")
    p = [i for i, t in enumerate(ids[0].tolist()) if t == marker][1]
    states, _ = _gemma3n_streams(gemma3n, ids)
    with torch.no_grad():
        merged = [_merge(gemma3n.model, s)[0].double() for s in states]
    ref = np.array(
        [[F.cosine_similarity(h[p], h[p - d], dim=0).item() for d in range(1, 7)] for h in merged]
    )
    np.testing.assert_allclose(res.cosine, ref, atol=1e-4)


def _logprob(lm, ids: torch.Tensor, target: int, edits=()) -> float:
    """log p(target) after `ids`, with (module, "input" or "output", position, value) edits:
    `value` written at that position of the module's input or output (the residual stream's
    four streams (4, 1, positions, width), or an MLP's output (1, positions, width))."""
    handles = []
    for module, where, p, value in edits:

        def write(state, p=p, value=value):
            new = state.clone()
            new[..., p, :] = value
            return new

        if where == "input":
            handles.append(
                module.register_forward_pre_hook(
                    lambda _m, args, kwargs, w=write: (
                        ((w(args[0]), *args[1:]), kwargs)
                        if args
                        else (args, {**kwargs, "hidden_states": w(kwargs["hidden_states"])})
                    ),
                    with_kwargs=True,
                )
            )
        else:
            handles.append(module.register_forward_hook(lambda _m, _i, out, w=write: w(out)))
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=ids, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    return float(torch.log_softmax(logits[0, -1].double(), -1)[target])


def _mlp_outputs(lm, ids: torch.Tensor) -> list[torch.Tensor]:
    kept: list[torch.Tensor] = []
    handles = [
        b.mlp.register_forward_hook(lambda _m, _i, out: kept.append(out))
        for b in lm.model.model.layers
    ]
    try:
        with torch.no_grad():
            lm.model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return kept


def test_gemma3n_trace_restores_all_four_streams(gemma3n, monkeypatch):
    """Every residual-stream cell against one forward per cell that writes the clean run's
    four streams at one position into the corrupted run; default tiles and the finest (each
    cell from its own layer's and positions' caches)."""
    clean, bad = _ids(gemma3n, CLEAN), _ids(gemma3n, CORRUPTED)
    target = gemma3n.tokenizer.encode(" Canberra", add_special_tokens=False)[0]
    kw = dict(corrupted=CORRUPTED, target=" Canberra", metric="logprob", progress=False)
    res = tokenprobe.causal_trace(gemma3n, CLEAN, components=["resid", "mlp"], method="both", **kw)
    monkeypatch.setattr(tiles_module, "FORWARD_TOKENS", {"cpu": 0.0, "other": 0.0})
    finest = tokenprobe.causal_trace(gemma3n, CLEAN, components=["resid"], **kw)
    assert res.meta["lower_blocks"] == "reused from the cached run", res.meta["lower_blocks"]
    assert res.clean_score == pytest.approx(_logprob(gemma3n, clean, target), abs=1e-5)
    assert res.corrupted_score == pytest.approx(_logprob(gemma3n, bad, target), abs=1e-5)
    source, _ = _gemma3n_streams(gemma3n, clean)
    blocks, n = gemma3n.model.model.layers, clean.shape[1]
    sites = [(blocks[0], "input")] + [(b, "output") for b in blocks]
    want = np.array(
        [
            [_logprob(gemma3n, bad, target, [(*sites[k], p, source[k][:, :, p])]) for p in range(n)]
            for k in range(len(source))
        ]
    )
    mlp = _mlp_outputs(gemma3n, clean)
    want_mlp = np.array(
        [
            [_logprob(gemma3n, bad, target, [(b.mlp, "output", p, mlp[k][:, p])]) for p in range(n)]
            for k, b in enumerate(blocks)
        ]
    )
    np.testing.assert_allclose(res.scores["mlp"], want_mlp, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(res.scores["resid"], want, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(finest.scores["resid"], want, atol=2e-4, rtol=1e-4)
    # the last layer: the clean score at the last position, the corrupted one before it
    np.testing.assert_allclose(res.scores["resid"][-1, -1], res.clean_score, atol=1e-5)
    np.testing.assert_allclose(res.scores["resid"][-1, :-1], res.corrupted_score, atol=1e-5)
    assert np.isfinite(res.estimates["resid"]).all() and np.isfinite(res.estimates["mlp"]).all()


def test_gemma3n_restoring_every_position_of_a_layer_gives_the_clean_score(gemma3n):
    clean, bad = (_ids(gemma3n, t)[0].tolist() for t in (CLEAN, CORRUPTED))
    target = gemma3n.tokenizer.encode(" Canberra", add_special_tokens=False)[0]
    for direction in ("restore", "corrupt"):
        problem = Comparison(clean, bad, target, None, "logprob", direction)
        tracer = Tracer(gemma3n, problem, ["resid"])
        cells = [
            [(tracer.index[("resid", k)], p) for p in range(len(clean))]
            for k in range(gemma3n.n_layers)
        ]
        got = tracer.score_cells(cells, batch_tokens=4096)
        want = tracer.clean_score if direction == "restore" else tracer.corrupted_scores[0]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
