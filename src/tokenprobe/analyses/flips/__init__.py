"""Flip rates: which words, at which relative position, flip a classifier's prediction when
perturbed (deleted, masked or replaced by a filler word)."""

from __future__ import annotations

from ..base import Analysis
from .classifiers import (
    DEFAULT_TEMPLATE,
    Classifier,
    PromptedClassifier,
    SequenceClassifier,
    check_template,
)
from .cli import command, demo
from .compute import PARTIAL, flip_rates
from .options import GROUPS, OPTIONS, RANKINGS, FlipFigure, FlipOptions
from .result import FlipResult
from .views import flip_view, top_words
from .words import PERTURBATIONS, TextInput, bucket_of, perturb, rates_table, tokenize_words

__all__ = [
    "DEFAULT_TEMPLATE",
    "GROUPS",
    "PARTIAL",
    "PERTURBATIONS",
    "RANKINGS",
    "SPEC",
    "Classifier",
    "FlipFigure",
    "FlipOptions",
    "FlipResult",
    "PromptedClassifier",
    "SequenceClassifier",
    "TextInput",
    "bucket_of",
    "check_template",
    "flip_rates",
    "flip_view",
    "perturb",
    "rates_table",
    "tokenize_words",
    "top_words",
]

SPEC = Analysis(
    name="flips",
    command="flips",
    run=flip_rates,
    result=FlipResult,
    help="flip rates: which words, at which relative position, flip a classifier's prediction",
    description="For every word occurrence of every text: perturb it (delete by default), re-classify, and "
    "record whether the predicted label changed. Rates per (class, word, position bucket), bucket = "
    "floor(B * i / n) for the i-th of n words, with Wilson 95% intervals. The classifier is a sequence "
    "classifier (a model with a classification head) or a causal LM used as a prompted classifier: the "
    "template with the text in it, and one verbaliser per label; the prediction is the argmax of the "
    "verbalisers' next-token scores, each verbaliser counting by its first token. Writes flips.parquet "
    "(one row per word occurrence), rates.parquet, flips_<class>.png per class and meta.json.",
    options=OPTIONS,
    cli=command,
    demo=demo,
    seq2seq=True,
    demo_help="flip rates (200 sample texts)",
)
