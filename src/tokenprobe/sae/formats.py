"""Sparse dictionaries from the folders researchers have (SAELens, EleutherAI sparsify, Gemma
Scope's params.npz), local or on the Hugging Face hub, as `Dictionary`: which format a folder
is, and which of a run's hookpoints to read (the readers are in `readers.py`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import TokenprobeError
from .dictionary import Dictionary, SaeSite
from .hub import download, is_hub_id
from .readers import read_gemmascope, read_json, read_saelens, read_sparsify

BUILTIN = "builtin"  # the dictionary shipped for the built-in model (SmolLM2-135M-Instruct)
_SAELENS_KEYS = ("architecture", "d_sae", "hook_name", "hook_point", "metadata")
_SPARSIFY_KEYS = ("num_latents", "expansion_factor", "transcode")


def load_sae(
    path: str | Path,
    *,
    hookpoint: str | None = None,
    site: SaeSite | None = None,
    offline: bool = False,
) -> Dictionary:
    """A dictionary from a local folder or file, or a hub id (`owner/repo[/sub/folder]`).

    `hookpoint` picks one folder of a sparsify run; `site` overrides the site the folder's
    names give (and is needed where they give none). `builtin` (where no folder has that name)
    reads the sparse autoencoder shipped for the built-in model."""
    local = Path(path).expanduser()
    if str(path) == BUILTIN and not local.exists():
        local = builtin_folder()
    if not local.exists():
        if not is_hub_id(str(path)):
            raise TokenprobeError(
                f"sparse dictionary {str(path)!r} not found: pass a folder (SAELens, sparsify), "
                "a params.npz file (Gemma Scope) or a hub id owner/repo[/folder]"
            )
        local = download(str(path), hookpoint, offline)
        hookpoint = None if (local / "cfg.json").exists() else hookpoint
    return _read(local, hookpoint, site)


def builtin_folder() -> Path:
    """The package's sparse autoencoder for the built-in model (SAELens's format)."""
    from importlib import resources

    folder = Path(str(resources.files("tokenprobe").joinpath("data/saes/smollm2")))
    if not (folder / "cfg.json").is_file():
        raise TokenprobeError(
            f"this installation of tokenprobe has no built-in sparse autoencoder ({folder} is "
            "missing): reinstall tokenprobe, or pass --sae DIR"
        )
    return folder


def _read(path: Path, hookpoint: str | None, site: SaeSite | None) -> Dictionary:
    if path.is_file():
        if path.suffix == ".npz":
            return read_gemmascope(path, site)
        if path.name in ("cfg.json", "sae_weights.safetensors", "sae.safetensors"):
            return _read(path.parent, hookpoint, site)
        raise TokenprobeError(
            f"{path} is not a sparse dictionary file: pass its folder, or a Gemma Scope params.npz"
        )
    if hookpoint is not None:
        return _read(_hookpoint(path, hookpoint), None, site)
    if (path / "params.npz").is_file():
        return read_gemmascope(path / "params.npz", site)
    cfg_file = path / "cfg.json"
    if cfg_file.is_file():
        return _read_folder(path, site)
    runs = hookpoints(path)
    if len(runs) == 1:
        return _read(path / runs[0], None, site)
    if runs:
        raise TokenprobeError(
            f"{path} holds dictionaries for {len(runs)} hookpoints ({', '.join(runs)}): pass "
            "`hookpoint` to pick one"
        )
    raise TokenprobeError(
        f"{path} holds no sparse dictionary: expected cfg.json with sae_weights.safetensors "
        "(SAELens) or sae.safetensors (sparsify), a params.npz (Gemma Scope), or one folder "
        "per hookpoint"
    )


def _read_folder(path: Path, site: SaeSite | None) -> Dictionary:
    """A folder with a cfg.json: SAELens's or sparsify's, by its weights file or its keys."""
    if (path / "sae_weights.safetensors").is_file():
        return read_saelens(path, site)
    if (path / "sae.safetensors").is_file():
        return read_sparsify(path, site)
    cfg = read_json(path / "cfg.json")
    if any(k in cfg for k in _SPARSIFY_KEYS):
        return read_sparsify(path, site)  # says which weights file is missing
    if any(k in cfg for k in _SAELENS_KEYS):
        return read_saelens(path, site)
    raise TokenprobeError(
        f"{path / 'cfg.json'} is neither a SAELens nor a sparsify config (no architecture, "
        "d_sae or num_latents): pass the folder that a sparse dictionary was saved to"
    )


def hookpoints(run: Path) -> list[str]:
    """The hookpoint folders of a sparsify run (each with a cfg.json), in name order."""
    return sorted(p.name for p in run.iterdir() if p.is_dir() and (p / "cfg.json").is_file())


def _hookpoint(run: Path, hookpoint: str) -> Path:
    folder = run / hookpoint
    if not (folder / "cfg.json").is_file():
        there = hookpoints(run)
        listed = ", ".join(there) if there else "none"
        raise TokenprobeError(
            f"{run} has no hookpoint {hookpoint!r} (a folder with a cfg.json; there: {listed}): "
            "pass one of those as `hookpoint`"
        )
    return folder
