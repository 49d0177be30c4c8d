"""How the last layer's residual stream becomes the attributed logit, as one linear read-out
per position: the final norm frozen at that position's own scale, the output projection (OPT's
project_out), the target's unembedding row (minus the foil's) and the logit multiplier. So a
vector v at position p reads as v . u / s[p], and what no component carries (the norm's bias,
the projection's and the unembedding's biases) is a constant of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...model import Adapter
from ...model.adapter import weight_of
from .capture import Captured
from .norms import NormForm, fit_norm


@dataclass
class Readout:
    """v at position p reads as v . u / scale[p] (u holds the gain, the centring, the
    projection, the unembedding rows and the multiplier); `bias` is added once."""

    u: torch.Tensor  # (width,) float64
    scale: torch.Tensor  # (positions, 1) float64
    bias: float
    form: NormForm
    bias_parts: dict[str, float] = field(default_factory=dict)

    def value(self, v: torch.Tensor) -> torch.Tensor:
        """The read-out of (positions, width) vectors, (positions,)."""
        return (v.double() @ self.u) / self.scale[:, 0]

    @property
    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.u, self.scale


def _vector(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.detach().to("cpu", torch.float64) if isinstance(t, torch.Tensor) else None


def build_readout(
    adapter: Adapter, got: Captured, last: torch.Tensor, ids: list[int], tol: float
) -> Readout:
    """The read-out of the logit of `ids[0]` (minus that of `ids[1]` when given), the final
    norm's form found on its own input and output in this forward pass."""
    norm = adapter.final_norm
    x, y = got.final if got.final is not None else (last, last)
    form = fit_norm(norm, x, y, tol=tol, path=adapter.final_norm_path or "the final norm")
    unembed = weight_of(adapter.unembed)
    rows = unembed[ids].detach().to("cpu", torch.float64)
    w = rows[0] - rows[1] if len(ids) > 1 else rows[0]
    parts: dict[str, float] = {}
    ub = _vector(getattr(adapter.unembed, "bias", None))
    if ub is not None:
        parts["unembedding bias"] = float(ub[ids[0]] - (ub[ids[1]] if len(ids) > 1 else 0.0))
    proj = adapter.projection
    if proj is not None and x.shape[-1] == proj.in_features:
        weight = weight_of(proj).double()
        pb = _vector(getattr(proj, "bias", None))
        if pb is not None:
            parts["projection bias"] = float(pb @ w)
        w = (w.to(weight.device) @ weight).cpu()  # back through the projection: (width,)
    if form.bias is not None:
        parts["final norm bias"] = float(form.bias @ w)
    mult = float(adapter.logit_multiplier)
    u = form.direction(w) * mult
    return Readout(
        u=u,
        scale=form.scale(x),
        bias=mult * sum(parts.values()),
        form=form,
        bias_parts={k: mult * v for k, v in parts.items()},
    )
