"""Sparse dictionaries on the Hugging Face hub: `owner/repo` or `owner/repo/sub/folder`, downloaded
into the Hugging Face cache (only the folder asked for), or read from that cache alone when
offline."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import TokenprobeError
from ..model.hub import offline as offline_block
from ..model.hub import offline_wanted

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(?:/[\w.-]+)*")
# what a repository's top level may hold: one dictionary, or the cfg.json of each hookpoint's
_TOP = ["cfg.json", "sae_weights.safetensors", "sae.safetensors", "params.npz", "*/cfg.json"]


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as `owner/repo[/sub/folder]` (and not as a relative path)."""
    return bool(_HUB_ID.fullmatch(name)) and not name.startswith((".", "~"))


def download(name: str, hookpoint: str | None, offline: bool) -> Path:
    """The local folder of hub id `name` (its sub-folder, or `hookpoint`'s folder in it):
    downloaded as needed, or from the cache alone when offline."""
    from huggingface_hub import snapshot_download

    parts = name.split("/")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    folder = "/".join(p for p in (sub, hookpoint or "") if p)
    patterns = [f"{folder}/*"] if folder else _TOP
    local = offline_wanted(offline or None)  # False: as HF_HUB_OFFLINE says
    try:
        if local:
            with offline_block():
                root = snapshot_download(repo, allow_patterns=patterns, local_files_only=True)
        else:
            root = snapshot_download(repo, allow_patterns=patterns)
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's errors differ between versions
        raise _error(name, exc, local) from exc
    path = Path(root) / sub if sub else Path(root)
    if not path.exists():
        raise TokenprobeError(
            f"the hub repository {repo} has no folder {sub!r}: check the path inside it"
        )
    return path


def _error(name: str, exc: BaseException, offline: bool) -> TokenprobeError:
    if offline:
        return TokenprobeError(
            f"sparse dictionary {name!r} is not a local path and not in the local Hugging Face "
            "cache while downloads are off (`offline` was given, or HF_HUB_OFFLINE=1): run once "
            "with network to cache it, or pass a local folder"
        )
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return TokenprobeError(
        f"cannot download sparse dictionary {name!r} from the Hugging Face hub ({first}): check "
        "the id (owner/repo or owner/repo/folder) and the network, or pass a local folder"
    )
