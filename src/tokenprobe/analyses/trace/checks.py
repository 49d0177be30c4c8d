"""Checks a causal trace makes of its clean and corrupted runs before (and after) the patched
ones: finite scores, a target the model gives some chance, and scores far enough apart for the
normalised values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import TokenprobeError, warn

IMPLAUSIBLE = 1e-3  # warn when the target's clean probability is below this ...
TOP = 10  # ... and it is not among the clean run's top this many tokens


def check_finite(tracer: Any, noised: bool) -> None:
    """One line when the clean or corrupted run's score overflowed (a huge `noise`, a 16-bit
    model), rather than NaN cells."""
    if np.isfinite([tracer.clean_score, *tracer.corrupted_scores]).all():
        return
    run = "clean" if not np.isfinite(tracer.clean_score) else "corrupted"
    fix = (
        " with this `noise`: give a smaller `noise`"
        if run == "corrupted" and noised
        else f" in {str(tracer.lm.dtype).removeprefix('torch.')}: load it in float32 (`dtype`)"
    )
    raise TokenprobeError(f"the {run} run's score is not finite: the model's numbers overflow{fix}")


def warn_if_close(clean: float, corrupted: Sequence[float]) -> None:
    """The normalised scores divide by clean - corrupted: say so when that difference is within
    5% of the scores or within the noise samples' own spread."""
    mean = float(np.mean(corrupted))
    gap, spread = abs(clean - mean), float(np.std(corrupted))
    if gap < 0.05 * max(abs(clean), abs(mean)) or (len(corrupted) > 1 and gap < spread):
        warn(
            f"the clean and corrupted scores are close ({clean:.4g} against {mean:.4g}): the "
            "normalised values divide by their difference and are unreliable; corrupt more "
            "(a larger `noise`) or score another `target`"
        )


CHAT_HINT = "`chat` (an instruction-tuned model may need its chat template)"


def warn_if_implausible(
    tracer: Any, target: str, hint: str = CHAT_HINT, stacklevel: int = 4
) -> None:
    """A target the clean run all but rules out is most often a tokenization slip (no leading
    space) or a chat model given a bare prompt, and its trace says little: say so before the
    work. `stacklevel` 4: the caller of `causal_trace` (through `takes`)."""
    probability, rank = tracer.target_standing
    if probability < IMPLAUSIBLE and rank > TOP:
        warn(
            f"the target {target!r} is implausible in the clean run (probability {probability:.2g}, "
            f"rank {rank}): the trace follows an answer the model does not give; check `target` "
            f"(a leading space, as in ' Paris'?) or {hint}",
            stacklevel=stacklevel,
        )
