"""A prompted classifier's perturbed copies continued from their unperturbed texts' caches
(`tokenprobe.prefix`): the texts run once keeping their caches (their own scores come from that
run), and each copy runs only from its first changed position on, where that is checked on the
model and the cost model says it saves work; otherwise the copies run whole, as before."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...prefix import Prefix, continue_copies


def scores(
    clf: Any, seqs: list[list[int]], bases: Sequence[int], batch_tokens: int, out: np.ndarray
) -> list[int]:
    """Fill `out` for the unperturbed texts (`bases`; `seqs` each with the suffix) and for the
    copies continued from them; returns the indices left for `clf` to run whole (all of them
    where the shortcut is off)."""
    originals = sorted(set(bases))
    index = {b: k for k, b in enumerate(originals)}
    copies = [i for i in range(len(seqs)) if i not in index]
    prefix = _prefix(clf, [seqs[b] for b in originals], batch_tokens)
    got = None if prefix is None else prefix.base_logits()
    if prefix is None or got is None:
        if prefix is not None:
            clf._prefix_why = clf._prefix_note = prefix.note  # said once a run
        return list(range(len(seqs)))
    verb = torch.tensor(clf.verbaliser_ids, device=got.device)
    out[originals] = got[:, 0, verb].float().cpu().numpy()
    for batch, logits in continue_copies(
        prefix,
        [clf.prefix_ids + seqs[i] for i in copies],
        [index[bases[i]] for i in copies],
        batch_tokens,
        lambda b: clf._scored([seqs[copies[j]] for j in b]),
        lambda g: g[:, 0, verb].float().cpu().numpy(),
    ):
        out[[copies[j] for j in batch]] = logits
    clf._prefix_why = None if prefix.on else prefix.note
    clf._prefix_note = prefix.note
    return []


def _prefix(clf: Any, seqs: list[list[int]], batch_tokens: int) -> Prefix | None:
    """Continuing copies from their unperturbed texts (`seqs`), unless the prefix cache is
    turned off or a check failed earlier in the run (then `clf`'s note says why)."""
    if not clf._init["reuse_prefix"] or clf._prefix_why:
        why = "the prefix cache is turned off (reuse_prefix=False, --no-prefix-cache)"
        clf._prefix_note = clf._prefix_why or f"recomputed: {why}"
        return None
    return Prefix(
        clf.lm.model,
        [clf.prefix_ids + s for s in seqs],
        keep=1,
        pad_id=clf.pad_id,
        dtype=clf.lm.dtype,
        what=f"flip rates with {type(clf.lm.model).__name__}",
        head=len(clf.prefix_ids),
        max_tokens=batch_tokens,
    )
