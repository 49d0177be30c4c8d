"""The once-per-run check of recorded weights against the model's eager implementation: the
same prompt through `attn_implementation="eager"` with `output_attentions=True`, stopped
after the first attention layer, whose weights must equal ours."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import TokenprobeError
from ...model import LoadedModel

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}  # else (half types) 1e-2


class _Stop(Exception):
    """Raised by the hook once the first attention layer has run: nothing after it is needed."""


def eager_weights(lm: LoadedModel, ids: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """`module`'s weights (heads, queries, keys) of batch row 0 from a forward with eager
    attention and `output_attentions=True`; the model's implementation is put back after."""
    model = lm.model
    before = model.config._attn_implementation
    found: list[torch.Tensor] = []

    def hook(_mod: nn.Module, _args: Any, output: Any) -> None:
        if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor):
            found.append(output[1][0].detach().float().cpu())
            raise _Stop

    try:
        model.set_attn_implementation("eager")
        if model.config._attn_implementation != "eager":
            raise TokenprobeError(
                f"{type(model).__name__} cannot switch to eager attention for the check: "
                "load it with attn_implementation='eager'"
            )
        handle = module.register_forward_hook(hook)
        try:
            with torch.inference_mode():
                model(input_ids=ids, use_cache=False, output_attentions=True)
        except _Stop:
            pass
        finally:
            handle.remove()
    finally:
        if model.config._attn_implementation != before:
            model.set_attn_implementation(before)
    if not found:
        raise TokenprobeError(
            f"{type(module).__name__} returned no attention weights under eager attention: "
            "the check against the eager implementation cannot run"
        )
    return found[0]


def compare(ours: torch.Tensor, eager: torch.Tensor, rows: slice, dtype: torch.dtype) -> dict:
    """{max_abs_diff, tolerance, passed} of our weights (heads, rows, keys) against the eager
    weights' same rows; refused in one line when over the tolerance."""
    theirs = eager[:, rows, :]
    if theirs.shape != ours.shape:
        raise TokenprobeError(
            f"the eager implementation's weights are {tuple(theirs.shape)}, ours "
            f"{tuple(ours.shape)}: this family's attention cannot be read faithfully"
        )
    diff = float((ours - theirs).abs().max()) if ours.numel() else 0.0
    tol = TOLERANCE.get(dtype, 1e-2)
    if not diff <= tol:
        raise TokenprobeError(
            f"the recorded attention weights differ from the eager implementation's by {diff:.3g} "
            f"(tolerance {tol:g}): load the model with attn_implementation='eager'"
        )
    return {"max_abs_diff": diff, "tolerance": tol, "passed": True}
