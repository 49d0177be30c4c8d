"""Which device and dtype a model goes to (`auto` read for the machine in hand), and where a
module placed by a device map computes."""

from __future__ import annotations

import torch

from ..errors import TokenprobeError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; an unavailable device is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise TokenprobeError(
            f"unknown device '{device}': use auto, cpu, cuda, cuda:N or mps"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TokenprobeError(
            f"device '{device}' asked for, but this torch sees no CUDA GPU: use `device` cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise TokenprobeError(
            f"device '{device}' does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
        )
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise TokenprobeError(
            "device 'mps' asked for, but MPS is not available here: use `device` cpu"
        )
    return dev


def resolve_dtype(
    dtype: str | torch.dtype = "auto", device: torch.device | None = None
) -> torch.dtype:
    """`auto` is bfloat16 (float16 where bf16 is unsupported) on a CUDA GPU, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device is not None and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise TokenprobeError(f"unknown dtype '{dtype}': use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def execution_device(module: torch.nn.Module) -> torch.device | None:
    """Where `module` computes: its weights' device, or for a module a device map offloaded
    (weights on the meta device) accelerate's execution device; None for a module without
    weights or hook."""
    weight = next((p for p in module.parameters(recurse=True)), None)
    if weight is not None and weight.device.type != "meta":
        return weight.device
    execution = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if execution is not None:
        return torch.device(execution if not isinstance(execution, int) else f"cuda:{execution}")
    return None
