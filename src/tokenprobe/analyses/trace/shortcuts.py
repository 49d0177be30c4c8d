"""The two shortcuts of a causal trace's batches, each checked on the model in hand before it
is used and switched off (saying why, once on stderr and in meta.json) where it does not hold:

- skip the blocks below a batch's lowest patched layer (they hand on the base run's states);
- continue from the base run's key/value cache of the positions before a batch's first
  patched one (checked again at every prefix length a batch uses).

Both are compared as states with a relative tolerance, so that no metric's scale hides a
difference. `Tracer` (tracer.py) inherits them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from ...errors import warn
from ...model.kvcache import cache_of, is_key_value_cache, rows_of
from ...runner import is_oom
from .sites import Skipper, at_sites, recorder

if TYPE_CHECKING:
    from ...model import LoadedModel
    from ...model.adapter import Adapter


class Shortcuts:
    """The checks and the state of both shortcuts (see the module's docstring)."""

    lm: LoadedModel
    adapter: Adapter
    n_pos: int
    samples: int
    base_noisy: bool
    keep_last: bool
    skipper: Skipper
    flat: list
    index: dict
    base: list[torch.Tensor]
    base_ids: torch.Tensor
    _prefix: tuple[int, Any] | None
    _has_past: bool
    past_failed: int | None
    past_why: str | None
    skip_why: str | None

    if TYPE_CHECKING:  # the Tracer's own, which the checks run

        def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor: ...

        def _embedding_hook(
            self, noise_rows: torch.Tensor | None, leaf: bool, offset: int = 0
        ) -> Any: ...

        def _base_states(
            self, base_rows: torch.Tensor, offset: int = 0
        ) -> Callable[[int], torch.Tensor]: ...

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
            self._switch_off(
                "past", f"{type(self.lm.model).__name__}'s forward takes no key/value cache"
            )
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
        skip = (
            "reused from the cached run"
            if self.skip
            else f"recomputed: {self.skip_why or 'a single block'}"
        )
        return {"lower_blocks": skip, "earlier_positions": past}

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
            stack.enter_context(
                at_sites(self.adapter.blocks, {last: recorder(store, last)}, self.flat, positions)
            )
            extra = {"logits_to_keep": 1} if self.keep_last else {}
            with torch.inference_mode():
                out = self.lm.model(
                    input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **extra
                )
        cache = cache_of(out)
        if not is_key_value_cache(cache):
            what = (
                "no cache"
                if cache is None
                else f"a cache ({type(cache).__name__}) that holds more than attention keys and values"
            )
            why = f"it returns {what}"
        else:
            err = self._error(store[last][0], self.base[last][:, :positions])
            why = f"a run of the first {positions} positions differs from the full run's by {err:.1e} {self._relative}"
            if err <= self._tolerance:  # continue the first sample's run from the cache
                zero = rows[:1]
                with torch.inference_mode():
                    self.forward(
                        self.base_ids[:, positions:],
                        zero if self.base_noisy else None,
                        {last: recorder(store, last)},
                        past=rows_of(cache, zero),
                    )
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
            ok = (
                self._past(self.n_pos // 2, torch.zeros(1, dtype=torch.long, device=self.lm.device))
                is not None
            )
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
                self.forward(
                    self.base_ids,
                    rows if self.base_noisy else None,
                    {last: recorder(store, last)},
                    start,
                    self._base_states(rows),
                )
        except Exception as exc:  # noqa: BLE001 - blocks that cannot be skipped are run
            if is_oom(exc):
                raise
            self._switch_off("skip", f"a run that skips the lower blocks raised {_one_line(exc)}")
            return False
        err = self._error(store[last][0], self.base[last][:1])
        if err > self._tolerance:
            self._switch_off(
                "skip",
                f"a run that skips the lower blocks differs from the full run by {err:.1e} {self._relative}",
            )
            return False
        return True


def _one_line(exc: BaseException) -> str:
    """An exception as `Type: first line of its message`."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
