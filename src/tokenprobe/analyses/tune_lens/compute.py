"""`tune_lens`: train a tuned lens (see `tokenprobe.tuned.train`) with a checkpoint in `out`,
and give it back as a result whose save writes the lens files beside the training curve."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...checkpoint import Checkpoint
from ...model import LoadedModel
from ...provenance import provenance
from ...tuned import train_lens
from ..settings import with_options
from .options import TuneLensOptions
from .result import TuneLensResult

PARTIAL = f"{TuneLensResult.kind}.partial"


@with_options(TuneLensOptions)
def tune_lens(
    lm: LoadedModel,
    data: str | Sequence[str],
    *,
    options: TuneLensOptions,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> TuneLensResult:
    """Train one affine translator per layer of `lm` on `tokens` tokens of `data` (a data-set
    path, a .txt file or a list of texts); `result.lens` is the lens, `result.save(DIR)` writes
    it in tokenprobe's and the tuned-lens package's formats. `options` (or its settings as
    keyword arguments): see `TuneLensOptions`.

    With `out`, the training state is checkpointed in `out/tuned_lens.partial` every
    `checkpoint_every` steps; `resume=True` goes on from it (the same settings are required),
    and the numbers equal those of an uninterrupted run.
    """
    stores: list[Checkpoint] = []

    def checkpoint(settings: dict[str, Any]) -> Checkpoint:
        stores.append(Checkpoint(Path(out) / PARTIAL, settings, resume))  # type: ignore[arg-type]
        return stores[0]

    training = train_lens(
        lm,
        data,
        options=options,
        checkpoint=checkpoint if out is not None else None,
        progress=progress,
    )
    result = TuneLensResult(
        losses=training.losses,
        lens=training.lens,
        meta={
            "analysis": "tuned lens training",
            **provenance(
                lm, {k: v for k, v in training.settings.items() if k not in ("model",)}
            ).meta(),
            "data": data if isinstance(data, str) else f"{len(data)} texts",
            "lens": {k: v for k, v in training.lens.info.items() if k != "training"},
            "rows": "layer 0 = embeddings, layer i = block i output; "
            "KL(final || tuned layer) per step",
        },
    )
    for store in stores:
        store.finish(result)
    return result
