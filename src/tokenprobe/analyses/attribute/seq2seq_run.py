"""What `attribute` does differently for an encoder-decoder: its methods (the same names, on
both sides), its checkpoint's settings, and its result (features with a side each)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from ...checkpoint import digest
from ...model import LoadedModel
from ...provenance import provenance
from .gradients import GRADIENT_METHODS
from .methods import MethodOutput, ablation, shapley
from .result import AttributionResult
from .seq2seq import Seq2SeqAttributionInput, Seq2SeqProblem, seq2seq_occlusion
from .seq2seq_gradients import seq2seq_gradients

SEQ2SEQ_METHODS: dict[str, Callable[..., MethodOutput]] = {
    "ablation": ablation,
    "shapley": shapley,
    "occlusion": seq2seq_occlusion,
    **{name: functools.partial(seq2seq_gradients, method=name) for name in GRADIENT_METHODS},
}

SEQ2SEQ_DEFINITION = (
    "encoder-decoder: row score = sum of the row's target-token log-probabilities under teacher "
    "forcing (exp of it with score=prob), attributed to every source token and every decoder "
    "input (start and forced tokens, then the target tokens before the last); ablation/occlusion: "
    "f(x) - f(x with the feature removed or replaced on its side; occlusion windows stay on one "
    "side); gradient methods on what each side embeds (its embedding module's output times the "
    "scale its stack applies after it), summed over dimensions and a feature's tokens"
)
BATCHING = "right-padded source and decoder batches with both attention masks"


def store_settings(lm_settings: dict[str, Any], inp: Seq2SeqAttributionInput) -> dict[str, Any]:
    """What identifies a seq2seq run in its checkpoint (beside the method's settings)."""
    return {
        "analysis": "attribution",
        "model": lm_settings,
        "seq2seq": True,
        "source_ids": digest(inp.source_ids),
        "decoder_ids": digest(inp.decoder_ids),
        "rows": inp.rows,
        "features": [f.positions for f in inp.features],
    }


def _local(positions: list[int], side: str, n: int) -> list[int]:
    """Flat positions as positions of their side (source index, or decoder index)."""
    return [p - n for p in positions] if side == "target" else list(positions)


def seq2seq_result(
    lm: LoadedModel,
    inp: Seq2SeqAttributionInput,
    pb: Seq2SeqProblem,
    options: dict[str, Any],
    full: np.ndarray,
    output: MethodOutput,
    generated: bool,
) -> AttributionResult:
    """The result of a finished seq2seq run: each feature with its side and its positions on
    that side (decoder positions for the target side)."""
    attr, stderr, extra = output
    n = len(inp.source_ids)
    return AttributionResult(
        features=[
            {
                "text": f.text,
                "start": f.start,
                "end": f.end,
                "positions": _local(f.positions, side, n),
                "side": side,
            }
            for f, side in zip(inp.features, inp.sides, strict=True)
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
            "seq2seq": True,
            "prompt": inp.source,
            "text": inp.source_text,
            "prompt_ids": inp.source_ids,
            "target": inp.target_text,
            "target_ids": inp.target_ids,
            "decoder_ids": inp.decoder_ids,
            "decoder_text": inp.decoder_text,
            "forced": inp.forced,
            "generated": generated,
            "method_details": extra,
            "forward_passes": pb.forward_passes,
            "batching": BATCHING,
            "earlier_positions": pb.earlier_positions,
            "definition": SEQ2SEQ_DEFINITION
            if options["foil"] is None
            else SEQ2SEQ_DEFINITION.replace(
                "log-probabilities under",
                "log-probabilities less the foil's log-probability at the row's first target "
                "position, under",
            ),
            "foil_id": pb.foil_id,
        },
    )
