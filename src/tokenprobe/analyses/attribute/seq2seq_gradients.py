"""Gradient methods on an encoder-decoder: saliency, input x gradient and integrated gradients
with respect to what each side actually embeds, the source's and the decoder inputs'.

The attributed input of a side is its embedding module's output times the scale the stack
applies after it (Marian's and FSMT's `embed_scale`, T5Gemma's sqrt(width)); BART-like scaled
embeddings scale inside the module. That is what inseq passes as `inputs_embeds`. The model
runs on the real ids, forward hooks putting the gradient-carrying embeddings (divided by that
scale) in place of each side's embedding output, so everything after it (position embeddings,
LED's padding to its attention window) happens as in a plain forward.

Integrated gradients move both sides together from their baseline (zeros, or the pad or unk
token's embedding at every position, start and forced tokens included); completeness is
f(source, decoder inputs) - f(both at the baseline).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import TokenprobeError
from ...runner import float_tolerance, is_oom, map_batches, relative_error, run_with_backoff
from .gradients import _gauss_legendre, _per_row_grads
from .seq2seq import Seq2SeqProblem


@dataclass
class _Sides:
    """Both sides' ids, attributed embeddings (flat: source rows, then decoder inputs), the
    baseline, and each side's embedding module with the scale applied after it."""

    source: torch.Tensor  # (n,)
    decoder: torch.Tensor  # (L,)
    emb: torch.Tensor  # (n + L, D)
    base: torch.Tensor  # (n + L, D)
    modules: dict[str, tuple[nn.Module, float]]


def embedding_modules(model: nn.Module) -> dict[str, tuple[nn.Module, float]]:
    """Each side's token-embedding module and the scale its stack applies after it."""
    out: dict[str, tuple[nn.Module, float]] = {}
    for side in ("encoder", "decoder"):
        stack = _stack(model, side)
        module = getattr(stack, "embed_tokens", None)
        if not isinstance(module, nn.Module):
            module = stack.get_input_embeddings()
        out[side] = (module, _outside_scale(stack, model.config))
    return out


def _stack(model: nn.Module, side: str) -> Any:
    """The model's encoder or decoder (`get_encoder()` / `get_decoder()`)."""
    return getattr(model, f"get_{side}")()


def _outside_scale(stack: nn.Module, config: Any) -> float:
    """What `stack` multiplies its embedding module's output by (1 where none, or inside)."""
    scale = getattr(stack, "embed_scale", None)
    if isinstance(scale, (int, float, torch.Tensor)):
        return float(scale)
    if getattr(config, "model_type", "") == "t5gemma":
        return float(config.encoder.hidden_size) ** 0.5
    return 1.0


@contextmanager
def embedded(model: nn.Module, sides: dict[str, torch.Tensor]) -> Iterator[None]:
    """Runs of the model inside take `sides["encoder"]` / `sides["decoder"]` (B, len, D), as
    the stacks embed them, in place of what each side's embedding module gives for the ids."""
    modules = embedding_modules(model)
    current: list[str] = []  # the side running now, until its ids are embedded

    def enter(side: str) -> Any:
        return lambda _m, _a: current.__setitem__(slice(None), [side])

    def hook(module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        # the side's first call embeds its ids; a later one (LED embeds the pad tokens it
        # adds to reach its attention window) is left as it is
        side = current.pop() if current else ""
        if side not in sides or modules[side][0] is not module:
            return out
        x = sides[side] / modules[side][1]
        if out.shape[0] != x.shape[0] or out.shape[1] < x.shape[1] or out.shape[2:] != x.shape[2:]:
            raise TokenprobeError(
                f"{type(model).__name__} embeds its {side} ids as {tuple(out.shape)}, not "
                f"{tuple(x.shape)}: gradient methods cannot put the attributed embeddings there"
            )
        x = x.to(device=out.device, dtype=out.dtype)
        return torch.cat([x, out[:, x.shape[1] :]], dim=1) if out.shape[1] > x.shape[1] else x

    handles = [_stack(model, s).register_forward_pre_hook(enter(s)) for s in ("encoder", "decoder")]
    for module in {id(m): m for m, _ in modules.values()}.values():
        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def attributed_embeddings(model: nn.Module, source: torch.Tensor, decoder: torch.Tensor) -> Any:
    """(n, D) and (L, D): what each side embeds for its ids (module output x outside scale)."""
    modules = embedding_modules(model)
    with torch.no_grad():
        src = modules["encoder"][0](source) * modules["encoder"][1]
        dec = modules["decoder"][0](decoder) * modules["decoder"][1]
    return src.detach(), dec.detach()


def _sides(pb: Seq2SeqProblem, ig_baseline: str) -> _Sides:
    n, device, model = pb.n_source, pb.lm.device, pb.lm.model
    source = torch.tensor(pb.prompt_ids[:n], device=device)
    decoder = torch.tensor(pb.prompt_ids[n:], device=device)
    src, dec = attributed_embeddings(model, source, decoder)
    emb = torch.cat([src, dec])
    if ig_baseline == "zero":
        base = torch.zeros_like(emb)
    else:
        tid = getattr(pb.lm.tokenizer, f"{ig_baseline}_token_id", None)
        if tid is None:
            raise TokenprobeError(
                f"this tokenizer has no {ig_baseline} token: choose another `ig_baseline`"
            )
        b_src, b_dec = attributed_embeddings(
            model, torch.full_like(source, int(tid)), torch.full_like(decoder, int(tid))
        )
        base = torch.cat([b_src, b_dec])
    return _Sides(source, decoder, emb, base, embedding_modules(model))


def seq2seq_gradients(
    pb: Seq2SeqProblem, *, method: str, steps: int, ig_baseline: str, **_: Any
) -> tuple[np.ndarray, None, dict[str, Any]]:
    """Attributions (rows, features) of one gradient method on both sides."""
    sides = _sides(pb, ig_baseline)
    if method == "integrated_gradients":
        alphas, weights = _gauss_legendre(steps)
    else:
        alphas, weights = np.array([1.0]), np.array([1.0])
    per_token = _integrate(pb, sides, method, alphas, weights)
    attr = np.stack([per_token[:, f.positions].sum(axis=1) for f in pb.features], axis=1)
    extra: dict[str, Any] = {}
    if method == "integrated_gradients":
        extra = _completeness(pb, sides, per_token, steps, ig_baseline)
    return attr, None, {**extra, "decoder_first_half": pb.early_note}


def _integrate(
    pb: Seq2SeqProblem, sides: _Sides, method: str, alphas: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Per-token sums (rows, n + L) over every step, resumed steps taken from the checkpoint."""
    total = len(pb.prompt_ids)
    per_token = np.zeros((len(pb.rows), total))
    done: set[int] = set()
    for steps_done, part in pb.store.step_parts if pb.store is not None else []:
        done.update(int(i) for i in steps_done)
        per_token += part
    todo = [i for i in range(len(alphas)) if i not in done]
    pb.grow_bar(len(alphas), len(alphas) - len(todo))
    model = pb.lm.model
    was_training = model.training
    model.eval()
    try:

        def run(batch: list[int]) -> np.ndarray:
            idx = [todo[i] for i in batch]
            return _step_batch(pb, sides, method, alphas[idx], weights[idx])

        for batch, part64 in map_batches([total] * len(todo), pb.batch_tokens, run):
            idx = [todo[i] for i in batch]
            per_token += part64
            if pb.store is not None:
                pb.store.add_steps(idx, part64)
            pb.batch_done(len(idx))
    finally:
        model.train(was_training)
    return per_token


def _step_batch(
    pb: Seq2SeqProblem, sides: _Sides, method: str, alphas: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Per-token sums (rows, n + L) of the weighted gradients of some steps, in float64."""
    device, emb, n = pb.lm.device, sides.emb, pb.n_source
    a = torch.tensor(alphas, dtype=emb.dtype, device=device)[:, None, None]
    w = torch.tensor(weights, dtype=torch.float32, device=device)
    delta = emb - sides.base
    x = (sides.base[None] + a * delta[None]).requires_grad_(True)  # (S, n + L, D)
    with torch.enable_grad():
        cols = token_logprob_columns(pb, sides, x[:, :n], x[:, n:])
        pb.forward_passes += 1
        grads = _per_row_grads([pb.row_score(cols, r) for r in range(len(pb.rows))], x)
    if method == "saliency":
        part = (grads.abs() * w[None, :, None, None]).sum(dim=1).sum(dim=-1)
    else:
        factor = emb if method == "input_x_gradient" else delta
        part = ((grads * w[None, :, None, None]).sum(dim=1) * factor[None].float()).sum(dim=-1)
    return part.double().cpu().numpy()


def token_logprob_columns(
    pb: Seq2SeqProblem, sides: _Sides, src: torch.Tensor, dec: torch.Tensor
) -> list[torch.Tensor]:
    """m columns (S,) of target log-probabilities with `src` (S, n, D) and `dec` (S, L, D) as
    what the sides embed (then the foil's m columns), keeping the graph. Each target position
    is unembedded on its own (the seq2seq adapter rebuilds the model's logits), so a row's
    backward passes through its own unembedding only; the targets read in the first half of
    the decoder come from a second run of the decoder on that half alone (`_early_half`), so
    that their backwards skip the decoder positions after it."""
    lm, S = pb.lm, src.shape[0]
    adapter = lm.require_seq2seq()
    with (
        adapter.record(last_only=True) as streams,
        embedded(lm.model, {"encoder": src, "decoder": dec}),
    ):
        out = lm.model(
            input_ids=sides.source[None].expand(S, -1),
            decoder_input_ids=sides.decoder[None].expand(S, -1),
            use_cache=False,
        )
    hidden = streams.decoder[-1]
    reads = [pb.forced + j - 1 for j in range(len(pb.target_ids))]
    early = _early_half(pb, sides, out, dec, hidden, reads)
    cols, foils = [], []
    for j, t in enumerate(pb.target_ids):
        at = reads[j]
        state = early[:, at] if early is not None and at < early.shape[1] else hidden[:, at]
        logp = torch.log_softmax(adapter.logits(state), dim=-1)
        cols.append(logp[:, t])
        if pb.foil_id is not None:
            foils.append(logp[:, pb.foil_id])
    return cols + foils


EARLY_MIN = 4  # decoder positions read, at the least, before the first half runs on its own


def _early_half(
    pb: Seq2SeqProblem,
    sides: _Sides,
    out: Any,
    dec: torch.Tensor,
    hidden: torch.Tensor,
    reads: list[int],
) -> torch.Tensor | None:
    """The decoder's last states over the first half of the read positions, run again on
    that half alone after the same encoder output (a causal decoder's states there are the
    same), keeping the graph; None where there are too few positions, the model gives no
    encoder output to reuse, or the states differ from the whole run's (checked on every
    batch: then the whole run's are used from here on, and meta.json says why)."""
    cut = max(reads[: len(reads) // 2], default=-1) + 1
    encoded = getattr(out, "encoder_last_hidden_state", None)
    if len(set(reads)) < EARLY_MIN or encoded is None or pb.early_note.startswith("not used"):
        return None
    from transformers.modeling_outputs import BaseModelOutput

    lm, S = pb.lm, dec.shape[0]
    adapter = lm.require_seq2seq()
    try:
        with (
            adapter.record(last_only=True) as streams,
            embedded(lm.model, {"decoder": dec[:, :cut]}),
        ):
            lm.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                decoder_input_ids=sides.decoder[None, :cut].expand(S, -1),
                use_cache=False,
            )
    except Exception as exc:  # noqa: BLE001 - a model that cannot take its encoder output back
        if is_oom(exc):
            raise
        pb.early_note = f"not used: the decoder's run after the encoder output raised {exc!r:.200}"
        return None
    early = streams.decoder[-1]
    err = relative_error(early.detach(), hidden[:, :cut].detach())
    if err > float_tolerance(early.dtype):
        pb.early_note = (
            f"not used: the decoder's first {cut} positions run alone differ from the whole "
            f"run by {err:.1e} (relative error)"
        )
        return None
    pb.early_note = EARLY_USED
    return early


EARLY_USED = (
    "the targets read in the decoder's first half take their gradients from a run of that "
    "half alone (checked against the whole run on every batch)"
)


def _completeness(
    pb: Seq2SeqProblem, sides: _Sides, per_token: np.ndarray, steps: int, ig_baseline: str
) -> dict[str, Any]:
    """How far the attributions miss f(x) - f(baseline), both ends scored by the model's own
    logits."""
    n, model = pb.n_source, pb.lm.model
    ends = torch.stack([sides.base, sides.emb])
    reads = torch.arange(len(pb.target_ids), device=ends.device) + pb.forced - 1

    def score_ends(batch: list[int]) -> np.ndarray:
        x = ends[batch]
        with torch.no_grad(), embedded(model, {"encoder": x[:, :n], "decoder": x[:, n:]}):
            logits = model(
                input_ids=sides.source[None].expand(len(batch), -1),
                decoder_input_ids=sides.decoder[None].expand(len(batch), -1),
                use_cache=False,
            ).logits[:, reads]
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
