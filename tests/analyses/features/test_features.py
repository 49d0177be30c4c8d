"""`features` against references written here from the model's own forward pass: the state read
from `output_hidden_states` (or a hook on the module named in this file), the latents by the
textbook formula, and every ablation, splice and KL by one plain forward pass per cell with a
hook written here; batched equals one row per batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_model

from tokenprobe import TokenprobeError, load_result
from tokenprobe.analyses.features import FeaturesResult, features
from tokenprobe.sae import Dictionary, SaeSite

PROMPT = "the quick brown fox jumps over the lazy dog and the capital of australia is"
TARGET, FOIL = " the", " not"


def random_dictionary(
    width: int, site: SaeSite, *, latents: int = 64, seed: int = 0, **kind: object
) -> Dictionary:
    """A random dictionary with weights large enough that many latents fire and removing one
    changes the answer; biases negative so that some do not."""
    g = torch.Generator().manual_seed(seed)
    w_enc = torch.randn(width, latents, generator=g) / width**0.5
    w_dec = torch.randn(latents, width, generator=g) * 0.5
    return Dictionary(
        w_enc=w_enc,
        b_enc=-0.3 * torch.rand(latents, generator=g),
        w_dec=w_dec,
        b_dec=0.1 * torch.randn(width, generator=g),
        activation=str(kind.pop("activation", "relu")),
        site=site,
        **kind,  # type: ignore[arg-type]
    )


def _hidden(lm, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream after `layer` blocks, from the model's own hidden_states."""
    with torch.no_grad():
        out = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    return out.hidden_states[layer][0].float()


def _score(logits: torch.Tensor, lm, foil: bool) -> float:
    t = lm.tokenizer.encode(TARGET, add_special_tokens=False)[0]
    if foil:
        f = lm.tokenizer.encode(FOIL, add_special_tokens=False)[0]
        return float(logits[-1, t] - logits[-1, f])
    return float(torch.log_softmax(logits[-1].double(), -1)[t])


def _edited(lm, ids: torch.Tensor, layer: int, edit) -> torch.Tensor:
    """Logits of one plain forward with block `layer - 1`'s output edited by `edit(state)`."""
    block = lm.model.model.layers[layer - 1]

    def hook(_m, _a, out):
        first = out[0] if isinstance(out, tuple) else out
        new = edit(first.clone())
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handle = block.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return lm.model(input_ids=ids, use_cache=False).logits[0].float()
    finally:
        handle.remove()


@pytest.fixture
def llama(tokenizer):
    import copy

    return make_model("llama", copy.deepcopy(tokenizer))


@pytest.mark.parametrize("activation", ["relu", "topk", "jumprelu"])
def test_activations_and_ablations_equal_brute_force(llama, activation: str) -> None:
    lm = llama
    layer = 2
    extra: dict[str, object] = {"activation": activation}
    if activation == "topk":
        extra["k"] = 6
    if activation == "jumprelu":
        extra["threshold"] = torch.full((64,), 0.2)
    sae = random_dictionary(lm.require_adapter().width, SaeSite("resid", layer), **extra)
    res = features(lm, PROMPT, dictionary=sae, target=TARGET, top=4)
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)])
    x = _hidden(lm, ids, layer)
    pre = (x - sae.b_dec) @ sae.w_enc + sae.b_enc
    if activation == "relu":
        want = torch.relu(pre)
    elif activation == "jumprelu":
        want = torch.where(pre > 0.2, pre, torch.zeros_like(pre))
    else:
        top = pre.topk(6, dim=-1)
        want = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    k = res.kept
    assert len(k.feature) > 0
    np.testing.assert_allclose(k.activation, want[k.position, k.feature].numpy(), rtol=1e-4)
    assert (want[k.position, k.feature] > 0).all()
    # every kept (position, feature): one forward with that feature's decoder row removed
    base = _score(_edited(lm, ids, layer, lambda s: s), lm, False)
    assert res.meta["base_score"] == pytest.approx(base, abs=1e-4)
    ran = np.isfinite(k.ablation)
    assert ran.sum() >= len(ids[0])  # at least one per position
    for p, f, got in zip(k.position[ran], k.feature[ran], k.ablation[ran], strict=True):

        def remove(s, p=int(p), f=int(f)):
            s[0, p] -= want[p, f] * sae.w_dec[f]
            return s

        assert got == pytest.approx(
            base - _score(_edited(lm, ids, layer, remove), lm, False), abs=2e-4
        )
    assert np.abs(k.ablation[ran]).max() > 1e-3  # the features move the answer


def test_splice_kl_and_error_equal_brute_force(llama) -> None:
    lm, layer = llama, 2
    sae = random_dictionary(lm.require_adapter().width, SaeSite("resid", layer), seed=1)
    res = features(lm, PROMPT, dictionary=sae, target=TARGET, foil=FOIL, ablate=False)
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)])
    x = _hidden(lm, ids, layer)
    recon = torch.relu((x - sae.b_dec) @ sae.w_enc + sae.b_enc) @ sae.w_dec + sae.b_dec
    ratio = (x - recon).norm(dim=-1) / x.norm(dim=-1)
    np.testing.assert_allclose(res.positions["error_ratio"], ratio.numpy(), rtol=1e-4)
    plain = _edited(lm, ids, layer, lambda s: s)
    spliced = _edited(lm, ids, layer, lambda s: recon[None].clone())
    p, q = torch.log_softmax(plain.double(), -1), torch.log_softmax(spliced.double(), -1)
    kl = (p.exp() * (p - q)).sum(-1)
    np.testing.assert_allclose(res.positions["kl"], kl.numpy(), rtol=1e-3, atol=1e-6)
    base = _score(plain, lm, True)
    for pos in range(len(ids[0])):

        def one(s, pos=pos):
            s[0, pos] = recon[pos]
            return s

        want = _score(_edited(lm, ids, layer, one), lm, True) - base
        assert res.positions["splice_effect"][pos] == pytest.approx(want, abs=2e-4)
    assert np.isnan(res.kept.ablation).all() and np.isfinite(res.kept.attribution).all()


def test_skipped_positions_are_left_out_and_the_rest_unchanged(llama) -> None:
    """--skip-first (here the dictionary's own, as train-sae records it in cfg.json): nothing is
    kept or scored before it, the splice leaves those states alone (KL by hand), and every
    later position's rows are those of a run without it."""
    lm, layer, skip = llama, 2, 3
    sae = random_dictionary(lm.require_adapter().width, SaeSite("resid", layer), seed=1)
    sae.meta = {"metadata": {"training": {"skip_first": skip}}}
    assert sae.trained_skip_first == skip
    res = features(lm, PROMPT, dictionary=sae, target=TARGET, top=3)
    full = features(lm, PROMPT, dictionary=sae, target=TARGET, top=3, skip_first=0)
    assert res.meta["skip_first"] == skip and full.meta["skip_first"] == 0
    assert res.kept.position.min() == skip and (full.kept.position < skip).any()
    later = full.kept.position >= skip
    for name in ("position", "feature", "activation", "attribution", "ablation"):
        np.testing.assert_allclose(getattr(res.kept, name), getattr(full.kept, name)[later])
    for name in ("l0", "error_ratio", "splice_effect"):
        got, want = res.positions[name], full.positions[name]
        assert np.isnan(got[:skip]).all()
        np.testing.assert_allclose(got[skip:], want[skip:], atol=1e-6)
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)])
    x = _hidden(lm, ids, layer)
    recon = torch.relu((x - sae.b_dec) @ sae.w_enc + sae.b_enc) @ sae.w_dec + sae.b_dec
    recon[:skip] = x[:skip]
    plain = _edited(lm, ids, layer, lambda s: s)
    spliced = _edited(lm, ids, layer, lambda s: recon[None].clone())
    p, q = torch.log_softmax(plain.double(), -1), torch.log_softmax(spliced.double(), -1)
    kl = (p.exp() * (p - q)).sum(-1)
    np.testing.assert_allclose(res.positions["kl"], kl.numpy(), rtol=1e-3, atol=1e-6)
    assert not np.allclose(res.positions["kl"], full.positions["kl"])
    assert "position(s) left out" in res.summary()


def test_batched_equals_one_row_per_batch(llama) -> None:
    lm = llama
    sae = random_dictionary(lm.require_adapter().width, SaeSite("resid", 1), seed=2)
    n = len(lm.tokenizer.encode(PROMPT))
    big = features(lm, PROMPT, dictionary=sae, target=TARGET, top=3)
    small = features(lm, PROMPT, dictionary=sae, target=TARGET, top=3, batch_tokens=n)
    np.testing.assert_allclose(big.kept.ablation, small.kept.ablation, atol=1e-5)
    np.testing.assert_allclose(
        big.positions["splice_effect"], small.positions["splice_effect"], atol=1e-5
    )


def test_attribution_is_activation_times_gradient(llama) -> None:
    """activation x (decoder row . d score / d state), the gradient from autograd on a plain
    forward whose state is a leaf, written here."""
    lm, layer = llama, 2
    sae = random_dictionary(lm.require_adapter().width, SaeSite("resid", layer), seed=3)
    res = features(lm, PROMPT, dictionary=sae, target=TARGET, ablate=False)
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)])
    leaf: list[torch.Tensor] = []

    def capture(s):
        leaf.append(s.detach().requires_grad_(True))
        return leaf[0]

    block = lm.model.model.layers[layer - 1]
    handle = block.register_forward_hook(
        lambda _m, _a, out: (capture(out[0]), *out[1:]) if isinstance(out, tuple) else capture(out)
    )
    try:
        logits = lm.model(input_ids=ids, use_cache=False).logits[0]
    finally:
        handle.remove()
    t = lm.tokenizer.encode(TARGET, add_special_tokens=False)[0]
    (g,) = torch.autograd.grad(torch.log_softmax(logits[-1], -1)[t], leaf[0])
    x = leaf[0][0].detach()
    acts = torch.relu((x - sae.b_dec) @ sae.w_enc + sae.b_enc)
    want = acts * (g[0] @ sae.w_dec.T)
    k = res.kept
    np.testing.assert_allclose(k.attribution, want[k.position, k.feature].numpy(), atol=1e-5)


def test_transcoder_reads_mlp_input_and_writes_mlp_output(llama) -> None:
    lm, block = llama, 1
    sae = random_dictionary(lm.require_adapter().width, SaeSite("mlp-in", block), seed=4)
    sae.out_site = SaeSite("mlp", block)
    res = features(lm, PROMPT, dictionary=sae, target=TARGET, top=2)
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)])
    mlp = lm.model.model.layers[block].mlp
    seen: dict[str, torch.Tensor] = {}
    h1 = mlp.register_forward_pre_hook(lambda _m, a: seen.__setitem__("in", a[0][0].detach()))
    try:
        with torch.no_grad():
            lm.model(input_ids=ids, use_cache=False)
    finally:
        h1.remove()
    acts = torch.relu(seen["in"] @ sae.w_enc + sae.b_enc)  # a transcoder does not centre
    k = res.kept
    np.testing.assert_allclose(k.activation, acts[k.position, k.feature].numpy(), rtol=1e-4)
    p, f = int(k.position[np.isfinite(k.ablation)][0]), int(k.feature[np.isfinite(k.ablation)][0])

    def remove(_m, _a, out):
        out = out.clone()
        out[0, p] -= acts[p, f] * sae.w_dec[f]
        return out

    handle = mlp.register_forward_hook(remove)
    try:
        with torch.no_grad():
            ablated = lm.model(input_ids=ids, use_cache=False).logits[0]
    finally:
        handle.remove()
    got = k.ablation[(k.position == p) & (k.feature == f)][0]
    assert got == pytest.approx(res.meta["base_score"] - _score(ablated, lm, False), abs=2e-4)


def test_saved_and_read_back(llama, tmp_path) -> None:
    sae = random_dictionary(llama.require_adapter().width, SaeSite("resid", 2), seed=5)
    res = features(llama, PROMPT, dictionary=sae, target=TARGET, top=3)
    res.save(tmp_path / "out")
    back = load_result(tmp_path / "out")
    assert isinstance(back, FeaturesResult)
    np.testing.assert_allclose(back.kept.activation, res.kept.activation)
    np.testing.assert_allclose(back.positions["error_ratio"], res.positions["error_ratio"])
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"features.png", "features_effects.png", "features_error.png"} <= names
    assert back.correlation() == pytest.approx(res.correlation())


def test_refusals(llama) -> None:
    wrong = random_dictionary(llama.require_adapter().width + 1, SaeSite("resid", 2))
    with pytest.raises(TokenprobeError, match="values at resid 2"):
        features(llama, PROMPT, dictionary=wrong)
    narrow = random_dictionary(llama.require_adapter().width // 2, SaeSite("mlp-in", 1))
    narrow.out_site = SaeSite("mlp", 1)
    with pytest.raises(TokenprobeError, match="values at mlp-in 1"):
        features(llama, PROMPT, dictionary=narrow)
    deep = random_dictionary(llama.require_adapter().width, SaeSite("resid", 99))
    with pytest.raises(TokenprobeError, match="residual layers 0 to"):
        features(llama, PROMPT, dictionary=deep)
    with pytest.raises(TokenprobeError, match="sae.? is required"):
        features(llama, PROMPT)
    with pytest.raises(TokenprobeError, match="not a site"):
        features(llama, PROMPT, sae="x", sae_site="block 3")
    with pytest.raises(TokenprobeError, match="needs .?target"):
        features(llama, PROMPT, sae="x", foil=FOIL)


@pytest.mark.parametrize("normalize", ["none", "layer_norm", "constant_norm_rescale"])
def test_unit_rows_are_what_decode_changes_by(normalize: str) -> None:
    """Removing a latent changes the reconstruction by its activation x `unit_rows`, also where
    the output is scaled per input (SAELens's normalisations)."""
    sae = random_dictionary(16, SaeSite("resid", 1), latents=24, seed=6, normalize=normalize)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1)) * 3 + 1
    acts = sae.encode(x)
    p, f = (acts > 0).nonzero(as_tuple=True)
    assert p.numel() > 3
    removed = acts[p].clone()
    removed[torch.arange(p.numel()), f] = 0
    want = sae.decode(acts[p], x[p]) - sae.decode(removed, x[p])
    got = acts[p, f, None] * sae.unit_rows(f, x[p])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
