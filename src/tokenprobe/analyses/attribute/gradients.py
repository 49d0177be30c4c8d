"""Gradient methods: saliency, input x gradient and integrated gradients, on the embedding-layer
output of the prompt tokens (the target tokens stay fixed), summed over embedding dimensions
and over a feature's tokens. Saliency is the sum of |gradient|.

The attributed input is the output of the model's input-embedding module
(`get_input_embeddings()`) at the prompt's positions. The model runs on the real ids, a
forward hook putting the gradient-carrying (or interpolated) embeddings in place of that
module's output, so whatever the model does after the module happens as in a plain forward
with ids: a scale applied outside it (Falcon-H1's `embedding_multiplier`, Granite's; Gemma's
sqrt(d) sits inside the module, so it is part of the attributed input), and inputs computed
from the ids themselves (Gemma 3n's and 4's per-layer token embeddings). A run with
`inputs_embeds` alone is not the same forward on every family: Falcon-H1 skips its
multiplier, Gemma 3n its per-layer token embeddings, Gemma 4 tries to recover the ids and fails.

The integrated-gradients baseline lives in the same space: zeros, or the module's output for
the pad or unk token at every prompt position. What the model computes from the ids rather
than from the module's output is the real prompt's along the whole path, the baseline
included: completeness is f(prompt) - f(prompt with the module's output at the prompt
positions replaced by the baseline's).

Integration steps go through the model in token-budget batches (split on out of memory); the
per-token sums of each finished batch add up to the integral, so a batch is written to the
checkpoint as soon as it is done and skipped on resume.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...errors import TokenprobeError
from ...runner import keep_last, map_batches, run_with_backoff
from .problem import Problem

if TYPE_CHECKING:
    from transformers import PreTrainedModel

GRADIENT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients")
# unk first: an all-zero baseline sends the path through the point where RMSNorm divides by
# ~0, and integrated gradients then never converge (the completeness gap stays large).
IG_BASELINES = ("unk", "pad", "zero")


@dataclass
class _Path:
    """The ids and embeddings (prompt and target), the prompt's baseline, and the steps between
    them."""

    ids: torch.Tensor  # (L,) prompt and target tokens
    emb: torch.Tensor  # (L, D) the embedding module's output for them
    base: torch.Tensor  # (n, D)
    delta: torch.Tensor  # (n, D) prompt minus baseline
    alphas: np.ndarray  # where each step is on the path
    weights: np.ndarray
    factor: torch.Tensor | None  # what gradients are multiplied by (None: saliency, |grad|)


def gradients(
    pb: Problem,
    *,
    method: str,
    steps: int,
    ig_baseline: str,
    **_: Any,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Attributions (rows, features) of one gradient method; with integrated gradients also
    the completeness gaps in the details."""
    path = _path(pb, method, steps, ig_baseline)
    per_token = _integrate(pb, path)
    attr = np.stack([per_token[:, f.positions].sum(axis=1) for f in pb.features], axis=1)
    extra: dict[str, Any] = {}
    if method == "integrated_gradients":
        extra = _completeness(pb, path, per_token, steps, ig_baseline)
    return attr, None, extra


def _gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1] (captum's default rule for integrated gradients)."""
    x, w = np.polynomial.legendre.leggauss(steps)
    return (x + 1) / 2, w / 2


def _baseline_embedding(pb: Problem, emb: torch.Tensor, ig_baseline: str) -> torch.Tensor:
    """(n, D) embeddings the path starts from: zeros, or the pad or unk token's at every position."""
    n = len(pb.prompt_ids)
    if ig_baseline == "zero":
        return torch.zeros_like(emb[:n])
    tid = getattr(pb.lm.tokenizer, f"{ig_baseline}_token_id", None)  # pad or unk
    if tid is None:
        raise TokenprobeError(
            f"this tokenizer has no {ig_baseline} token: choose another `ig_baseline`"
        )
    emb_layer = pb.lm.model.get_input_embeddings()
    with torch.no_grad():
        return emb_layer(torch.full((n,), int(tid), device=pb.lm.device)).detach()


def _path(pb: Problem, method: str, steps: int, ig_baseline: str) -> _Path:
    """The embeddings, baseline and steps of one gradient method."""
    n = len(pb.prompt_ids)
    ids = torch.tensor(pb.prompt_ids + pb.target_ids, device=pb.lm.device)
    with torch.no_grad():
        emb = pb.lm.model.get_input_embeddings()(ids).detach()  # (L, D)
    base = _baseline_embedding(pb, emb, ig_baseline)
    if method == "integrated_gradients":
        alphas, weights = _gauss_legendre(steps)
    else:
        alphas, weights = np.array([1.0]), np.array([1.0])
    delta = emb[:n] - base
    if method == "saliency":
        factor = None
    elif method == "input_x_gradient":
        factor = emb[None, :n].float()
    else:
        factor = delta[None].float()
    return _Path(ids, emb, base, delta, alphas, weights, factor)


def _integrate(pb: Problem, path: _Path) -> np.ndarray:
    """Per-token sums (rows, n) over every step, the steps of an interrupted run taken from
    its checkpoint and each finished batch of steps written there."""
    n, m = len(pb.prompt_ids), len(pb.target_ids)
    per_token = np.zeros((len(pb.rows), n))
    done: set[int] = set()
    for steps_done, part in pb.store.step_parts if pb.store is not None else []:
        done.update(int(i) for i in steps_done)
        per_token += part
    todo = [i for i in range(len(path.alphas)) if i not in done]
    pb.grow_bar(len(path.alphas), len(path.alphas) - len(todo))
    model = pb.lm.model
    was_training = model.training
    model.eval()
    try:
        # every step is one sequence of n + m tokens: batches of batch_tokens // (n + m) steps
        lengths = [n + m] * len(todo)

        def run(batch: list[int]) -> np.ndarray:
            return _step_batch(pb, path, [todo[i] for i in batch])

        for batch, part64 in map_batches(lengths, pb.batch_tokens, run):
            idx = [todo[i] for i in batch]
            per_token += part64
            if pb.store is not None:
                pb.store.add_steps(idx, part64)
            pb.batch_done(len(idx))
    finally:
        model.train(was_training)
    return per_token


def _step_batch(pb: Problem, path: _Path, idx: list[int]) -> np.ndarray:
    """Per-token sums (rows, n) of the weighted gradients of the steps `idx`, in float64."""
    n, m, device = len(pb.prompt_ids), len(pb.target_ids), pb.lm.device
    emb = path.emb
    a = torch.tensor(path.alphas[idx], dtype=emb.dtype, device=device)
    w = torch.tensor(path.weights[idx], dtype=torch.float32, device=device)
    prompt_part = (path.base[None] + a[:, None, None] * path.delta[None]).requires_grad_(True)
    # the last target token predicts nothing that is scored, so it is left out
    x = torch.cat([prompt_part, emb[None, n : n + m - 1].expand(len(a), -1, -1)], dim=1)
    ids = path.ids[None, : n + m - 1].expand(len(a), -1)
    with torch.enable_grad():
        cols = _differentiable_token_logprobs(pb, ids, x)
        pb.forward_passes += 1
        grads = _per_row_grads([pb.row_score(cols, r) for r in range(len(pb.rows))], prompt_part)
    if path.factor is None:  # saliency
        part = (grads.abs() * w[None, :, None, None]).sum(dim=1).sum(dim=-1)
    else:
        part = ((grads * w[None, :, None, None]).sum(dim=1) * path.factor).sum(dim=-1)
    return part.double().cpu().numpy()


def _completeness(
    pb: Problem, path: _Path, per_token: np.ndarray, steps: int, ig_baseline: str
) -> dict[str, Any]:
    """Integrated gradients' details: how far the attributions miss f(x) - f(baseline)."""
    n, m = len(pb.prompt_ids), len(pb.target_ids)
    emb, model = path.emb, pb.lm.model
    ends = torch.stack([torch.cat([path.base, emb[n:]]), emb])
    ids = path.ids[None].expand(2, -1)

    def score_ends(batch: list[int]) -> np.ndarray:
        with torch.no_grad(), _embedding_output(model, ends[batch]):
            out = model(input_ids=ids[batch], use_cache=False, **keep_last(model, m + 1))
            logits = out.logits[:, -(m + 1) :][
                :, :m
            ]  # sliced by hand: xLSTM ignores logits_to_keep
            return pb.row_scores(pb.token_logprobs(logits)).double().cpu().numpy()

    f0, f1 = np.concatenate([s for _, s in run_with_backoff([0, 1], score_ends)])
    gap = per_token.sum(axis=1) - (f1 - f0)
    return {
        "steps": steps,
        "ig_baseline": ig_baseline,
        "completeness_gap": gap.tolist(),
        "completeness_gap_max_abs": float(np.abs(gap).max()),
        "score_difference": (f1 - f0).tolist(),
    }


def _batched_backward(device: torch.device) -> bool:
    """One vmapped backward for all rows (on a GPU), or one backward per row (elsewhere)?"""
    return device.type == "cuda"


def _per_row_grads(scores: Sequence[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """(rows, *inputs.shape): d scores[r].sum() / d inputs for every row r, through the kept graph.

    On a GPU one vmapped backward (`is_grads_batched=True`) serves every row: on an H100 it was
    3.3x faster than a loop for 10 rows x 32 steps of a SmolLM2-sized model, the small kernels of
    one row's backward being too small to fill the card; where it runs out of memory, the loop
    takes over. On the CPU a per-row backward costs about one forward pass (matrix products run
    near peak, so batching them cannot help) and the vmapped one was 1.45x slower than the loop
    for SmolLM2 with 10 rows x 32 steps.
    """
    if len(scores) > 1 and _batched_backward(inputs.device):
        stacked = torch.stack(list(scores))  # (rows, B)
        eye = torch.eye(len(scores), dtype=stacked.dtype, device=stacked.device)
        try:
            with warnings.catch_warnings():  # vmap's note on ops it loops over is not for users
                warnings.filterwarnings("ignore", message=".*performance drop.*")
                return torch.autograd.grad(
                    stacked,
                    inputs,
                    grad_outputs=eye[:, :, None].expand(-1, -1, stacked.shape[1]),
                    is_grads_batched=True,
                    retain_graph=True,  # the loop below still needs the graph after an OOM
                )[0]
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
    last = len(scores) - 1
    return torch.stack(
        [
            torch.autograd.grad(s.sum(), inputs, retain_graph=r < last)[0]
            for r, s in enumerate(scores)
        ]
    )


@contextmanager
def _embedding_output(model: PreTrainedModel, x: torch.Tensor) -> Iterator[None]:
    """Runs of the model inside return `x` (B, L, D) from its input-embedding module, in place
    of the module's output for the ids (B, L) the model is given; the graph of `x` is kept."""

    def hook(_m: torch.nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        if out.shape != x.shape:
            raise TokenprobeError(
                f"{type(model).__name__} calls its input embeddings on something other than the "
                f"input ids (output {tuple(out.shape)}, not {tuple(x.shape)}): gradient methods "
                "cannot put the attributed embeddings in their place"
            )
        return x.to(device=out.device, dtype=out.dtype)

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _differentiable_token_logprobs(
    pb: Problem, ids: torch.Tensor, x: torch.Tensor
) -> list[torch.Tensor]:
    """m columns (S,) of target log-probabilities of `ids` (S, L: prompt and all but the last
    target token) with `x` (S, L, D) as their embedding module's output, keeping the graph.

    Each target position is unembedded on its own where the adapter reproduces the model's own
    logits, so the backward of one row passes through its own unembedding rows only (the
    vocabulary matmul dominates otherwise).
    """
    lm, m = pb.lm, len(pb.target_ids)
    model = lm.model
    adapter = lm.require_adapter()
    if pb.head_ok is False:
        return _fallback_token_logprobs(pb, ids, x)
    # the last m positions predict the targets; the last blocks may run on the positions whose
    # logits are kept only (Gemma 4's layers that share earlier layers' keys and values)
    with adapter.record(last_only=True) as states, _embedding_output(model, x):
        out = model(input_ids=ids, use_cache=False, **keep_last(model, m))
    hidden = states[-1][:, -m:]  # the last block's output, before the final norm
    if pb.head_ok is None:
        with torch.no_grad():
            rebuilt = adapter.logits(hidden[:, -1])
            ref = out.logits[:, -1].float()
            pb.head_ok = rebuilt.shape == ref.shape and bool(
                torch.allclose(
                    rebuilt, ref, atol=1e-3 * max(1.0, float(ref.abs().max())), rtol=1e-3
                )
            )
    if not pb.head_ok:
        return _fallback_token_logprobs(pb, ids, x)
    cols, foils = [], []
    for j, t in enumerate(pb.target_ids):
        logp = torch.log_softmax(adapter.logits(hidden[:, j]), dim=-1)
        cols.append(logp[:, t])
        if pb.foil_id is not None:
            foils.append(logp[:, pb.foil_id])
    return cols + foils


def _fallback_token_logprobs(pb: Problem, ids: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
    """The same columns from the model's own logits, for heads the adapter cannot rebuild."""
    m, model = len(pb.target_ids), pb.lm.model
    with _embedding_output(model, x):
        logits = model(input_ids=ids, use_cache=False, **keep_last(model, m)).logits[:, -m:]
    return list(pb.token_logprobs(logits).unbind(dim=1))
