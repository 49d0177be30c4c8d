"""The Hugging Face hub: downloads like `from_pretrained`, or none at all when offline.

Online (the default, as for every Hugging Face tool), a hub id that is not cached is
downloaded into the Hugging Face cache. Offline (`offline=True`, `--offline`, or
HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1), nothing connects: only cached files are used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import TokenprobeError

_TRUE = ("1", "ON", "YES", "TRUE")


def offline_wanted(offline: bool | None = None) -> bool:
    """`offline` when given, else what HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE say."""
    if offline is not None:
        return offline
    return any(os.environ.get(k, "").upper() in _TRUE for k in _OFFLINE_VARIABLES)


def hub_error(name: str, exc: BaseException, offline: bool) -> TokenprobeError:
    """One line for a hub id that could not be loaded: offline and not cached, or not found /
    not reachable online."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if offline:
        return TokenprobeError(
            f"unknown model '{name}': not a local folder, not a .gguf file, not a built-in name, and "
            "not in the local Hugging Face cache while downloads are off (`offline`, or "
            "HF_HUB_OFFLINE=1): load it once with network, or pass a local path"
        )
    return TokenprobeError(
        f"cannot load '{name}' from the Hugging Face hub ({first}): check the id and the network "
        "(a gated model needs `huggingface-cli login`), or pass a local path"
    )


_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_TIMEOUT = 5.0  # seconds the hub has to answer before the network counts as down


def check_reachable(name: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Online, before a hub id that is not cached is downloaded: one short request to the hub,
    so that a network that is down fails at once in one line (huggingface_hub would retry for
    half a minute first, a warning line each time). A cached id needs no network: the hub's
    own fallback to the cache is immediate."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import get_session

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except ValueError:  # not a valid hub id: loading says so in its own line
        return
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)  # any answer: the hub is there
    except Exception as exc:  # noqa: BLE001 - the HTTP client's errors differ between versions
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TokenprobeError(
            f"cannot load '{name}' from the Hugging Face hub: it cannot be reached at "
            f"{constants.ENDPOINT} ({why}): check the network connection (or HF_ENDPOINT and the "
            "proxy settings), or pass `offline` to use only models already in the local cache"
        ) from exc


@contextmanager
def offline() -> Iterator[None]:
    """No network connection from Hugging Face libraries inside this block.

    `local_files_only=True` is not enough: huggingface_hub 2.x fetches an agent registry from
    the hub when it builds request headers, even for a cached hub id. Only its offline mode
    stops every connection, and it reads HF_HUB_OFFLINE once, at its first import, into
    `huggingface_hub.constants.HF_HUB_OFFLINE`, which it checks before each request. So the
    block sets the variables (for a first import inside it) and that constant (for an earlier
    import), and restores both when it ends, so a program that imports tokenprobe keeps its
    own setting outside it. Loading a local model runs inside it too (no connection is needed).
    """
    import sys

    saved = {k: os.environ.get(k) for k in _OFFLINE_VARIABLES}
    imported = sys.modules.get("huggingface_hub.constants")
    before = getattr(imported, "HF_HUB_OFFLINE", None)
    os.environ.update({k: "1" for k in _OFFLINE_VARIABLES})
    import huggingface_hub.constants as hub  # a first import reads the variables set above

    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if before is None:  # first imported in the block: what the caller's environment says
            value = saved["HF_HUB_OFFLINE"] or saved["TRANSFORMERS_OFFLINE"] or ""
            before = value.upper() in ("1", "ON", "YES", "TRUE")
        hub.HF_HUB_OFFLINE = before
