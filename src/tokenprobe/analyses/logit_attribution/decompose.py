"""The residual stream split into what each block adds: block output - block input is checked
to equal the sum of its branches' outputs (attention, MLP, a state-space mixer); where it does
not, each branch's post-norm (a norm child whose input is that branch's output: Gemma 2/3,
OLMo 2/3, GLM-4) is taken as the branch's part, and checked again. Per head: the output
projection applied to one head's slice of its input; the projection's bias is its own part."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import TokenprobeError
from ...model import Adapter
from ...model.parts import HeadLayout
from .capture import Branch, Captured
from .norms import NormForm, fit_norm


@dataclass
class BlockParts:
    """What block `block` adds to the residual stream, by branch name, (positions, width)
    float64; `how` says what each part is; `post` holds the frozen post-norm of a branch whose
    part is a norm's output (with that norm's scale per position)."""

    block: int
    parts: dict[str, torch.Tensor]
    how: dict[str, str]
    raw: dict[str, torch.Tensor]  # each branch module's own output (before any post-norm)
    post: dict[str, tuple[NormForm, torch.Tensor]] = field(default_factory=dict)
    multiplier: float = 1.0  # Granite's residual_multiplier: each part is this x the output
    error: float = 0.0  # largest |block output - input - sum of parts|
    limit: float = 0.0


def _gap(parts: dict[str, torch.Tensor], change: torch.Tensor) -> float:
    total = sum(parts.values(), torch.zeros_like(change))
    return float((total - change).abs().max())


def split_block(
    adapter: Adapter, b: int, got: Captured, found: list[Branch], tol: float
) -> BlockParts:
    """Block `b`'s parts, checked to add up to its change; one TokenprobeError where neither
    the branches' outputs nor their post-norms' outputs do."""
    block, where = adapter.blocks[b], f"{adapter.blocks_path}.N"
    x, y = got.inputs[b], got.outputs[b]
    change = y - x
    limit = tol * max(1.0, float(y.abs().max()), float(x.abs().max()))
    raw = {br.name: got.parts[b][br.name] for br in found if br.name in got.parts[b]}
    how = {
        br.name: f"output of {where}.{br.child}"
        + (" minus its residual argument (it adds the residual itself)" if br.residual else "")
        for br in found
    }
    gap = _gap(raw, change)
    if gap <= limit:
        return BlockParts(b, dict(raw), how, raw, error=gap, limit=limit)
    alpha = getattr(adapter.config, "residual_multiplier", None)
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha != 1:
        scaled = {k: float(alpha) * v for k, v in raw.items()}
        gap = _gap(scaled, change)
        if gap <= limit:
            said = {
                k: f"{float(alpha):g} (config.residual_multiplier) x {v}" for k, v in how.items()
            }
            return BlockParts(b, scaled, said, raw, error=gap, limit=limit, multiplier=float(alpha))
    parts, post = dict(raw), {}
    for br in found:
        for name, (n_in, n_out) in got.norms[b].items():
            r = raw.get(br.name)
            if r is None or float((n_in - r).abs().max()) > tol * max(1.0, float(r.abs().max())):
                continue
            parts[br.name] = n_out
            how[br.name] = f"output of {where}.{name} (the norm on {br.child}'s output)"
            try:
                form = fit_norm(block.get_submodule(name), n_in, n_out, tol=tol, path=name)
                post[br.name] = (form, form.scale(n_in))
            except TokenprobeError:
                pass  # the branch's part stands; its heads cannot be split (see head_parts)
            break
    gap = _gap(parts, change)
    if gap > limit:
        names = ", ".join(f"{br.name} ({br.child})" for br in found) or "none found"
        raise TokenprobeError(
            f"logit attribution cannot split block {b} ({type(block).__name__}) into parts: "
            f"its output - input differs from the sum of its branches [{names}] by {gap:.3g} "
            f"(tolerance {limit:.2g}), with or without a post-norm on each branch; this "
            "family's residual stream is not a sum of the blocks' branch outputs"
        )
    return BlockParts(b, parts, how, raw, post, gap, limit)


@dataclass
class HeadParts:
    """Per head, the attention part's share read along a direction: `values` (positions,
    heads), `bias` (positions,) the output projection's bias (and a post-norm's bias)."""

    values: torch.Tensor
    bias: torch.Tensor
    error: float  # largest |projection of the heads' input + bias - the module's output|


def head_parts(
    layout: HeadLayout,
    z: torch.Tensor,
    part: BlockParts,
    read: tuple[torch.Tensor, torch.Tensor],
    tol: float,
) -> HeadParts | str:
    """Each head's value under the linear read-out `read` = (direction u, per-position
    divisor s): value(v) = v . u / s. Under a post-norm frozen at its own scale, a head's
    part of the branch is its output through that norm's linear map. A string says why the
    heads cannot be split (the reason goes in meta.json)."""
    raw = part.raw.get("attn")
    if raw is None:
        return "no attention output was seen"
    weight = layout.out_weight().detach()
    bias = layout.out_bias()
    wide = weight.double()  # float64 where the weight is (a copy of one block's at a time)
    whole = (z.to(wide.device) @ wide.T).cpu()
    if bias is not None:
        whole = whole + bias.detach().to("cpu", torch.float64)
    error = float((whole - raw).abs().max())
    if error > tol * max(1.0, float(raw.abs().max())):
        return (
            f"the output projection {layout.out_path} applied to its input differs from the "
            f"attention output by {error:.3g}"
        )
    u, s = read
    extra = torch.zeros(z.shape[0], dtype=torch.float64)
    if "attn" in part.post:
        form, s2 = part.post["attn"]
        u, s = form.direction(u), s * s2
        if form.bias is not None:
            extra = extra + (form.bias.double() @ read[0]) / read[1][:, 0]
    elif part.parts["attn"] is not raw and part.multiplier == 1.0:
        return "the attention output goes through a norm whose form was not found"
    else:
        u = u * part.multiplier
    per_column = (u.to(wide.device) @ wide).cpu()  # (heads x head_dim,): u through each column
    values = (z * per_column).reshape(z.shape[0], layout.heads, layout.head_dim).sum(-1) / s
    const = extra
    if bias is not None:
        const = const + (bias.detach().to("cpu", torch.float64) @ u) / s[:, 0]
    return HeadParts(values, const, error)
