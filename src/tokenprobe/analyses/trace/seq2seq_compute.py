"""Causal tracing of an encoder-decoder: the clean source and a corrupted one (another source
of the same token length, or noise on the subject's source token embeddings), the decoder
reading the same ids in both (start and forced tokens, then `decoder_text`), and the target
scored at the last decoder position. Three grids are restored one (layer, position) at a time:
the encoder's residual stream, the decoder's, and each decoder block's cross-attention output
(see `seq2seq_sites`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...checkpoint import digest
from ...errors import warn
from ...model import LoadedModel
from ...provenance import provenance
from ...text import token_texts
from .cells import trace_grids
from .checks import check_finite, warn_if_close, warn_if_implausible
from .options import GRIDS, STACKS, TraceOptions
from .result import TraceResult
from .seq2seq_inputs import Seq2SeqGiven, refuse_for_seq2seq, seq2seq_inputs, source_noise
from .seq2seq_tracer import Seq2SeqTracer
from .store import kept_settings, open_store

# what restoring one cell of each grid means (meta.json's "grids")
MEANING = {
    "encoder": "encoder layer x source position: the encoder's residual stream there (layer 0 = "
    "embeddings, k = output of encoder block k) restored; through cross-attention it changes "
    "what every decoder position reads",
    "decoder": "decoder layer x decoder position: the decoder's residual stream there (layer 0 = "
    "embeddings, k = output of decoder block k) restored, the encoder's output left as the "
    "base run's",
    "cross": "decoder block x decoder position: the output of that block's cross-attention "
    "module there (before the residual add) restored",
}
HINT = "`decoder_text` (what the decoder has written before the scored token)"


def seq2seq_grids(o: TraceOptions) -> list[str]:
    """The grids traced: resid gives the encoder's and the decoder's, cross the
    cross-attention's; all three by default."""
    if o.components is None:
        return list(GRIDS)
    wanted = {"resid": ("encoder", "decoder"), "cross": ("cross",)}
    chosen = {g for c in o.traced for g in wanted.get(c, ())}
    return [g for g in GRIDS if g in chosen]


def trace_seq2seq(
    lm: LoadedModel,
    prompt: object,
    o: TraceOptions,
    checkpoint: str | Path | None,
    resume: bool,
    progress: bool | None,
) -> TraceResult:
    """`causal_trace` of an encoder-decoder (see the module's docstring)."""
    refuse_for_seq2seq(o, prompt)
    assert isinstance(prompt, str)
    if o.corruption == "prompt" and o.noise_changed:
        warn(
            f"`{'`, `'.join(o.noise_changed)}` only apply to noise corruption and are ignored "
            "with a `corrupted` prompt: drop them, or corrupt with noise instead",
            stacklevel=4,  # the caller of `causal_trace` (through `takes`)
        )
    given = seq2seq_inputs(lm, prompt, o)
    noised = o.corruption == "noise"
    noise, std = source_noise(lm, given.span, o) if given.span and noised else (None, None)
    problem = given.problem(o.scored_by, o.direction, noise)
    grids = seq2seq_grids(o)
    tracer = Seq2SeqTracer(lm, problem, grids)
    check_finite(tracer, noised)
    warn_if_implausible(tracer, o.target or "", HINT, stacklevel=5)
    kept = {
        **kept_settings(o),
        "components": grids,
        "decoder_ids": digest(problem.decoder_ids),
    }
    store = open_store(lm, problem, kept, checkpoint, resume)
    scores, _ = trace_grids(tracer, o, progress, store, grids)
    result = TraceResult(
        tokens=list(given.clean.tokens),
        token_ids=list(given.clean.input_ids),
        components=grids,
        scores=scores,
        meta=_meta(lm, given, o, tracer, std),
    )
    if store is not None:  # removed now, or by result.save() inside kept_until_saved()
        store.checkpoint.finish(result)
    return result


def _meta(
    lm: LoadedModel, given: Seq2SeqGiven, o: TraceOptions, tracer: Seq2SeqTracer, std: float | None
) -> dict:
    """meta.json: the source and decoder inputs, the scored tokens, the clean and corrupted
    scores, what each grid means and where its states were read."""
    tok, clean, bad = lm.tokenizer, given.clean, given.bad
    noised = o.corruption == "noise"
    warn_if_close(tracer.clean_score, tracer.corrupted_scores)
    grids = list(tracer.sites)
    settings = {
        "components": grids,
        "window": o.window,
        "seed": o.seed,
        "samples": o.samples if noised else 1,
        "noise": o.noise if noised else None,
        "batch_tokens": o.batch_tokens,
        "target_lang": o.target_lang,
        "decoder_text": o.decoder_text,
    }
    return {
        "analysis": "causal trace",
        **provenance(lm, settings).meta(),
        "seq2seq": True,
        "prompt": clean.source,
        "text": clean.source,
        "token_ids": list(clean.input_ids),
        "source_tokens": list(clean.tokens),
        "decoder_ids": list(clean.decoder_ids),
        "decoder_tokens": list(clean.decoder_tokens),
        "forced": clean.forced,
        "decoder_text": o.decoder_text,
        "target_lang": o.target_lang,
        "corrupted": bad.source if bad is not None else None,
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
        "noise_std": std,
        "encoder_embed_scale": _encoder_scale(lm),
        "target_token": token_texts(tok, [given.target_id])[0],
        "foil_token": token_texts(tok, [given.foil_id])[0] if given.foil_id is not None else None,
        "metric": o.scored_by,
        "positions": o.positions,
        **({"tokens": list(clean.tokens)} if o.positions == "all" else {}),
        "clean_score": tracer.clean_score,
        "corrupted_score": float(np.mean(tracer.corrupted_scores)),
        "corrupted_scores": tracer.corrupted_scores,
        "stacks": {g: STACKS[g] for g in grids},
        "grids": {g: MEANING[g] for g in grids},
        "sites": {g: [s.path for s in tracer.sites[g]] for g in grids},
    }


def _encoder_scale(lm: LoadedModel) -> float:
    """What the encoder multiplies its token embeddings by after the embedding module (Marian,
    FSMT: `embed_scale`; T5Gemma: sqrt(width)), which scales the noise alike; 1 where the
    embedding scales itself or nothing does."""
    encoder = lm.model.get_encoder()
    scale = getattr(encoder, "embed_scale", None)
    if isinstance(scale, (int, float)):
        return float(scale)
    config = lm.model.config
    if getattr(config, "model_type", "") == "t5gemma":
        return float(config.encoder.hidden_size) ** 0.5
    return 1.0
