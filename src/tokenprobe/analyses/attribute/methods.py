"""The attribution methods, one registry (`METHODS`): name -> method(problem, **options) ->
(attributions (rows, features), standard errors or None, details for meta.json).

Conventions (captum's where it has one): ablation and occlusion give f(x) - f(x without the
feature); Shapley values average f(S + i) - f(S) over permutations; the gradient methods are
in `gradients.py`.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .gradients import GRADIENT_METHODS, gradients
from .problem import Problem

MethodOutput = tuple[np.ndarray, np.ndarray | None, dict[str, Any]]


def ablation(pb: Problem, **_: Any) -> MethodOutput:
    """f(x) - f(x with one feature ablated), for each feature."""
    n = len(pb.features)
    full = tuple(range(n))
    coalitions = [full] + [tuple(g for g in full if g != f) for f in full]
    scores = pb.coalition_scores(coalitions)
    base = scores[0]
    attr = torch.stack([base - s for s in scores[1:]], dim=1)  # (rows, features)
    return attr.numpy(), None, {}


def _permutations(n: int, samples: int, seed: int) -> tuple[list[list[int]], bool]:
    """Every permutation of n features when there are no more than `samples` of them (exact),
    else `samples` random ones in antithetic pairs (a permutation and its reverse)."""
    exact = n <= 8 and samples >= math.factorial(n)
    if exact:
        return [list(p) for p in itertools.permutations(range(n))], True
    rng = np.random.default_rng(seed)
    perms: list[list[int]] = []
    while len(perms) < samples:
        p = list(rng.permutation(n))
        perms.append(p)
        if len(perms) < samples:
            perms.append(p[::-1])  # antithetic partner
    return perms, False


def shapley(pb: Problem, *, samples: int, seed: int, **_: Any) -> MethodOutput:
    """Shapley values: mean marginal contributions over permutations, with standard errors
    over antithetic pairs (zero when exact)."""
    n = len(pb.features)
    perms, exact = _permutations(n, samples, seed)
    chains = [[tuple(sorted(p[:k])) for k in range(n + 1)] for p in perms]
    values = pb.coalition_scores([c for chain in chains for c in chain])
    rows = len(pb.rows)
    marginals = np.zeros((len(perms), rows, n))
    for k, p in enumerate(perms):
        vals = values[k * (n + 1) : (k + 1) * (n + 1)]
        for step, f in enumerate(p):
            marginals[k, :, f] = (vals[step + 1] - vals[step]).numpy()
    attr = marginals.mean(axis=0)
    if exact:
        stderr = np.zeros_like(attr)
    else:
        pairs = len(perms) // 2
        units = (
            marginals[: 2 * pairs].reshape(pairs, 2, rows, n).mean(axis=1)
            if pairs > 1
            else marginals
        )
        stderr = (
            units.std(axis=0, ddof=1) / math.sqrt(len(units))
            if len(units) > 1
            else np.full_like(attr, np.nan)
        )
    return (
        attr,
        stderr,
        {"permutations": len(perms), "exact": exact, "coalitions_evaluated": len(pb.cache)},
    )


def occlusion(pb: Problem, *, window: int, stride: int, **_: Any) -> MethodOutput:
    """f(x) - f(x with a window of tokens ablated), spread evenly over the window's tokens
    and summed over each feature's tokens."""
    n = len(pb.prompt_ids)
    window = min(window, n)
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] != n - window:
        starts.append(n - window)
    repl = pb.replacement()
    prompts = []
    for s in starts:
        occluded = set(range(s, s + window))
        out: list[int] = []
        for i, t in enumerate(pb.prompt_ids):
            if i not in occluded:
                out.append(t)
            elif repl is not None and (len(repl) == 1 or i == s):
                out.extend(repl)
        prompts.append(out)
    scores = pb.score_prompts([pb.prompt_ids, *prompts])
    diffs = (scores[0:1] - scores[1:]).numpy()  # (windows, rows)
    per_token = np.zeros((len(pb.rows), n))
    covered = np.zeros(n)
    for s, d in zip(starts, diffs, strict=True):
        per_token[:, s : s + window] += d[:, None]
        covered[s : s + window] += 1
    per_token /= np.maximum(covered, 1)
    attr = np.stack([per_token[:, f.positions].sum(axis=1) for f in pb.features], axis=1)
    return attr, None, {"windows": len(starts), "window": window, "stride": stride}


DEFAULT_METHOD = "ablation"
# the one registry of methods: the library, the command line's --method help and its check
METHODS: dict[str, Callable[..., MethodOutput]] = {
    "ablation": ablation,
    "shapley": shapley,
    "occlusion": occlusion,
    **{name: functools.partial(gradients, method=name) for name in GRADIENT_METHODS},
}
