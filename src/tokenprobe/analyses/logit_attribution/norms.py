"""A norm's formula, found by trying the forms norms take (LayerNorm or RMSNorm, gain `weight`
or `1 + weight`, an optional bias, eps from the module) against the norm's own output on the
real state, then frozen at each position's own scale: a linear map, so a sum of components
goes through it as the sum of each component through it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import TokenprobeError

EPS_NAMES = ("eps", "variance_epsilon", "epsilon", "layer_norm_eps", "layer_norm_epsilon")
DEFAULT_EPS = (1e-5, 1e-6, 1e-8)


@dataclass
class NormForm:
    """(x - centre(x)) / sqrt(mean((x - centre(x))^2) + eps) * gain + bias, centre(x) = mean(x)
    for a LayerNorm, 0 for an RMSNorm; `scaled` False: no norm at all (the identity)."""

    centre: bool
    eps: float
    gain: torch.Tensor | None  # the effective per-channel gain (weight, or 1 + weight)
    bias: torch.Tensor | None  # float64 on the CPU, like the states it is applied to
    what: str
    scaled: bool = True

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Each position's scale (..., 1), float64: what the frozen norm divides by."""
        x = x.double()
        if not self.scaled:
            return torch.ones_like(x[..., :1])
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        return torch.sqrt((x * x).mean(-1, keepdim=True) + self.eps)

    def linear(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The norm's linear part at a frozen `scale`, applied to `x` (no bias), float64."""
        x = x.double()
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        x = x / scale
        return x * self.gain if self.gain is not None else x

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The norm of `x` as this form computes it (float64)."""
        y = self.linear(x, self.scale(x))
        return y + self.bias if self.bias is not None else y

    def direction(self, u: torch.Tensor) -> torch.Tensor:
        """v with v . x = u . linear(x, 1) for every x: the gain, then the centring (centring
        is symmetric, so it moves onto the direction)."""
        u = u.double() * self.gain if self.gain is not None else u.double()
        return u - u.mean() if self.centre else u


IDENTITY = NormForm(False, 0.0, None, None, "no norm (identity)", scaled=False)


def _eps_values(module: nn.Module) -> list[float]:
    found = [getattr(module, n, None) for n in EPS_NAMES]
    given = [float(v) for v in found if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return list(dict.fromkeys(given or DEFAULT_EPS))


def _tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor) or value.dim() != 1:
        return None
    return value.detach().to("cpu", torch.float64)


def candidates(module: nn.Module) -> list[NormForm]:
    """Every form this module might compute, the plainest first."""
    weight, bias = _tensor(module, "weight"), _tensor(module, "bias")
    gains: list[tuple[torch.Tensor | None, str]] = [(None, "")]
    if weight is not None:
        gains = [(weight, " * weight"), (1.0 + weight, " * (1 + weight)")]
    out = []
    for centre, eps, (gain, said) in itertools.product((False, True), _eps_values(module), gains):
        kind = "LayerNorm: (x - mean(x))" if centre else "RMSNorm: x"
        var = "var(x)" if centre else "mean(x^2)"
        what = f"{kind} / sqrt({var} + {eps:g}){said}{' + bias' if bias is not None else ''}"
        out.append(NormForm(centre, eps, gain, bias, what))
    return out


def stated_centre(module: nn.Module) -> bool | None:
    """Whether the module's class says it centres: True for `nn.LayerNorm` and classes named
    like a LayerNorm (not an RMSNorm, not T5's RMS "LayerNorm"), False for an RMSNorm's, None
    where its name says neither."""
    name = type(module).__name__
    if isinstance(module, nn.LayerNorm):
        return True
    if "RMS" in name.upper():
        return False
    if "LayerNorm" in name and "T5" not in name:
        return True
    return None


def fit_norm(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, *, tol: float, path: str
) -> NormForm:
    """The form that turns `x` into `y` (the norm's own input and output in a forward pass)
    with the smallest error, among the forms the class states (LayerNorm or RMSNorm) where
    one of them is within `tol` x max(1, largest |y|), else among all forms; one
    TokenprobeError where none is. Smallest, not first: in half precision a LayerNorm's
    output is often within the tolerance of an RMSNorm's too."""
    if isinstance(module, nn.Identity):
        return IDENTITY
    ref = y.double()
    limit = tol * max(1.0, float(ref.abs().max()))
    scored = [
        (float((f.apply(x) - ref).abs().max()), i, f) for i, f in enumerate(candidates(module))
    ]
    centre = stated_centre(module)
    stated = [c for c in scored if c[2].centre == centre and c[0] <= limit]
    best = min(stated or scored, key=lambda c: c[:2], default=None)
    if best is not None and best[0] <= limit:
        return best[2]
    raise TokenprobeError(
        f"logit attribution cannot freeze the norm {path} ({type(module).__name__}): no "
        f"LayerNorm or RMSNorm form (gain weight or 1 + weight, eps from the module) reproduces "
        f"its output (best error {best[0] if best else float('inf'):.3g}, tolerance "
        f"{limit:.2g}), so its output cannot be split into the components' parts"
    )
