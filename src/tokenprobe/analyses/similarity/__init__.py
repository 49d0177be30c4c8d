"""Past similarity: per layer, the cosine between a marker token's hidden state and the
tokens before (or after) it, for one text or averaged over a data set."""

from __future__ import annotations

from ..base import Analysis
from .cli import command, demo
from .compute import PARTIAL, past_similarity
from .markers import insert_markers
from .options import DIRECTIONS, OPTIONS, SimilarityFigure, SimilarityOptions
from .result import SimilarityResult

__all__ = [
    "DIRECTIONS",
    "PARTIAL",
    "SPEC",
    "SimilarityFigure",
    "SimilarityOptions",
    "SimilarityResult",
    "insert_markers",
    "past_similarity",
]

SPEC = Analysis(
    name="similarity",
    command="similarity",
    run=past_similarity,
    result=SimilarityResult,
    help="past similarity: cosine between a marker token and the tokens before it, per layer",
    description="For the k-th occurrence of a marker token (e.g. _PAUSE_) and every layer (0 = embeddings, "
    "i = output of block i), the cosine similarity between the marker's hidden state and each of the "
    "--window tokens before it (or after it with --direction future); over a data set, the mean over the "
    "texts that have the k-th marker, with the count behind each cell. A marker the tokenizer lacks is "
    "added as one token (untrained embedding); a marker of several tokens (--no-add-marker) is "
    "represented by its last token. Writes similarity.parquet, similarity.png and meta.json. "
    "An encoder-decoder model (T5, BART, Marian, ...): --text is the source; the decoder reads "
    "its start token, the --target-lang token and --decoder-text; the marker is compared within "
    "one stream, the encoder's states of the source or the decoder's states of its input "
    "(--side, default: the side the marker is in; the table's side column says which). It runs "
    "here only, not with --ray.",
    options=OPTIONS,
    cli=command,
    demo=demo,
    demo_help="past similarity (raw and centred)",
    seq2seq=True,
)
