"""A trainable TopK sparse autoencoder (Gao et al. 2024, as EleutherAI's sparsify trains it):
latents = topk(relu((x - b_dec) @ W_enc + b_enc)), reconstruction = latents @ W_dec + b_dec,
decoder rows kept at unit norm, loss = squared error / the batch's variance (1 - FVE) plus the
AuxK loss that lets dead latents reconstruct what the live ones miss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .dictionary import Dictionary, SaeSite


@dataclass
class Step:
    """One batch's numbers: the loss optimised, its FVU part, AuxK part, and the mean L0."""

    loss: torch.Tensor
    fvu: torch.Tensor
    auxk: torch.Tensor
    l0: float
    fired: torch.Tensor  # (d_sae,) bool: which latents fired in the batch


class TopKSae(nn.Module):
    """Weights as SAELens stores them: W_enc (d_in, d_sae), W_dec (d_sae, d_in)."""

    def __init__(self, d_in: int, d_sae: int, k: int, generator: torch.Generator) -> None:
        super().__init__()
        bound = d_in**-0.5  # nn.Linear's default initialisation, as sparsify's encoder gets
        w = (torch.rand(d_sae, d_in, generator=generator) * 2 - 1) * bound
        self.W_enc = nn.Parameter(w.T.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(w.clone())  # the encoder's transpose, rows then normalised
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.k = k
        self.normalise_decoder()

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """sum_j values[:, j] W_dec[idx[:, j]] without the dense (N, d_sae) product."""
        return nn.functional.embedding_bag(idx, self.W_dec, per_sample_weights=values, mode="sum")

    def forward(
        self, x: torch.Tensor, dead: torch.Tensor | None = None, auxk_alpha: float = 0.0
    ) -> Step:
        """The loss on states x (N, d_in); `dead` (d_sae,) bool marks the latents the AuxK
        loss trains on."""
        pre = self.pre_acts(x)
        values, idx = pre.topk(self.k, dim=-1, sorted=False)
        out = self.decode(values, idx) + self.b_dec
        error = x - out
        variance = (x - x.mean(0)).pow(2).sum()
        fvu = error.pow(2).sum() / variance
        auxk = torch.zeros((), dtype=x.dtype, device=x.device)
        n_dead = int(dead.sum()) if dead is not None and auxk_alpha > 0 else 0
        if n_dead:
            assert dead is not None
            k_aux = min(x.shape[-1] // 2, n_dead)
            scale = min(n_dead / (x.shape[-1] // 2), 1.0)
            masked = torch.where(dead[None], pre, -torch.inf)
            aux_values, aux_idx = masked.topk(k_aux, dim=-1, sorted=False)
            e_hat = self.decode(aux_values, aux_idx)
            auxk = scale * (e_hat - error.detach()).pow(2).sum() / variance
        fired = torch.zeros(self.d_sae, dtype=torch.bool, device=x.device)
        active = values > 0
        fired[idx[active]] = True
        l0 = float(active.sum()) / x.shape[0]
        return Step(fvu + auxk_alpha * auxk, fvu.detach(), auxk.detach(), l0, fired)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        eps = torch.finfo(self.W_dec.dtype).eps
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True) + eps)

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """The decoder's gradient less its component along each (unit) row: the step then
        moves rows along the sphere the renormalisation keeps them on (sparsify's rule)."""
        grad = self.W_dec.grad
        if grad is None:
            return
        parallel = torch.einsum("sd,sd->s", grad, self.W_dec)
        grad -= parallel[:, None] * self.W_dec

    def dictionary(self, site: SaeSite, hook: str = "") -> Dictionary:
        """The trained weights as a `Dictionary` (detached copies, float32, on the CPU)."""

        def copy(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu", torch.float32).clone()

        return Dictionary(
            w_enc=copy(self.W_enc),
            b_enc=copy(self.b_enc),
            w_dec=copy(self.W_dec),
            b_dec=copy(self.b_dec),
            activation="topk",
            site=site,
            k=self.k,
            format="saelens",
            hook=hook,
        )
