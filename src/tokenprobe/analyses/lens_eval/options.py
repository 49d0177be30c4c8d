"""lens-eval's settings, declared once: `LensEvalOptions` (what `lens_eval` measures over);
the command-line options come from its fields."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import TokenprobeError
from ..base import Option, positive_int
from ..settings import Settings, setting


@dataclass(frozen=True)
class LensEvalOptions(Settings):
    """How much held-out text `lens_eval` reads and how: up to `tokens` tokens in whole
    `seq_len` sequences; `batch_tokens` bounds the tokens of one forward pass, `memory_mb` the
    logits of one layer decoded at once (default 512 on the CPU, 4096 on a GPU)."""

    tokens: int = setting(
        8192,
        "held-out tokens to evaluate, in whole --seq-len sequences: TOKENS // SEQ_LEN of them, "
        "at least one (default {default})",
        minimum=1,
        metavar="N",
        group="data",
    )
    seq_len: int = setting(
        512,
        "tokens per sequence (default {default})",
        type=positive_int,  # read as 1 or more: a 1 is refused by the settings, in one place
        minimum=2,  # a sequence of 1 has no next token
        metavar="N",
        group="data",
    )
    text_column: str = setting(
        "text", "the data set's column of texts (default {default})", metavar="NAME", group="data"
    )
    batch_tokens: int = setting(4096, cli=False)  # the common --batch-tokens
    memory_mb: float | None = setting(
        None,
        "memory for the logits of one layer decoded at once (default 512 on CPU, 4096 on a GPU)",
        type=positive_int,
        group="lens",
    )

    def check(self) -> None:
        if self.batch_tokens < 1:  # a library-only setting's limits are not checked: here
            raise TokenprobeError(f"`batch_tokens` must be at least 1, not {self.batch_tokens}")
        if self.memory_mb is not None and self.memory_mb <= 0:
            raise TokenprobeError(f"`memory_mb` must be positive, not {self.memory_mb:g}")


OPTIONS = [
    Option(
        "lens",  # `lens_eval`'s `lens` (a folder here; a lens in memory from Python), as --lens
        "the tuned lens: a tune-lens --out folder, a tuned-lens package folder "
        "(config.json + params.pt), or builtin (the lens shipped for the built-in model)",
        role="input",
        metavar="DIR",
        required=True,
        group="lens",
    ),
    Option(
        "data",  # `lens_eval`'s `data` (a path here; texts from Python), as --data
        "held-out text: a .txt file, or any data set (.csv, .jsonl, .parquet, a folder, "
        "hf:NAME[:CONFIG][:SPLIT], sample:NAME)",
        role="input",
        metavar="FILE",
        required=True,
        group="data",
    ),
    *LensEvalOptions.options("text_column", "tokens", "seq_len", "memory_mb"),
]
