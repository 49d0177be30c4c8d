"""A sparse dictionary of one site's state: a sparse autoencoder (reads and writes the same site)
or a transcoder (reads one site, writes another), with the activation functions the field uses
(ReLU, TopK, JumpReLU, gated). Loaded from the formats in `formats.py`; its encode and decode are
checked there against the packages that wrote them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import TokenprobeError

ACTIVATIONS = ("relu", "topk", "jumprelu", "gated")
# a site in tokenprobe's layer vocabulary: the residual stream at layer L (0: the first block's
# input, L: block L-1's output), or block B's attention output, MLP output or MLP input
KINDS = ("resid", "attn", "mlp", "mlp-in")
# how an input is normalised before encoding (SAELens's `normalize_activations` modes that need
# nothing but the input itself)
NORMALIZE = ("none", "layer_norm", "constant_norm_rescale")


@dataclass(frozen=True)
class SaeSite:
    """Where a dictionary reads (or a transcoder writes): `kind` at `layer` (a residual layer
    for resid, a block index for the others)."""

    kind: str
    layer: int

    def __str__(self) -> str:
        return f"{self.kind} {self.layer}"

    @classmethod
    def parse(cls, text: str) -> SaeSite:
        """`resid 13`, `mlp 12`, `attn 12` or `mlp-in 12` (also with a dot or colon)."""
        m = re.fullmatch(r"\s*([a-z-]+)[\s.:_]+(\d+)\s*", text)
        if m is None or m.group(1) not in KINDS:
            raise TokenprobeError(
                f"`sae_site` {text!r} is not a site: give one of {', '.join(KINDS)} and a "
                "layer, e.g. 'resid 13' (the residual stream after 13 blocks) or 'mlp 12'"
            )
        return cls(m.group(1), int(m.group(2)))


@dataclass
class Dictionary:
    """Weights in float32 as (d_in, d_sae) encoder and (d_sae, d_out) decoder; `encode` gives
    the latents' activations, `decode` the reconstruction (the output site's state)."""

    w_enc: torch.Tensor
    b_enc: torch.Tensor
    w_dec: torch.Tensor
    b_dec: torch.Tensor
    activation: str
    site: SaeSite
    out_site: SaeSite | None = None  # a transcoder's output site (None: an autoencoder)
    k: int | None = None  # topk
    threshold: torch.Tensor | None = None  # jumprelu, per latent
    b_gate: torch.Tensor | None = None  # gated: the gate's bias (w_enc is the gate's weight)
    r_mag: torch.Tensor | None = None  # gated: the magnitude path's log scale per latent
    b_mag: torch.Tensor | None = None  # gated: the magnitude path's bias
    w_skip: torch.Tensor | None = None  # (d_in, d_out) skip connection of some transcoders
    center: bool = True  # subtract b_dec from the input before encoding (SAELens's default)
    input_scale: float = 1.0  # the input is multiplied by this before encoding, the output
    # divided by it after decoding (SAELens's normalised activations)
    normalize: str = "none"  # per-input normalisation before encoding, undone after decoding
    # (an autoencoder's only): SAELens's "layer_norm" or "constant_norm_rescale"
    format: str = ""
    path: str = ""
    hook: str = ""  # the site's name where it was trained (a SAELens hook, a sparsify hookpoint)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise TokenprobeError(
                f"sparse dictionary activation {self.activation!r} is not supported: "
                f"{', '.join(ACTIVATIONS)} are"
            )
        if self.activation == "topk" and not self.k:
            raise TokenprobeError("a TopK dictionary needs k (its cfg.json names none)")
        if self.normalize not in NORMALIZE:
            raise TokenprobeError(
                f"sparse dictionary input normalisation {self.normalize!r} is not supported: "
                f"{', '.join(NORMALIZE)} are"
            )

    @property
    def d_in(self) -> int:
        return int(self.w_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.w_enc.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.w_dec.shape[1])

    @property
    def transcoder(self) -> bool:
        return self.out_site is not None

    @property
    def trained_skip_first(self) -> int:
        """The leading positions of each sequence left out in training, where its cfg.json
        says so (train-sae's --skip-first: metadata.training.skip_first); else 0."""
        metadata = self.meta.get("metadata")
        training = (metadata if isinstance(metadata, dict) else self.meta).get("training")
        value = training.get("skip_first", 0) if isinstance(training, dict) else 0
        return int(value) if isinstance(value, int) and value > 0 else 0

    @property
    def writes(self) -> SaeSite:
        """The site whose state `decode` reconstructs."""
        return self.out_site or self.site

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Dictionary:
        """This dictionary with every tensor on `device` in `dtype`."""
        moved: dict[str, Any] = {
            k: v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) else v
            for k, v in self.__dict__.items()
        }
        return Dictionary(**moved)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's pre-activations of states x (..., d_in)."""
        x = self._input(x)
        return x @ self.w_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latents' activations (..., d_sae) of states x (..., d_in)."""
        if self.activation == "gated":
            return self._gated(x)
        pre = self.pre_acts(x)
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            assert self.threshold is not None
            return torch.relu(pre) * (pre > self.threshold)
        assert self.k is not None
        values, idx = torch.relu(pre).topk(min(self.k, self.d_sae), dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, values)

    def decode(self, acts: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction (..., d_out) from activations; a dictionary with a skip connection
        or a per-input normalisation (`normalize`) also needs its input x."""
        out = acts @ self.w_dec + self.b_dec
        if self.normalize != "none" and not self.transcoder:  # SAELens undoes it for SAEs only
            if x is None:
                raise ValueError(f"a {self.normalize} dictionary decodes from its input too")
            shift, scale = self._norm_stats(x.to(self.w_enc.dtype))
            out = out * scale + shift
        if self.w_skip is not None:
            if x is None:
                raise ValueError("a dictionary with a skip connection decodes from its input too")
            out = out + (x.to(self.w_enc.dtype) * self.input_scale) @ self.w_skip
        return out / self.input_scale

    def unit_rows(self, features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(E, d_out): how much `decode` changes per unit activation of latent features[e] at
        input x[e] (decode is affine in the activations for a fixed input): its decoder row,
        scaled as `decode` scales that input's output."""
        rows = self.w_dec[features]
        if self.normalize != "none" and not self.transcoder:
            rows = rows * self._norm_stats(x.to(self.w_enc.dtype))[1]
        return rows / self.input_scale

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.w_enc.dtype) * self.input_scale
        if self.normalize != "none":
            shift, scale = self._norm_stats(x)
            x = (x - shift) / (scale + 1e-5 if self.normalize == "layer_norm" else scale)
        return x - self.b_dec if self.center and not self.transcoder else x

    def _norm_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The shift and scale `normalize` takes from each input: SAELens's layer_norm (mean,
        unbiased std; the input is divided by std + 1e-5, the output multiplied by std) or
        constant_norm_rescale (0, norm / sqrt(d_in))."""
        if self.normalize == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            return mu, (x - mu).std(dim=-1, keepdim=True)
        return torch.zeros_like(x[..., :1]), x.norm(dim=-1, keepdim=True) / self.d_in**0.5

    def _gated(self, x: torch.Tensor) -> torch.Tensor:
        """Gated SAE (Rajamanoharan et al. 2024): a gate decides which latents fire, a rescaled
        copy of the same encoder how much."""
        assert self.b_gate is not None and self.r_mag is not None and self.b_mag is not None
        x = self._input(x)
        gate = (x @ self.w_enc + self.b_gate) > 0
        magnitude = x @ (self.w_enc * torch.exp(self.r_mag)) + self.b_mag
        return gate * torch.relu(magnitude)
