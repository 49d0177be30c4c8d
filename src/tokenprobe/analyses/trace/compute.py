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

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ...errors import TokenprobeError, warn
from ...model import LoadedModel
from ...model.adapter import weight_of
from ...provenance import provenance
from ...text import PreparedInput, token_texts
from ..settings import with_options
from .cells import trace_grids
from .checks import check_finite, warn_if_close, warn_if_implausible
from .heads import heads_meta, is_head
from .inputs import TraceInputs, trace_inputs
from .options import TraceOptions
from .result import TraceResult
from .seq2seq_compute import trace_seq2seq
from .store import kept_settings, open_store
from .tracer import Tracer


@with_options(TraceOptions)
def causal_trace(
    lm: LoadedModel,
    prompt: str | PreparedInput,
    *,
    options: TraceOptions,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> TraceResult:
    """Causal trace of `target` (the next token after the prompt) over `components`.

    `options` (or its settings as keyword arguments: see `TraceOptions`). Corruption:
    `corrupted` (a prompt of the same token length), or `corrupt="noise"` with `subject`
    (noise of `noise` x the embeddings' standard deviation on the subject's tokens, `samples`
    draws averaged, seeded by `seed`). `window` restores that many consecutive layers at once.
    `metric`: prob, logprob, or diff (logit of `target` - logit of `foil`; the default when a
    foil is given). `method`: exact, estimate (attribution patching) or both. With
    `checkpoint`, each finished batch of patched runs is written there as the run goes;
    `resume=True` takes them from an interrupted run instead of computing them again (the
    estimate, one forward and backward pass, is computed again). An encoder-decoder: `prompt`
    is the source, the target is scored at the last decoder position, and the encoder's and
    decoder's residual streams and the cross-attention outputs are restored (`seq2seq_compute`).
    """
    o = options
    if lm.is_seq2seq:
        return trace_seq2seq(lm, prompt, o, checkpoint, resume, progress)
    _refuse_for_causal(o)
    if o.corruption == "prompt" and o.noise_changed:
        warn(
            f"`{'`, `'.join(o.noise_changed)}` only apply to noise corruption and are ignored "
            "with a `corrupted` prompt: drop them, or corrupt with noise instead",
            stacklevel=3,  # the caller of `causal_trace` (through `takes`)
        )
    given = trace_inputs(lm, prompt, o)
    noised = o.corruption == "noise"
    noise_t, noise_std = _draw_noise(lm, given.span, o) if noised else (None, None)
    problem = given.problem(o.scored_by, o.direction, noise_t)
    tracer = Tracer(lm, problem, o.traced)
    check_finite(tracer, noised)
    warn_if_implausible(tracer, o.target or "")
    store = open_store(lm, problem, kept_settings(o), checkpoint, resume)
    scores, estimates = trace_grids(tracer, o, progress, store)
    result = TraceResult(
        tokens=list(given.clean.tokens),
        token_ids=list(given.clean.input_ids),
        components=o.traced,
        scores=scores,
        estimates=estimates,
        meta=_meta(lm, given, o, tracer, noise_std),
    )
    if o.method == "both":
        result.meta["estimate_correlation"] = result.correlation()
    if store is not None:  # removed now, or by result.save() inside kept_until_saved()
        store.checkpoint.finish(result)
    return result


def _refuse_for_causal(o: TraceOptions) -> None:
    """The settings that exist only for encoder-decoder models, one line each."""
    given = [k for k in ("target_lang", "decoder_text") if getattr(o, k) is not None]
    if given:
        raise TokenprobeError(
            f"`{'` and `'.join(given)}` apply only to encoder-decoder models; this model is "
            "decoder-only: drop them"
        )
    if "cross" in o.traced:
        raise TokenprobeError(
            "`components` cross is an encoder-decoder's cross-attention; this model is "
            "decoder-only: trace resid, attn, mlp or head"
        )


def _meta(
    lm: LoadedModel,
    given: TraceInputs,
    o: TraceOptions,
    tracer: Tracer,
    noise_std: float | None,
) -> dict:
    """meta.json: the inputs, the scored tokens, the clean and corrupted scores, the options."""
    tok, clean, bad = lm.tokenizer, given.clean, given.bad
    noised = o.corruption == "noise"
    foil_token = token_texts(tok, [given.foil_id])[0] if given.foil_id is not None else None
    return {
        "analysis": "causal trace",
        **provenance(
            lm,
            {
                "chat": clean.options.get("chat", False),
                "system": clean.options.get("system"),
                "components": o.traced,
                "window": o.window,
                "seed": o.seed,
                "samples": o.samples if noised else 1,
                "noise": o.noise if noised else None,
                "batch_tokens": o.batch_tokens,
            },
        ).meta(),
        "prompt": clean.prompt,
        "text": clean.text,
        "token_ids": list(clean.input_ids),
        "corrupted": bad.prompt if bad is not None else None,
        "corrupted_token_ids": list(bad.input_ids) if bad is not None else None,
        "corruption": o.corruption,
        "marked": given.marked,
        "subject": o.subject,
        "target": o.target,
        "foil": o.foil,
        "target_id": given.target_id,
        "foil_id": given.foil_id,
        "direction": o.direction,
        "method": o.method,
        "noise_std": noise_std,
        "target_token": token_texts(tok, [given.target_id])[0],
        "foil_token": foil_token,
        "metric": o.scored_by,
        "positions": o.positions,
        **({"tokens": list(clean.tokens)} if o.positions == "all" else {}),
        **_run_meta(tracer, o.traced),
    }


def _draw_noise(
    lm: LoadedModel, span: tuple[int, int] | None, o: TraceOptions
) -> tuple[torch.Tensor, float]:
    """(samples, subject tokens, width) Gaussian draws, seeded on the CPU (the same on every
    device), scaled to `noise` x the embeddings' standard deviation; and that scale."""
    assert span is not None
    samples, seed, noise = o.samples, o.seed, o.noise
    std = embedding_std(lm) * noise
    width = int(weight_of(lm.require_adapter().embed).shape[1])
    draws = torch.randn(
        (samples, span[1] - span[0], width), generator=torch.Generator().manual_seed(seed)
    )
    scaled = (draws * std).to(lm.device)
    if not (np.isfinite(std) and bool(torch.isfinite(scaled).all())):
        raise TokenprobeError(
            f"`noise` {noise:g} x the embeddings' standard deviation is not a finite number in "
            f"{str(lm.dtype).removeprefix('torch.')}: give a smaller `noise` (3 is the usual)"
        )
    return scaled, std


def _run_meta(tracer: Tracer, components: Sequence[str]) -> dict:
    """The clean and corrupted scores, where each row's state was read, and how the exact
    cells' lower blocks and earlier positions ran."""
    warn_if_close(tracer.clean_score, tracer.corrupted_scores)
    n = tracer.adapter.n_blocks
    return {
        "clean_score": tracer.clean_score,
        "corrupted_score": float(np.mean(tracer.corrupted_scores)),
        "corrupted_scores": tracer.corrupted_scores,
        "sites": {
            c: [x.path if x is not None else None for x in tracer.sites[c]]
            for c in components
            if not is_head(c)
        },
        **(
            {"heads": {c: heads_meta(tracer.sites[c], n) for c in components if is_head(c)}}
            if any(is_head(c) for c in components)
            else {}
        ),
        **tracer.shortcuts(),
    }


def embedding_std(lm: LoadedModel) -> float:
    """The standard deviation of the input embedding's output over (up to 4,096 evenly spread
    rows of) the vocabulary: the unit of the noise."""
    embed = lm.require_adapter().embed
    vocab = int(weight_of(embed).shape[0])
    ids = torch.linspace(0, vocab - 1, steps=min(vocab, 4096)).long().to(lm.device)
    with torch.inference_mode():
        return float(embed(ids[None]).float().std())
