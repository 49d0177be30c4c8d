"""Sparse dictionaries read from the folders SAELens, sparsify and Gemma Scope write: tokenprobe's
encode and decode equal the package's own (tests/data/sae/, written by bench/sae_fixtures.py
with the packages' classes), the sites the names give, and the one-line refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tokenprobe.errors import TokenprobeError
from tokenprobe.sae import Dictionary, SaeSite, load_sae
from tokenprobe.sae.names import hook_site

DATA = Path(__file__).parent / "data" / "sae"
GEMMA = DATA / "gemmascope-jumprelu" / "gemma-scope-tiny-pt-res" / "layer_3" / "width_48"

# folder -> (format, activation, site, out_site, folder of expected.safetensors)
CASES = {
    "saelens-standard": ("saelens", "relu", "resid 2", None, None),
    "saelens-topk": ("saelens", "topk", "resid 3", None, None),
    "saelens-jumprelu": ("saelens", "jumprelu", "mlp 1", None, None),
    "saelens-gated": ("saelens", "gated", "attn 0", None, None),
    "saelens-layernorm": ("saelens", "relu", "resid 4", None, None),
    "saelens-transcoder": ("saelens", "relu", "mlp-in 3", "mlp 3", None),
    "saelens-skip-transcoder": ("saelens", "jumprelu", "mlp-in 1", "mlp 1", None),
    "sparsify-topk/layers.1": ("sparsify", "topk", "resid 2", None, None),
    "sparsify-topk/layers.2.mlp": ("sparsify", "topk", "mlp 2", None, None),
    "sparsify-transcoder": ("sparsify", "topk", "mlp-in 3", "mlp 3", "layers.3.mlp"),
    str(GEMMA.relative_to(DATA)): ("gemmascope", "jumprelu", "resid 4", None, "../../.."),
}


def refusal(match: str, fn, *args, **kwargs) -> str:
    """The TokenprobeError `fn` raises: one line, matching `match`."""
    with pytest.raises(TokenprobeError, match=match) as err:
        fn(*args, **kwargs)
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("name", CASES)
def test_a_fixture_encodes_and_decodes_as_the_package_that_wrote_it(name):
    fmt, activation, site, out_site, expected_at = CASES[name]
    dic = load_sae(DATA / name)
    expected = load_file(
        str((DATA / name / (expected_at or ".")).resolve() / "expected.safetensors")
    )
    assert (dic.format, dic.activation, str(dic.site)) == (fmt, activation, site)
    assert str(dic.out_site) == str(out_site)
    assert all(v.dtype == torch.float32 for v in dic.__dict__.values() if torch.is_tensor(v))
    x = expected["x"]
    acts = dic.encode(x)
    torch.testing.assert_close(acts, expected["acts"], atol=1e-5, rtol=0)
    torch.testing.assert_close(dic.decode(acts, x), expected["out"], atol=1e-5, rtol=0)
    # the fixture is one where latents fire and others do not, so a wrong activation shows
    assert 0 < (acts > 0).sum() < acts.numel()


def test_a_wrong_convention_changes_the_answer():
    """The fixtures tell the conventions apart: no centring, or centring a transcoder's input,
    or Gemma Scope's input centred, each gives other activations."""
    for name in ("saelens-standard", "saelens-topk", "saelens-layernorm"):
        dic = load_sae(DATA / name)
        x = load_file(str(DATA / name / "expected.safetensors"))["x"]
        dic.center = False
        assert not torch.allclose(dic.encode(x), load_sae(DATA / name).encode(x), atol=1e-3)
    dic = load_sae(GEMMA)
    x = load_file(str(DATA / "gemmascope-jumprelu" / "expected.safetensors"))["x"]
    assert not torch.allclose(dic.encode(x), dic.encode(x - dic.b_dec), atol=1e-3)


def test_decoding_needs_the_input_where_the_package_uses_it():
    for name in ("saelens-layernorm", "saelens-skip-transcoder"):
        dic = load_sae(DATA / name)
        with pytest.raises(ValueError, match="decodes from its input"):
            dic.decode(torch.zeros(2, dic.d_sae))


def test_the_metadata_says_where_it_came_from():
    dic = load_sae(DATA / "saelens-skip-transcoder")
    assert dic.hook == "blocks.1.mlp.hook_in" and dic.meta["architecture"].startswith("jumprelu")
    assert dic.w_skip is not None and dic.transcoder and dic.writes == SaeSite("mlp", 1)
    assert load_sae(DATA / "sparsify-topk" / "layers.2.mlp").hook == "layers.2.mlp"
    assert load_sae(DATA / "sparsify-topk/layers.1/cfg.json").k == 8


@pytest.mark.parametrize(
    "hook, site",
    [
        ("blocks.5.hook_resid_pre", "resid 5"),
        ("blocks.5.hook_resid_post", "resid 6"),
        ("blocks.5.hook_mlp_out", "mlp 5"),
        ("blocks.5.hook_attn_out", "attn 5"),
        ("blocks.5.ln2.hook_normalized", "mlp-in 5"),
        ("blocks.5.mlp.hook_in", "mlp-in 5"),
        ("layers.12", "resid 13"),
        ("model.layers.12", "resid 13"),
        ("model.layers.12.mlp", "mlp 12"),
        ("model.layers.12.self_attn", "attn 12"),
        ("transformer.h.3.attn", "attn 3"),
        ("gpt_neox.layers.0.mlp", "mlp 0"),
        ("blocks.5.attn.hook_z", "None"),
        ("blocks.5.hook_resid_mid", "None"),
        ("blocks.5.mlp.hook_post", "None"),
        ("hook_embed", "None"),
    ],
)
def test_hook_names_map_to_sites(hook, site):
    assert str(hook_site(hook)) == site


def test_a_transcoder_hookpoint_reads_the_module_input():
    assert hook_site("model.layers.12.mlp", transcoder_input=True) == SaeSite("mlp-in", 12)
    assert hook_site("layers.4", transcoder_input=True) == SaeSite("resid", 4)
    assert hook_site("layers.4.self_attn", transcoder_input=True) is None


def test_site_parse():
    assert SaeSite.parse("resid 13") == SaeSite("resid", 13)
    assert SaeSite.parse(" mlp-in:2 ") == SaeSite("mlp-in", 2)
    assert SaeSite.parse("attn.0") == SaeSite("attn", 0)
    assert str(SaeSite.parse("mlp 12")) == "mlp 12"
    for bad in ("residual 3", "mlp", "resid -1", "13"):
        refusal("sae_site", SaeSite.parse, bad)


def test_a_sparsify_run_needs_a_hookpoint_when_it_has_several():
    text = refusal("hookpoint", load_sae, DATA / "sparsify-topk")
    assert "layers.1" in text and "layers.2.mlp" in text
    assert load_sae(DATA / "sparsify-topk", hookpoint="layers.2.mlp").site == SaeSite("mlp", 2)
    refusal(
        "no hookpoint 'layers.9'.*layers.1, layers.2.mlp",
        load_sae,
        DATA / "sparsify-topk",
        hookpoint="layers.9",
    )


def gemma_copy(tmp_path: Path, repo: str) -> Path:
    folder = tmp_path / repo / "layer_7" / "width_48"
    folder.mkdir(parents=True)
    shutil.copy(GEMMA / "params.npz", folder)
    return folder


def test_gemma_scope_sites_come_from_the_path(tmp_path):
    assert load_sae(gemma_copy(tmp_path, "gemma-scope-2b-pt-mlp")).site == SaeSite("mlp", 7)
    tc = load_sae(gemma_copy(tmp_path, "gemma-scope-2b-pt-transcoders") / "params.npz")
    assert (tc.site, tc.out_site) == (SaeSite("mlp-in", 7), SaeSite("mlp", 7))
    refusal("attention", load_sae, gemma_copy(tmp_path, "gemma-scope-2b-pt-att"))
    bare = gemma_copy(tmp_path, "somewhere")
    refusal("pass sae_site", load_sae, bare)
    assert load_sae(bare, site=SaeSite("resid", 2)).site == SaeSite("resid", 2)


def test_an_explicit_site_overrides_the_names():
    assert load_sae(DATA / "saelens-standard", site=SaeSite("resid", 9)).site == SaeSite("resid", 9)
    assert load_sae(GEMMA, site=SaeSite("mlp", 1)).site == SaeSite("mlp", 1)


def saelens_copy(tmp_path: Path, name: str = "saelens-standard", **cfg_changes) -> Path:
    folder = tmp_path / name
    shutil.copytree(DATA / name, folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    for key, value in cfg_changes.items():
        if key in cfg.get("metadata", {}):
            cfg["metadata"][key] = value
        else:
            cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("hook", ["blocks.5.attn.hook_z", "blocks.5.hook_resid_mid"])
def test_a_hook_that_names_no_site_is_refused(tmp_path, hook):
    folder = saelens_copy(tmp_path, hook_name=hook)
    text = refusal("sae_site", load_sae, folder)
    assert hook in text
    assert load_sae(folder, site=SaeSite("resid", 5)).site == SaeSite("resid", 5)


def test_bad_folders_are_refused_in_one_line(tmp_path):
    folder = saelens_copy(tmp_path)
    (folder / "sae_weights.safetensors").rename(tmp_path / "weights.safetensors")
    refusal("no sae_weights.safetensors", load_sae, folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tmp_path / "weights.safetensors", empty / "sae_weights.safetensors")
    refusal("holds no sparse dictionary.*cfg.json", load_sae, empty)
    refusal("do not belong together", load_sae, saelens_copy(tmp_path, "saelens-topk", d_in=17))
    refusal(
        "'matching_pursuit' is not supported",
        load_sae,
        saelens_copy(tmp_path, "saelens-gated", architecture="matching_pursuit"),
    )
    refusal(
        "statistic of the training data",
        load_sae,
        saelens_copy(
            tmp_path, "saelens-jumprelu", normalize_activations="expected_average_only_in"
        ),
    )
    refusal("not found", load_sae, tmp_path / "missing")


def test_a_missing_tensor_is_named(tmp_path):
    folder = saelens_copy(tmp_path, "saelens-jumprelu")
    weights = load_file(str(folder / "sae_weights.safetensors"))
    del weights["threshold"]
    save_file(weights, str(folder / "sae_weights.safetensors"))
    refusal("no tensor 'threshold'", load_sae, folder)


def test_an_older_saelens_config_is_read(tmp_path):
    """Before 6.0: `hook_point`, no architecture (standard), no metadata."""
    folder = tmp_path / "old"
    shutil.copytree(DATA / "saelens-standard", folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg = {
        "d_in": 16,
        "d_sae": 48,
        "hook_point": "blocks.2.hook_resid_pre",
        "apply_b_dec_to_input": True,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    dic = load_sae(folder)
    expected = load_file(str(folder / "expected.safetensors"))
    assert dic.site == SaeSite("resid", 2) and dic.activation == "relu"
    torch.testing.assert_close(dic.encode(expected["x"]), expected["acts"], atol=1e-5, rtol=0)


def test_a_hub_id_offline_and_not_cached_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    text = refusal("offline", load_sae, "nobody-here/no-such-saes/layer_3", offline=True)
    assert "run once" in text


def test_to_keeps_every_field():
    dic = load_sae(DATA / "saelens-layernorm")
    moved = dic.to("cpu", torch.float64)
    assert isinstance(moved, Dictionary) and moved.normalize == "layer_norm"
    assert moved.w_enc.dtype == torch.float64
