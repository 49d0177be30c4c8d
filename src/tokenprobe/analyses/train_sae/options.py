"""train-sae's settings, declared once: `TrainSaeOptions` (what `train_sae` trains with, and what
`sae.train.train_sae` takes); the command-line options come from its fields."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import TokenprobeError
from ...sae import SaeSite
from ..base import Option, positive_int
from ..settings import Settings, setting

SITE = "site"
DATA = "data"
TRAINING = "training"
FILES = "checkpoints and files"


@dataclass(frozen=True, kw_only=True)
class TrainSaeOptions(Settings):
    """How a TopK sparse autoencoder is trained: on the residual stream after `layer` blocks
    (or at `sae_site`), `latents` latents of which `k` fire per token, over `tokens` tokens of
    the data in `seq_len` sequences, `batch_size` of them per Adam step; `eval_tokens`
    held-out tokens measure it at the end (0: not measured)."""

    layer: int | None = setting(
        None,
        "the residual layer to train on: the stream after N blocks (0: the embeddings), the "
        "lens's layer N",
        minimum=0,
        metavar="N",
        group=SITE,
    )
    sae_site: str | None = setting(
        None,
        "another site instead of --layer: 'resid N', 'mlp B' (block B's MLP output), 'attn B' "
        "or 'mlp-in B' (the MLP's input)",
        flag="--site",
        metavar="SITE",
        group=SITE,
    )
    latents: int = setting(
        8192,
        "latents of the dictionary (default {default})",
        minimum=1,
        metavar="N",
        group=TRAINING,
    )
    k: int = setting(
        32,
        "latents that fire per token (default {default})",
        minimum=1,
        metavar="N",
        group=TRAINING,
    )
    tokens: int = setting(
        1_000_000,
        "training tokens (the run takes TOKENS / (BATCH x SEQ_LEN) steps; default {default})",
        minimum=1,
        metavar="N",
        group=DATA,
    )
    seq_len: int = setting(
        256,
        "tokens per training sequence (default {default})",
        type=positive_int,
        minimum=2,
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
    lr: float | None = setting(
        None,
        "Adam's learning rate (default: sparsify's 2e-4 / sqrt(LATENTS / 16384))",
        group=TRAINING,
    )
    warmup_steps: int = setting(
        0,
        "steps of linear learning-rate warm-up before the linear decay to 0 (default {default})",
        minimum=0,
        metavar="N",
        group=TRAINING,
    )
    auxk_alpha: float = setting(
        1 / 32,
        "weight of the AuxK loss that trains dead latents (0: none; default 1/32)",
        minimum=0,
        metavar="X",
        group=TRAINING,
    )
    dead_tokens: int = setting(
        100_000,
        "a latent that has not fired for N tokens is dead (default {default})",
        minimum=1,
        metavar="N",
        group=TRAINING,
    )
    seed: int = setting(
        0,
        "seed of the initial weights and the order of the sequences (default {default})",
        group=TRAINING,
    )
    eval_tokens: int = setting(
        16_384,
        "held-out tokens for FVE, L0 and the cross-entropy recovered, from --eval-data or else "
        "the end of --data, which training then never sees (0: no evaluation; default {default})",
        minimum=0,
        metavar="N",
        group=DATA,
    )
    skip_first: int = setting(
        1,
        "leave out the first N positions of every sequence: not trained on, measured or "
        "replaced (position 0 holds an attention sink's outsized state in many models, 150x "
        "the others' norm in SmolLM2's layer 15, which would swamp the loss; default {default})",
        minimum=0,
        metavar="N",
        group=DATA,
    )
    text_column: str = setting(
        "text", "the data set's column of texts (default {default})", metavar="NAME", group=DATA
    )
    checkpoint_every: int = setting(
        50,
        "save the training state every N steps (default {default})",
        minimum=1,
        metavar="N",
        group=FILES,
    )

    @property
    def site(self) -> SaeSite:
        """The site trained on: `sae_site`, else the residual stream at `layer`."""
        if self.sae_site is not None:
            return SaeSite.parse(self.sae_site)
        assert self.layer is not None
        return SaeSite("resid", self.layer)

    def check(self) -> None:
        if (self.layer is None) == (self.sae_site is None):
            raise TokenprobeError(
                "give one of `layer` (a residual layer, e.g. 12) or `sae_site` (e.g. 'mlp 12')"
            )
        if self.sae_site is not None:
            SaeSite.parse(self.sae_site)
        if self.k > self.latents:
            raise TokenprobeError(
                f"`k` {self.k} is more than the `latents` {self.latents}: give k <= latents"
            )
        if self.lr is not None and not self.lr > 0:
            raise TokenprobeError(f"`lr` must be above 0, not {self.lr:g}")
        if self.skip_first >= self.seq_len:
            raise TokenprobeError(
                f"`skip_first` {self.skip_first} leaves no position of a `seq_len` "
                f"{self.seq_len} sequence: give less than {self.seq_len}"
            )
        one = self.batch_size * self.seq_len
        if self.tokens < one:
            raise TokenprobeError(
                f"`tokens` {self.tokens} is below one batch (`batch_size` {self.batch_size} x "
                f"`seq_len` {self.seq_len} = {one} tokens): give at least {one}"
            )


OPTIONS = [
    Option(
        "data",
        "training text: a .txt file, or any data set (.csv, .jsonl, .parquet, a folder, "
        "hf:NAME[:CONFIG][:SPLIT], sample:NAME)",
        role="input",
        metavar="FILE",
        required=True,
        group=DATA,
    ),
    Option(
        "eval_data",
        "held-out text for the final numbers (default: the end of --data)",
        role="input",
        metavar="FILE",
        group=DATA,
    ),
    *TrainSaeOptions.options(),
    Option(
        "resume",
        "go on from the training state an interrupted run left in --out",
        role="input",
        action="store_true",
        group=FILES,
    ),
]
