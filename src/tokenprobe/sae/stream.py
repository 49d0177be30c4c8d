"""A site's states streamed from the model (the forward stops at the site: the blocks above it
are never run, no activation is stored), and the quality of a dictionary on held-out text: its
FVE and L0 there, and the next-token cross-entropy with the site's state replaced by the
reconstruction (spliced) or by zeros (ablated), against the clean model's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..model import LoadedModel
from .dictionary import Dictionary, SaeSite
from .hooks import at_site


class _Reached(Exception):
    """Raised by the hook at the site: the rest of the forward is not needed."""


def site_states(
    lm: LoadedModel, site: SaeSite, ids: torch.Tensor, skip_first: int = 0
) -> torch.Tensor:
    """(batch x positions, width) float32 states at `site` for token ids (batch, positions),
    the first `skip_first` positions of each sequence left out, read under inference mode
    with the forward stopped once the site is reached."""
    adapter = lm.require_adapter()
    got: list[torch.Tensor] = []

    def read(state: torch.Tensor) -> torch.Tensor:
        got.append(state)
        raise _Reached

    with torch.inference_mode(), at_site(adapter, site, read, n_pos=ids.shape[1]):
        try:
            lm.model(input_ids=ids.to(lm.device), use_cache=False)
        except _Reached:
            pass
    if not got:  # the site's module never ran (cannot happen for a site `site_module` found)
        raise RuntimeError(f"the forward never reached {site}")
    state = got[0].reshape(ids.shape[0], ids.shape[1], -1)[:, skip_first:]
    return state.reshape(-1, state.shape[-1]).float().clone()


@dataclass
class Quality:
    """A dictionary on held-out text: FVE and L0 of its reconstruction of the site's states,
    the median error ratio |state - reconstruction| / |state| per token (FVE weighs each token
    by its squared deviation, so a few outsized states, such as SmolLM2's attention sinks after
    position 0, can carry it alone), the latents that never fired there, and the mean
    next-token cross-entropies (nats)."""

    fve: float
    error_ratio: float
    l0: float
    never_fired: int
    ce_clean: float
    ce_spliced: float
    ce_ablated: float
    tokens: int

    @property
    def ce_recovered(self) -> float:
        """(CE ablated - CE spliced) / (CE ablated - CE clean): 1 = the reconstruction loses
        nothing, 0 = it is as bad as zeros."""
        gap = self.ce_ablated - self.ce_clean
        return (self.ce_ablated - self.ce_spliced) / gap if gap else float("nan")


def _next_token_ce(lm: LoadedModel, ids: torch.Tensor) -> float:
    """Summed cross-entropy of each position's next token (the last position predicts none)."""
    logits = lm.model(input_ids=ids, use_cache=False).logits[:, :-1].flatten(0, 1).float()
    return float(torch.nn.functional.cross_entropy(logits, ids[:, 1:].flatten(), reduction="sum"))


def evaluate(
    lm: LoadedModel,
    dictionary: Dictionary,
    sequences: torch.Tensor,
    batch: int,
    skip_first: int = 0,
    progress: bool | None = None,
) -> Quality:
    """`dictionary` (reading and writing one site) on held-out `sequences` (n, positions),
    `batch` sequences per forward: three forwards each (clean, spliced, zero-ablated: the
    states from position `skip_first` on replaced), with a progress bar of tokens. FVE and
    L0 are over those positions; the CEs over every next-token prediction."""
    adapter = lm.require_adapter()
    site, n_pos = dictionary.site, sequences.shape[1]
    sums = dict.fromkeys(("sq_err", "sq_dev", "l0", "clean", "spliced", "ablated"), 0.0)
    fired = torch.zeros(dictionary.d_sae, dtype=torch.bool)
    ratios: list[torch.Tensor] = []
    d = dictionary.to(lm.device)
    mean = site_mean(lm, site, sequences, batch, skip_first)

    def splice(full: torch.Tensor) -> torch.Tensor:
        state = full[:, skip_first:].float()
        acts = d.encode(state)
        fired.logical_or_(acts.flatten(0, -2).gt(0).any(0).cpu())
        out = d.decode(acts, state)
        sums["l0"] += float(acts.gt(0).sum())
        sums["sq_err"] += float((state - out).pow(2).sum())
        ratios.append(
            ((state - out).norm(dim=-1) / state.norm(dim=-1).clamp_min(1e-30)).flatten().cpu()
        )
        sums["sq_dev"] += float((state - mean.to(state.device)).pow(2).sum())
        return torch.cat([full[:, :skip_first], out.to(full.dtype)], dim=1)

    def ablate(full: torch.Tensor) -> torch.Tensor:
        return torch.cat([full[:, :skip_first], torch.zeros_like(full[:, skip_first:])], dim=1)

    bar = tqdm(total=sequences.numel(), desc="train-sae held-out", unit="tok", unit_scale=True,
               disable=None if progress is None else not progress)  # fmt: skip
    with torch.inference_mode(), bar:
        for start in range(0, len(sequences), batch):
            ids = sequences[start : start + batch].to(lm.device)
            sums["clean"] += _next_token_ce(lm, ids)
            with at_site(adapter, site, splice, n_pos=n_pos):
                sums["spliced"] += _next_token_ce(lm, ids)
            with at_site(adapter, site, ablate, n_pos=n_pos):
                sums["ablated"] += _next_token_ce(lm, ids)
            bar.update(ids.numel())
    tokens = len(sequences) * (n_pos - skip_first)
    predicted = len(sequences) * (n_pos - 1)
    return Quality(
        fve=1.0 - sums["sq_err"] / sums["sq_dev"] if sums["sq_dev"] else float("nan"),
        error_ratio=float(torch.cat(ratios).median()) if ratios else float("nan"),
        l0=sums["l0"] / tokens,
        never_fired=int((~fired).sum()),
        ce_clean=sums["clean"] / predicted,
        ce_spliced=sums["spliced"] / predicted,
        ce_ablated=sums["ablated"] / predicted,
        tokens=tokens,
    )


def site_mean(
    lm: LoadedModel, site: SaeSite, sequences: torch.Tensor, batch: int, skip_first: int = 0
) -> torch.Tensor:
    """The mean state (width,) at `site` over `sequences` from position `skip_first` on (the
    FVE's baseline)."""
    total: torch.Tensor | None = None
    for start in range(0, len(sequences), batch):
        ids = sequences[start : start + batch]
        states = site_states(lm, site, ids, skip_first).double().sum(0)
        total = states if total is None else total + states
    assert total is not None
    return (total / (len(sequences) * (sequences.shape[1] - skip_first))).float()
