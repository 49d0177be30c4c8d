"""The names dictionaries give their sites (TransformerLens hooks in SAELens cfg.json, Hugging
Face module paths as sparsify's hookpoints, Gemma Scope's folder names) in tokenprobe's site
vocabulary (`SaeSite`): `resid L` is the residual stream after L blocks, `mlp B` / `attn B` what
block B's MLP / attention adds to it, `mlp-in B` the MLP's (normalised) input."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import TokenprobeError
from .dictionary import SaeSite

# TransformerLens hook names (SAELens's `hook_name`, `hook_name_out`)
_TL = re.compile(
    r"blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_mlp_out|hook_attn_out"
    r"|ln2\.hook_normalized|mlp\.hook_in)"
)
_TL_KIND = {
    "hook_resid_pre": ("resid", 0),
    "hook_resid_post": ("resid", 1),
    "hook_mlp_out": ("mlp", 0),
    "hook_attn_out": ("attn", 0),
    "ln2.hook_normalized": ("mlp-in", 0),
    "mlp.hook_in": ("mlp-in", 0),
}
# Hugging Face module paths (sparsify's hookpoints): a block, or its MLP / attention module
_HF = re.compile(
    r"(?:[\w.]*\.)?(?:layers|h|blocks|layer|block)\.(\d+)"
    r"(?:\.(mlp|feed_forward|ffn|self_attn|attn|attention|self_attention))?"
)
_HF_MODULE = {
    "feed_forward": "mlp",
    "ffn": "mlp",
    "self_attn": "attn",
    "attention": "attn",
    "self_attention": "attn",
}


def hook_site(name: str, *, transcoder_input: bool = False) -> SaeSite | None:
    """The site a hook name or hookpoint reads (None: it names none tokenprobe reads). A
    transcoder trained on an MLP hookpoint reads that MLP's input (sparsify's convention)."""
    if m := _TL.fullmatch(name):
        kind, shift = _TL_KIND[m.group(2)]
        return SaeSite(kind, int(m.group(1)) + shift)
    if m := _HF.fullmatch(name):
        block = int(m.group(1))
        module = _HF_MODULE.get(m.group(2) or "", m.group(2))
        if module is None:  # the block itself: its output, or for a transcoder its input
            return SaeSite("resid", block if transcoder_input else block + 1)
        if transcoder_input:
            return SaeSite("mlp-in", block) if module == "mlp" else None
        return SaeSite(module, block)
    return None


def hookpoint_output(name: str) -> SaeSite | None:
    """The site a sparsify transcoder trained on hookpoint `name` writes: the module's output."""
    return hook_site(name)


def unmapped(name: str, what: str) -> TokenprobeError:
    """The one line for a hook name that names no site tokenprobe reads."""
    return TokenprobeError(
        f"the sparse dictionary's {what} {name!r} is not a site tokenprobe can read (it reads the "
        "residual stream, an attention or MLP output, or an MLP input): pass `sae_site` (e.g. "
        "'resid 13', 'mlp 12') if it is one of these under another name"
    )


def gemmascope_sites(path: Path) -> tuple[SaeSite, SaeSite | None] | None:
    """The sites a Gemma Scope params.npz reads (and, for a transcoder, writes), from its path:
    `layer_N` and a repository or folder name with `res` / `mlp` / `att` / `transcoders` (Gemma
    Scope 2: `resid_post`, `mlp_out`, `attn_out`, `transcoder`). None: the path does not say."""
    layer = kind = None
    for part in reversed(path.resolve().parts):
        if layer is None and (m := re.fullmatch(r"layer_(\d+)", part)):
            layer = int(m.group(1))
        words = set(re.split(r"[-_.]", part.lower()))
        if kind is None:
            kind = next(
                (k for k in ("transcoders", "transcoder", "res", "resid", "mlp") if k in words),
                None,
            )
            if kind is None and words & {"att", "attn"}:
                raise TokenprobeError(
                    f"{path} is a Gemma Scope attention dictionary: it reads the attention heads' "
                    "outputs before the output projection (hook_z), which tokenprobe does not read"
                )
    if layer is None or kind is None:
        return None
    if kind.startswith("transcoder"):
        return SaeSite("mlp-in", layer), SaeSite("mlp", layer)
    if kind in ("res", "resid"):  # Gemma Scope's residual SAEs read block N's output
        return SaeSite("resid", layer + 1), None
    return SaeSite("mlp", layer), None
