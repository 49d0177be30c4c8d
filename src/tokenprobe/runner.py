"""How an analysis's work runs: token-budget batches, padding, out-of-memory back-off,
progress bars and checkpoints. Every analysis hands its batches to these functions, so an
executor that runs them elsewhere (a cluster) plugs in here.

Sorting inputs by length before packing keeps padding small; the budget (batch size x longest
length) bounds activation memory whatever the mix of lengths. A batch that runs out of memory
is split in halves and retried.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from .checkpoint import Checkpoint
from .errors import TokenprobeError, warn

T = TypeVar("T")


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, max_batch: int | None = None
) -> list[list[int]]:
    """Indices grouped so that len(batch) * longest <= max_tokens (one over-long input still runs alone)."""
    if max_tokens < 1:
        raise TokenprobeError(
            f"the token budget per batch (`batch_tokens`) must be at least 1, not {max_tokens}"
        )
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest_if = max(longest, lengths[i])
        too_many = max_batch is not None and len(current) >= max_batch
        if current and (longest_if * (len(current) + 1) > max_tokens or too_many):
            batches.append(current)
            current, longest_if = [], lengths[i]
        current.append(i)
        longest = longest_if
    if current:
        batches.append(current)
    return batches


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ids and the attention mask.

    Right padding keeps each text's positions 0..n-1. Left padding puts every text's last token
    in the last column (so `logits_to_keep` can skip the rest); pass
    `left_positions(mask)` as `position_ids` with it.
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, span] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids.to(device), mask.to(device)


def left_positions(mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Position ids for a left-padded batch: each text counts from `offset` at its first token."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0) + offset


def pad_id_of(tokenizer: object, default: Any = 0) -> Any:
    """The tokenizer's pad id, else its eos id, else `default` (0: padded positions are masked
    anyway)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return default


def takes(model: torch.nn.Module, name: str) -> bool:
    """Does the model's forward name this keyword? (A `**kwargs` catch-all does not count:
    xLSTM's swallows `logits_to_keep` and `position_ids` and ignores them.)"""
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def keep_last(model: torch.nn.Module, k: int) -> dict[str, int]:
    """Forward keywords that unembed only the last `k` positions where the model's forward
    takes `logits_to_keep`; slice the output's last `k` positions (`logits[:, -k:]`) all the
    same, since a forward may ignore the keyword and return every position."""
    return {"logits_to_keep": k} if takes(model, "logits_to_keep") else {}


def float_tolerance(dtype: torch.dtype) -> float:
    """Two runs of the same input agree to float error: 1e-4 relative in float32, 3e-2 in
    16-bit types."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest error between two outputs relative to the reference's norm over the last
    dimension (positions compared one by one)."""
    g, w = got.double(), want.to(got.device).double()
    return float(((g - w).norm(dim=-1) / w.norm(dim=-1).clamp_min(1e-30)).max())


class PathUnavailable(Exception):
    """A batching path that cannot run on this model (the message says why); `quiet` where
    the next path is as fast (left padding for a model without position ids: right padding),
    so that passing it over is recorded in meta.json but not warned about."""

    def __init__(self, message: str, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet


ALONE = "alone"  # the batching path of last resort: one unpadded input at a time


class CheckedBatching:
    """Batches of token sequences through a model, the batched path checked against one input
    alone on the first batch of a run.

    `paths` are the ways a batch can run, in order of preference, each
    `fn(sequences) -> (B, ...)` outputs, and `labels` name them for meta.json; `alone(seq)`
    gives one sequence's output run alone, unpadded, with the model's own positions. The first
    batch runs with one more row, a probe: its longest sequence with the first half dropped
    (at least `min_probe` tokens kept), so that the probe is padded the most; the probe's
    batched output is compared with its output alone (`relative_error`, `float_tolerance`).
    The first path that agrees (and does not raise) runs the rest of the run; where none
    does, every input runs alone. Falling back is said once, as a warning (not where a path
    was only inapplicable and the next one as fast: `PathUnavailable(quiet=True)`); `note`
    says which path ran and why, for meta.json. Costs one forward of one row per run.
    """

    def __init__(
        self,
        paths: Mapping[str, Callable[[list[list[int]]], torch.Tensor]],
        labels: Mapping[str, str],
        alone: Callable[[list[int]], torch.Tensor],
        *,
        dtype: torch.dtype,
        what: str,
        min_probe: int = 1,
    ) -> None:
        self.paths = dict(paths)
        self.labels = {**labels, ALONE: "one input at a time"}
        self.alone = alone
        self.tolerance = float_tolerance(dtype)
        self.what = what
        self.min_probe = min_probe
        self.path: str | None = None  # the path chosen; None until the first batch ran
        self.rejected: dict[str, str] = {}  # path -> why it was not used
        self.loud = False  # was a path passed over that is worth a warning?
        self.forwards = 0  # model forward passes run, the check's included

    @property
    def note(self) -> str | None:
        """Which path ran and why, for meta.json (None before the first batch)."""
        if self.path is None:
            return None
        why = "; ".join(f"{self.labels[k]}: {v}" for k, v in self.rejected.items())
        if self.path == ALONE:
            return f"one input at a time ({why})"
        checked = f"{self.labels[self.path]} (checked against one input alone)"
        return f"{checked}; not used: {why}" if why else checked

    def __call__(self, seqs: list[list[int]]) -> torch.Tensor:
        """(len(seqs), ...) outputs of a batch, by the chosen path (checked on the first)."""
        if self.path is None:
            return self._check(seqs)
        if self.path == ALONE:
            return self._one_at_a_time(seqs)
        self.forwards += 1
        return self.paths[self.path](seqs)

    def _one_at_a_time(self, seqs: list[list[int]]) -> torch.Tensor:
        self.forwards += len(seqs)
        return torch.stack([self.alone(s) for s in seqs])

    def _probe(self, seqs: list[list[int]]) -> list[int]:
        """The longest sequence with its first half dropped (the same where it is too short)."""
        longest = max(seqs, key=len)
        cut = max(0, min(len(longest) // 2, len(longest) - self.min_probe))
        return list(longest[cut:])

    def _check(self, seqs: list[list[int]]) -> torch.Tensor:
        """Run the first batch with a probe row, compare the probe with its run alone, and
        choose the path for the rest of the run."""
        probe = self._probe(seqs)
        self.forwards += 1
        want = self.alone(probe)
        rows = [*seqs, probe]
        for name, fn in self.paths.items():
            try:
                got = fn(rows)
            except PathUnavailable as exc:
                self.rejected[name] = str(exc)
                self.loud |= not exc.quiet
                continue
            except Exception as exc:  # noqa: BLE001 - a path that fails falls back to the next
                if is_oom(exc):
                    raise  # run_with_backoff splits the batch; the check runs on a half
                self.forwards += 1
                self.rejected[name] = f"fails ({type(exc).__name__}: {str(exc)[:200]})"
                self.loud = True
                continue
            self.forwards += 1
            err = relative_error(got[-1], want)
            if err <= self.tolerance:
                self._choose(name)
                return got[: len(seqs)]
            self.rejected[name] = (
                f"differs from one input alone by {err:.1e} "
                f"(relative error, tolerance {self.tolerance:.0e})"
            )
            self.loud = True
        self._choose(ALONE)
        return self._one_at_a_time(seqs)

    def _choose(self, name: str) -> None:
        self.path = name
        if self.loud or name == ALONE:
            warn(f"{self.what} runs {self.note}", stacklevel=5)


def progress_disabled(progress: bool | None, n_batches: int | None = None) -> bool | None:
    """tqdm's `disable`: forced by `progress`, else shown on a terminal (None) unless one batch."""
    if progress is not None:
        return not progress
    return True if n_batches is not None and n_batches <= 1 else None


def is_oom(exc: BaseException) -> bool:
    """Out of memory, on any device: torch's OutOfMemoryError, Python's (and numpy's)
    MemoryError, or an allocator's message (CUDA's "out of memory", the CPU allocator's
    "can't allocate memory")."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def run_with_backoff(
    batch: list[int], fn: Callable[[list[int]], T]
) -> Iterator[tuple[list[int], T]]:
    """Run `fn(batch)`; on out-of-memory split the batch in halves and retry each half."""
    try:
        yield batch, fn(batch)
    except (RuntimeError, torch.OutOfMemoryError) as exc:
        if not is_oom(exc) or len(batch) == 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(batch) // 2
        yield from run_with_backoff(batch[:half], fn)
        yield from run_with_backoff(batch[half:], fn)


def map_batches(
    lengths: Sequence[int], max_tokens: int, fn: Callable[[list[int]], T]
) -> Iterator[tuple[list[int], T]]:
    """`fn` over token-budget batches of the inputs with these lengths, each batch split in
    halves when it runs out of memory: yields (indices, fn(indices)) until all are done."""
    for batch in token_budget_batches(lengths, max_tokens):
        yield from run_with_backoff(batch, fn)


def open_checkpoint(
    out: str | Path | None, partial: str, settings: dict[str, Any], resume: bool
) -> Checkpoint | None:
    """The checkpoint folder `out/partial` for a run with these settings (None without `out`):
    a new one, or with `resume` the interrupted run's, whose finished parts the caller reads."""
    if out is None:
        return None
    return Checkpoint(Path(out) / partial, settings, resume)


def run_chunks(
    chunks: Sequence[Sequence[int]],
    compute: Callable[[Sequence[int]], Any],
    *,
    store: Checkpoint | None,
    suffix: str,
    write: Callable[[Any], Callable[[Path], object]],
    unit: str | None = None,
    read: Callable[[Path], Any] | None = None,
    bar: Any = None,
    after_chunk: Callable[[int], None] | None = None,
    remote: Remote | None = None,
    executor: Any = None,
) -> dict[int, Any]:
    """`compute` each chunk of inputs, in order, writing each finished one to `store` (as
    `write(part)` writes it) so that a resumed run takes it from there instead. Returns
    {chunk number: part}, the resumed parts included; `bar` counts inputs. With `unit` (what
    one input is: "text", "row") each part says it holds its chunk's inputs, for the message
    of an interrupted run.

    With an `executor` (`executors.RayExecutor`), the chunks run on its workers as `remote`
    says, and each is written as soon as it comes back, whichever worker ran it."""
    parts: dict[int, Any] = {} if store is None else store.read(suffix, read)
    parts = {k: v for k, v in parts.items() if k < len(chunks)}
    if bar is not None:
        bar.update(sum(len(chunks[k]) for k in parts))
    todo = [k for k in range(len(chunks)) if k not in parts]
    if executor is None:
        finished: Iterator[tuple[int, Any]] = ((k, compute(chunks[k])) for k in todo)
    else:
        assert remote is not None, "a chunk run elsewhere needs its Remote recipe"
        payloads = {k: remote.payload(chunks[k]) for k in todo}
        finished = executor.map(remote.factory, remote.fn, payloads)
    for k, part in finished:
        parts[k] = part
        if store is not None:
            store.write(k, suffix, write(part), unit=unit, count=len(chunks[k]))
        if bar is not None:
            bar.update(len(chunks[k]))
        if after_chunk is not None:
            after_chunk(k)
    return parts


@dataclass
class Remote:
    """How a chunk runs on a worker: `factory()` builds the worker's state once (its model),
    then `fn(state, payload(chunk))` computes a chunk. All three must pickle (cloudpickle)."""

    factory: Callable[[], Any]
    fn: Callable[[Any, Any], Any]
    payload: Callable[[Sequence[int]], Any]
