"""Causal tracing (activation patching): which (layer, position) state carries the answer.

A clean prompt and a corrupted one (another prompt of the same token length, or the clean one
with Gaussian noise on the subject's input embeddings); for every layer and position of a
component (the residual stream, the attention output, the MLP output), the source run's state
is restored into the base run and the target scored: clean into corrupted by default (ROME's
causal trace), corrupted into clean with `direction="corrupt"`. Scores are raw and normalised
(0 = the corrupted run, 1 = the clean run). `method="estimate"` gives attribution patching's
first-order estimate from one forward and backward pass instead.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ...errors import TokenprobeError, warn
from ...model import LoadedModel
from ...model.adapter import weight_of
from ...results import now, versions
from ...runner import progress_disabled, token_budget_batches
from ...text import PreparedInput, prepare, token_texts
from ..base import check_options
from .estimate import first_order
from .inputs import Settings, check_settings, corrupted_input, subject_span, token_id
from .options import OPTIONS
from .result import TraceResult
from .store import CellStore, open_store
from .tracer import Cell, Problem, Tracer, window_of

IMPLAUSIBLE = 1e-3  # warn when the target's clean probability is below this ...
TOP = 10  # ... and it is not among the clean run's top this many tokens
# each component's cells (the sites each restores) and the (row, position) each fills
Plans = dict[str, tuple[list[Cell], list[tuple[int, int]]]]


def causal_trace(
    lm: LoadedModel,
    prompt: str | PreparedInput,
    *,
    target: str | None = None,
    foil: str | None = None,
    corrupted: str | None = None,
    corrupt: str | None = None,
    subject: str | None = None,
    noise: float = 3.0,
    samples: int = 10,
    seed: int = 0,
    components: Sequence[str] = ("resid",),
    window: int = 1,
    direction: str = "restore",
    metric: str | None = None,
    method: str = "exact",
    chat: bool = False,
    system: str | None = None,
    batch_tokens: int = 2048,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> TraceResult:
    """Causal trace of `target` (the next token after the prompt) over `components`.

    Corruption: `corrupted` (a prompt of the same token length), or `corrupt="noise"` with
    `subject` (noise of `noise` x the embeddings' standard deviation on the subject's tokens,
    `samples` draws averaged, seeded by `seed`). `window` restores that many consecutive layers
    at once. `metric`: prob, logprob, or diff (logit of `target` - logit of `foil`; the default
    when a foil is given). `method`: exact, estimate (attribution patching) or both. With
    `checkpoint`, each finished batch of patched runs is written there as the run goes;
    `resume=True` takes them from an interrupted run instead of computing them again (the
    estimate, one forward and backward pass, is computed again).
    """
    _check_options(window=window, samples=samples, seed=seed, direction=direction, method=method,
                   metric=metric, corrupt=corrupt)
    s = check_settings(target, foil, corrupted, corrupt, subject, noise, components, metric)
    if s.corrupt == "prompt":
        _warn_unused_noise({"noise": noise, "samples": samples, "seed": seed})
    clean = prompt if isinstance(prompt, PreparedInput) else prepare(lm, prompt, chat=chat, system=system)
    bad, differ = (None, None) if s.corrupt == "noise" else corrupted_input(lm, clean, corrupted or "", chat, system)
    span = subject_span(lm, clean, subject) if subject is not None else None
    target_id = token_id(lm, target or "", "target")
    foil_id = token_id(lm, foil, "foil") if foil is not None else None
    if foil_id is not None and foil_id == target_id:
        raise TokenprobeError(
            f"`foil` {foil!r} is the same token as `target` {target!r}"
            f"{'' if foil == target else ' (their first tokens are the same)'}: give another foil"
        )
    noised = s.corrupt == "noise"
    noise_t, noise_std = _draw_noise(lm, span, samples, seed, noise) if noised else (None, None)
    corrupted_ids = list(bad.input_ids) if bad is not None else list(clean.input_ids)
    problem = Problem(list(clean.input_ids), corrupted_ids, target_id, foil_id, s.metric, direction, noise_t, span)
    tracer = Tracer(lm, problem, s.components)
    _check_finite(tracer, noise_t is not None)
    _warn_if_implausible(tracer, target or "")
    options = {"components": list(s.components), "window": window, "seed": seed,
               "samples": samples if noised else 1, "noise": noise if noised else None}
    settings = {**options, "seed": seed if noised else None, "corrupt": s.corrupt, "method": method}
    store = open_store(lm, problem, settings, checkpoint, resume)
    scores, estimates = _trace(tracer, s.components, window, method, batch_tokens, progress, store)
    given = {"subject": subject, "target": target, "foil": foil, "target_id": target_id,
             "foil_id": foil_id, "direction": direction, "method": method, "noise_std": noise_std}
    options["batch_tokens"] = batch_tokens
    meta = _meta(lm, clean, bad, s, tracer, list(span or differ or []) or None, given, options)
    result = TraceResult(
        tokens=list(clean.tokens),
        token_ids=list(clean.input_ids),
        components=list(s.components),
        scores=scores,
        estimates=estimates,
        meta=meta,
    )
    if method == "both":
        result.meta["estimate_correlation"] = result.correlation()
    if store is not None:  # removed now, or by result.save() inside kept_until_saved()
        store.checkpoint.finish(result)
    return result


def _check_options(**values: Any) -> None:
    """The options' choices and limits; counts and the seed must be whole numbers (2.5 samples
    would fail deep in torch, and True count as 1)."""
    for name in ("samples", "window", "seed"):
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TokenprobeError(f"`{name}` must be a whole number, not {value!r}")
    check_options(OPTIONS, values)


def _meta(
    lm: LoadedModel,
    clean: PreparedInput,
    bad: PreparedInput | None,
    s: Settings,
    tracer: Tracer,
    marked: list[int] | None,
    given: dict,
    options: dict,
) -> dict:
    """meta.json: the inputs, the scored tokens, the clean and corrupted scores, the options."""
    tok = lm.tokenizer
    return {
        "analysis": "causal trace",
        "model": lm.describe(),
        "prompt": clean.prompt,
        "text": clean.text,
        "token_ids": list(clean.input_ids),
        "corrupted": bad.prompt if bad is not None else None,
        "corrupted_token_ids": list(bad.input_ids) if bad is not None else None,
        "corruption": s.corrupt,
        "marked": marked,
        **given,
        "target_token": token_texts(tok, [given["target_id"]])[0],
        "foil_token": token_texts(tok, [given["foil_id"]])[0] if given["foil_id"] is not None else None,
        "metric": s.metric,
        **_run_meta(tracer, s.components),
        "options": {"chat": clean.options.get("chat", False), "system": clean.options.get("system"), **options},
        "versions": versions(),
        "created": now(),
    }


def _draw_noise(
    lm: LoadedModel, span: tuple[int, int] | None, samples: int, seed: int, noise: float
) -> tuple[torch.Tensor, float]:
    """(samples, subject tokens, width) Gaussian draws, seeded on the CPU (the same on every
    device), scaled to `noise` x the embeddings' standard deviation; and that scale."""
    assert span is not None
    std = embedding_std(lm) * noise
    width = int(weight_of(lm.require_adapter().embed).shape[1])
    draws = torch.randn((samples, span[1] - span[0], width), generator=torch.Generator().manual_seed(seed))
    scaled = (draws * std).to(lm.device)
    if not (np.isfinite(std) and bool(torch.isfinite(scaled).all())):
        raise TokenprobeError(
            f"`noise` {noise:g} x the embeddings' standard deviation is not a finite number in "
            f"{str(lm.dtype).removeprefix('torch.')}: give a smaller `noise` (3 is the usual)"
        )
    return scaled, std


def _warn_unused_noise(given: dict[str, Any]) -> None:
    """The noise settings do nothing when the corruption is a prompt: say so if any was set."""
    defaults = inspect.signature(causal_trace).parameters
    changed = [k for k, v in given.items() if v != defaults[k].default]
    if changed:
        warn(
            f"`{'`, `'.join(changed)}` only apply to noise corruption and are ignored with a "
            "`corrupted` prompt: drop them, or corrupt with noise instead"
        )


def _check_finite(tracer: Tracer, noised: bool) -> None:
    """One line when the clean or corrupted run's score overflowed (a huge `noise`, a 16-bit
    model), rather than NaN cells."""
    if np.isfinite([tracer.clean_score, *tracer.corrupted_scores]).all():
        return
    run = "clean" if not np.isfinite(tracer.clean_score) else "corrupted"
    fix = (" with this `noise`: give a smaller `noise`" if run == "corrupted" and noised
           else f" in {str(tracer.lm.dtype).removeprefix('torch.')}: load it in float32 (`dtype`)")
    raise TokenprobeError(f"the {run} run's score is not finite: the model's numbers overflow{fix}")


def _warn_if_close(clean: float, corrupted: Sequence[float]) -> None:
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


def _warn_if_implausible(tracer: Tracer, target: str) -> None:
    """A target the clean run all but rules out is most often a tokenization slip (no leading
    space) or a chat model given a bare prompt, and its trace says little: say so before the work."""
    probability, rank = tracer.target_standing
    if probability < IMPLAUSIBLE and rank > TOP:
        warn(
            f"the target {target!r} is implausible in the clean run (probability {probability:.2g}, "
            f"rank {rank}): the trace follows an answer the model does not give; check `target` "
            "(a leading space, as in ' Paris'?) or `chat` (an instruction-tuned model may need "
            "its chat template)",
            stacklevel=3,
        )


def _run_meta(tracer: Tracer, components: Sequence[str]) -> dict:
    """The clean and corrupted scores, where each row's state was read, and how the exact
    cells' lower blocks and earlier positions ran."""
    _warn_if_close(tracer.clean_score, tracer.corrupted_scores)
    return {
        "clean_score": tracer.clean_score,
        "corrupted_score": float(np.mean(tracer.corrupted_scores)),
        "corrupted_scores": tracer.corrupted_scores,
        "sites": {c: [x.path if x is not None else None for x in tracer.sites[c]] for c in components},
        **tracer.shortcuts(),
    }


def _cells(tracer: Tracer, component: str, window: int) -> tuple[list[Cell], list[tuple[int, int]]]:
    """Every (row, position) cell of a component that has a site, with the sites it restores."""
    sites = tracer.sites[component]
    cells, where = [], []
    for row, site in enumerate(sites):
        if site is None:
            continue
        idx = [tracer.index[(component, k)] for k in window_of(sites, row, window)]
        for p in range(tracer.n_pos):
            cells.append([(i, p) for i in idx])
            where.append((row, p))
    return cells, where


def _trace(
    tracer: Tracer,
    components: Sequence[str],
    window: int,
    method: str,
    batch_tokens: int,
    progress: bool | None,
    store: CellStore | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Each component's (rows, positions) grid of exact scores (or estimates when only those
    are asked for), and the estimates beside exact ones with `method="both"`. With a `store`,
    its finished patched runs are taken and each new batch is written to it."""
    plans = {c: _cells(tracer, c, window) for c in components}
    try:
        estimates = _estimates(tracer, plans) if method in ("estimate", "both") else None
        if method == "estimate":
            return estimates or {}, None
        return _exact(tracer, plans, batch_tokens, progress, store), estimates
    except TokenprobeError:
        # settings that can never finish: keeping their checkpoint would only make the
        # corrected call ask for `resume`
        if store is not None:
            store.checkpoint.discard()
        raise


def _grids(tracer: Tracer, plans: Plans) -> dict[str, np.ndarray]:
    """A (rows, positions) grid of NaN per component, for its cells' values."""
    return {c: np.full((len(tracer.sites[c]), tracer.n_pos), np.nan) for c in plans}


def _estimates(tracer: Tracer, plans: Plans) -> dict[str, np.ndarray]:
    """Attribution patching's estimate of every cell, from one forward and backward pass."""
    deltas = first_order(tracer)
    base = float(np.mean(tracer.base_scores))
    estimates = _grids(tracer, plans)
    for c, (cells, where) in plans.items():
        for cell, (row, p) in zip(cells, where, strict=True):
            estimates[c][row, p] = base + sum(float(deltas[i][:, p].mean()) for i, _ in cell)
    return estimates


def _exact(
    tracer: Tracer,
    plans: Plans,
    batch_tokens: int,
    progress: bool | None,
    store: CellStore | None,
) -> dict[str, np.ndarray]:
    """Every cell's patched run, in batches; the progress bar starts at what `store` holds."""
    grids = _grids(tracer, plans)
    n_rows = sum(len(cells) for cells, _ in plans.values()) * tracer.samples
    n_batches = len(token_budget_batches([tracer.n_pos] * max(1, n_rows), batch_tokens))
    disable = progress_disabled(progress, n_batches)
    with tqdm(total=n_rows, desc="causal trace", unit="run", disable=disable) as bar:
        bar.update(0 if store is None else store.n_done)
        for c, (cells, where) in plans.items():
            done = None if store is None else store.done[c]
            write = None if store is None else (lambda r, v, c=c: store.write(c, r, v))
            values = tracer.score_cells(cells, batch_tokens, bar, done, write)
            for (row, p), v in zip(where, values, strict=True):
                grids[c][row, p] = v
    return grids


def embedding_std(lm: LoadedModel) -> float:
    """The standard deviation of the input embedding's output over (up to 4,096 evenly spread
    rows of) the vocabulary: the unit of the noise."""
    embed = lm.require_adapter().embed
    vocab = int(weight_of(embed).shape[0])
    ids = torch.linspace(0, vocab - 1, steps=min(vocab, 4096)).long().to(lm.device)
    with torch.inference_mode():
        return float(embed(ids[None]).float().std())
