"""The forward passes of `features` beyond the first: the model with every position's state
replaced by the dictionary's reconstruction (next-token KL per position, the score and the
prompt's loss), with one position's replaced (the splice effect), and with one kept feature
removed at its position (its exact effect: the state minus activation x decoder row, the
reconstruction error kept). Rows are batched by a token budget; each row edits only its own
copy, so a batch gives what one pass per row gives (tested)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...model import LoadedModel
from ...runner import run_with_backoff, token_budget_batches
from ...sae import Dictionary
from ...sae.hooks import at_site


@dataclass(frozen=True)
class Scorer:
    """The score of the last position's logits: log p(target), or logit(target) - logit(foil)."""

    target: int
    foil: int | None
    target_text: str
    foil_text: str | None

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """(rows,) scores of (rows, vocabulary) logits, in float32."""
        x = logits.float()
        if self.foil is None:
            return torch.log_softmax(x, dim=-1)[:, self.target]
        return x[:, self.target] - x[:, self.foil]

    def describe(self) -> str:
        if self.foil is None:
            return f"log p({self.target_text!r}) at the last position"
        return f"logit({self.target_text!r}) - logit({self.foil_text!r}) at the last position"


Edit = tuple[int, torch.Tensor]  # (position, what is added to the state there)


def run_edits(
    lm: LoadedModel,
    sae: Dictionary,
    ids: torch.Tensor,
    edits: list[Edit],
    scorer: Scorer,
    batch_tokens: int,
) -> np.ndarray:
    """The score of each edit's forward pass: row r adds edits[r][1] to the written site's
    state at position edits[r][0]."""
    adapter = lm.require_adapter()
    n = ids.shape[1]
    out = np.zeros(len(edits))

    def run(batch: list[int]) -> np.ndarray:
        rows = torch.arange(len(batch), device=ids.device)
        positions = torch.tensor([edits[i][0] for i in batch], device=ids.device)
        deltas = torch.stack([edits[i][1] for i in batch])

        def rewrite(x: torch.Tensor) -> torch.Tensor:
            new = x.clone()
            new[rows, positions] += deltas.to(device=x.device, dtype=x.dtype)
            return new

        many = ids.expand(len(batch), -1)
        with torch.inference_mode(), at_site(adapter, sae.writes, rewrite, n):
            logits = lm.model(input_ids=many, attention_mask=torch.ones_like(many), use_cache=False)
        return scorer.score(logits.logits[:, -1]).double().cpu().numpy()

    for planned in token_budget_batches([n] * len(edits), batch_tokens):
        for batch, scores in run_with_backoff(planned, run):
            out[batch] = scores
    return out


def splice_kl(
    lm: LoadedModel,
    sae: Dictionary,
    ids: torch.Tensor,
    recon: torch.Tensor,
    logits: torch.Tensor,
    scorer: Scorer | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Every position's state replaced by its reconstruction: the next-token KL(model ||
    spliced) per position, and the prompt's next-token loss (and the score) with and without."""
    adapter = lm.require_adapter()
    n = ids.shape[1]

    def rewrite(x: torch.Tensor) -> torch.Tensor:
        return recon.to(device=x.device, dtype=x.dtype)[None].expand_as(x).clone()

    with torch.inference_mode(), at_site(adapter, sae.writes, rewrite, n):
        spliced = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    s = spliced.logits[0].float()
    log_p, log_q = torch.log_softmax(logits, -1), torch.log_softmax(s, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0)
    found: dict[str, Any] = {"kl_mean": float(kl.mean())}
    if n > 1:
        nxt = ids[0, 1:]
        found["loss"] = float(-log_p[:-1].gather(-1, nxt[:, None]).mean())
        found["loss_spliced"] = float(-log_q[:-1].gather(-1, nxt[:, None]).mean())
    if scorer is not None:
        found["score"] = float(scorer.score(s[None, -1])[0])
    return kl.double().cpu().numpy(), found


def splices(
    lm: LoadedModel,
    sae: Dictionary,
    ids: torch.Tensor,
    states: torch.Tensor,
    recon: torch.Tensor,
    scorer: Scorer,
    base: float,
    batch_tokens: int,
    skip: int = 0,
) -> np.ndarray:
    """Per position, the score change when only that position's state is replaced by its
    reconstruction (NaN before position `skip`, not run there)."""
    edits = [(p, recon[p] - states[p]) for p in range(skip, ids.shape[1])]
    out = np.full(ids.shape[1], np.nan)
    if edits:
        out[skip:] = run_edits(lm, sae, ids, edits, scorer, batch_tokens) - base
    return out


def ablations(
    lm: LoadedModel,
    sae: Dictionary,
    ids: torch.Tensor,
    found: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    scorer: Scorer,
    base: float,
    batch_tokens: int,
) -> np.ndarray:
    """(positions, d_sae) of base score - the score with that feature removed at that position
    (what it adds to the reconstruction taken from the written state), NaN where not kept.
    `found`: the activations, the kept mask and the dictionary's input states."""
    acts, kept, inputs = found
    p, f = kept.nonzero(as_tuple=True)
    out = np.full(tuple(acts.shape), np.nan)
    if p.numel():
        deltas = -acts[p, f, None] * sae.unit_rows(f, inputs[p])
        edits = [(int(p[e]), deltas[e]) for e in range(p.numel())]
        scores = run_edits(lm, sae, ids, edits, scorer, batch_tokens)
        out[p.cpu().numpy(), f.cpu().numpy()] = base - scores
    return out
