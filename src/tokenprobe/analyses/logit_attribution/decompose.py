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


def position_limits(tol: float, *states: torch.Tensor) -> torch.Tensor:
    """Each position's tolerance (positions,): `tol` x max(1, its largest |value| in any of
    `states`), so that a position of small scale is held to its own rounding."""
    scale = torch.stack([s.abs().amax(-1) for s in states]).amax(0)
    return tol * scale.clamp(min=1.0)


def _gap(parts: dict[str, torch.Tensor], change: torch.Tensor) -> torch.Tensor:
    """|sum of parts - change| at its worst, per position (positions,)."""
    total = sum(parts.values(), torch.zeros_like(change))
    return (total - change).abs().amax(-1)


def _post_norms(
    block: torch.nn.Module,
    norms: dict[str, tuple[torch.Tensor, torch.Tensor]],
    raw: dict[str, torch.Tensor],
    found: list[Branch],
    tol: float,
) -> dict[str, tuple[str, torch.Tensor, NormForm | None]]:
    """Each branch's post-norm: a norm child whose input is that branch's output (structural
    evidence, whatever the tolerance of the block check), as (name, output, form or None)."""
    out = {}
    for br in found:
        r = raw.get(br.name)
        for name, (n_in, n_out) in norms.items():
            if r is None or bool(((n_in - r).abs().amax(-1) > position_limits(tol, r)).any()):
                continue
            try:
                form = fit_norm(block.get_submodule(name), n_in, n_out, tol=tol, path=name)
            except TokenprobeError:
                form = None  # the branch's part stands; its heads cannot be split (head_parts)
            out[br.name] = (name, n_out, form)
            break
    return out


def split_block(
    adapter: Adapter, b: int, got: Captured, found: list[Branch], tol: float
) -> BlockParts:
    """Block `b`'s parts, checked at every position to add up to its change: post-norm
    outputs where a branch has one, else the branches' outputs or `residual_multiplier` x
    them, whichever is closer; one TokenprobeError where the chosen form does not add up."""
    block, where = adapter.blocks[b], f"{adapter.blocks_path}.N"
    x, y = got.inputs[b], got.outputs[b]
    change, limits = y - x, position_limits(tol, x, y)
    raw = {br.name: got.parts[b][br.name] for br in found if br.name in got.parts[b]}
    how = {
        br.name: f"output of {where}.{br.child}"
        + (" minus its residual argument (it adds the residual itself)" if br.residual else "")
        for br in found
    }
    post = _post_norms(block, got.norms[b], raw, found, tol)
    if post:
        parts = {**raw, **{k: v[1] for k, v in post.items()}}
        for k, (name, _, _) in post.items():
            child = next(br.child for br in found if br.name == k)
            how[k] = f"output of {where}.{name} (the norm on {child}'s output)"
        frozen = {k: (f, f.scale(got.norms[b][n][0])) for k, (n, _, f) in post.items() if f}
        return _checked(block, b, found, BlockParts(b, parts, how, raw, frozen), change, limits)
    forms = [BlockParts(b, dict(raw), how, raw)]
    alpha = getattr(adapter.config, "residual_multiplier", None)
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha != 1:
        scaled = {k: float(alpha) * v for k, v in raw.items()}
        said = {k: f"{float(alpha):g} (config.residual_multiplier) x {v}" for k, v in how.items()}
        forms.append(BlockParts(b, scaled, said, raw, multiplier=float(alpha)))
    best = min(forms, key=lambda f: float((_gap(f.parts, change) / limits).max()))
    return _checked(block, b, found, best, change, limits)


def _checked(
    block: torch.nn.Module,
    b: int,
    found: list[Branch],
    part: BlockParts,
    change: torch.Tensor,
    limits: torch.Tensor,
) -> BlockParts:
    """`part` with its error, or one TokenprobeError where a position's gap passes its limit."""
    gap = _gap(part.parts, change)
    worst = int((gap / limits).argmax())
    if float(gap[worst]) > float(limits[worst]):
        names = ", ".join(f"{br.name} ({br.child})" for br in found) or "none found"
        raise TokenprobeError(
            f"logit attribution cannot split block {b} ({type(block).__name__}) into parts: "
            f"its output - input differs from the sum of its branches [{names}] by "
            f"{float(gap[worst]):.3g} at position {worst} (tolerance {float(limits[worst]):.2g}), "
            "with or without a post-norm on each branch; this family's residual stream is not "
            "a sum of the blocks' branch outputs"
        )
    part.error = float(gap.max())
    return part


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
