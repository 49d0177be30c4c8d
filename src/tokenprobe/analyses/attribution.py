"""Attribution: which input features (prompt tokens or spans) drive each output token.

Every method shares one signature and one scorer. The score of a target row is the
log-probability of its tokens under teacher forcing (one pass scores every target token), and
every perturbation or integration step goes through the model in token-budget batches.

Conventions (captum's where it has one): ablation and occlusion give f(x) - f(x without the
feature); Shapley values average f(S + i) - f(S) over permutations; gradient methods act on
the embedding-layer output of the prompt tokens (target tokens stay fixed) and are summed over
embedding dimensions and over a feature's tokens. Saliency is the sum of |gradient|.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..batching import left_positions, pad_batch, progress_disabled, token_budget_batches
from ..checkpoint import Checkpoint, digest, model_settings, npz_writer
from ..errors import TokenprobeError
from ..model import LoadedModel
from ..results import AttributionResult, now, versions
from ..text import encode, render, token_texts

BASELINES = ("remove", "pad", "unk", "mask")
# unk first: an all-zero baseline sends the path through the point where RMSNorm divides by
# ~0, and integrated gradients then never converge (the completeness gap stays large).
IG_BASELINES = ("unk", "pad", "zero")
PARTIAL = "attr.partial"  # the checkpoint folder inside --out
FLUSH_SECONDS = 30.0  # how often finished work is written to the checkpoint during a run
IG_GAP_WARN = 0.1  # warn when |completeness gap| > this fraction of |f(x) - f(baseline)|


@dataclass
class Feature:
    """One input feature: a set of prompt token positions and the text they cover."""

    text: str
    start: int  # character range in the rendered prompt
    end: int
    positions: list[int]


@dataclass
class Problem:
    """Everything a method needs: ids, features, target rows, how to score and to perturb."""

    lm: LoadedModel
    prompt_ids: list[int]
    target_ids: list[int]
    features: list[Feature]
    rows: list[list[int]]  # target token indices of each row
    row_texts: list[str]
    score: str = "logprob"
    baseline: str = "remove"
    batch_tokens: int = 4096
    cache: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)
    forward_passes: int = 0
    head_ok: bool | None = None  # does the adapter rebuild the model's logits (gradient path)?
    bar: Any = None  # a tqdm bar counting model inputs (or integration steps)
    store: Checkpoint | None = None  # where finished scores go, so an interrupted run resumes
    stored: dict[bytes, torch.Tensor] = field(default_factory=dict)
    pending: list[tuple[bytes, torch.Tensor]] = field(default_factory=list)
    flushed_at: float = field(default_factory=time.monotonic)
    after_batch: Callable[[], None] | None = None  # test hook: called after each model batch
    step_parts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # resumed IG

    # -- perturbation
    def replacement(self) -> list[int] | None:
        """Ids that replace each ablated token; None means delete it; a list for a string."""
        if self.baseline == "remove":
            return None
        tok = self.lm.tokenizer
        if self.baseline in ("pad", "unk", "mask"):
            tid = getattr(tok, f"{self.baseline}_token_id", None)
            if tid is None:
                raise TokenprobeError(
                    f"this tokenizer has no {self.baseline} token: choose another --baseline"
                )
            return [int(tid)]
        ids = tok.encode(self.baseline, add_special_tokens=False)
        if not ids:
            raise TokenprobeError(f"--baseline {self.baseline!r} gives no tokens")
        return ids

    def perturbed(self, absent: Sequence[int], replacement: list[int] | None) -> list[int]:
        """The prompt with the features in `absent` deleted or replaced (a string replaces a whole feature)."""
        drop: dict[int, list[int]] = {}
        for f in absent:
            positions = self.features[f].positions
            for k, p in enumerate(positions):
                if replacement is None:
                    drop[p] = []
                elif len(replacement) == 1:
                    drop[p] = replacement
                else:  # a multi-token string stands in for the whole feature once
                    drop[p] = replacement if k == 0 else []
        out: list[int] = []
        for i, t in enumerate(self.prompt_ids):
            out.extend(drop.get(i, [t]))
        return out

    # -- scoring
    def row_scores(self, token_logprobs: torch.Tensor) -> torch.Tensor:
        """(B, m) target-token log-probabilities to (B, rows) scores."""
        cols = token_logprobs.unbind(dim=1)
        return torch.stack([self.row_score(cols, r) for r in range(len(self.rows))], dim=1)

    def row_score(self, cols: Sequence[torch.Tensor], r: int) -> torch.Tensor:
        """(B,) score of row r from per-target-token (B,) log-probability columns.

        Taking columns, not one stacked tensor, lets a backward from one row skip the others.
        """
        s = torch.stack([cols[j] for j in self.rows[r]]).sum(dim=0)
        return s.exp() if self.score == "prob" else s

    def score_prompts(self, prompts: Sequence[list[int]]) -> torch.Tensor:
        """Scores (len(prompts), rows) of many perturbed prompts, batched by a token budget;
        prompts already scored by an interrupted run are taken from its checkpoint."""
        lm = self.lm
        m = len(self.target_ids)
        out = torch.empty((len(prompts), len(self.rows)), dtype=torch.float64)
        keys = [_prompt_key(p) for p in prompts]
        todo = []
        for i, key in enumerate(keys):
            if key in self.stored:
                out[i] = self.stored[key]
            else:
                todo.append(i)
        self._grow_bar(len(prompts), len(prompts) - len(todo))
        seqs = [list(prompts[i]) + self.target_ids for i in todo]
        for batch in token_budget_batches([len(s) for s in seqs], self.batch_tokens):
            # left padding: the targets end every row, so only the last m + 1 columns are unembedded
            ids, mask = pad_batch([seqs[i] for i in batch], 0, lm.device, side="left")
            with torch.inference_mode():
                logits = lm.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=left_positions(mask),
                    logits_to_keep=m + 1,
                    use_cache=False,
                ).logits[:, :m]
            self.forward_passes += 1
            scores = self.row_scores(_target_logprobs(logits, self.target_ids)).double().cpu()
            for j, i in enumerate(batch):
                out[todo[i]] = scores[j]
            if self.store is not None:
                self.pending += [(keys[todo[i]], scores[j]) for j, i in enumerate(batch)]
            self._batch_done(len(batch))
        return out

    # -- progress and checkpoint
    def _grow_bar(self, total: int, done: int) -> None:
        if self.bar is not None:
            self.bar.total = (self.bar.total or 0) + total
            self.bar.update(done)
            self.bar.refresh()

    def _batch_done(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)
        if self.store is not None and time.monotonic() - self.flushed_at > FLUSH_SECONDS:
            self.flush()
        if self.after_batch is not None:
            self.after_batch()

    def flush(self) -> None:
        """Write the scores computed since the last flush as one checkpoint part."""
        if self.store is None or not self.pending:
            return
        keys = np.array([k for k, _ in self.pending], dtype="S16")
        scores = torch.stack([v for _, v in self.pending]).numpy()
        self.store.append(".scores.npz", npz_writer(keys=keys, scores=scores))
        self.pending.clear()
        self.flushed_at = time.monotonic()

    def coalition_scores(self, coalitions: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        """Scores with only the features in each coalition present (cached across calls)."""
        repl = self.replacement()
        todo = sorted({c for c in coalitions if c not in self.cache})
        if todo:
            every = range(len(self.features))
            prompts = [self.perturbed([f for f in every if f not in set(c)], repl) for c in todo]
            for c, s in zip(todo, self.score_prompts(prompts), strict=True):
                self.cache[c] = s
        return [self.cache[c] for c in coalitions]


def _prompt_key(ids: Sequence[int]) -> bytes:
    """A 16-byte digest of a prompt's ids: the key of its scores in a checkpoint."""
    return hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=16).digest()


def _target_logprobs(logits: torch.Tensor, target_ids: list[int]) -> torch.Tensor:
    """(B, m, V) logits predicting the targets to (B, m) float32 log-probabilities of the targets."""
    tgt = torch.tensor(target_ids, device=logits.device).expand(logits.shape[0], -1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------- methods


def _ablation(pb: Problem, **_: Any) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    n = len(pb.features)
    full = tuple(range(n))
    coalitions = [full] + [tuple(g for g in full if g != f) for f in full]
    scores = pb.coalition_scores(coalitions)
    base = scores[0]
    attr = torch.stack([base - s for s in scores[1:]], dim=1)  # (rows, features)
    return attr.numpy(), None, {}


def _shapley(
    pb: Problem, *, samples: int = 64, seed: int = 0, **_: Any
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    n = len(pb.features)
    if samples < 1:
        raise TokenprobeError(f"--samples must be at least 1, not {samples}")
    exact = n <= 8 and samples >= math.factorial(n)
    if exact:
        perms = [list(p) for p in itertools.permutations(range(n))]
    else:
        rng = np.random.default_rng(seed)
        perms = []
        while len(perms) < samples:
            p = list(rng.permutation(n))
            perms.append(p)
            if len(perms) < samples:
                perms.append(p[::-1])  # antithetic partner
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


def _occlusion(
    pb: Problem, *, window: int = 3, stride: int = 1, **_: Any
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    n = len(pb.prompt_ids)
    if window < 1 or stride < 1:
        raise TokenprobeError("--window and --stride must be at least 1")
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


def _gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1] (captum's default rule for integrated gradients)."""
    x, w = np.polynomial.legendre.leggauss(steps)
    return (x + 1) / 2, w / 2


def _gradients(
    pb: Problem,
    *,
    method: str,
    steps: int = 32,
    ig_baseline: str = "unk",
    **_: Any,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    lm = pb.lm
    model = lm.model
    emb_layer = model.get_input_embeddings()
    device = lm.device
    n, m = len(pb.prompt_ids), len(pb.target_ids)
    ids = torch.tensor(pb.prompt_ids + pb.target_ids, device=device)
    with torch.no_grad():
        emb = emb_layer(ids).detach()  # (L, D)
    if ig_baseline == "zero":
        base = torch.zeros_like(emb[:n])
    elif ig_baseline in ("pad", "unk"):
        tid = getattr(lm.tokenizer, f"{ig_baseline}_token_id", None)
        if tid is None:
            raise TokenprobeError(
                f"this tokenizer has no {ig_baseline} token: choose another --ig-baseline"
            )
        with torch.no_grad():
            base = emb_layer(torch.full((n,), int(tid), device=device)).detach()
    else:
        raise TokenprobeError(
            f"unknown --ig-baseline {ig_baseline!r}: use {', '.join(IG_BASELINES)}"
        )
    if method == "integrated_gradients":
        if steps < 1:
            raise TokenprobeError(f"--steps must be at least 1, not {steps}")
        alphas, weights = _gauss_legendre(steps)
    else:
        alphas, weights = np.array([1.0]), np.array([1.0])
    rows = len(pb.rows)
    delta = emb[:n] - base
    # per-token sums (rows, n) of each finished batch of steps add up to the integral, so a
    # batch is written to the checkpoint as soon as it is done and skipped on resume
    if method == "saliency":
        factor = None
    elif method == "input_x_gradient":
        factor = emb[None, :n].float()
    else:
        factor = delta[None].float()
    per_token = np.zeros((rows, n))
    done: set[int] = set()
    for steps_done, part in pb.step_parts:
        done.update(int(i) for i in steps_done)
        per_token += part
    todo = [i for i in range(len(alphas)) if i not in done]
    pb._grow_bar(len(alphas), len(alphas) - len(todo))
    per_batch = max(1, pb.batch_tokens // (n + m))
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, len(todo), per_batch):
            idx = todo[lo : lo + per_batch]
            a = torch.tensor(alphas[idx], dtype=emb.dtype, device=device)
            w = torch.tensor(weights[idx], dtype=torch.float32, device=device)
            prompt_part = (base[None] + a[:, None, None] * delta[None]).requires_grad_(True)
            # the last target token predicts nothing that is scored, so it is left out
            x = torch.cat([prompt_part, emb[None, n : n + m - 1].expand(len(a), -1, -1)], dim=1)
            with torch.enable_grad():
                cols = _differentiable_token_logprobs(pb, x)
                pb.forward_passes += 1
                grads = _per_row_grads([pb.row_score(cols, r) for r in range(rows)], prompt_part)
            if factor is None:  # saliency
                part = (grads.abs() * w[None, :, None, None]).sum(dim=1).sum(dim=-1)
            else:
                part = ((grads * w[None, :, None, None]).sum(dim=1) * factor).sum(dim=-1)
            part64 = part.double().cpu().numpy()
            per_token += part64
            if pb.store is not None:
                steps_done = np.asarray(idx, dtype=np.int64)
                pb.store.append(".steps.npz", npz_writer(steps=steps_done, per_token=part64))
            pb._batch_done(len(idx))
    finally:
        model.train(was_training)
    attr = np.stack([per_token[:, f.positions].sum(axis=1) for f in pb.features], axis=1)
    extra: dict[str, Any] = {}
    if method == "integrated_gradients":
        with torch.no_grad():
            ends = torch.stack([torch.cat([base, emb[n:]]), emb])
            logits = model(inputs_embeds=ends, logits_to_keep=m + 1, use_cache=False).logits[:, :m]
            f0, f1 = pb.row_scores(_target_logprobs(logits, pb.target_ids)).double().cpu().numpy()
        gap = per_token.sum(axis=1) - (f1 - f0)
        extra = {
            "steps": steps,
            "ig_baseline": ig_baseline,
            "completeness_gap": gap.tolist(),
            "completeness_gap_max_abs": float(np.abs(gap).max()),
            "score_difference": (f1 - f0).tolist(),
        }
    return attr, None, extra


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


def _differentiable_token_logprobs(pb: Problem, x: torch.Tensor) -> list[torch.Tensor]:
    """m columns (S,) of target log-probabilities of input embeddings `x` (prompt and all but
    the last target token), keeping the graph.

    Each target position is unembedded on its own where the adapter reproduces the model's own
    logits, so the backward of one row passes through its own unembedding rows only (the
    vocabulary matmul dominates otherwise).
    """
    lm, n = pb.lm, len(pb.prompt_ids)
    model = lm.model
    adapter = lm.require_adapter()
    if pb.head_ok is False:
        return _fallback_token_logprobs(pb, x)
    with adapter.record(last_only=True) as states:
        out = model(inputs_embeds=x, logits_to_keep=1, use_cache=False)
    hidden = states[-1]  # the last block's output, before the final norm
    if pb.head_ok is None:
        with torch.no_grad():
            rebuilt = adapter.logits(hidden[:, -1])
            ref = out.logits[:, -1].float()
            pb.head_ok = bool(
                torch.allclose(
                    rebuilt, ref, atol=1e-3 * max(1.0, float(ref.abs().max())), rtol=1e-3
                )
            )
    if not pb.head_ok:
        return _fallback_token_logprobs(pb, x)
    cols = []
    for j, t in enumerate(pb.target_ids):
        logp = torch.log_softmax(adapter.logits(hidden[:, n - 1 + j]), dim=-1)
        cols.append(logp[:, t])
    return cols


def _fallback_token_logprobs(pb: Problem, x: torch.Tensor) -> list[torch.Tensor]:
    """The same columns from the model's own logits, for heads the adapter cannot rebuild."""
    m = len(pb.target_ids)
    logits = pb.lm.model(inputs_embeds=x, logits_to_keep=m, use_cache=False).logits
    return list(_target_logprobs(logits, pb.target_ids).unbind(dim=1))


GRADIENT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients")
METHODS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray | None, dict[str, Any]]]] = {
    "ablation": _ablation,
    "shapley": _shapley,
    "occlusion": _occlusion,
    **{name: functools.partial(_gradients, method=name) for name in GRADIENT_METHODS},
}


# ----------------------------------------------------------------------------- inputs


def _char_offsets(tokenizer: Any, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decoded text of `ids` and each token's character range in it (cumulative decoding)."""
    ends, text = [], ""
    for j in range(len(ids)):
        text = tokenizer.decode(
            ids[: j + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        ends.append(len(text))
    starts = [0, *ends[:-1]]
    return text, list(zip(starts, ends, strict=True))


def _locate(
    text: str, offsets: list[tuple[int, int]], span: str, what: str
) -> tuple[int, int, list[int]]:
    at = text.find(span) if span else -1
    if at < 0:
        raise TokenprobeError(
            f"{what} {span!r} is not in the {'prompt' if what == '--span' else 'target'}: give an exact substring"
        )
    end = at + len(span)
    positions = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > at]
    if not positions:
        raise TokenprobeError(f"{what} {span!r} covers no token")
    return at, end, positions


def build_features(
    tokenizer: Any,
    prompt_ids: list[int],
    text: str,
    offsets: list[tuple[int, int]],
    spans: Sequence[str] | None,
) -> list[Feature]:
    """One feature per span (or per prompt token when no spans); overlapping spans are an error."""
    if not spans:
        texts = token_texts(tokenizer, prompt_ids)
        return [Feature(texts[i], s, e, [i]) for i, (s, e) in enumerate(offsets)]
    features = []
    for span in spans:
        start, end, positions = _locate(text, offsets, span, "--span")
        for other in features:
            if set(positions) & set(other.positions):
                raise TokenprobeError(
                    f"spans {other.text!r} and {span!r} overlap (share tokens): make them disjoint"
                )
        features.append(Feature(span, start, end, positions))
    return features


def _prompt_with_offsets(
    lm: LoadedModel, prompt: str, chat: bool, system: str | None
) -> tuple[str, list[int], list[tuple[int, int]]]:
    """The rendered prompt, its ids and their character ranges (offsets are needed for spans)."""
    text = render(lm.tokenizer, prompt, chat=chat, system=system)
    ids, offsets = encode(lm.tokenizer, text, chat=chat)
    if offsets is None:
        raise TokenprobeError(
            "attribution needs a fast tokenizer (one that reports character offsets)"
        )
    return text, ids, offsets


def _generate(lm: LoadedModel, prompt_ids: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt_ids], device=lm.device)
    with torch.no_grad():
        out = lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id
            if lm.tokenizer.pad_token_id is not None
            else lm.tokenizer.eos_token_id,
        )
    new = out[0, len(prompt_ids) :].tolist()
    stops = {lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id} - {None}
    while new and new[-1] in stops:
        new.pop()
    return new


def attribute(
    lm: LoadedModel,
    prompt: str,
    *,
    target: str | None = None,
    generate: int | None = None,
    features: Sequence[str] | None = None,
    target_spans: Sequence[str] | None = None,
    method: str = "ablation",
    baseline: str = "remove",
    samples: int = 64,
    seed: int = 0,
    window: int = 3,
    stride: int = 1,
    steps: int = 32,
    ig_baseline: str = "unk",
    score: str = "logprob",
    chat: bool = False,
    system: str | None = None,
    batch_tokens: int = 4096,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    _after_batch: Callable[[], None] | None = None,
) -> AttributionResult:
    """Attribution of each target row's score to each input feature.

    `features` are substrings of the (rendered) prompt, one feature each; without them every
    prompt token is a feature. The target is `target` (scored by teacher forcing) or the
    model's greedy continuation of `generate` tokens. `target_spans` group target tokens into
    rows (a row's score is the sum of its tokens' log-probabilities). With `checkpoint`, scored
    inputs (and finished integration steps) are written there as the run goes;
    `resume=True` takes them from an interrupted run instead of computing them again.
    """
    if method not in METHODS:
        raise TokenprobeError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if score not in ("logprob", "prob"):
        raise TokenprobeError(f"--score must be logprob or prob, not {score!r}")
    if not prompt or not prompt.strip():
        raise TokenprobeError("the prompt is empty: give --prompt or --prompt-file")
    if (target is None) == (generate is None):
        raise TokenprobeError(
            "give a --target to score or --generate N to attribute the model's own answer"
        )
    if target is not None and not target.strip():
        raise TokenprobeError(
            "the target is empty: give the continuation to attribute with --target"
        )
    if baseline not in BASELINES and not baseline:
        raise TokenprobeError(
            f"--baseline must be one of {', '.join(BASELINES)} or a replacement string"
        )
    if lm.dtype in (torch.bfloat16, torch.float16):
        warnings.warn(
            f"attribution with {str(lm.dtype).removeprefix('torch.')} weights: rounding moves each "
            "score by a few hundredths of a nat (and on a GPU with the batching), as much as a small "
            "attribution; load the model in float32 (--dtype float32) to resolve small effects",
            UserWarning,
            stacklevel=2,
        )
    tok = lm.tokenizer
    text, prompt_ids, offsets = _prompt_with_offsets(lm, prompt, chat, system)
    feats = build_features(tok, prompt_ids, text, offsets, features)
    if generate is not None:
        if generate < 1:
            raise TokenprobeError(f"--generate must be at least 1, not {generate}")
        target_ids = _generate(lm, prompt_ids, generate)
        if not target_ids:
            raise TokenprobeError(
                "the model generated no tokens (it stopped at once): give a --target instead"
            )
    else:
        assert target is not None
        target_ids = tok.encode(target, add_special_tokens=False)
    limit = lm.context_length
    if limit is not None and len(prompt_ids) + len(target_ids) > limit:
        raise TokenprobeError(
            f"prompt ({len(prompt_ids)} tokens) plus target ({len(target_ids)} tokens) is longer than the "
            f"model's context of {limit}: shorten them"
        )
    target_text, target_offsets = _char_offsets(tok, target_ids)
    if target_spans:
        rows, row_texts = [], []
        for span in target_spans:
            _, _, positions = _locate(target_text, target_offsets, span, "--target-span")
            rows.append(positions)
            row_texts.append(span)
    else:
        rows = [[j] for j in range(len(target_ids))]
        row_texts = token_texts(tok, target_ids)
    pb = Problem(
        lm,
        prompt_ids,
        target_ids,
        feats,
        rows,
        row_texts,
        score=score,
        baseline=baseline,
        batch_tokens=batch_tokens,
        after_batch=_after_batch,
    )
    options = {
        "method": method,
        "score": score,
        "baseline": baseline,
        "samples": samples,
        "seed": seed,
        "window": window,
        "stride": stride,
        "steps": steps,
        "ig_baseline": ig_baseline,
        "chat": chat,
        "system": system,
        "spans": list(features or []),
        "target_spans": list(target_spans or []),
        "batch_tokens": batch_tokens,
    }
    if checkpoint is not None:
        # batching changes speed, not the numbers; the prompt and target are kept as ids
        skip = ("batch_tokens", "chat", "system", "spans", "target_spans")
        settings = {
            "analysis": "attribution",
            "model": model_settings(lm),
            "prompt_ids": digest(prompt_ids),
            "target_ids": digest(target_ids),
            "rows": rows,
            "features": [f.positions for f in feats],
            **{k: v for k, v in options.items() if k not in skip},
        }
        pb.store = Checkpoint(Path(checkpoint) / PARTIAL, settings, resume)
        for part in pb.store.read(".scores.npz").values():
            for key, value in zip(part["keys"], part["scores"], strict=True):
                pb.stored[bytes(key)] = torch.from_numpy(value)
        for part in pb.store.read(".steps.npz").values():
            pb.step_parts.append((part["steps"], part["per_token"]))
    unit = "step" if method in GRADIENT_METHODS else "input"
    try:
        with torch.inference_mode():
            full = pb.score_prompts([prompt_ids])[0].numpy()
        bar = tqdm(desc=f"attribution ({method})", unit=unit, disable=progress_disabled(progress))
        with bar:
            pb.bar = bar
            attr, stderr, extra = METHODS[method](
                pb,
                samples=samples,
                seed=seed,
                window=window,
                stride=stride,
                steps=steps,
                ig_baseline=ig_baseline,
            )
    except TokenprobeError:
        # bad options (--steps 0, a tokenizer without the baseline token) can never finish:
        # keeping their checkpoint would only make the corrected command ask for --resume
        pb.pending.clear()
        if pb.store is not None:
            pb.store.discard()
        raise
    finally:
        pb.flush()
    if method == "integrated_gradients":
        # attributions should add up to f(x) - f(baseline): a large gap means too few steps
        gaps = np.abs(np.asarray(extra["completeness_gap"], dtype=np.float64))
        diffs = np.abs(np.asarray(extra["score_difference"], dtype=np.float64))
        worst = int(np.argmax(gaps - IG_GAP_WARN * diffs))
        if gaps[worst] > IG_GAP_WARN * diffs[worst] + 1e-6:
            warnings.warn(
                f"integrated gradients have not converged: the attributions of row "
                f"{row_texts[worst]!r} miss f(x) - f(baseline) = {diffs[worst]:.3g} by "
                f"{gaps[worst]:.3g} (more than {IG_GAP_WARN:.0%}; the gaps are in meta.json's "
                f"method_details); rerun with more --steps than {steps}"
                + (" or with --ig-baseline unk" if ig_baseline == "zero" else ""),
                UserWarning,
                stacklevel=2,
            )
    result = AttributionResult(
        features=[
            {"text": f.text, "start": f.start, "end": f.end, "positions": f.positions}
            for f in feats
        ],
        rows=row_texts,
        row_positions=rows,
        scores=np.asarray(attr, dtype=np.float64),
        stderr=None if stderr is None else np.asarray(stderr, dtype=np.float64),
        target_scores=full,
        method=method,
        meta={
            "analysis": "attribution",
            "model": lm.describe(),
            "prompt": prompt,
            "text": text,
            "prompt_ids": prompt_ids,
            "target": target_text,
            "target_ids": target_ids,
            "generated": generate is not None,
            "options": options,
            "method_details": extra,
            "forward_passes": pb.forward_passes,
            "definition": "row score = sum of the row's target-token log-probabilities under teacher forcing "
            "(exp of it with score=prob); ablation/occlusion: f(x) - f(x with the feature ablated); gradient "
            "methods on the prompt's embedding-layer output, summed over dimensions and a feature's tokens",
            "versions": versions(),
            "created": now(),
        },
    )
    if pb.store is not None:
        pb.store.finish(result)  # removed now, or by result.save() inside kept_until_saved()
    return result
