"""Models bigger than one device: accelerate's device maps and memory limits, checked first."""

from __future__ import annotations

import re
from typing import Any

from ..errors import TokenprobeError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B)$", re.IGNORECASE)


def parse_max_memory(spec: str | dict[Any, str] | None) -> dict[Any, str] | None:
    """`"0=20GiB,cpu=64GiB"` to accelerate's {0: "20GiB", "cpu": "64GiB"}; a dict stays."""
    if spec is None or isinstance(spec, dict):
        return spec
    out: dict[Any, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        device, _, size = part.partition("=")
        device, size = device.strip(), size.strip()
        if not size or not _SIZE.match(size) or not (device.isdigit() or device in ("cpu", "mps", "disk")):
            raise TokenprobeError(
                f"`max_memory` {spec!r}: each part is DEVICE=SIZE with DEVICE a GPU number, cpu or "
                "mps and SIZE like 20GiB (e.g. 0=20GiB,cpu=64GiB)"
            )
        out[int(device) if device.isdigit() else device] = size
    return out or None


def placement_kwargs(
    device_map: str | dict[str, Any] | None,
    max_memory: str | dict[Any, str] | None,
    offload_folder: str | None,
) -> dict[str, Any]:
    """The `from_pretrained` arguments that place a model across devices (none without a map)."""
    memory = parse_max_memory(max_memory)
    if device_map is None:
        if memory is not None:
            raise TokenprobeError("`max_memory` needs `device_map` (e.g. `device_map` auto)")
        return {}
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise TokenprobeError(
            f"`device_map` {device_map!r} is not one of {', '.join(DEVICE_MAPS)}"
        )
    kwargs: dict[str, Any] = {"device_map": device_map}
    if memory is not None:
        kwargs["max_memory"] = memory
    if offload_folder is not None:
        kwargs["offload_folder"] = offload_folder
    return kwargs
