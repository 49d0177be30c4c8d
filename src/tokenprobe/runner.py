"""How an analysis's work runs: token-budget batches, padding, out-of-memory back-off,
progress bars and checkpoints. Every analysis hands its batches to these functions, so an
executor that runs them elsewhere (a cluster) plugs in here.

Sorting inputs by length before packing keeps padding small; the budget (batch size x longest
length) bounds activation memory whatever the mix of lengths. A batch that runs out of memory
is split in halves and retried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from .checkpoint import Checkpoint
from .errors import TokenprobeError

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


def progress_disabled(progress: bool | None, n_batches: int | None = None) -> bool | None:
    """tqdm's `disable`: forced by `progress`, else shown on a terminal (None) unless one batch."""
    if progress is not None:
        return not progress
    return True if n_batches is not None and n_batches <= 1 else None


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


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
    read: Callable[[Path], Any] | None = None,
    bar: Any = None,
    after_chunk: Callable[[int], None] | None = None,
    remote: Remote | None = None,
    executor: Any = None,
) -> dict[int, Any]:
    """`compute` each chunk of inputs, in order, writing each finished one to `store` (as
    `write(part)` writes it) so that a resumed run takes it from there instead. Returns
    {chunk number: part}, the resumed parts included; `bar` counts inputs.

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
            store.write(k, suffix, write(part))
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
