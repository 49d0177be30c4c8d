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
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from ...errors import warn
from ...model import LoadedModel
from ...model.kvcache import cache_keyword, cache_of, is_key_value_cache, rows_of, with_cache
from ...runner import is_oom, map_batches
from . import tiles
from .sites import Site, Skipper, at_sites, find_sites, recorder

Cell = list[tuple[int, int]]  # (site index, position) pairs restored together


@dataclass
class Problem:
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


class Tracer:
    """Clean and corrupted runs recorded once; then cells scored in batches."""

    def __init__(self, lm: LoadedModel, problem: Problem, components: Sequence[str]) -> None:
        self.lm, self.pb = lm, problem
        self.adapter = lm.require_adapter()
        self.n_pos = len(problem.clean_ids)
        self.sites = {c: find_sites(self.adapter, c) for c in dict.fromkeys(["resid", *components])}
        self.flat = [s for c in self.sites for s in self.sites[c] if s is not None]
        self.index = {(s.component, s.layer): i for i, s in enumerate(self.flat)}
        params = inspect.signature(lm.model.forward).parameters
        self.keep_last = "logits_to_keep" in params
        self.samples = 1 if problem.noise is None else int(problem.noise.shape[0])
        noisy_base = problem.noise is not None and problem.direction == "restore"
        self.base_noisy, self.source_noisy = noisy_base, problem.noise is not None and not noisy_base
        self.skipper = Skipper(self.adapter)
        clean_ids = torch.tensor([problem.clean_ids], device=lm.device)
        clean_scores, clean = self._record(clean_ids, None)
        if self.keep_last and any(state.shape[1] != self.n_pos for state in clean):
            # Gemma 4's key/value-sharing layers run only the positions whose logits are kept
            self.keep_last = False
            clean_scores, clean = self._record(clean_ids, None)
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

    @cached_property
    def skip(self) -> bool:
        """Can batches skip the blocks below their lowest patched layer (checked on first use,
        so that an estimate-only trace does not pay for it)?"""
        return self._check_skip()

    @cached_property
    def past(self) -> bool:
        """Can batches continue from the base run's cache of the positions before their first
        patched one? Checked on first use, and again for every prefix length a batch uses
        (where one fails, this turns False and later batches recompute those positions)."""
        if not self._has_past:
            self._switch_off("past", f"{type(self.lm.model).__name__}'s forward takes no key/value cache")
            return False
        return self._check_past()

    def _switch_off(self, shortcut: str, why: str) -> None:
        """Turn a shortcut off for the rest of the run and say why, once, on stderr (and, through
        `shortcuts`, in meta.json)."""
        what = {"past": "earlier positions", "skip": "lower blocks"}[shortcut]
        setattr(self, f"{shortcut}_why", why)
        self.__dict__[shortcut] = False
        warn(f"trace: the {what} are recomputed for every batch (the same numbers, slower): {why}")

    def shortcuts(self) -> dict[str, str]:
        """For meta.json: how the exact cells' lower blocks and earlier positions ran (empty
        before any exact cell was scored)."""
        if "skip" not in self.__dict__:
            return {}
        past = "continued from the cached run (checked at every prefix length)"
        if self.past_failed is not None:
            past = f"recomputed after the cache of {self.past_failed} positions did not continue exactly: {self.past_why}"
        elif not self.past:
            past = f"recomputed: {self.past_why or 'a single position has nothing before it'}"
        skip = "reused from the cached run" if self.skip else f"recomputed: {self.skip_why or 'a single block'}"
        return {"lower_blocks": skip, "earlier_positions": past}

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
    ) -> torch.Tensor:
        """Metric of each row: `noise_rows` picks each row's noise sample (None: no noise),
        `edits` patch sites, blocks below `start` hand on `states(k)`; `leaf` makes the
        embedding output a leaf that requires gradients. With `past` (a cache of the first
        positions), `ids` are the positions after them."""
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
            mask = torch.ones((ids.shape[0], offset + ids.shape[1]), dtype=ids.dtype, device=ids.device)
            out = self.lm.model(input_ids=ids, attention_mask=mask, **extra)
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
        self, ids: torch.Tensor, noise_rows: torch.Tensor | None
    ) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Scores of a plain run and the state of every site, (rows, positions, width) each."""
        store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        edits = {i: recorder(store, i) for i in range(len(self.flat))}
        with torch.inference_mode():
            scores = self.forward(ids, noise_rows, edits)
        return scores.double().cpu().numpy(), [store[i][0] for i in range(len(self.flat))]

    def _base_states(self, base_rows: torch.Tensor, offset: int = 0) -> Callable[[int], torch.Tensor]:
        """The base run's residual stream at layer k for each row of a batch, from position
        `offset` on."""
        resid = [self.base[self.index[("resid", k)]][:, offset:] for k in range(self.adapter.n_blocks + 1)]
        if self.base_noisy:
            return lambda k: resid[k][base_rows]
        return lambda k: resid[k].expand(len(base_rows), -1, -1)

    def _past(self, positions: int, base_rows: torch.Tensor) -> Any:
        """The base run's cache of its first `positions` positions, one row per batch row (the
        base run of that row's noise sample), or None where that cache does not continue
        exactly. The prefix is run and checked once per length."""
        if self._prefix is None or self._prefix[0] != positions:
            self._prefix = None
            cache = self._prefix_cache(positions)
            if cache is None:
                return None
            self._prefix = (positions, cache)
        return rows_of(self._prefix[1], base_rows)

    def _prefix_cache(self, positions: int) -> Any:
        """Run the base run's first `positions` positions (every noise sample) and check that
        they give the full run's last states, and that continuing from their cache gives the
        rest; the cache, or None (and `past_failed` set) where either differs."""
        n = self.samples if self.base_noisy else 1
        rows = torch.arange(n, device=self.lm.device)
        last = self.index[("resid", self.adapter.n_blocks)]
        store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        ids = self.base_ids[:1, :positions].expand(n, -1)
        with ExitStack() as stack:
            if self.base_noisy:
                stack.enter_context(self._embedding_hook(rows, False))
            stack.enter_context(at_sites(self.adapter.blocks, {last: recorder(store, last)}, self.flat, positions))
            extra = {"logits_to_keep": 1} if self.keep_last else {}
            with torch.inference_mode():
                out = self.lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **extra)
        cache = cache_of(out)
        if not is_key_value_cache(cache):
            what = "no cache" if cache is None else f"a cache ({type(cache).__name__}) that holds more than attention keys and values"
            why = f"it returns {what}"
        else:
            err = self._error(store[last][0], self.base[last][:, :positions])
            why = f"a run of the first {positions} positions differs from the full run's by {err:.1e} {self._relative}"
            if err <= self._tolerance:  # continue the first sample's run from the cache
                zero = rows[:1]
                with torch.inference_mode():
                    self.forward(self.base_ids[:, positions:], zero if self.base_noisy else None,
                                  {last: recorder(store, last)}, past=rows_of(cache, zero))
                err = self._error(store[last][0], self.base[last][:1, positions:])
                why = f"continuing from the cache of {positions} positions differs from the full run by {err:.1e} {self._relative}"
                if err <= self._tolerance:
                    return cache
        self.past_failed = positions
        self._switch_off("past", why)
        return None

    @property
    def _relative(self) -> str:
        return f"(relative error; tolerance {self._tolerance:.0e})"

    @property
    def _tolerance(self) -> float:
        """States agree to float error: 1e-4 relative in float32, 3e-2 in 16-bit types."""
        return 1e-4 if self.lm.dtype in (torch.float32, torch.float64) else 3e-2

    def _error(self, got: torch.Tensor, want: torch.Tensor) -> float:
        """The largest error between two runs' states relative to the state's norm at any
        position."""
        g, w = got.double(), want.to(got.device).double()
        return float(((g - w).norm(dim=-1) / w.norm(dim=-1).clamp_min(1e-30)).max())

    def _check_past(self) -> bool:
        """Can a batch continue from the base run's cache at all: a decoder whose cache holds
        only attention keys and values (a later position cannot change them; a state-space
        layer's state continues by another code path, which in transformers 5 is not exact
        for Jamba), and which continues exactly from half the positions?"""
        if self.n_pos < 2:
            self.__dict__["past"] = False  # nothing before the only position: nothing to say
            return False
        if getattr(self.lm.model.config, "is_encoder_decoder", False):
            self._switch_off("past", "an encoder-decoder model's cache is not continued")
            return False
        try:
            ok = self._past(self.n_pos // 2, torch.zeros(1, dtype=torch.long, device=self.lm.device)) is not None
        except Exception as exc:  # noqa: BLE001 - a model whose cache does not work recomputes the positions
            if is_oom(exc):
                raise
            self._switch_off("past", f"continuing from its cache raised {_one_line(exc)}")
            ok = False
        self.past_failed = None  # the first check's failure is "recomputed", not a later one
        return ok

    def _check_skip(self) -> bool:
        """Does a run that skips the lower half of the blocks give the plain run's last states?
        A model whose blocks need what the skipped ones leave behind (Gemma 4's shared
        key/value layers) fails here, and its batches run every block."""
        start = self.adapter.n_blocks // 2
        if start == 0:
            return False
        rows = torch.zeros(1, dtype=torch.long, device=self.lm.device)
        last = self.index[("resid", self.adapter.n_blocks)]
        store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        try:
            with torch.inference_mode():
                self.skipper.learn(lambda: self.forward(self.base_ids[:1], None, {}))
                self.forward(self.base_ids, rows if self.base_noisy else None, {last: recorder(store, last)},
                              start, self._base_states(rows))
        except Exception as exc:  # noqa: BLE001 - blocks that cannot be skipped are run
            if is_oom(exc):
                raise
            self._switch_off("skip", f"a run that skips the lower blocks raised {_one_line(exc)}")
            return False
        err = self._error(store[last][0], self.base[last][:1])
        if err > self._tolerance:
            self._switch_off(
                "skip", f"a run that skips the lower blocks differs from the full run by {err:.1e} {self._relative}"
            )
            return False
        return True

    # ------------------------------------------------------------------ cells
    def score_cells(
        self,
        cells: Sequence[Cell],
        batch_tokens: int,
        bar: object = None,
    ) -> np.ndarray:
        """The metric of each cell's patched run, averaged over the noise samples."""
        rows = [(c, s) for c in range(len(cells)) for s in range(self.samples)]
        start = [min(self.flat[i].start for i, _ in cells[c]) for c, _ in rows]
        first = [min(p for _, p in cells[c]) for c, _ in rows]
        totals = np.zeros(len(cells))
        for tile, length in self._tiles(start, first, batch_tokens):

            def run(batch: list[int], tile: list[int] = tile) -> np.ndarray:
                picked = [tile[i] for i in batch]
                return self._patched(
                    [rows[r] for r in picked],
                    cells,
                    min(start[r] for r in picked) if self.skip else 0,
                    min(first[r] for r in picked) if self.past else 0,
                )

            for batch, scores in map_batches([length] * len(tile), batch_tokens, run):
                for i, score in zip(batch, scores, strict=True):
                    totals[rows[tile[i]][0]] += score
                if bar is not None:
                    bar.update(len(batch))  # type: ignore[attr-defined]
        return totals / self.samples

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


def _one_line(exc: BaseException) -> str:
    """An exception as `Type: first line of its message`."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


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
