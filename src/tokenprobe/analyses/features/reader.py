"""The state a dictionary reads, for batches of texts: right-padded batches with their attention
mask, the forward pass stopped once the site's module has run (nothing after it is needed),
and on the first padded batch of a run a few padded texts run alone must give the same states,
else every text runs alone (said once, and in meta.json)."""

from __future__ import annotations

import torch

from ...errors import warn
from ...model import LoadedModel
from ...runner import float_tolerance, pad_batch, pad_id_of, relative_error
from ...sae import Dictionary
from ...sae.hooks import at_site


class _Stop(Exception):
    """Raised by the site's hook once the state is read: the rest of the forward is not run."""


class SiteReader:
    """`rows(seqs)`: each token sequence's (n, d_in) float32 state at the dictionary's read site."""

    def __init__(self, lm: LoadedModel, sae: Dictionary) -> None:
        self.lm, self.sae = lm, sae
        self.adapter = lm.require_adapter()
        self.pad = pad_id_of(lm.tokenizer)
        self.batching: str | None = None  # how batches ran, once the first padded one is checked
        self.alone = False  # one text per forward: a padded batch was not exact on this model
        self.forwards = 0

    def states(self, seqs: list[list[int]]) -> torch.Tensor:
        """(B, T, d_in) of right-padded sequences at the read site, in float32."""
        ids, mask = pad_batch(seqs, self.pad, self.lm.device)
        found: list[torch.Tensor] = []

        def read(x: torch.Tensor) -> torch.Tensor:
            found.append(x.detach().float())
            raise _Stop

        self.forwards += 1
        try:
            with torch.inference_mode(), at_site(self.adapter, self.sae.site, read, ids.shape[1]):
                self.lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
        except _Stop:
            pass
        return found[0]

    def rows(self, seqs: list[list[int]]) -> list[torch.Tensor]:
        """Each sequence's (n, d_in) states (checked on the run's first padded batch)."""
        if self.alone:
            return [self.states([s])[0] for s in seqs]
        states = self.states(seqs)
        rows = [states[b, : len(s)] for b, s in enumerate(seqs)]
        if self.batching is None and len({len(s) for s in seqs}) > 1:
            order = sorted(range(len(seqs)), key=lambda k: len(seqs[k]))[:-1]
            probes = sorted({order[round(q * (len(order) - 1))] for q in (0, 0.5, 1)})
            err = max(relative_error(rows[b], self.states([seqs[b]])[0]) for b in probes)
            if err <= float_tolerance(self.lm.dtype):
                self.batching = "right-padded batches (checked against one text alone)"
                return rows
            self.alone = True
            self.batching = (
                "one text at a time: a padded batch differed from one text alone by "
                f"{err:.1e} (relative error)"
            )
            warn(
                f"features: {type(self.lm.model).__name__} {self.batching} on this model; each "
                "text runs alone (the same numbers, slower)"
            )
            return [self.states([s])[0] for s in seqs]
        return rows
