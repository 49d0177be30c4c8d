"""A rough estimate of the memory a run needs, against what the device has, made before the
run starts, so that a batch too large for the device is one line now and not an
out-of-memory error (or swapping) later.

The estimate for the largest batch of T tokens (T = the token budget): the residual stream
kept at every layer, (L + 1) x T x D, twice (the hooks' copy and the analysis's float32
one); one block's working set, T x (3 D + 2 I) with I the MLP width; the logits, T x V in the
model's dtype and in float32; with gradients, every block's working set kept for the backward
pass. Attention scores are left out (the default sdpa kernels do not keep them). It is meant
to be right within a factor of two, which is what telling "fits" from "cannot fit" needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import TokenprobeError
from .adapter import text_config, weight_of

if TYPE_CHECKING:
    from . import LoadedModel

GIB = 2**30


@dataclass
class Estimate:
    weights: int  # bytes of the model's parameters
    batch: int  # bytes for the largest batch
    free: int | None  # bytes free on the input device (None: unknown)
    device: torch.device

    def line(self, batch_tokens: int) -> str:
        free = "an unknown amount" if self.free is None else f"{self.free / GIB:.1f} GiB"
        return (
            f"memory: about {self.batch / GIB:.2f} GiB for the largest batch ({batch_tokens} "
            f"tokens) beside {self.weights / GIB:.2f} GiB of weights; {self.device} has {free} free"
        )


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device`: the GPU's free memory, or the machine's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def per_token_bytes(lm: LoadedModel, gradients: bool = False) -> int:
    """Bytes one token of the largest batch costs (see the module's docstring)."""
    cfg = text_config(lm.model.config)
    width = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "d_model", 0) or 0)
    inner = int(getattr(cfg, "intermediate_size", 0) or 4 * width)
    # a classifier's head gives one score per label, and it has no adapter (no LM head)
    head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    if head is not None:
        vocab = int(weight_of(lm.model.get_input_embeddings()).shape[0])
    else:
        vocab = int(getattr(lm.model.config, "num_labels", 0) or 2)
    size = torch.finfo(lm.dtype).bits // 8 if lm.dtype.is_floating_point else 4
    if lm.adapter is not None:
        layers = lm.n_layers
    else:  # a classifier: the config's block count (the adapter needs an LM head)
        blocks = next(
            (
                getattr(cfg, a)
                for a in ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
                if isinstance(getattr(cfg, a, None), int)
            ),
            1,
        )
        layers = max(int(blocks), 1) + 1
    states = layers * width * (size + 4)
    block = (3 * width + 2 * inner) * size
    logits = vocab * (size + 4)
    kept = (layers - 1) * block if gradients else 0
    return states + block + logits + kept


def estimate(lm: LoadedModel, batch_tokens: int, gradients: bool = False) -> Estimate:
    """The estimate for a run whose largest batch holds `batch_tokens` tokens."""
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    device = lm.device
    return Estimate(
        weights, batch_tokens * per_token_bytes(lm, gradients), available_bytes(device), device
    )


def check_fits(lm: LoadedModel, batch_tokens: int, gradients: bool = False) -> Estimate:
    """The estimate, or one line naming what to lower when the largest batch cannot fit."""
    est = estimate(lm, batch_tokens, gradients)
    if est.free is not None and est.batch > est.free:
        fits = max(1, int(est.free // per_token_bytes(lm, gradients)))
        raise TokenprobeError(
            f"the largest batch needs about {est.batch / GIB:.1f} GiB and {est.device} has "
            f"{est.free / GIB:.1f} GiB free: lower `batch_tokens` (about {fits} would fit), or "
            "spread the model with `device_map`"
        )
    return est
