"""The lens's options: the one source of their defaults' meaning, limits, flags and help."""

from __future__ import annotations

from ..base import Option, bounded_int, positive_int, prompt_options, ray_options, rows_options

MAX_TOP_K = 100  # each kept token is three columns of the table, per cell

OPTIONS = [
    *prompt_options(several=True),
    *rows_options(),
    Option(
        None,
        "with --data: continue an interrupted run in --out",
        flag="--resume",
        role="input",
        action="store_true",
        group="a data file of prompts (one result row each)",
    ),
    *ray_options(),
    Option(
        "dummy",
        "insert N dummy marker tokens (default {default})",
        type=int,
        metavar="N",
        group="input",
    ),
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
    Option(
        "dummy_before", "insert the dummies before the first TEXT", metavar="TEXT", group="input"
    ),
    Option(
        "targets",
        "track this token's probability and rank everywhere, e.g. --target ' Canberra' (repeatable)",
        flag="--target",
        action="append",
        metavar="TEXT",
        group="lens",
    ),
    Option(
        "foil",
        "add the logit difference logit(target) - logit(TEXT) of every cell, with the first --target "
        "(e.g. --target ' Canberra' --foil ' Sydney'); --colour diff draws it",
        metavar="TEXT",
        group="lens",
    ),
    Option(
        "lens",
        "decode every layer through this tuned lens: a tune-lens --out folder, a tuned-lens "
        "package folder (config.json + params.pt), or builtin (the lens shipped for the built-in "
        "model); default: the logit lens",
        metavar="DIR",
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
    Option(
        "zoom",
        "draw positions START..END-1 in detail (negative: from the end, e.g. --zoom=-16:); under the "
        "whole prompt unless --no-overview",
        role="figure",
        metavar="START:END",
        group="figure",
    ),
    Option(
        "frame",
        "outline positions START..END-1 (default: the dummy tokens)",
        role="figure",
        metavar="START:END",
        group="figure",
    ),
    Option(
        None,
        "outline nothing",
        flag="--no-frame",
        role="input",
        action="store_true",
        group="figure",
    ),
    Option(
        "colour",
        "what the colour shows: entropy, or diff = the --foil logit difference (default {default})",
        role="figure",
        choices=("entropy", "diff"),
        group="figure",
    ),
    Option(
        "overview",
        "one figure: the whole prompt above, the --zoom region boxed, the zoom in detail below "
        "(default with a --zoom shorter than the prompt)",
        flag="--overview",
        role="input",
        action="store_true",
        group="figure",
    ),
    Option(
        None,
        "with --zoom, only the zoomed figure",
        flag="--no-overview",
        role="input",
        action="store_true",
        group="figure",
    ),
]
