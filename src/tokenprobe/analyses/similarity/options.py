"""Past similarity's options: the one source of their flags, groups and help."""

from __future__ import annotations

from ..base import Option, ray_options
from .compute import DIRECTIONS

OPTIONS = [
    Option(None, "one text containing the marker", flag="--text", role="input", group="input"),
    Option(
        None,
        "a data set (.csv, .jsonl, .parquet); averages over its texts",
        flag="--data",
        role="input",
        group="input",
    ),
    Option(
        None,
        "column of --data holding the texts (default: text)",
        flag="--text-column",
        role="input",
        group="input",
        default="text",
    ),
    Option("marker", "the marker token (default {default})", group="input"),
    Option(
        "add_marker",
        "do not add the marker to the tokenizer; match its ordinary tokens and use the last one",
        flag="--no-add-marker",
        action="store_true",
        invert=True,
        group="input",
    ),
    Option(
        "insert_every",
        "write a marker after every N tokens of each text (for texts without markers)",
        type=int,
        metavar="N",
        group="input",
    ),
    Option(
        "insert_after",
        "write a marker after each occurrence of TEXT",
        metavar="TEXT",
        group="input",
    ),
    Option(
        "occurrence",
        "use the K-th marker of each text (default {default})",
        type=int,
        metavar="K",
        group="similarity",
    ),
    Option(
        "window",
        "how many tokens before the marker (default {default})",
        type=int,
        metavar="T",
        group="similarity",
    ),
    Option(
        "direction",
        "compare with the tokens before (past, default) or after (future) the marker",
        choices=list(DIRECTIONS),
        group="similarity",
    ),
    Option(
        "centre",
        "subtract each layer's mean hidden state over the text's positions before the cosine: "
        "raw residual streams are highly anisotropic (one large shared direction makes every cosine "
        "close to 1), and centring shows what a token has in common beyond that. The mean leaves out "
        "the first position, whose attention-sink activations can be 100x larger than the rest",
        action="store_true",
        group="similarity",
    ),
    Option(
        "centre_skip_first",
        "with --centre, include the first position in the mean",
        flag="--centre-include-first",
        action="store_true",
        invert=True,
        group="similarity",
    ),
    Option(
        "resume",
        "continue an interrupted --data run in --out (its finished texts are kept there)",
        action="store_true",
        group="similarity",
    ),
    *ray_options(),
]
