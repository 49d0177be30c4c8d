"""The fast estimate of a causal trace: attribution patching, a first-order estimate of every
cell from the recorded runs and one backward pass (Syed et al. 2023; Nanda's write-up)."""

from __future__ import annotations

import numpy as np
import torch

from .sites import recorder
from .tracer import Tracer


def first_order(tracer: Tracer) -> list[np.ndarray]:
    """Attribution patching: for every site, (samples, positions) of
    (source - base) . d metric / d state at the base run, from one forward and backward."""
    device = tracer.lm.device
    rows = torch.arange(tracer.samples if tracer.base_noisy else 1, device=device)
    store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    edits = {i: recorder(store, i) for i in range(len(tracer.flat))}
    ids = tracer.base_ids.expand(len(rows), -1)
    with torch.enable_grad():
        scores = tracer.forward(ids, rows if tracer.base_noisy else None, edits, leaf=True)
        paths = [store[i][1] for i in range(len(tracer.flat))]
        grads = torch.autograd.grad(scores.sum(), paths, allow_unused=True)
    samples = torch.arange(tracer.samples, device=device)
    base_rows = samples if tracer.base_noisy else torch.zeros_like(samples)
    source_rows = samples if tracer.source_noisy else torch.zeros_like(samples)
    out = []
    for i, g in enumerate(grads):
        if g is None:  # a site the metric does not depend on (e.g. after the last position)
            out.append(np.zeros((tracer.samples, tracer.n_pos)))
            continue
        dt = torch.float64 if g.dtype == torch.float64 else torch.float32
        delta = tracer.source[i][source_rows].to(dt) - tracer.base[i][base_rows].to(dt)
        out.append((delta * g[base_rows].to(dt)).sum(-1).double().cpu().numpy())
    return out
