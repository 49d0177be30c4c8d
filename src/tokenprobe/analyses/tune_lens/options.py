"""tune-lens's settings, declared once: `TuneLensOptions` (what `tune_lens` trains with, and
what `tuned.train_lens` takes); the command-line options come from its fields."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from ...errors import TokenprobeError
from ..base import Option, positive_int
from ..settings import Settings, setting

DATA = "data"
TRAINING = "training"
FILES = "checkpoints and files"
PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True, kw_only=True)
class TuneLensOptions(Settings):
    """How a tuned lens is trained: `tokens` (required) of the data in `seq_len` sequences,
    `batch_size` of them per step of SGD with Nesterov momentum; `batch_tokens` bounds the
    tokens of one forward pass, `memory_mb` the logits of one layer decoded at once (default
    512 on the CPU, 4096 on a GPU)."""

    tokens: int = setting(
        MISSING,
        "training tokens (the run takes TOKENS / (BATCH x SEQ_LEN) steps)",
        minimum=1,
        metavar="N",
        required=True,
        group=DATA,
    )
    seq_len: int = setting(
        512,
        "tokens per training sequence (default {default})",
        type=positive_int,  # read as 1 or more: a 1 is refused by the settings, in one place
        minimum=2,  # a sequence of 1 has no next token
        metavar="N",
        group=DATA,
    )
    batch_size: int = setting(
        8,
        "sequences per optimiser step (default {default})",
        flag="--batch",
        minimum=1,
        metavar="N",
        group=TRAINING,
    )
    lr: float = setting(
        1.0,
        "learning rate of SGD with Nesterov momentum, scaled by 1 - momentum as tuned-lens does "
        "(default {default})",
        group=TRAINING,
    )
    momentum: float = setting(
        0.9, "SGD momentum (default {default})", minimum=0, maximum=0.999, group=TRAINING
    )
    weight_decay: float = setting(
        1e-3, "weight decay towards the identity (default {default})", minimum=0, group=TRAINING
    )
    warmup_steps: int = setting(
        0,
        "steps of linear learning-rate warm-up before the linear decay (default {default})",
        minimum=0,
        metavar="N",
        group=TRAINING,
    )
    seed: int = setting(
        0, "seed of the order the sequences are seen in (default {default})", group=TRAINING
    )
    precision: str = setting(
        "auto",
        "precision of the translators' and the unembedding's products: auto (bfloat16 where the "
        "GPU or CPU has it natively, as tuned-lens trains; else float32), float32 or bfloat16 "
        "(default {default})",
        choices=PRECISIONS,
        group=TRAINING,
    )
    text_column: str = setting(
        "text", "the data set's column of texts (default {default})", metavar="NAME", group=DATA
    )
    batch_tokens: int = setting(4096, cli=False)  # the common --batch-tokens
    memory_mb: float | None = setting(
        None,
        "memory for the logits of one layer decoded at once (default 512 on CPU, 4096 on a GPU)",
        type=positive_int,
        group=TRAINING,
    )
    checkpoint_every: int = setting(
        50,
        "save the training state every N steps (default {default})",
        minimum=1,
        metavar="N",
        group=FILES,
    )

    def check(self) -> None:
        if self.batch_tokens < 1:  # a library-only setting's limits are not checked: here
            raise TokenprobeError(f"`batch_tokens` must be at least 1, not {self.batch_tokens}")
        if not self.lr > 0:
            raise TokenprobeError(f"`lr` must be above 0, not {self.lr:g}")
        if self.memory_mb is not None and self.memory_mb <= 0:
            raise TokenprobeError(f"`memory_mb` must be positive, not {self.memory_mb:g}")
        one = self.batch_size * self.seq_len
        if self.tokens < one:  # no whole step
            raise TokenprobeError(
                f"`tokens` {self.tokens} is below one batch (`batch_size` {self.batch_size} x "
                f"`seq_len` {self.seq_len} = {one} tokens): give at least {one}"
            )


OPTIONS = [
    Option(
        "data",  # the run function's `data`, read by the glue (named so in messages as --data)
        "training text: a .txt file, or any data set (.csv, .jsonl, .parquet, a folder, "
        "hf:NAME[:CONFIG][:SPLIT], sample:NAME)",
        role="input",
        metavar="FILE",
        required=True,
        group=DATA,
    ),
    *TuneLensOptions.options(
        "text_column",
        "tokens",
        "seq_len",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "warmup_steps",
        "seed",
        "precision",
        "memory_mb",
        "checkpoint_every",
    ),
    Option(
        "resume",  # `tune_lens`'s own parameter (not a setting: it says where to start)
        "go on from the training state an interrupted run left in --out",
        role="input",
        action="store_true",
        group=FILES,
    ),
    Option(
        None,
        "lens files to write: tokenprobe (tuned-lens.json + .safetensors), tuned-lens "
        "(the package's config.json + params.pt), or both (default)",
        flag="--lens-format",
        role="input",
        choices=["both", "tokenprobe", "tuned-lens"],
        default="both",
        group=FILES,
    ),
]
