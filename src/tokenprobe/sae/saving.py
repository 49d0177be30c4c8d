"""A TopK dictionary written as a SAELens 6 folder (cfg.json + sae_weights.safetensors, the layout
sae-lens 6.54 saves and `SAE.load_from_disk` reads), its site named by the TransformerLens hook
SAELens uses, so that both `load_sae` and sae-lens load it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import TokenprobeError
from .dictionary import Dictionary, SaeSite

SAE_FILES = ("cfg.json", "sae_weights.safetensors")
SAELENS_VERSION = "6.54.12"  # the version whose layout this is (checked against it in the tests)


def hook_name(site: SaeSite) -> str:
    """The TransformerLens hook of a site (the inverse of `names.hook_site`)."""
    if site.kind == "resid":
        return (
            "blocks.0.hook_resid_pre"
            if site.layer == 0
            else f"blocks.{site.layer - 1}.hook_resid_post"
        )
    suffix = {"mlp": "hook_mlp_out", "attn": "hook_attn_out", "mlp-in": "ln2.hook_normalized"}
    return f"blocks.{site.layer}.{suffix[site.kind]}"


def saelens_cfg(dictionary: Dictionary, metadata: dict[str, Any]) -> dict[str, Any]:
    """SAELens 6's cfg.json of a TopK autoencoder (its `TopKSAEConfig.to_dict()` fields)."""
    if dictionary.activation != "topk" or dictionary.transcoder:
        raise TokenprobeError("only TopK autoencoders are written as SAELens folders here")
    return {
        "d_in": dictionary.d_in,
        "d_sae": dictionary.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_VERSION,
            "sae_lens_training_version": SAELENS_VERSION,
            "hook_name": hook_name(dictionary.site),
            **metadata,
        },
        "k": dictionary.k,
        "rescale_acts_by_decoder_norm": False,  # the decoder rows are unit-norm already
        "architecture": "topk",
    }


def save_saelens(
    dictionary: Dictionary, folder: str | Path, metadata: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write cfg.json and sae_weights.safetensors into `folder` (each through a temporary
    file); {"sae_cfg": path, "sae_weights": path}."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = saelens_cfg(dictionary, metadata or {})
    tensors = {
        "W_enc": dictionary.w_enc,
        "b_enc": dictionary.b_enc,
        "W_dec": dictionary.w_dec,
        "b_dec": dictionary.b_dec,
    }
    weights, cfg_file = folder / SAE_FILES[1], folder / SAE_FILES[0]
    tmp = folder / f".{weights.name}.tmp"
    save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    tmp.chmod(0o644)  # safetensors writes it for its owner only
    tmp.replace(weights)
    tmp = folder / f".{cfg_file.name}.tmp"
    tmp.write_text(json.dumps(cfg, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(cfg_file)
    return {"sae_weights": weights, "sae_cfg": cfg_file}
