"""tune-lens's options: the one source of their defaults' meaning, limits, flags and help."""

from __future__ import annotations

from ..base import Option, positive_int

DATA = "data"
OPTIONS = [
    Option(
        "data",
        "training text: a .txt file, or any data set (.csv, .jsonl, .parquet, a folder, "
        "hf:NAME[:CONFIG][:SPLIT], sample:NAME)",
        metavar="FILE",
        required=True,
        group=DATA,
    ),
    Option(
        "text_column",
        "the data set's column of texts (default {default})",
        metavar="NAME",
        group=DATA,
    ),
    Option(
        "tokens",
        "training tokens (the run takes TOKENS / (BATCH x SEQ_LEN) steps)",
        type=positive_int,
        metavar="N",
        required=True,
        group=DATA,
    ),
    Option(
        "seq_len",
        "tokens per training sequence (default {default})",
        type=positive_int,
        minimum=2,
        metavar="N",
        group=DATA,
    ),
    Option(
        "batch_size",
        "sequences per optimiser step (default {default})",
        flag="--batch",
        type=positive_int,
        minimum=1,
        metavar="N",
        group="training",
    ),
    Option(
        "lr",
        "learning rate of SGD with Nesterov momentum, scaled by 1 - momentum as tuned-lens does "
        "(default {default})",
        type=float,
        group="training",
    ),
    Option(
        "momentum",
        "SGD momentum (default {default})",
        type=float,
        minimum=0,
        maximum=0.999,
        group="training",
    ),
    Option(
        "weight_decay",
        "weight decay towards the identity (default {default})",
        type=float,
        minimum=0,
        group="training",
    ),
    Option(
        "warmup_steps",
        "steps of linear learning-rate warm-up before the linear decay (default {default})",
        type=int,
        minimum=0,
        metavar="N",
        group="training",
    ),
    Option(
        "seed",
        "seed of the order the sequences are seen in (default {default})",
        type=int,
        group="training",
    ),
    Option(
        "precision",
        "precision of the translators' and the unembedding's products: auto (bfloat16 where the "
        "GPU or CPU has it natively, as tuned-lens trains; else float32), float32 or bfloat16 (default {default})",
        choices=["auto", "float32", "bfloat16"],
        group="training",
    ),
    Option(
        "memory_mb",
        "memory for the logits of one layer decoded at once (default 512 on CPU, 4096 on a GPU)",
        type=positive_int,
        group="training",
    ),
    Option(
        "checkpoint_every",
        "save the training state every N steps (default {default})",
        type=positive_int,
        metavar="N",
        group="checkpoints and files",
    ),
    Option(
        "resume",
        "go on from the training state an interrupted run left in --out",
        action="store_true",
        group="checkpoints and files",
    ),
    Option(
        None,
        "lens files to write: tokenprobe (tuned-lens.json + .safetensors), tuned-lens "
        "(the package's config.json + params.pt), or both (default)",
        flag="--lens-format",
        role="input",
        choices=["both", "tokenprobe", "tuned-lens"],
        default="both",
        group="checkpoints and files",
    ),
]
