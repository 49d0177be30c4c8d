"""The lens's options: the one source of their defaults' meaning, limits, flags and help."""

from __future__ import annotations

from ..base import Option, bounded_int, positive_int, prompt_options

MAX_TOP_K = 100  # each kept token is three columns of the table, per cell

OPTIONS = [
    *prompt_options(several=True),
    Option("dummy", "insert N dummy marker tokens (default {default})", type=int, metavar="N", group="input"),
    Option(
        "dummy_token",
        "the dummy marker (default {default}); added to the tokenizer if unknown",
        group="input",
    ),
    Option(
        "dummy_after",
        "insert the dummies after the first TEXT (default: at the end, i.e. after the generation prompt with --chat)",
        metavar="TEXT",
        group="input",
    ),
    Option("dummy_before", "insert the dummies before the first TEXT", metavar="TEXT", group="input"),
    Option(
        "targets",
        "track this token's probability and rank everywhere, e.g. --target ' Canberra' (repeatable)",
        flag="--target",
        action="append",
        metavar="TEXT",
        group="lens",
    ),
    Option(
        "top_k",
        "top tokens kept per cell, 1 to {maximum} (default {default})",
        type=bounded_int(MAX_TOP_K),
        minimum=1,
        maximum=MAX_TOP_K,
        group="lens",
    ),
    Option(
        "memory_mb",
        "memory for logits decoded at once (default 512 on CPU, 2048 on a GPU)",
        type=positive_int,
        group="lens",
    ),
    Option("zoom", "draw only positions START..END-1", role="figure", metavar="START:END", group="figure"),
    Option(
        "frame",
        "outline positions START..END-1 (default: the dummy tokens)",
        role="figure",
        metavar="START:END",
        group="figure",
    ),
    Option(None, "outline nothing", flag="--no-frame", role="input", action="store_true", group="figure"),
]
