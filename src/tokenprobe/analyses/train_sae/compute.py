"""`train_sae`: train a TopK sparse autoencoder on one site of a model (see
`tokenprobe.sae.train`) with a checkpoint in `out`, and give it back as a result whose save
writes the SAELens folder beside the training log."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...checkpoint import Checkpoint
from ...model import LoadedModel
from ...provenance import provenance
from ...sae.train import COLUMNS, Training
from ...sae.train import train_sae as _train
from ..settings import with_options
from .options import TrainSaeOptions
from .result import TrainSaeResult

PARTIAL = f"{TrainSaeResult.kind}.partial"


@with_options(TrainSaeOptions)
def train_sae(
    lm: LoadedModel,
    data: str | Sequence[str],
    *,
    options: TrainSaeOptions,
    eval_data: str | Sequence[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> TrainSaeResult:
    """Train a TopK sparse autoencoder on the residual stream at `layer` (or at `sae_site`)
    of `lm` over `tokens` tokens of `data` (a data-set path, a .txt file or a list of texts),
    and measure it on held-out text (`eval_data`, else the end of `data`): FVE, L0, dead
    latents and the cross-entropy loss recovered. `result.dictionary` is the SAE,
    `result.save(DIR)` writes it as a SAELens folder (`load_sae(DIR)` reads it). `options`
    (or its settings as keyword arguments): see `TrainSaeOptions`.

    With `out`, the training state is checkpointed in `out/train_sae.partial` every
    `checkpoint_every` steps; `resume=True` goes on from it (the same settings are required),
    and the numbers equal those of an uninterrupted run bit for bit.
    """
    stores: list[Checkpoint] = []

    def checkpoint(settings: dict[str, Any]) -> Checkpoint:
        stores.append(Checkpoint(Path(out) / PARTIAL, settings, resume))  # type: ignore[arg-type]
        return stores[0]

    training = _train(
        lm,
        data,
        options=options,
        eval_data=eval_data,
        checkpoint=checkpoint if out is not None else None,
        progress=progress,
    )
    result = TrainSaeResult(
        table=_table(training), dictionary=training.dictionary, meta=_meta(lm, data, training)
    )
    for store in stores:
        store.finish(result)
    return result


def _table(training: Training) -> dict[str, np.ndarray]:
    steps = len(training.log)
    per_step = training.settings["batch_size"] * training.settings["seq_len"]
    table = {"step": np.arange(steps), "tokens": (np.arange(steps) + 1) * per_step}
    return {**table, **{c: training.log[:, i].astype(np.float64) for i, c in enumerate(COLUMNS)}}


def _meta(lm: LoadedModel, data: str | Sequence[str], training: Training) -> dict[str, Any]:
    settings = {k: v for k, v in training.settings.items() if k != "model"}
    d = training.dictionary
    meta: dict[str, Any] = {
        "analysis": "sparse autoencoder training",
        **provenance(lm, settings).meta(),
        "data": data if isinstance(data, str) else f"{len(data)} texts",
        "model_name": lm.name,
        "sae": {
            "site": str(d.site),
            "hook_name": d.hook,
            "latents": d.d_sae,
            "k": d.k,
            "d_in": d.d_in,
            "architecture": "topk",
            "format": "saelens",
        },  # fmt: skip
        "rows": "one per step: the batch's FVE, L0, loss and AuxK loss before the step's "
        "update, the dead fraction after it",
    }
    q = training.quality
    if q is not None:
        dead = float(training.log[-1, COLUMNS.index("dead_fraction")]) if len(training.log) else 0.0
        meta["quality"] = {
            "fve": q.fve,
            "error_ratio_median": q.error_ratio,
            "l0": q.l0,
            "dead_latents": round(dead * d.d_sae),
            "dead_after_tokens": settings["dead_tokens"],
            "never_fired_held_out": q.never_fired,
            "ce_clean": q.ce_clean,
            "ce_spliced": q.ce_spliced,
            "ce_zero_ablated": q.ce_ablated,
            "ce_recovered": q.ce_recovered,
            "ablation": "zero: the site's state replaced by zeros at every position from "
            f"{settings['skip_first']} on",
            "splice": "the site's state replaced by the reconstruction at every position from "
            f"{settings['skip_first']} on",
            "tokens": q.tokens,
        }
    return meta
