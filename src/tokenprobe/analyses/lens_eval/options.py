"""lens-eval's options: the one source of their defaults' meaning, limits, flags and help."""

from __future__ import annotations

from ..base import Option, positive_int

OPTIONS = [
    Option(
        "lens",
        "the tuned lens: a tune-lens --out folder, a tuned-lens package folder "
        "(config.json + params.pt), or builtin (the lens shipped for the built-in model)",
        metavar="DIR",
        required=True,
        group="lens",
    ),
    Option(
        "data",
        "held-out text: a .txt file, or any data set (.csv, .jsonl, .parquet, a folder, "
        "hf:NAME[:CONFIG][:SPLIT], sample:NAME)",
        metavar="FILE",
        required=True,
        group="data",
    ),
    Option(
        "text_column",
        "the data set's column of texts (default {default})",
        metavar="NAME",
        group="data",
    ),
    Option(
        "tokens",
        "held-out tokens to evaluate, in whole --seq-len sequences: TOKENS // SEQ_LEN of them, at least one (default {default})",
        type=positive_int,
        metavar="N",
        group="data",
    ),
    Option(
        "seq_len",
        "tokens per sequence (default {default})",
        type=positive_int,
        minimum=2,
        metavar="N",
        group="data",
    ),
    Option(
        "memory_mb",
        "memory for the logits of one layer decoded at once (default 512 on CPU, 4096 on a GPU)",
        type=positive_int,
        group="lens",
    ),
]
