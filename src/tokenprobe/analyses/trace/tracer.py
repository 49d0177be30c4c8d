"""The patched runs of a causal trace: the clean and corrupted runs once, then every cell's
restoration in token-budget batches (the first-order estimate is in `estimate.py`).

The clean and the corrupted run are computed once (noise samples together in one batch), with
every site's state recorded. A cell restores the source run's state at one position of one or
more sites (a window of layers) into the base run: base = corrupted and source = clean when
restoring (the default), the other way round when corrupting. Each row of a batch patches a
different cell (and noise sample). Two shortcuts skip work a patch cannot change:

- blocks below a batch's lowest patched layer are not run: they hand on the base run's cached
  states, and the model's own forward still builds masks, position ids and rotary or ALiBi
  terms exactly as in a plain pass;
- in a causal model, positions before a batch's first patched position are not run: the batch
  continues from the base run's key/value cache of those positions (the model's own cache, so
  sliding windows and ALiBi are the model's business).

Cells are batched in tiles of (layers x positions) sized by a cost model, so that both
shortcuts pay. Each shortcut is checked once per trace against a plain pass; where the two
disagree (or the model has no such cache) that work is recomputed instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...model import LoadedModel
from ...model.kvcache import cache_keyword, with_cache
from ...runner import run_with_backoff, token_budget_batches
from . import tiles
from .heads import head_sites, is_head
from .shortcuts import Shortcuts
from .sites import Site, Skipper, at_sites, find_sites, recorder

Cell = list[tuple[int, int]]  # (site index, position) pairs restored together
# rows of `score_cells`' batch and their scores (row = cell x samples + sample), once computed
OnBatch = Callable[[list[int], np.ndarray], None]


@dataclass
class Comparison:
    """What one trace compares: the clean ids, the corrupted ids (noise: the same ids, with
    `noise` (samples, span, width) added to the embeddings of positions `span`), the scored
    token(s) and which run is the base."""

    clean_ids: list[int]
    corrupted_ids: list[int]
    target_id: int
    foil_id: int | None
    metric: str
    direction: str
    noise: torch.Tensor | None = None
    span: tuple[int, int] | None = None


def score_logits(logits: torch.Tensor, metric: str, target: int, foil: int | None) -> torch.Tensor:
    """The metric of each row of (rows, vocabulary) logits, in float32 (float64 kept)."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    if metric == "prob":
        return torch.softmax(x, dim=-1)[:, target]
    if metric == "logprob":
        return torch.log_softmax(x, dim=-1)[:, target]
    assert foil is not None
    return x[:, target] - x[:, foil]


class Tracer(Shortcuts):
    """Clean and corrupted runs recorded once; then cells scored in batches."""

    def __init__(self, lm: LoadedModel, problem: Comparison, components: Sequence[str]) -> None:
        self.lm, self.pb = lm, problem
        self.adapter = lm.require_adapter()
        self.n_pos = len(problem.clean_ids)
        self.sites = {
            c: head_sites(self.adapter, c) if is_head(c) else find_sites(self.adapter, c)
            for c in dict.fromkeys(["resid", *components])
        }
        # every site once, and where each (component, row) is among them (a head component's
        # row is block x heads + head)
        self.flat: list[Site] = []
        self.index: dict[tuple[str, int], int] = {}
        for c, by_row in self.sites.items():
            for row, site in enumerate(by_row):
                if site is not None:
                    self.index[(c, row)] = len(self.flat)
                    self.flat.append(site)
        params = inspect.signature(lm.model.forward).parameters
        self.keep_last = "logits_to_keep" in params
        self.samples = 1 if problem.noise is None else int(problem.noise.shape[0])
        noisy_base = problem.noise is not None and problem.direction == "restore"
        self.base_noisy, self.source_noisy = (
            noisy_base,
            problem.noise is not None and not noisy_base,
        )
        self.skipper = Skipper(self.adapter)
        clean_ids = torch.tensor([problem.clean_ids], device=lm.device)
        logits: list[torch.Tensor] = []
        clean_scores, clean = self._record(clean_ids, None, logits)
        if self.keep_last and any(state.shape[1] != self.n_pos for state in clean):
            # Gemma 4's key/value-sharing layers run only the positions whose logits are kept
            self.keep_last = False
            clean_scores, clean = self._record(clean_ids, None, logits)
        self.target_standing = standing(logits[-1][0], problem.target_id)  # (probability, rank)
        corrupted_ids = torch.tensor([problem.corrupted_ids], device=lm.device)
        rows = None if problem.noise is None else torch.arange(self.samples, device=lm.device)
        ids = corrupted_ids.expand(self.samples, -1)
        corrupted_scores, corrupted = self._record(ids, rows)
        self.clean_score = float(clean_scores[0])
        self.corrupted_scores = corrupted_scores.tolist()
        restore = problem.direction == "restore"
        self.base, self.source = (corrupted, clean) if restore else (clean, corrupted)
        self.base_scores = corrupted_scores if restore else clean_scores
        self.base_ids = corrupted_ids if restore else clean_ids
        self._prefix: tuple[int, Any] | None = None  # (positions, the base run's cache of them)
        self._has_past = cache_keyword(lm.model) is not None
        self.past_failed: int | None = None  # a prefix length whose cache did not continue exactly
        self.past_why: str | None = None  # why batches recompute the earlier positions
        self.skip_why: str | None = None  # why batches recompute the lower blocks

    def n_columns(self, component: str) -> int:
        """Positions of a component's grid: the prompt's."""
        return self.n_pos

    # ------------------------------------------------------------------ forward passes
    def forward(
        self,
        ids: torch.Tensor,
        noise_rows: torch.Tensor | None,
        edits: dict,
        start: int = 0,
        states: Callable[[int], torch.Tensor] | None = None,
        leaf: bool = False,
        past: object = None,
        logits: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Metric of each row: `noise_rows` picks each row's noise sample (None: no noise),
        `edits` patch sites, blocks below `start` hand on `states(k)`; `leaf` makes the
        embedding output a leaf that requires gradients. With `past` (a cache of the first
        positions), `ids` are the positions after them. `logits` gets the last position's."""
        offset = 0 if past is None else self.n_pos - ids.shape[1]
        with ExitStack() as stack:
            if noise_rows is not None or leaf:
                stack.enter_context(self._embedding_hook(noise_rows, leaf, offset))
            stack.enter_context(at_sites(self.adapter.blocks, edits, self.flat, ids.shape[1]))
            if start > 0 and states is not None:
                stack.enter_context(self.skipper.skip_below(start, states))
            extra: dict[str, Any] = {"logits_to_keep": 1} if self.keep_last else {}
            if past is not None:
                extra |= with_cache(self.lm.model, past)
            else:
                extra["use_cache"] = False
            mask = torch.ones(
                (ids.shape[0], offset + ids.shape[1]), dtype=ids.dtype, device=ids.device
            )
            out = self.lm.model(input_ids=ids, attention_mask=mask, **extra)
        if logits is not None:
            logits.append(out.logits[:, -1].detach().float().cpu())
        return score_logits(out.logits[:, -1], self.pb.metric, self.pb.target_id, self.pb.foil_id)

    @contextmanager
    def _embedding_hook(
        self, noise_rows: torch.Tensor | None, leaf: bool, offset: int = 0
    ) -> Iterator[None]:
        """Adds each row's noise to the subject's embeddings, for inputs that start at position
        `offset` (the part of the subject they hold)."""
        pb = self.pb

        def hook(_m: torch.nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
            if noise_rows is not None:
                assert pb.noise is not None and pb.span is not None
                a, b = max(pb.span[0], offset), min(pb.span[1], offset + out.shape[1])
                if a < b:
                    out = out.clone()
                    noise = pb.noise[noise_rows][:, a - pb.span[0] : b - pb.span[0]]
                    out[:, a - offset : b - offset] += noise.to(device=out.device, dtype=out.dtype)
            return out.detach().requires_grad_(True) if leaf else out

        handle = self.adapter.embed.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _record(
        self, ids: torch.Tensor, noise_rows: torch.Tensor | None, logits: list | None = None
    ) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Scores of a plain run and the state of every site, (rows, positions, width) each."""
        store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        edits = {i: recorder(store, i) for i in range(len(self.flat))}
        with torch.inference_mode():
            scores = self.forward(ids, noise_rows, edits, logits=logits)
        return scores.double().cpu().numpy(), [store[i][0] for i in range(len(self.flat))]

    def _base_states(
        self, base_rows: torch.Tensor, offset: int = 0
    ) -> Callable[[int], torch.Tensor]:
        """The base run's residual stream at layer k for each row of a batch, from position
        `offset` on."""
        resid = [
            self.base[self.index[("resid", k)]][:, offset:]
            for k in range(self.adapter.n_blocks + 1)
        ]
        if self.base_noisy:
            return lambda k: resid[k][base_rows]
        return lambda k: resid[k].expand(len(base_rows), -1, -1)

    # ------------------------------------------------------------------ cells
    def score_cells(
        self,
        cells: Sequence[Cell],
        batch_tokens: int,
        bar: object = None,
        done: Mapping[int, float] | None = None,
        on_batch: OnBatch | None = None,
    ) -> np.ndarray:
        """The metric of each cell's patched run, averaged over the noise samples. `done` holds
        rows (cell x samples + sample) already scored, by an interrupted run: batches of them
        are not run again, and the rest run in the same batches as without them. `on_batch`
        gets each batch's rows and scores as soon as they are computed."""
        rows = [(c, s) for c in range(len(cells)) for s in range(self.samples)]
        start = [min(self.flat[i].start for i, _ in cells[c]) for c, _ in rows]
        first = [min(p for _, p in cells[c]) for c, _ in rows]
        done = dict(done or {})
        values = np.zeros(len(rows))
        values[list(done)] = list(done.values())
        for tile, length in self._tiles(start, first, batch_tokens):

            def run(batch: list[int], tile: list[int] = tile) -> np.ndarray:
                picked = [tile[i] for i in batch]
                return self._patched(
                    [rows[r] for r in picked],
                    cells,
                    min(start[r] for r in picked) if self.skip else 0,
                    min(first[r] for r in picked) if self.past else 0,
                )

            for planned in token_budget_batches([length] * len(tile), batch_tokens):
                todo = [i for i in planned if tile[i] not in done]
                for batch, scores in run_with_backoff(todo, run) if todo else ():
                    picked = [tile[i] for i in batch]
                    values[picked] = scores
                    if on_batch is not None:
                        on_batch(picked, scores)
                    if bar is not None:
                        bar.update(len(batch))  # type: ignore[attr-defined]
        # summed in one order, however the rows were batched or resumed
        return values.reshape(len(cells), self.samples).sum(axis=1) / self.samples

    def _tiles(
        self, start: Sequence[int], first: Sequence[int], batch_tokens: int
    ) -> list[tuple[list[int], int]]:
        """Rows in tiles of (lowest patched block, first patched position) bands, each with the
        input length its batches run (the positions from its first patched one on)."""
        device = "cpu" if self.lm.device.type == "cpu" else "other"
        return tiles.plan_tiles(
            start if self.skip else [0] * len(start),
            first if self.past else [0] * len(first),
            n_blocks=self.adapter.n_blocks,
            n_pos=self.n_pos,
            prefix_rows=self.samples if self.base_noisy else 1,
            batch_tokens=batch_tokens,
            forward_tokens=tiles.FORWARD_TOKENS[device],
        )

    def _patched(
        self, picked: list[tuple[int, int]], cells: Sequence[Cell], start: int, offset: int
    ) -> np.ndarray:
        """One batch: row r restores cell picked[r][0] of noise sample picked[r][1]; blocks
        below `start` and positions before `offset` come from the base run's caches."""
        device, n = self.lm.device, len(picked)
        samples = torch.tensor([s for _, s in picked], device=device)
        zeros = torch.zeros(n, dtype=torch.long, device=device)
        base_rows = samples if self.base_noisy else zeros
        source_rows = samples if self.source_noisy else zeros
        past = self._past(offset, base_rows) if offset > 0 else None
        if past is None:  # no cache, or one that did not continue exactly: every position
            offset = 0
        wanted: dict[int, tuple[list[int], list[int]]] = {}
        for r, (c, _) in enumerate(picked):
            for i, p in cells[c]:
                wanted.setdefault(i, ([], []))[0].append(r)
                wanted[i][1].append(p)
        edits = {}
        for i, (rs, ps) in wanted.items():
            r_t = torch.tensor(rs, device=device)
            p_t = torch.tensor(ps, device=device)
            edits[i] = _patch(r_t, p_t - offset, self.source[i][source_rows[r_t], p_t])
        ids = self.base_ids[:, offset:].expand(n, -1)
        with torch.inference_mode():
            scores = self.forward(
                ids,
                base_rows if self.base_noisy else None,
                edits,
                start,
                self._base_states(base_rows, offset),
                past=past,
            )
        return scores.double().cpu().numpy()


def _patch(rows: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> Callable:
    """An edit writing `values` (n, width) at (rows, positions) of a site's state."""

    def edit(out: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        new = out.clone()
        v = values.to(device=out.device, dtype=out.dtype)
        new[rows, positions] = v if residual is None else v + residual[rows, positions]
        return new

    return edit


def window_of(sites: list[Site | None], row: int, window: int) -> list[int]:
    """Rows restored together for `row`: W consecutive rows around it (ROME's window:
    row - W//2 up to row + ceil(W/2) - 1), clipped, those without a site left out."""
    lo, hi = max(0, row - window // 2), min(len(sites), row - (-window // 2))
    return [k for k in range(lo, hi) if sites[k] is not None]


def standing(logits: torch.Tensor, target: int) -> tuple[float, int]:
    """The target's probability under (vocabulary,) logits, and its rank (1: the top token)."""
    x = logits.double()
    return float(torch.softmax(x, dim=-1)[target]), int((x > x[target]).sum()) + 1
