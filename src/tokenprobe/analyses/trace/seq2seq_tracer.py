"""The patched runs of an encoder-decoder's causal trace: the clean and corrupted runs once,
with every site's state recorded, then each cell's restoration in token-budget batches (each
row of a batch patches a different cell and noise sample). The score is read at the last
decoder position. Every patched run is a whole forward pass of both stacks (no shortcuts)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch

from ...model import LoadedModel
from ...runner import run_with_backoff, token_budget_batches
from .seq2seq_sites import Seq2SeqSite, at_seq2seq_sites, on_encoder_embeddings, seq2seq_sites
from .tracer import Cell, Comparison, OnBatch, score_logits, standing


@dataclass
class Seq2SeqComparison(Comparison):
    """A `Comparison` whose ids are the source's (the corrupted source under `corrupted_ids`,
    noise on source positions `span`), with the decoder ids both runs share."""

    decoder_ids: list[int] = field(default_factory=list)


class Seq2SeqTracer:
    """Clean and corrupted runs of an encoder-decoder recorded once; then cells scored in
    batches. `sites[grid]` are the rows of each grid (see `seq2seq_sites`)."""

    def __init__(self, lm: LoadedModel, problem: Seq2SeqComparison, grids: Sequence[str]) -> None:
        self.lm, self.pb = lm, problem
        self.adapter = lm.require_seq2seq()
        self.n_src, self.n_dec = len(problem.clean_ids), len(problem.decoder_ids)
        self.n_pos = self.n_src + self.n_dec  # the tokens of one row
        self.sites = {g: seq2seq_sites(self.adapter, g) for g in grids}
        self.flat: list[Seq2SeqSite] = []
        self.index: dict[tuple[str, int], int] = {}
        for g, by_row in self.sites.items():
            for row, site in enumerate(by_row):
                self.index[(g, row)] = len(self.flat)
                self.flat.append(site)
        self.samples = 1 if problem.noise is None else int(problem.noise.shape[0])
        noisy = problem.noise is not None
        self.base_noisy = noisy and problem.direction == "restore"
        self.source_noisy = noisy and not self.base_noisy
        device = lm.device
        self.decoder_ids = torch.tensor([problem.decoder_ids], device=device)
        clean_ids = torch.tensor([problem.clean_ids], device=device)
        logits: list[torch.Tensor] = []
        clean_scores, clean = self._record(clean_ids, None, logits)
        self.target_standing = standing(logits[-1][0], problem.target_id)  # (probability, rank)
        corrupted_ids = torch.tensor([problem.corrupted_ids], device=device)
        rows = torch.arange(self.samples, device=device) if noisy else None
        corrupted_scores, corrupted = self._record(corrupted_ids.expand(self.samples, -1), rows)
        self.clean_score = float(clean_scores[0])
        self.corrupted_scores = corrupted_scores.tolist()
        restore = problem.direction == "restore"
        self.base, self.source = (corrupted, clean) if restore else (clean, corrupted)
        self.base_scores = corrupted_scores if restore else clean_scores
        self.base_ids = corrupted_ids if restore else clean_ids

    def n_columns(self, grid: str) -> int:
        """Positions of a grid: the source's for the encoder, the decoder's for the others."""
        return self.n_src if grid == "encoder" else self.n_dec

    def forward(
        self,
        source_ids: torch.Tensor,
        noise_rows: torch.Tensor | None,
        edits: dict,
        logits: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Metric of each row at the last decoder position: `noise_rows` picks each row's noise
        sample (None: no noise), `edits` patch sites. `logits` gets the last position's."""
        pb, n = self.pb, source_ids.shape[0]
        with ExitStack() as stack:
            if noise_rows is not None:
                stack.enter_context(on_encoder_embeddings(self.lm.model, self._noised(noise_rows)))
            stack.enter_context(at_seq2seq_sites(self.flat, edits, self.adapter.time_major))
            out = self.lm.model(
                input_ids=source_ids,
                attention_mask=torch.ones_like(source_ids),
                decoder_input_ids=self.decoder_ids.expand(n, -1),
                use_cache=False,
            )
        last = out.logits[:, -1]
        if logits is not None:
            logits.append(last.detach().float().cpu())
        return score_logits(last, pb.metric, pb.target_id, pb.foil_id)

    def _noised(self, noise_rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Adds each row's noise sample to the subject's source embeddings."""
        pb = self.pb
        assert pb.noise is not None and pb.span is not None
        a, b = pb.span

        def change(out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[:, a:b] += pb.noise[noise_rows].to(device=out.device, dtype=out.dtype)  # type: ignore[index]
            return out

        return change

    def _record(
        self, ids: torch.Tensor, noise_rows: torch.Tensor | None, logits: list | None = None
    ) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Scores of a plain run and the state of every site, (rows, positions, width) each."""
        store: dict[int, torch.Tensor] = {}

        def keeper(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
            def keep(state: torch.Tensor) -> torch.Tensor:
                store[i] = state
                return state

            return keep

        edits = {i: keeper(i) for i in range(len(self.flat))}
        with torch.inference_mode():
            scores = self.forward(ids, noise_rows, edits, logits=logits)
        return scores.double().cpu().numpy(), [store[i] for i in range(len(self.flat))]

    def score_cells(
        self,
        cells: Sequence[Cell],
        batch_tokens: int,
        bar: object = None,
        done: Mapping[int, float] | None = None,
        on_batch: OnBatch | None = None,
    ) -> np.ndarray:
        """The metric of each cell's patched run, averaged over the noise samples (as
        `Tracer.score_cells`: `done` rows are not run again, `on_batch` gets each batch)."""
        rows = [(c, s) for c in range(len(cells)) for s in range(self.samples)]
        done = dict(done or {})
        values = np.zeros(len(rows))
        values[list(done)] = list(done.values())

        def run(batch: list[int]) -> np.ndarray:
            return self._patched([rows[r] for r in batch], cells)

        for planned in token_budget_batches([self.n_pos] * len(rows), batch_tokens):
            todo = sorted(i for i in planned if i not in done)
            for batch, scores in run_with_backoff(todo, run) if todo else ():
                values[batch] = scores
                if on_batch is not None:
                    on_batch(batch, scores)
                if bar is not None:
                    bar.update(len(batch))  # type: ignore[attr-defined]
        return values.reshape(len(cells), self.samples).sum(axis=1) / self.samples

    def _patched(self, picked: list[tuple[int, int]], cells: Sequence[Cell]) -> np.ndarray:
        """One batch: row r restores cell picked[r][0] of noise sample picked[r][1]."""
        device, n = self.lm.device, len(picked)
        samples = torch.tensor([s for _, s in picked], device=device)
        zeros = torch.zeros(n, dtype=torch.long, device=device)
        base_rows = samples if self.base_noisy else zeros
        source_rows = samples if self.source_noisy else zeros
        wanted: dict[int, tuple[list[int], list[int]]] = {}
        for r, (c, _) in enumerate(picked):
            for i, p in cells[c]:
                wanted.setdefault(i, ([], []))[0].append(r)
                wanted[i][1].append(p)
        edits = {}
        for i, (rs, ps) in wanted.items():
            r_t, p_t = torch.tensor(rs, device=device), torch.tensor(ps, device=device)
            edits[i] = _write(r_t, p_t, self.source[i][source_rows[r_t], p_t])
        with torch.inference_mode():
            scores = self.forward(
                self.base_ids.expand(n, -1), base_rows if self.base_noisy else None, edits
            )
        return scores.double().cpu().numpy()


def _write(
    rows: torch.Tensor, positions: torch.Tensor, values: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit writing `values` (n, width) at (rows, positions) of a state."""

    def edit(state: torch.Tensor) -> torch.Tensor:
        new = state.clone()
        new[rows, positions] = values.to(device=state.device, dtype=state.dtype)
        return new

    return edit
