"""The bases' runs and key/value caches, the checks, and continued batches (`Prefix`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import warn
from ..model.kvcache import cache_keyword, cache_of, is_key_value_cache, with_cache
from ..runner import (
    float_tolerance,
    is_oom,
    keep_last,
    map_batches,
    pad_batch,
    relative_error,
    takes,
)
from .batches import CACHED_COST, FORWARD_TOKENS, _split_cost, first_change, last_positions, tiles

CONTINUED = (
    "continued from the unperturbed run's key/value cache (checked: the unperturbed run "
    "continued at every prefix length used, and a copy against its full forward)"
)


class Prefix:
    """The bases' runs and key/value caches, the checks, and continued batches (see the
    module's docstring). Each copy needs its last `keep` positions' logits; every base starts
    with the same `head` tokens (a prompt template), run once and shared."""

    def __init__(
        self,
        model: torch.nn.Module,
        bases: Sequence[Sequence[int]],
        *,
        keep: int,
        pad_id: int,
        dtype: torch.dtype,
        what: str,
        head: int = 0,
        max_tokens: int = 4096,
    ) -> None:
        self.model, self.keep, self.pad_id, self.what = model, keep, pad_id, what
        self.bases = [list(b) for b in bases]
        self.head, self.max_tokens = head, max_tokens
        self.tolerance = float_tolerance(dtype)
        self.device = next(model.parameters()).device
        self.on = True  # turned off for good where a check fails
        self.used = False  # has a batch continued from a cache?
        self.why: str | None = None  # why copies run whole
        self.failed_at: int | None = None  # the prefix length whose check failed
        self.forwards = 0  # model forwards run here: head, bases, checks and batches
        self.reused = 0  # positions taken from a cache instead of run
        self.run_tokens = 0  # positions run here
        self._caches: list[Any] = []  # each base batch's cache
        self._rows: list[tuple[int, int]] = []  # each base's (batch, row) in `_caches`
        self._outs: torch.Tensor | None = None  # (bases, keep, V): each base's own logits
        self._checked: set[int] = set()
        self._probed = False
        self._padded = False  # has a left-padded cache been checked?

    # -- the plan
    def start(self, seq: Sequence[int], base: int) -> int:
        """The prefix length a copy of base `base` may continue from (0: it runs whole): its
        last `keep` positions are run, and one base position is left to check the cache with."""
        b = self.bases[base]
        return max(0, min(first_change(b, seq), len(seq) - self.keep, len(b) - self.keep))

    @property
    def ragged(self) -> bool:
        """May one batch hold copies of different prefix lengths (left-padded caches, explicit
        position ids)? Else a batch's copies share one (`tiles`)."""
        return takes(self.model, "position_ids")

    def plan(self, seqs: Sequence[list[int]], bases: Sequence[int], max_tokens: int) -> list[int]:
        """Each copy's prefix length (tiled by `tiles` where a batch must share one), or 0 for
        every copy where the cost model says continuing saves nothing over running the copies
        whole after the head."""
        starts = [self.start(s, b) for s, b in zip(seqs, bases, strict=True)] if self.on else []
        if not any(starts):
            return [0] * len(seqs)
        lengths, forward = [len(s) for s in seqs], self.forward
        if self.ragged:  # tiles against the positions run alone (batches mix tiles)
            planned = tiles(starts, lengths, 1 << 30, 0.0)[0]
            pairs = zip(lengths, planned, strict=True)
            widths = sorted((n - p + p // CACHED_COST for n, p in pairs), reverse=True)
            checks = sum(max(lengths) - p + p // CACHED_COST for p in set(planned))
            cost = _split_cost(widths, 0, max_tokens, forward) + checks
        else:
            planned, cost = tiles(starts, lengths, max_tokens, forward)
        cost += 2 * forward + 2 * max(lengths)  # the checks run alone
        whole = tiles([self.head] * len(seqs), lengths, max_tokens, forward)[1]
        if cost >= whole:
            self.why = (
                f"continuing would not save work here (cost model: {cost:.0f} positions "
                f"continued against {whole:.0f} whole)"
            )
            return [0] * len(seqs)
        return planned

    @property
    def forward(self) -> float:
        """A forward's fixed cost, in positions, on this device."""
        return FORWARD_TOKENS["cpu" if self.device.type == "cpu" else "other"]

    # -- the switch
    def _off(self, why: str, at: int | None = None) -> None:
        """Run whole copies for the rest of the run; say why once."""
        self.on, self.why, self.failed_at = False, why, at
        self._caches = []
        warn(
            f"{self.what}: the earlier positions of each perturbed copy are recomputed "
            f"(the same numbers, slower): {why}",
            stacklevel=4,
        )

    @property
    def note(self) -> str:
        """How the copies' earlier positions ran, for meta.json."""
        if self.failed_at is not None:
            return (
                f"recomputed after continuing from the cache of {self.failed_at} positions "
                f"did not match the full forward: {self.why}"
            )
        if self.why is not None:
            return f"recomputed: {self.why}"
        if not self.used:
            return "recomputed: no perturbed copy shares a prefix with its unperturbed run"
        return CONTINUED

    # -- the bases' runs
    def base_logits(self) -> torch.Tensor | None:
        """(bases, keep, V) logits of each base's last `keep` positions, from the runs that
        keep their caches (None where the shortcut is off: the caller runs the bases)."""
        return self._outs if self._ready() else None

    def _ready(self) -> bool:
        """Run the bases once, keeping caches that hold every position (a fresh plain cache: a
        model's own may keep only a sliding window), unless they cannot continue."""
        if self._outs is not None or not self.on:
            return self.on
        name = type(self.model).__name__
        if cache_keyword(self.model) is None:
            self._off(f"{name}'s forward takes no key/value cache")
            return False
        if getattr(self.model.config, "is_encoder_decoder", False):
            self._off("an encoder-decoder's encoder reads the whole source at once")
            return False
        try:
            with torch.inference_mode():
                outs = self._run_bases()
        except _NotKeyValue as exc:
            self._off(f"it returns {exc}, not every position's attention keys and values")
            return False
        except Exception as exc:  # noqa: BLE001 - a cache that does not work: whole copies
            if is_oom(exc):
                raise
            self._off(f"a run with a key/value cache raised {_one_line(exc)}")
            return False
        with torch.inference_mode():
            want = self._alone(self.bases[0])
        if not self._agrees(outs[0], want, "the unperturbed text run alone", self.head):
            return False
        self._outs = outs
        return True

    def _run_bases(self) -> torch.Tensor:
        """Every base's logits; their caches kept in `_caches` / `_rows`."""
        head = self.bases[0][: self.head]
        fits = self.head < min(len(b) for b in self.bases) - self.keep
        start = self.head if fits and all(b[: self.head] == head for b in self.bases) else 0
        shared = self._head_cache(self.bases[0][: max(start, 1)])
        shared = shared if start else None  # the head once, its cache shared by every base
        outs: list[torch.Tensor] = [torch.empty(0)] * len(self.bases)
        self._rows = [(0, 0)] * len(self.bases)
        lengths = [len(b) - start for b in self.bases]

        def run(batch: list[int]) -> tuple[torch.Tensor, Any]:
            cache = self._fresh() if shared is None else _expand(shared, len(batch))
            rows = [self.bases[i] for i in batch]
            return self._forward(rows, [start] * len(batch), cache, kept=True)

        for batch, (logits, cache) in map_batches(lengths, self.max_tokens, run):
            longest = max(len(self.bases[i]) for i in batch)
            if not is_key_value_cache(cache) or not _whole(cache, longest):
                raise _NotKeyValue(_kind(cache))
            self._caches.append(cache)
            for r, i in enumerate(batch):
                self._rows[i], outs[i] = (len(self._caches) - 1, r), logits[r]
        return torch.stack(outs)

    def _head_cache(self, ids: list[int]) -> Any:
        """A plain cache of `ids`, after a run with the model's own cache shows that it holds
        attention keys and values only (not a state-space or hybrid layer's state)."""
        from transformers import cache_utils

        t = torch.tensor([ids], device=self.device)
        self.forwards, self.run_tokens = self.forwards + 1, self.run_tokens + len(ids)
        own = cache_of(self.model(input_ids=t, use_cache=True))
        if not is_key_value_cache(own):
            raise _NotKeyValue(_kind(own))
        if all(type(layer) is cache_utils.DynamicLayer for layer in own.layers):
            return own
        self.forwards, self.run_tokens = self.forwards + 1, self.run_tokens + len(ids)
        return cache_of(self.model(input_ids=t, **with_cache(self.model, self._fresh())))

    def _fresh(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache()

    def _cache(self, base_rows: Sequence[int], starts: Sequence[int]) -> Any:
        """A cache of the first `starts[r]` positions of each row's base, right-aligned (a row
        with a shorter prefix is left-padded, its padding masked): views where one prefix."""
        where, width = [self._rows[b] for b in base_rows], max(starts)
        out = copy.copy(self._caches[where[0][0]])
        out.layers = []
        for k, layer in enumerate(self._caches[where[0][0]].layers):
            new = copy.copy(layer)
            for field in ("keys", "values"):
                if len(set(where)) == 1 and len(set(starts)) == 1:
                    part = getattr(layer, field)[where[0][1], ..., :width, :]
                    setattr(new, field, part.expand(len(where), *part.shape))
                    continue
                ref = getattr(layer, field)
                got = ref.new_zeros((len(where), *ref.shape[1:-2], width, ref.shape[-1]))
                for r, ((c, row), p) in enumerate(zip(where, starts, strict=True)):
                    got[r, ..., width - p :, :] = getattr(self._caches[c].layers[k], field)[
                        row, ..., :p, :
                    ]
                setattr(new, field, got)
            out.layers.append(new)
        return out

    # -- continued batches
    def continued(
        self, seqs: list[list[int]], bases: list[int], starts: list[int]
    ) -> torch.Tensor | None:
        """(B, keep, V) logits of each copy's last `keep` positions, continued from the cache of
        its `starts[r]` first positions; None where the shortcut is (or has just been) switched
        off. The first batch at each prefix length carries the base itself, checked against the
        base's own run; the run's first batch a probe, a base cut short, against its full
        forward."""
        if not self._ready():
            return None
        rows, rbases, rstarts = list(seqs), list(bases), list(starts)
        checks = {p: b for b, p in zip(bases, starts, strict=True) if p not in self._checked}
        if not self._padded and len(set(starts)) > 1:  # once, a row left-padded the most
            low = min(range(len(starts)), key=lambda r: starts[r])
            checks.setdefault(starts[low], bases[low])
            self._padded = True
        for p, b in checks.items():
            rows, rbases, rstarts = [*rows, self.bases[b]], [*rbases, b], [*rstarts, p]
        b, p = bases[0], starts[0]
        probe = self.bases[b][: p + self.keep] if not self._probed else None
        if probe is not None:
            rows, rbases, rstarts = [*rows, probe], [*rbases, b], [*rstarts, p]
        try:
            got = self._forward(rows, rstarts, self._cache(rbases, rstarts))[0]
        except Exception as exc:  # noqa: BLE001 - a cache that does not continue: whole copies
            if is_oom(exc):
                raise
            self._off(f"continuing from the cache raised {_one_line(exc)}", max(starts))
            return None
        n = len(seqs)
        assert self._outs is not None
        for k, (p, b) in enumerate(checks.items()):
            if not self._agrees(got[n + k], self._outs[b], "the unperturbed run", p):
                return None
            self._checked.add(p)
        if probe is not None:
            if not self._agrees(got[-1], self._alone(probe), "a copy's full forward", p):
                return None
            self._probed = True
        self.used = True
        self.reused += sum(starts)
        return got[:n]

    def _agrees(self, got: torch.Tensor, want: torch.Tensor, what: str, start: int) -> bool:
        """Do continued logits equal the reference's (else switch off, saying by how much)?"""
        err = relative_error(got, want)
        if err <= self.tolerance:
            return True
        self._off(
            f"continuing from the cache of {start} positions differs from {what} by {err:.1e} "
            f"(relative error; tolerance {self.tolerance:.0e})",
            start,
        )
        return False

    def _forward(
        self, seqs: list[list[int]], starts: list[int], cache: Any, kept: bool = False
    ) -> tuple[torch.Tensor, Any]:
        """(B, keep, V) logits and the grown cache of one forward of each row's positions from
        `starts[r]` on after `cache` (right-aligned), at the row's own positions. A cache to be
        `kept` (the bases') is grown right-padded, every row's positions in order; otherwise,
        where the forward takes position ids, the rows are left-padded (the padding masked
        between the cache and them), so that every row ends in the last column and only the
        last `keep` columns are unembedded."""
        width = max(starts)
        conts = [s[p:] for s, p in zip(seqs, starts, strict=True)]
        left = not kept and takes(self.model, "position_ids") and not _windowed(self.model)
        ids, mask = pad_batch(conts, self.pad_id, self.device, side="left" if left else "right")
        lead = torch.zeros((len(seqs), width), dtype=mask.dtype, device=self.device)
        for r, p in enumerate(starts):
            lead[r, width - p :] = 1
        kwargs = with_cache(self.model, cache)
        if takes(self.model, "position_ids"):
            pads = ids.shape[1] - mask.sum(dim=1, keepdim=True) if left else 0
            first = torch.tensor(starts, device=self.device)[:, None] - pads
            kwargs["position_ids"] = (first + torch.arange(ids.shape[1], device=self.device)).clamp(
                0
            )
        self.forwards += 1
        self.run_tokens += sum(len(c) for c in conts)
        mask = torch.cat([lead, mask], 1)
        if not left:
            return last_positions(self.model, ids, mask, self.keep, **kwargs)
        out = self.model(
            input_ids=ids, attention_mask=mask, **kwargs, **keep_last(self.model, self.keep)
        )
        return out.logits[:, -self.keep :], cache_of(out)

    def _alone(self, seq: list[int]) -> torch.Tensor:
        """(keep, V) logits of a sequence's last positions by a full forward alone, unpadded,
        without a cache."""
        ids = torch.tensor([seq], device=self.device)
        self.forwards += 1
        self.run_tokens += len(seq)
        kept = keep_last(self.model, self.keep)
        return self.model(input_ids=ids, use_cache=False, **kept).logits[0, -self.keep :]


def _windowed(model: torch.nn.Module) -> bool:
    """Does some attention layer see only a window of the latest positions (sliding, local or
    chunked attention)? Its window counts columns, so padding inside a row would move it."""
    config = model.config
    for c in filter(None, [config, getattr(config, "text_config", None)]):
        for key in ("sliding_window", "attention_chunk_size", "window_size", "local_window"):
            if getattr(c, key, None):
                return True
        for key in ("layer_types", "attention_layers"):
            kinds = " ".join(str(t) for t in getattr(c, key, None) or ())
            if any(w in kinds for w in ("sliding", "chunked", "local")):
                return True
    return False


class _NotKeyValue(Exception):
    """A run's cache is not one of every position's attention keys and values."""


def _expand(cache: Any, n: int) -> Any:
    """A one-row key/value cache repeated for `n` rows (views: a forward concatenates)."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in out.layers:
        layer.keys = layer.keys.expand(n, *layer.keys.shape[1:])
        layer.values = layer.values.expand(n, *layer.values.shape[1:])
    return out


def _kind(cache: Any) -> str:
    """A cache named by its type and its layers' types, for a message."""
    if cache is None:
        return "no cache"
    layers = sorted({type(x).__name__ for x in getattr(cache, "layers", None) or ()})
    return f"a {type(cache).__name__}" + (f" of {', '.join(layers)}" if layers else "")


def _whole(cache: Any, length: int) -> bool:
    """Does every layer of a key/value cache hold all `length` positions?"""
    return all(
        getattr(layer, "keys", None) is not None and layer.keys.shape[-2] >= length
        for layer in cache.layers
    )


def _one_line(exc: BaseException) -> str:
    """An exception as `Type: first line of its message`."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
