"""Direct logit attribution on every family of the conformance matrix, against a reference
written here from the model's own forward pass: each block's attention / MLP / mixer output
read by hooks on modules named in this file, each head's slice of the output projection, and
the final norm's formula written per family (checked against the norm's own output), then
projected by hand. The parts add up to the model's own logit; refused families are one line."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import zoo
from conftest import make_tokenizer

from tokenprobe import TokenprobeError
from tokenprobe.analyses.logit_attribution import logit_attribution
from tokenprobe.model.parts import find_heads

PROMPT = "What is the capital of Australia? The capital is"
TARGET, FOIL = " Canberra", " Sydney"
REFUSED = {"opt-350m": "cannot split block 0"}  # post-norm blocks norm the residual stream
ARCHS = [a for a in zoo.CAUSAL if a not in REFUSED]

# the attention / MLP / state-space module of each family's blocks, by attribute name
ATTN = {
    **{a: "attn" for a in ("gpt2", "gpt_neo", "gptj", "gpt_bigcode", "codegen", "mpt")},
    "gpt_neox": "attention",
    **{a: "self_attention" for a in ("bloom", "falcon", "falcon-alibi")},
    "mamba": None,
    "mamba2": None,
}
MLP = {
    **{a: "fc2" for a in ("opt", "opt-project")},
    "mpt": "ffn",
    "jamba": "feed_forward",
    "mamba": None,
    "mamba2": None,
}
MIXER = {"mamba": "mixer", "mamba2": "mixer", "jamba": "mamba"}
ADDS_RESIDUAL = {("bloom", "attn"), ("bloom", "mlp"), ("mpt", "mlp")}
_GEMMA_POST = ("post_attention_layernorm", "post_feedforward_layernorm")
POST = {
    **{a: _GEMMA_POST for a in ("gemma2", "gemma3", "olmo2", "olmo3")},
    "glm4": ("post_self_attn_layernorm", "post_mlp_layernorm"),
}
LAYER_NORM = {
    *("gpt2", "gpt_neo", "gptj", "gpt_neox", "gpt_bigcode", "opt", "opt-project", "bloom"),
    *("falcon", "falcon-alibi", "mpt", "stablelm", "olmo", "cohere", "cohere2", "phi"),
    *("codegen", "starcoder2"),
}
ONE_PLUS = {"gemma", "gemma2", "gemma3"}  # RMSNorm gain 1 + weight


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bpe():
    return make_tokenizer()


def _model(arch, bpe):
    """The zoo model with its norms' weights and biases moved off 1 and 0, so that a wrong gain
    (weight vs 1 + weight), a missed centring or a dropped bias changes the numbers."""
    lm = zoo.make_causal(arch, bpe)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            owner = name.split(".")[-2] if "." in name else ""
            if p.dim() == 1 and ("norm" in name or owner.startswith("ln")):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return lm


def _norm(arch: str, module, x: torch.Tensor, scale: torch.Tensor | None = None):
    """The family's norm formula, float64: (linear part at `scale` or x's own, x's scale)."""
    x = x.double()
    names = [n for n in ("eps", "variance_epsilon", "epsilon") if hasattr(module, n)]
    eps = float(getattr(module, names[0])) if names else 1e-5  # OLMo's: F.layer_norm's default
    centred = arch in LAYER_NORM
    xc = x - x.mean(-1, keepdim=True) if centred else x
    own = torch.sqrt((xc * xc).mean(-1, keepdim=True) + eps)
    y = xc / (own if scale is None else scale)
    weight = getattr(module, "weight", None)
    if weight is not None:
        y = y * ((1 + weight.double()) if arch in ONE_PLUS else weight.double())
    return y, own


def _bias(module):
    b = getattr(module, "bias", None)
    return b.double() if isinstance(b, torch.Tensor) else None


class Reference:
    """The forward pass's pieces by hooks on named modules, and their read-out by hand."""

    def __init__(self, arch: str, lm, ids: list[int], token_ids: list[int]):
        self.arch, self.lm = arch, lm
        adapter = lm.require_adapter()
        self.blocks, self.parts, self.z, self.kept = adapter.blocks, {}, {}, {}
        self.layouts = find_heads(adapter) if arch not in ("mamba", "mamba2") else []
        handles = [self.blocks[0].register_forward_pre_hook(self._embed, with_kwargs=True)]
        handles += [adapter.final_norm.register_forward_hook(self._final)]
        handles += [lm.model.get_output_embeddings().register_forward_hook(self._raw)]
        for b, block in enumerate(self.blocks):
            handles += self._block_hooks(b, block)
        try:
            with torch.no_grad():
                self.logits = lm.model(torch.tensor([token_ids])).logits[0].double()
        finally:
            for h in handles:
                h.remove()
        self.ids = ids
        config = lm.model.config
        self.mult = 1.0
        if arch in ("cohere", "cohere2"):
            self.mult = config.logit_scale
        elif arch == "granite":
            self.mult = 1 / config.logits_scaling

    def _embed(self, _m, args, kwargs):
        self.kept["embed"] = (args[0] if args else kwargs["hidden_states"])[0].double()

    def _final(self, _m, args, out):
        self.kept["final"] = (args[0][0].double(), out[0].double())

    def _raw(self, _m, _a, out):
        self.kept["raw"] = out[0].double()

    def _block_hooks(self, b, block):
        names = {"attn": ATTN.get(self.arch, "self_attn"), "mlp": MLP.get(self.arch, "mlp")}
        names["mixer"] = MIXER.get(self.arch)
        post = POST.get(self.arch)
        if post:
            names = {**names, "attn": post[0], "mlp": post[1]}
        handles = []
        for kind, name in names.items():
            if name is None or not hasattr(block, name):
                continue
            residual = (self.arch, kind) in ADDS_RESIDUAL
            module = getattr(block, name)

            def keep(m, args, kwargs, out, b=b, kind=kind, residual=residual):
                value = (out[0] if isinstance(out, tuple) else out).double()
                if residual:
                    value = (
                        value
                        - inspect.signature(m.forward).bind(*args, **kwargs).arguments["residual"]
                    )
                self.parts[(b, kind)] = value.reshape(-1, value.shape[-1])

            handles.append(module.register_forward_hook(keep, with_kwargs=True))
        layout = self.layouts[b] if b < len(self.layouts) else None
        if layout is not None:
            attn = getattr(block, ATTN.get(self.arch, "self_attn"))
            handles.append(
                layout.out.register_forward_pre_hook(
                    lambda _m, a, b=b: self.z.__setitem__(b, a[0][0].double())
                )
            )
            handles.append(
                attn.register_forward_hook(
                    lambda _m, _a, o, b=b: self.kept.__setitem__(
                        ("attn_raw", b), (o[0] if isinstance(o, tuple) else o)[0].double()
                    )
                )
            )
        return handles

    def direction(self):
        """The unembedding rows' difference, back through OPT's project_out: (width,), bias."""
        head = self.lm.model.get_output_embeddings()
        w = head.weight.double()[self.ids[0]] - head.weight.double()[self.ids[1]]
        bias = 0.0
        if self.arch == "opt-project":
            proj = self.lm.model.model.decoder.project_out
            w = w @ proj.weight.double()
        return w, bias

    def read(self, vector: torch.Tensor) -> torch.Tensor:
        """A part of the last residual stream read through the frozen final norm, by hand."""
        x, y = self.kept["final"]
        norm = self.lm.require_adapter().final_norm
        mine, scale = _norm(self.arch, norm, x)
        b = _bias(norm)
        assert torch.allclose(
            mine + (b if b is not None else 0), y, atol=1e-4 * float(y.abs().max())
        )
        lin, _ = _norm(self.arch, norm, vector, scale)
        w, _ = self.direction()
        return (lin @ w) * self.mult


@pytest.mark.parametrize("arch", ARCHS)
def test_parts_match_a_reference_written_from_the_forward_pass(arch, bpe):
    lm = _model(arch, bpe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = logit_attribution(lm, PROMPT, target=TARGET, foil=FOIL)
    frame = result.frame
    ids = [result.meta["target_id"], result.meta["foil_id"]]
    ref = Reference(arch, lm, ids, result.meta["token_ids"])
    raw = ref.kept["raw"]
    own = (raw[:, ids[0]] - raw[:, ids[1]]) * ref.mult
    scale = 1e-4 * max(1.0, float(frame["value"].abs().max()) * 10)

    def rows(component, layer=None, head=None):
        part = frame[frame["component"] == component]
        if layer is not None:
            part = part[part["layer"] == layer]
        if head is not None:
            part = part[part["head"] == head]
        return torch.tensor(part.sort_values("position")["value"].to_numpy())

    # the parts add up to the model's own logit (before any soft-cap) at every position
    assert torch.allclose(torch.tensor(result.total()), own, atol=scale)
    if arch == "gemma2":  # and the model's logits are that logit soft-capped
        cap = lm.model.config.final_logit_softcapping
        capped = torch.tanh(raw[:, ids] * ref.mult / cap) * cap
        assert torch.allclose(capped, ref.logits[:, ids], atol=1e-4)
    assert torch.allclose(rows("embed"), ref.read(ref.kept["embed"]), atol=scale)
    for (b, kind), vector in ref.parts.items():
        factor = lm.model.config.residual_multiplier if arch == "granite" else 1.0
        assert torch.allclose(rows(kind, b), ref.read(factor * vector), atol=scale), (b, kind)
    assert set(frame["component"].unique()) <= {
        "embed",
        "attn",
        "mlp",
        "mixer",
        "bias",
        "head",
        "attn_bias",
    }
    _check_heads(arch, lm, ref, rows, scale)


def _check_heads(arch, lm, ref, rows, scale):
    """Each head's slice through the output projection (and a post-norm frozen at the
    attention output's own scale), read by hand; heads + attn_bias = attn."""
    split = [lay for lay in ref.layouts if lay is not None]
    assert bool(split) == (arch not in ("mamba", "mamba2"))
    for lay in split:
        b = lay.block
        z, weight = ref.z[b], lay.out_weight().double()
        factor = lm.model.config.residual_multiplier if arch == "granite" else 1.0
        post = POST.get(arch)
        for h in range(lay.heads):
            sl = lay.head_slice(h)
            vector = factor * (z[:, sl] @ weight[:, sl].T)
            if post:
                _, s2 = _norm(arch, getattr(ref.blocks[b], post[0]), ref.kept[("attn_raw", b)])
                vector, _ = _norm(arch, getattr(ref.blocks[b], post[0]), vector, s2)
            assert torch.allclose(rows("head", b, h), ref.read(vector), atol=scale), (b, h)
        total = sum(rows("head", b, h) for h in range(lay.heads)) + rows("attn_bias", b)
        assert torch.allclose(total, rows("attn", b), atol=scale)


@pytest.mark.parametrize("arch", sorted(REFUSED))
def test_refused_families_are_one_line(arch, bpe):
    lm = zoo.make_causal(arch, bpe)
    with pytest.raises(TokenprobeError, match=REFUSED[arch]) as err:
        logit_attribution(lm, PROMPT, target=TARGET)
    assert "\n" not in str(err.value)


# the sweep's families whose residual stream is not a sum of branch outputs: AltUp streams
# (gemma3n), a per-layer scalar on the whole block output (gemma4), scaled residuals (minimax),
# branch multipliers with a parallel state-space branch (falcon_h1), a norm of the stream
# itself in block 0 (rwkv)
SWEEP_REFUSED = {"gemma3n", "gemma4", "gemma4-shared-kv", "falcon_h1", "minimax", "rwkv"}


@pytest.mark.parametrize("arch", list(zoo.SWEEP))
def test_sweep_families_add_up_or_are_refused_in_one_line(arch, bpe):
    lm = zoo.make_causal(arch, bpe)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = logit_attribution(lm, PROMPT, target=TARGET, foil=FOIL)
    except TokenprobeError as err:
        assert arch in SWEEP_REFUSED and "\n" not in str(err)
        return
    assert arch not in SWEEP_REFUSED
    pair = [result.meta["target_id"], result.meta["foil_id"]]
    raw = {}
    head = lm.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, _a, o: raw.update(out=o[0].double()))
    try:
        with torch.no_grad():
            logits = lm.model(torch.tensor([result.meta["token_ids"]])).logits[0].double()
    finally:
        handle.remove()
    config = lm.model.config.get_text_config()
    caps = ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap")
    cap = next((c for c in (getattr(config, n, None) for n in caps) if c), None)
    if cap:  # the logits are the unembedding's output soft-capped; the part before it is split
        assert torch.allclose(
            torch.tanh(raw["out"][:, pair] / cap) * cap, logits[:, pair], atol=1e-4
        )
        logits = raw["out"]
    else:
        assert torch.allclose(raw["out"][:, pair], logits[:, pair], atol=1e-4)
    own = logits[:, pair[0]] - logits[:, pair[1]]
    scale = 1e-4 * max(1.0, float(result.frame["value"].abs().max()) * 10)
    assert torch.allclose(torch.tensor(result.total()), own, atol=scale)
