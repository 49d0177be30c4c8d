"""One reader per format: a folder (or file) in, a float32 `Dictionary` on the CPU out, with the
conventions of the package that wrote it (read from SAELens 6.54, sparsify 1.3 and the Gemma
Scope tutorial; tests/data/sae/ holds folders those packages wrote, with their own outputs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import TokenprobeError
from .dictionary import Dictionary, SaeSite
from .names import gemmascope_sites, hook_site, unmapped

# SAELens architecture -> (activation, transcoder)
SAELENS = {
    "standard": ("relu", False),
    "topk": ("topk", False),
    "jumprelu": ("jumprelu", False),
    "gated": ("gated", False),
    "transcoder": ("relu", True),
    "skip_transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", True),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}
# normalize_activations modes whose undoing needs a data-set statistic the folder does not hold
_NEEDS_DATA = ("expected_average_only_in", "covariance_whitening")


def read_json(file: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenprobeError(f"cannot read {file} ({exc}): re-download or re-save it") from exc
    if not isinstance(cfg, dict):
        raise TokenprobeError(f"{file} is not a JSON object: re-download or re-save it")
    return cfg


def _weights(file: Path, writer: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise TokenprobeError(
            f"{file.parent} has a cfg.json but no {file.name}: copy the weights file {writer} "
            "saved next to it"
        )
    try:
        return {k: v.float() for k, v in load_file(str(file), device="cpu").items()}
    except (OSError, SafetensorError) as exc:
        raise TokenprobeError(f"cannot read {file} ({exc}): re-download or re-save it") from exc


def _take(weights: dict[str, torch.Tensor], key: str, file: Path, what: str) -> torch.Tensor:
    if key not in weights:
        raise TokenprobeError(
            f"{file} has no tensor {key!r} ({', '.join(sorted(weights))} are there): it is not "
            f"the {what} its cfg.json describes; re-save it with the package that trained it"
        )
    return weights[key]


def saelens_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """SAELens's cfg.json with the metadata merged in and older spellings (before 6.0) read as
    SAELens reads them."""
    flat = {**cfg, **(cfg.get("metadata") or {})}
    for old, new in (("hook_point", "hook_name"), ("activation_fn_str", "activation_fn")):
        flat.setdefault(new, flat.get(old))
    flat.setdefault("architecture", "standard")
    k = (flat.get("activation_fn_kwargs") or {}).get("k")
    if flat.get("activation_fn") == "topk" and k is not None:
        flat["architecture"], flat["k"] = "topk", k
    norm = flat.get("normalize_activations")
    flat["normalize_activations"] = (
        ("expected_average_only_in" if norm else "none") if norm in (None, True, False) else norm
    )
    return flat


def read_saelens(folder: Path, site: SaeSite | None) -> Dictionary:
    """A SAELens folder: cfg.json + sae_weights.safetensors."""
    cfg = read_json(folder / "cfg.json")
    flat = saelens_cfg(cfg)
    arch = flat["architecture"]
    if arch not in SAELENS:
        raise TokenprobeError(
            f"{folder / 'cfg.json'}: SAELens architecture {arch!r} is not supported "
            f"({', '.join(SAELENS)} are)"
        )
    activation, transcoder = SAELENS[arch]
    norm = flat["normalize_activations"]
    if norm in _NEEDS_DATA:
        raise TokenprobeError(
            f"{folder / 'cfg.json'}: normalize_activations {norm!r} scales the input by a "
            "statistic of the training data that the folder does not hold: fold it into the "
            "weights first (SAELens's fold_activation_norm_scaling_factor) and save again"
        )
    if flat.get("reshape_activations") == "hook_z" or flat.get("hook_head_index") is not None:
        raise unmapped(str(flat.get("hook_name")), "hook (attention heads' z)")
    file = folder / "sae_weights.safetensors"
    w = _weights(file, "SAELens")
    what = f"SAELens {arch} dictionary"
    w_dec = _take(w, "W_dec", file, what)
    if "scaling_factor" in w:  # before 6.0: activations scaled by it before decoding
        w_dec = w_dec * w["scaling_factor"][:, None]
    gated = activation == "gated"
    dic = Dictionary(
        w_enc=_take(w, "W_enc", file, what),
        b_enc=_take(w, "b_gate" if gated else "b_enc", file, what),
        w_dec=w_dec,
        b_dec=_take(w, "b_dec", file, what),
        activation=activation,
        site=SaeSite("resid", 0),  # replaced below
        k=flat.get("k"),
        threshold=_take(w, "threshold", file, what) if activation == "jumprelu" else None,
        b_gate=_take(w, "b_gate", file, what) if gated else None,
        r_mag=_take(w, "r_mag", file, what) if gated else None,
        b_mag=_take(w, "b_mag", file, what) if gated else None,
        w_skip=w["W_skip"].T if "W_skip" in w else None,
        center=bool(flat.get("apply_b_dec_to_input", True)) and not transcoder,
        normalize=norm,
        format="saelens",
        path=str(folder),
        hook=str(flat.get("hook_name")),
        meta=cfg,
    )
    if activation == "topk" and flat.get("rescale_acts_by_decoder_norm"):
        fold_decoder_norm(dic)
    dic.site, dic.out_site = _saelens_sites(flat, site, transcoder)
    check_shapes(dic, file, flat)
    return dic


def fold_decoder_norm(dic: Dictionary) -> None:
    """SAELens TopK's `rescale_acts_by_decoder_norm` (pre-activations times each latent's decoder
    norm, activations divided by it before decoding), folded into the weights."""
    norm = dic.w_dec.norm(dim=-1)
    dic.w_enc, dic.b_enc, dic.w_dec = dic.w_enc * norm, dic.b_enc * norm, dic.w_dec / norm[:, None]


def _saelens_sites(
    flat: dict[str, Any], site: SaeSite | None, transcoder: bool
) -> tuple[SaeSite, SaeSite | None]:
    hook = str(flat.get("hook_name"))
    reads = site or hook_site(hook)
    if reads is None:
        raise unmapped(hook, "hook")
    if not transcoder:
        return reads, None
    out_hook = str(flat.get("hook_name_out"))
    writes = hook_site(out_hook)
    if writes is None and site is not None and site.kind == "mlp-in":
        writes = SaeSite("mlp", site.layer)
    if writes is None:
        raise unmapped(out_hook, "output hook")
    return reads, writes


def read_sparsify(folder: Path, site: SaeSite | None) -> Dictionary:
    """A sparsify hookpoint folder: cfg.json + sae.safetensors; the hookpoint is the folder's
    name. A transcoder reads the module's input and writes its output, with no b_dec
    subtracted from its input."""
    cfg = read_json(folder / "cfg.json")
    if cfg.get("activation", "topk") != "topk":
        raise TokenprobeError(
            f"{folder / 'cfg.json'}: sparsify activation {cfg.get('activation')!r} is not "
            "supported (topk is)"
        )
    file = folder / "sae.safetensors"
    w = _weights(file, "sparsify")
    transcode = bool(cfg.get("transcode"))
    hookpoint = folder.name
    reads = site or hook_site(hookpoint, transcoder_input=transcode)
    if reads is None:
        raise unmapped(hookpoint, "hookpoint")
    writes = hook_site(hookpoint) if transcode else None
    if transcode and writes is None:
        raise unmapped(hookpoint, "hookpoint (as a transcoder's output)")
    what = "sparsify dictionary"
    dic = Dictionary(
        w_enc=_take(w, "encoder.weight", file, what).T,
        b_enc=_take(w, "encoder.bias", file, what),
        w_dec=_take(w, "W_dec", file, what),
        b_dec=_take(w, "b_dec", file, what),
        activation="topk",
        site=reads,
        out_site=writes,
        k=cfg.get("k"),
        w_skip=w["W_skip"].T if "W_skip" in w else None,
        center=not transcode,
        format="sparsify",
        path=str(folder),
        hook=hookpoint,
        meta=cfg,
    )
    check_shapes(dic, file, {"d_in": cfg.get("d_in"), "d_sae": cfg.get("num_latents") or None})
    return dic


def read_gemmascope(file: Path, site: SaeSite | None) -> Dictionary:
    """Gemma Scope's params.npz: JumpReLU (`(pre > threshold) * relu(pre)`), no b_dec
    subtracted from the input; the site from the path (`layer_N`, `-res` / `-mlp` /
    `transcoders`) unless `site` is given."""
    import numpy as np

    try:
        with np.load(file) as data:
            w = {_gemmascope_key(k): torch.from_numpy(data[k]).float() for k in data}
    except (OSError, ValueError) as exc:
        raise TokenprobeError(f"cannot read {file} ({exc}): re-download it") from exc
    sites = gemmascope_sites(file.parent)
    if site is None and sites is None:
        raise TokenprobeError(
            f"cannot tell from {file} where its dictionary reads (no layer_N folder under a "
            "-res / -mlp / transcoders repository name): pass `sae_site`, e.g. 'resid 13'"
        )
    reads = site or (sites[0] if sites else None)
    assert reads is not None
    what = "Gemma Scope JumpReLU dictionary"
    dic = Dictionary(
        w_enc=_take(w, "W_enc", file, what),
        b_enc=_take(w, "b_enc", file, what),
        w_dec=_take(w, "W_dec", file, what),
        b_dec=_take(w, "b_dec", file, what),
        activation="jumprelu",
        site=reads,
        out_site=sites[1] if sites else None,
        threshold=_take(w, "threshold", file, what),
        center=False,
        format="gemmascope",
        path=str(file),
        hook=str(file.parent),
        meta={k: list(v.shape) for k, v in w.items()},
    )
    check_shapes(dic, file, {})
    return dic


def _gemmascope_key(key: str) -> str:
    return "W" + key[1:] if key.startswith("w_") else key


def check_shapes(dic: Dictionary, file: Path, cfg: dict[str, Any]) -> None:
    """Every tensor's shape agrees with the others and with cfg.json's d_in / d_sae / d_out."""
    d_in, d_sae, d_out = dic.w_enc.shape[0], dic.w_enc.shape[1], dic.w_dec.shape[-1]
    want: dict[str, tuple[torch.Tensor | None, tuple[int, ...]]] = {
        "encoder weight": (dic.w_enc, (cfg.get("d_in") or d_in, cfg.get("d_sae") or d_sae)),
        "encoder bias": (dic.b_enc, (d_sae,)),
        "decoder weight": (dic.w_dec, (d_sae, cfg.get("d_out") or d_out)),
        "decoder bias": (dic.b_dec, (d_out,)),
    }
    for name in ("threshold", "b_gate", "r_mag", "b_mag"):
        want[name] = (getattr(dic, name), (d_sae,))
    want["skip weight"] = (dic.w_skip, (d_in, d_out))
    for name, (tensor, shape) in want.items():
        if tensor is not None and tuple(tensor.shape) != tuple(shape):
            raise TokenprobeError(
                f"{file}: the {name} is {tuple(tensor.shape)} where {tuple(shape)} was expected "
                f"(d_in {cfg.get('d_in') or d_in}, d_sae {cfg.get('d_sae') or d_sae}): the "
                "weights and cfg.json do not belong together; re-download or re-save the folder"
            )
