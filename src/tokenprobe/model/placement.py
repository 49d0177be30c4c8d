"""Models bigger than one device: accelerate's device maps and memory limits, checked first."""

from __future__ import annotations

import re
from typing import Any

from ..errors import TokenprobeError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_OTHERS = ("cpu", "mps", "disk")  # accelerate's devices besides GPU numbers
_SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B)$", re.IGNORECASE)


def parse_max_memory(spec: str | dict[Any, str] | None) -> dict[Any, str] | None:
    """`"0=20GiB,cpu=64GiB"` to accelerate's {0: "20GiB", "cpu": "64GiB"}; a GPU may be named
    cuda:N too (in a dict as well)."""
    if spec is None or isinstance(spec, dict):
        return spec if spec is None else {_gpu_number(k): v for k, v in spec.items()}
    out: dict[Any, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        device, _, size = part.partition("=")
        key, size = _gpu_number(device.strip()), size.strip()
        if not size or not _SIZE.match(size) or not (isinstance(key, int) or key in _OTHERS):
            raise TokenprobeError(
                f"`max_memory` {spec!r}: each part is DEVICE=SIZE with DEVICE a GPU number (or "
                "cuda:N), cpu or mps and SIZE like 20GiB (e.g. 0=20GiB,cpu=64GiB)"
            )
        if key in out:
            raise TokenprobeError(
                f"`max_memory` {spec!r} gives {device.strip()} twice: give it once"
            )
        out[key] = size
    return out or None


def _gpu_number(device: Any) -> Any:
    """ "3" and "cuda:3" as accelerate's 3; any other device as it is."""
    if isinstance(device, str) and device.removeprefix("cuda:").isdigit():
        return int(device.removeprefix("cuda:"))
    return device


def check_devices(max_memory: dict[Any, Any] | None) -> None:
    """Before loading: every device `max_memory` names exists here (accelerate would warn twice
    and fail on the first it cannot reach), else one line naming it and the devices there are."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    there = [*(f"{i} (cuda:{i})" for i in range(gpus)), *(["mps"] if mps else []), "cpu", "disk"]
    for key in max_memory or {}:
        gpu = isinstance(key, int) and not isinstance(key, bool)
        if (
            (gpu and not 0 <= key < gpus)
            or (not gpu and key not in _OTHERS)
            or (key == "mps" and not mps)
        ):
            shown = f"GPU {key} (cuda:{key})" if gpu else repr(key)
            raise TokenprobeError(
                f"`max_memory` names {shown}, which this machine does not have: its devices are "
                f"{', '.join(there)}; give memory only for those"
            )


def placement_kwargs(
    device_map: str | dict[str, Any] | None,
    max_memory: str | dict[Any, str] | None,
    offload_folder: str | None,
    present: bool = False,
) -> dict[str, Any]:
    """The `from_pretrained` arguments that place a model across devices (none without a map);
    `present`: the devices `max_memory` names must exist here (`check_devices`)."""
    memory = parse_max_memory(max_memory)
    if device_map is None:
        if memory is not None:
            raise TokenprobeError("`max_memory` needs `device_map` (e.g. `device_map` auto)")
        return {}
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise TokenprobeError(f"`device_map` {device_map!r} is not one of {', '.join(DEVICE_MAPS)}")
    kwargs: dict[str, Any] = {"device_map": device_map}
    if memory is not None:
        if present:
            check_devices(memory)
        kwargs["max_memory"] = memory
    if offload_folder is not None:
        kwargs["offload_folder"] = offload_folder
    return kwargs
