"""`tune_lens`: train a tuned lens (see `tokenprobe.tuned.train`) with a checkpoint in `out`,
and give it back as a result whose save writes the lens files beside the training curve."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...checkpoint import Checkpoint
from ...errors import TokenprobeError
from ...model import LoadedModel
from ...results import now, versions
from ...tuned import train_lens
from ..base import check_options
from .options import OPTIONS
from .result import TuneLensResult

PARTIAL = f"{TuneLensResult.kind}.partial"


def tune_lens(
    lm: LoadedModel,
    data: str | Sequence[str],
    *,
    tokens: int,
    seq_len: int = 512,
    batch_size: int = 8,
    lr: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 1e-3,
    warmup_steps: int = 0,
    seed: int = 0,
    precision: str = "auto",
    text_column: str = "text",
    batch_tokens: int = 4096,
    memory_mb: float | None = None,
    checkpoint_every: int = 50,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> TuneLensResult:
    """Train one affine translator per layer of `lm` on `tokens` tokens of `data` (a data-set
    path, a .txt file or a list of texts); `result.lens` is the lens, `result.save(DIR)` writes
    it in tokenprobe's and the tuned-lens package's formats.

    With `out`, the training state is checkpointed in `out/tuned_lens.partial` every
    `checkpoint_every` steps; `resume=True` goes on from it (the same settings are required),
    and the numbers equal those of an uninterrupted run.
    """
    values = {"tokens": tokens, "seq_len": seq_len, "batch_size": batch_size, "lr": lr, "momentum": momentum,
              "weight_decay": weight_decay, "warmup_steps": warmup_steps, "memory_mb": memory_mb}
    check_options(OPTIONS, values)
    if memory_mb is not None and memory_mb <= 0:
        raise TokenprobeError(f"`memory_mb` must be positive, not {memory_mb:g}")
    stores: list[Checkpoint] = []

    def checkpoint(settings: dict[str, Any]) -> Checkpoint:
        stores.append(Checkpoint(Path(out) / PARTIAL, settings, resume))  # type: ignore[arg-type]
        return stores[0]

    training = train_lens(
        lm, data, tokens=tokens, seq_len=seq_len, batch_size=batch_size, lr=lr, momentum=momentum,
        weight_decay=weight_decay, warmup_steps=warmup_steps, seed=seed, precision=precision, text_column=text_column,
        batch_tokens=batch_tokens, memory_mb=memory_mb, progress=progress,
        checkpoint=checkpoint if out is not None else None, checkpoint_every=checkpoint_every,
    )
    result = TuneLensResult(
        losses=training.losses,
        lens=training.lens,
        meta={
            "analysis": "tuned lens training",
            "model": lm.describe(),
            "data": data if isinstance(data, str) else f"{len(data)} texts",
            "options": {k: v for k, v in training.settings.items() if k not in ("model",)},
            "lens": {k: v for k, v in training.lens.info.items() if k != "training"},
            "rows": "layer 0 = embeddings, layer i = block i output; KL(final || tuned layer) per step",
            "versions": versions(),
            "created": now(),
        },
    )
    for store in stores:
        store.finish(result)
    return result
