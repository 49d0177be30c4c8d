"""Attribution: which input features (prompt tokens or spans) drive each output token.

Every method shares one signature and one scorer. The score of a target row is the
log-probability of its tokens under teacher forcing (one pass scores every target token), and
every perturbation or integration step goes through the model in token-budget batches.

The data walks one way: the prompt and target are prepared once (`features.py`), a `Problem`
scores perturbed prompts (`problem.py`), a method turns scores or gradients into attributions
(`methods.py`, `gradients.py`), and the result is built from what they return.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ...checkpoint import digest, model_settings
from ...errors import TokenprobeError, text_list, warn
from ...model import LoadedModel
from ...provenance import provenance
from ...runner import open_checkpoint, progress_disabled
from ...text import first_token
from ..settings import with_options
from .features import AttributionInput, prepare_attribution
from .gradients import GRADIENT_METHODS
from .methods import METHODS, MethodOutput
from .options import AttributionOptions
from .problem import PARTIAL, Problem, ScoreStore
from .result import AttributionResult
from .seq2seq import Seq2SeqProblem, prepare_seq2seq_attribution
from .seq2seq_run import SEQ2SEQ_METHODS, seq2seq_result, store_settings

IG_GAP_WARN = 0.1  # warn when |completeness gap| > this fraction of |f(x) - f(baseline)|
METHOD_OPTIONS = ("samples", "seed", "window", "stride", "steps", "ig_baseline")
DEFINITION = (
    "row score = sum of the row's target-token log-probabilities under teacher forcing "
    "(exp of it with score=prob); ablation/occlusion: f(x) - f(x with the feature ablated); gradient "
    "methods on the prompt's embedding-layer output, summed over dimensions and a feature's tokens"
)

CONTRASTIVE = DEFINITION.replace(
    "row score = sum of the row's target-token log-probabilities",
    "row score = sum of the row's target-token log-probabilities less the foil's log-probability "
    "at the row's first target position",
).replace("(exp of it with score=prob)", "(p(row) - p(foil) with score=prob)")


@with_options(AttributionOptions)
def attribute(
    lm: LoadedModel,
    prompt: str,
    *,
    options: AttributionOptions,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    _after_batch: Callable[[], None] | None = None,
    _generated: list[int] | None = None,
) -> AttributionResult:
    """Attribution of each target row's score to each input feature.

    `options` (or its settings as keyword arguments: see `AttributionOptions`): `features`
    are substrings of the (rendered) prompt, one feature each; without them every prompt
    token is a feature. The target is `target` (scored by teacher forcing) or the model's
    greedy continuation of `generate` tokens (an encoder-decoder's made already: `_generated`,
    as `attribute_rows` generates them together). `target_spans` group target tokens into
    rows (scored by their summed log-probabilities). With a `foil`, a row's score is log
    p(row) - log p(foil) at its first target position, as inseq's. With `checkpoint`, scores
    and finished integration steps are written there as the run goes; `resume=True` takes
    them from an interrupted run instead of computing them again.
    """
    o = options
    _check(prompt, o.target, o.generate)
    features = text_list(o.features, "features")
    target_spans = text_list(o.target_spans, "target_spans")
    _warn_if_16_bit(lm)
    if lm.is_seq2seq or o.target_lang is not None:
        run = (checkpoint, resume, progress, _after_batch, _generated)
        return _attribute_seq2seq(lm, prompt, o, features, target_spans, run)
    inp = prepare_attribution(
        lm,
        prompt,
        target=o.target,
        generate=o.generate,
        features=features,
        target_spans=target_spans,
        chat=o.chat,
        system=o.system,
    )
    pb = Problem.of(
        lm,
        inp,
        score=o.score,
        foil_id=_foil_id(lm, o.foil, inp.target_text),
        baseline=o.baseline,
        batch_tokens=o.batch_tokens,
        after_batch=_after_batch,
        reuse_prefix=o.reuse_prefix,
    )
    kept = _kept(o, features, target_spans)
    pb.store = _open_store(lm, inp, kept, checkpoint, resume)
    full, (attr, stderr, extra) = _run(pb, kept, progress)
    if o.method == "integrated_gradients":
        _warn_if_not_converged(extra, inp.row_texts, o.steps, o.ig_baseline)
    result = _result(lm, inp, pb, kept, full, (attr, stderr, extra), o.generate is not None)
    if pb.store is not None:  # removed now, or by result.save() inside kept_until_saved()
        pb.store.checkpoint.finish(result)
    return result


def _attribute_seq2seq(
    lm: LoadedModel,
    source: str,
    o: AttributionOptions,
    features: list[str] | None,
    target_spans: list[str] | None,
    run: tuple[str | Path | None, bool, bool | None, Callable[[], None] | None, list[int] | None],
) -> AttributionResult:
    """`attribute` on an encoder-decoder: the source is `prompt`, the target is attributed to
    both sides (see `seq2seq.py`)."""
    checkpoint, resume, progress, after_batch, generated = run
    if not lm.is_seq2seq:
        raise TokenprobeError(
            "`target_lang` is for encoder-decoder models: leave it out for a decoder-only one"
        )
    if o.chat:
        raise TokenprobeError("an encoder-decoder has no chat template: leave out `chat`")
    inp = prepare_seq2seq_attribution(
        lm,
        source,
        target=o.target,
        generate=o.generate,
        target_lang=o.target_lang,
        features=features,
        target_spans=target_spans,
        generated=generated,
    )
    pb = Seq2SeqProblem.of_input(
        lm,
        inp,
        score=o.score,
        foil_id=_foil_id(lm, o.foil, inp.target_text),
        baseline=o.baseline,
        batch_tokens=o.batch_tokens,
        after_batch=after_batch,
        reuse_prefix=o.reuse_prefix,  # unused (inputs run whole); meta.json says it was off
    )
    kept = {**_kept(o, features, target_spans), "target_lang": o.target_lang}
    skip = ("batch_tokens", "chat", "system", "spans", "target_spans")
    settings = store_settings(model_settings(lm), inp)
    settings.update({k: v for k, v in kept.items() if k not in skip})
    store = open_checkpoint(checkpoint, PARTIAL, settings, resume)
    pb.store = None if store is None else ScoreStore(store)
    full, output = _run(pb, kept, progress, SEQ2SEQ_METHODS)
    if o.method == "integrated_gradients":
        _warn_if_not_converged(output[2], inp.row_texts, o.steps, o.ig_baseline)
    result = seq2seq_result(lm, inp, pb, kept, full, output, o.generate is not None)
    if pb.store is not None:
        pb.store.checkpoint.finish(result)
    return result


def _kept(
    o: AttributionOptions, features: list[str] | None, target_spans: list[str] | None
) -> dict[str, Any]:
    """The settings meta.json (and the checkpoint) keeps, by the names it has always used."""
    return {
        "method": o.method,
        "score": o.score,
        "foil": o.foil,
        "baseline": o.baseline,
        **{k: getattr(o, k) for k in METHOD_OPTIONS},
        "chat": o.chat,
        "system": o.system,
        "spans": list(features or []),
        "target_spans": list(target_spans or []),
        "batch_tokens": o.batch_tokens,
    }


def _foil_id(lm: LoadedModel, foil: str | None, target: str) -> int | None:
    """The foil's token id (its first token, with a warning when it has several), or None."""
    if foil is None:
        return None
    if not foil:
        raise TokenprobeError("the foil is empty: give the token to contrast with, e.g. ' Vienna'")
    if foil == target:
        raise TokenprobeError(
            f"the foil {foil!r} is the target: give another token to contrast with"
        )
    return first_token(lm.tokenizer, foil, "foil", "attribution contrasts with")


def _check(prompt: str, target: str | None, generate: int | None) -> None:
    """Refuse a prompt or target that can never run, before the model does anything (the
    settings are checked as `AttributionOptions` is built; a data file's row has its own
    target)."""
    if not prompt or not prompt.strip():
        raise TokenprobeError("the prompt is empty: give the text whose tokens to attribute")
    if target is None and generate is None:
        raise TokenprobeError(
            "give a `target` to score or `generate` N to attribute the model's own answer"
        )
    if target is not None and not target.strip():
        raise TokenprobeError(
            "the target is empty: give the continuation to attribute with `target`"
        )


def _warn_if_16_bit(lm: LoadedModel) -> None:
    """16-bit weights round each score by about as much as a small attribution."""
    if lm.dtype in (torch.bfloat16, torch.float16):
        warn(
            f"attribution with {str(lm.dtype).removeprefix('torch.')} weights: rounding moves each "
            "score by a few hundredths of a nat (and on a GPU with the batching), as much as a small "
            "attribution; load the model in float32 (`dtype` float32) to resolve small effects",
            stacklevel=4,  # past `attribute` and its `takes` wrapper
        )


def _open_store(
    lm: LoadedModel,
    inp: AttributionInput,
    options: dict[str, Any],
    checkpoint: str | Path | None,
    resume: bool,
) -> ScoreStore | None:
    """The run's checkpoint in `checkpoint`/attribute.partial (None without `checkpoint`), with
    what an interrupted run of the same settings finished."""
    # batching changes speed, not the numbers; the prompt and target are kept as ids
    skip = ("batch_tokens", "chat", "system", "spans", "target_spans")
    settings = {
        "analysis": "attribution",
        "model": model_settings(lm),
        "prompt_ids": digest(inp.prompt_ids),
        "target_ids": digest(inp.target_ids),
        "rows": inp.rows,
        "features": [f.positions for f in inp.features],
        **{k: v for k, v in options.items() if k not in skip},
    }
    store = open_checkpoint(checkpoint, PARTIAL, settings, resume)
    return None if store is None else ScoreStore(store)


def _run(
    pb: Problem,
    options: dict[str, Any],
    progress: bool | None,
    methods: dict[str, Callable[..., MethodOutput]] = METHODS,
) -> tuple[np.ndarray, MethodOutput]:
    """The unperturbed scores, then the method's output; bad options discard the checkpoint."""
    method = options["method"]
    unit = "step" if method in GRADIENT_METHODS else "input"
    try:
        with torch.inference_mode():
            full = pb.score_prompts([pb.perturbed([], None)])[0].numpy()
        bar = tqdm(desc=f"attribution ({method})", unit=unit, disable=progress_disabled(progress))
        with bar:
            pb.bar = bar
            out = methods[method](pb, **{k: options[k] for k in METHOD_OPTIONS})
    except TokenprobeError:
        # bad options (`steps` 0, a tokenizer without the baseline token) can never finish:
        # keeping their checkpoint would only make the corrected command ask for `resume`
        if pb.store is not None:
            pb.store.discard()
        raise
    finally:
        pb.flush()
    return full, out


def _warn_if_not_converged(
    extra: dict[str, Any], row_texts: list[str], steps: int, ig_baseline: str
) -> None:
    """Attributions should add up to f(x) - f(baseline): a large gap means too few steps."""
    gaps = np.abs(np.asarray(extra["completeness_gap"], dtype=np.float64))
    diffs = np.abs(np.asarray(extra["score_difference"], dtype=np.float64))
    worst = int(np.argmax(gaps - IG_GAP_WARN * diffs))
    if gaps[worst] > IG_GAP_WARN * diffs[worst] + 1e-6:
        warn(
            f"integrated gradients have not converged: the attributions of row "
            f"{row_texts[worst]!r} miss f(x) - f(baseline) = {diffs[worst]:.3g} by "
            f"{gaps[worst]:.3g} (more than {IG_GAP_WARN:.0%}; the gaps are in meta.json's "
            f"method_details); rerun with more `steps` than {steps}"
            + (" or with `ig_baseline` unk" if ig_baseline == "zero" else ""),
            stacklevel=4,  # past `attribute` and its `takes` wrapper
        )


def _batching_note(pb: Problem) -> str:
    """How the run's batches went through the model, for meta.json: padded batches checked
    against one input alone on the run's first batch, or what ran instead and why."""
    note = None if pb.batching is None else pb.batching.note
    return note or "no model batch ran (every score came from the checkpoint)"


def _result(
    lm: LoadedModel,
    inp: AttributionInput,
    pb: Problem,
    options: dict[str, Any],
    full: np.ndarray,
    output: MethodOutput,
    generated: bool,
) -> AttributionResult:
    """The result of a finished run, with everything meta.json records."""
    attr, stderr, extra = output
    return AttributionResult(
        features=[
            {"text": f.text, "start": f.start, "end": f.end, "positions": f.positions}
            for f in inp.features
        ],
        rows=inp.row_texts,
        row_positions=inp.rows,
        scores=np.asarray(attr, dtype=np.float64),
        stderr=None if stderr is None else np.asarray(stderr, dtype=np.float64),
        target_scores=full,
        method=options["method"],
        meta={
            "analysis": "attribution",
            **provenance(lm, options).meta(),
            "prompt": inp.prompt,
            "text": inp.text,
            "prompt_ids": inp.prompt_ids,
            "target": inp.target_text,
            "target_ids": inp.target_ids,
            "generated": generated,
            "method_details": extra,
            "forward_passes": pb.forward_passes,
            "batching": _batching_note(pb),
            "earlier_positions": pb.earlier_positions,
            "definition": DEFINITION if options["foil"] is None else CONTRASTIVE,
            "foil_id": pb.foil_id,
        },
    )
