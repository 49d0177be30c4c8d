"""A causal trace's checkpoint: the settings that decide its numbers, and every finished batch
of patched runs written as a part as soon as it is done, so that an interrupted trace resumes
without running them again (and a resume with other settings is refused)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...checkpoint import Checkpoint, digest, model_settings, npz_writer
from ...model import LoadedModel
from ...runner import open_checkpoint
from .options import TraceOptions
from .tracer import Comparison

PARTIAL = "trace.partial"  # in the output folder (the result's kind, as `check_out` expects)
SUFFIX = ".cells.npz"  # a part: one batch's rows of one component, their scores, cells finished


class CellStore:
    """The patched runs a trace's checkpoint holds, by component and row (row = cell x
    samples + sample), and the writing of each new batch of them."""

    def __init__(self, checkpoint: Checkpoint, components: Sequence[str], samples: int) -> None:
        self.checkpoint = checkpoint
        self.samples = samples
        self.done: dict[str, dict[int, float]] = {c: {} for c in components}
        parts = checkpoint.read(SUFFIX)
        for part in parts.values():
            rows = self.done.setdefault(str(part["component"]), {})
            rows.update(zip(part["rows"].tolist(), part["scores"].tolist(), strict=True))
        self.next = max(parts, default=-1) + 1

    @property
    def n_done(self) -> int:
        """Patched runs already scored."""
        return sum(len(rows) for rows in self.done.values())

    def write(self, component: str, rows: list[int], scores: np.ndarray) -> None:
        """One finished batch as the next part, with the cells whose every noise sample is
        now scored (for the message of an interrupted run)."""
        done = self.done.setdefault(component, {})
        done.update(zip(rows, np.asarray(scores, dtype=np.float64).tolist(), strict=True))
        n = self.samples
        cells = sorted({r // n for r in rows})
        finished = [c for c in cells if all(c * n + s in done for s in range(n))]
        self.checkpoint.write(
            self.next,
            SUFFIX,
            npz_writer(
                component=np.array(component),
                rows=np.asarray(rows, dtype=np.int64),
                scores=np.asarray(scores, dtype=np.float64),
                cells=np.asarray(finished, dtype=np.int64),
            ),
            unit="traced cell",
            count=len(finished),
        )
        self.next += 1


def open_store(
    lm: LoadedModel,
    problem: Comparison,
    options: dict[str, Any],
    checkpoint: str | Path | None,
    resume: bool,
) -> CellStore | None:
    """The trace's checkpoint in `checkpoint`/trace.partial (None without `checkpoint`), with
    what an interrupted run of the same settings finished. `options`: corrupt, components,
    window, noise, samples, seed and method (noise, samples and seed as the run uses them)."""
    settings = {
        "analysis": "trace",
        "model": model_settings(lm),
        "clean_ids": digest(problem.clean_ids),
        "corrupted_ids": digest(problem.corrupted_ids),
        "subject_positions": list(problem.span) if problem.span is not None else None,
        "target_id": problem.target_id,
        "foil_id": problem.foil_id,
        "metric": problem.metric,
        "direction": problem.direction,
        **options,
    }
    store = open_checkpoint(checkpoint, PARTIAL, settings, resume)
    if store is None:
        return None
    return CellStore(store, options["components"], int(options["samples"]))


def kept_settings(o: TraceOptions) -> dict[str, Any]:
    """The settings that decide a checkpoint's numbers (the noise ones as the run uses them)."""
    noised = o.corruption == "noise"
    return {
        "components": o.traced,
        "window": o.window,
        "seed": o.seed if noised else None,
        "samples": o.samples if noised else 1,
        "noise": o.noise if noised else None,
        "corrupt": o.corruption,
        "method": o.method,
        # (absent when each: the checkpoints of traces before the setting existed still resume)
        **({"positions": o.positions} if o.positions != "each" else {}),
    }
