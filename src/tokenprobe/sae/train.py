"""Training a TopK sparse autoencoder on one site of a model (`topk.TopKSae`), with the site's
states streamed from the model batch by batch (`stream.site_states`: the forward stops at the
site, nothing is stored on disk).

Adam at sparsify's learning rate (2e-4 / sqrt(latents / 16384) unless given), an optional
linear warm-up and a linear decay to 0; b_dec starts at the first batch's mean state, the
decoder at the encoder's transpose with unit rows, kept unit after every step with the
gradient's component along each row removed first. A latent that has not fired for
`dead_tokens` tokens is dead, and the AuxK loss (weight `auxk_alpha`) trains the dead ones on
what the live ones miss. Deterministic: the order of the sequences follows from `seed` and the
step alone, and a checkpoint holds the weights, Adam's moments, the dead-latent counters and
the log, so a resumed run equals an uninterrupted one bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import Checkpoint
from ..errors import TokenprobeError, warn
from ..model import Adapter, LoadedModel
from ..tuned.corpus import check_seq_len, fingerprint, pack, read_corpus
from .dictionary import Dictionary, SaeSite
from .hooks import POST_NORMS, check_fits
from .saving import hook_name
from .stream import Quality, evaluate, site_states
from .topk import TopKSae

if TYPE_CHECKING:  # the settings are declared with the command (analyses/train_sae/options.py)
    from ..analyses.train_sae.options import TrainSaeOptions

STATE = ".state.pt"  # a checkpoint part: the training state after some step
COLUMNS = ("fve", "l0", "dead_fraction", "loss", "auxk")  # the log, one row per step


def step_done(step: int) -> None:
    """Test hook: called after each optimiser step (tests interrupt training here)."""


def default_lr(latents: int) -> float:
    """sparsify's default: 2e-4 scaled by 1 / sqrt(latents / 2^14)."""
    return 2e-4 / math.sqrt(latents / 2**14)


@dataclass
class Hyper:
    """What decides the trained numbers (a resumed run must have the same)."""

    tokens: int
    seq_len: int
    batch_size: int
    latents: int
    k: int
    lr: float
    warmup_steps: int
    auxk_alpha: float
    dead_tokens: int
    seed: int
    skip_first: int = 0

    @property
    def steps(self) -> int:
        return self.tokens // (self.batch_size * self.seq_len)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then linear decay to 0 at the last step."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        return self.lr * max(0.0, (self.steps - step) / max(1, self.steps - self.warmup_steps))


@dataclass
class Training:
    """A trained dictionary and how it got there: `log` (steps, len(COLUMNS)) holds each
    step's batch numbers before its update; `quality` the held-out numbers (None: none)."""

    dictionary: Dictionary
    log: np.ndarray
    quality: Quality | None
    settings: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """One training run: the model, the site, the packed sequences, the SAE and Adam."""

    def __init__(
        self, lm: LoadedModel, site: SaeSite, sequences: torch.Tensor, hyper: Hyper
    ) -> None:
        self.lm, self.site, self.sequences, self.hyper = lm, site, sequences, hyper
        width = lm.require_adapter().width
        gen = torch.Generator().manual_seed(hyper.seed)
        self.sae = TopKSae(width, hyper.latents, hyper.k, gen).to(lm.device)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=hyper.lr)
        self.since_fired = torch.zeros(hyper.latents, dtype=torch.long)
        self._perms: dict[int, torch.Tensor] = {}

    def batch(self, step: int) -> torch.Tensor:
        """The sequences of step `step`: a seeded shuffle per pass over the data."""
        n, b = len(self.sequences), self.hyper.batch_size
        picks = []
        for i in range(step * b, (step + 1) * b):
            epoch = i // n
            if epoch not in self._perms:
                gen = torch.Generator().manual_seed(self.hyper.seed * 1_000_003 + epoch)
                self._perms = {epoch: torch.randperm(n, generator=gen)}
            picks.append(int(self._perms[epoch][i % n]))
        return self.sequences[picks]

    def step(self, step: int) -> np.ndarray:
        """One optimiser step; the batch's numbers (COLUMNS) before it."""
        hyper, sae = self.hyper, self.sae
        x = site_states(self.lm, self.site, self.batch(step), hyper.skip_first)
        if step == 0:  # b_dec starts at the data's mean
            with torch.no_grad():
                sae.b_dec.copy_(x.mean(0))
        for group in self.opt.param_groups:
            group["lr"] = hyper.lr_at(step)
        self.opt.zero_grad(set_to_none=False)
        dead = (self.since_fired >= hyper.dead_tokens).to(x.device)
        out = sae(x, dead, hyper.auxk_alpha)
        out.loss.backward()
        sae.remove_parallel_gradient()
        self.opt.step()
        sae.normalise_decoder()
        self.since_fired += x.shape[0]
        self.since_fired[out.fired.cpu()] = 0
        dead_after = float((self.since_fired >= hyper.dead_tokens).float().mean())
        return np.array(
            [1.0 - float(out.fvu), out.l0, dead_after, float(out.loss.detach()), float(out.auxk)]
        )

    def state(self, step: int, log: list[np.ndarray]) -> dict[str, Any]:
        return {
            "step": step,
            "sae": self.sae.state_dict(),
            "optim": self.opt.state_dict(),
            "since_fired": self.since_fired.clone(),
            "log": torch.from_numpy(np.stack(log)),
        }

    def restore(self, state: dict[str, Any]) -> tuple[int, list[np.ndarray]]:
        self.sae.load_state_dict(state["sae"])
        self.opt.load_state_dict(state["optim"])
        self.since_fired = state["since_fired"].cpu().clone()
        return int(state["step"]), list(state["log"].numpy())


def train_sae(
    lm: LoadedModel,
    data: str | Sequence[str],
    *,
    options: TrainSaeOptions,
    eval_data: str | Sequence[str] | None = None,
    checkpoint: Callable[[dict[str, Any]], Checkpoint] | None = None,
    progress: bool | None = None,
) -> Training:
    """Train a TopK autoencoder on `options.site` of `lm` over `options.tokens` tokens of
    `data`, then measure it on held-out text (`eval_data`, else the last `eval_tokens` of
    `data`, which training then never sees).

    `checkpoint(settings)` opens the run's checkpoint (resumed or new): every
    `checkpoint_every` steps, and after the last, the training state goes there, and a
    resumed run starts from its last state. The caller finishes it once the result is saved.
    """
    o = options
    site = o.site
    hyper = Hyper(o.tokens, o.seq_len, o.batch_size, o.latents, o.k,
                  o.lr if o.lr is not None else default_lr(o.latents), o.warmup_steps,
                  o.auxk_alpha, o.dead_tokens, o.seed, o.skip_first)  # fmt: skip
    check_seq_len(o.seq_len, lm.context_length)
    adapter = lm.require_adapter()
    trainer_sequences, held_out = _sequences(
        lm, data, eval_data, hyper, o.eval_tokens, o.text_column
    )
    trainer = Trainer(lm, site, trainer_sequences, hyper)
    _check_site(adapter, trainer.sae.dictionary(site))
    settings = {
        "model": {k: lm.describe()[k] for k in ("name", "source", "class", "dtype")},
        "site": str(site),
        "data": fingerprint(trainer_sequences),
        "eval_data": fingerprint(held_out) if held_out is not None else None,
        **vars(hyper),
    }
    store = checkpoint(settings) if checkpoint is not None else None
    start, log = 0, list[np.ndarray]()
    if store is not None:
        states = store.read(STATE, lambda p: torch.load(p, map_location="cpu", weights_only=True))
        if states:
            start, log = trainer.restore(states[max(states)])
    _train(trainer, start, log, store, o.checkpoint_every, progress)
    dictionary = trainer.sae.dictionary(site, hook_name(site))
    quality = None
    if held_out is not None:
        quality = evaluate(lm, dictionary, held_out, hyper.batch_size, hyper.skip_first, progress)
    passes = round(hyper.steps * hyper.batch_size / len(trainer_sequences), 3)
    settings.update(steps=hyper.steps, sequences=len(trainer_sequences), passes=passes)
    return Training(dictionary, np.stack(log), quality, settings)


def _check_site(adapter: Adapter, dictionary: Dictionary) -> None:
    """The site exists in this model and is one state a dictionary can read (one line)."""
    site, n = dictionary.site, adapter.n_blocks
    if site.kind == "resid" and not 0 <= site.layer <= n:
        raise TokenprobeError(
            f"`layer` {site.layer} is not a residual layer of this model: give 0 to {n} "
            "(the stream after that many blocks)"
        )
    if site.kind != "resid" and not 0 <= site.layer < n:
        raise TokenprobeError(
            f"`sae_site` {site} is past this model's blocks: give a block from 0 to {n - 1}"
        )
    if site.kind in POST_NORMS:
        names = {name for name, _ in adapter.blocks[site.layer].named_children()}
        if found := sorted(names & set(POST_NORMS[site.kind])):
            raise TokenprobeError(
                f"`sae_site` {site}: this family norms that output ({found[0]}) before adding it "
                "to the stream, so `features` could not tell which of the two a dictionary reads; "
                "train on the residual stream (`layer`) instead"
            )
    try:
        check_fits(adapter, dictionary)
    except TokenprobeError as exc:  # its advice names `features`'s flag
        raise TokenprobeError(str(exc).replace("--sae-site", "`sae_site`")) from None


def _sequences(
    lm: LoadedModel,
    data: str | Sequence[str],
    eval_data: str | Sequence[str] | None,
    hyper: Hyper,
    eval_tokens: int,
    text_column: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training sequences (as many as the steps use, with a warning when the data holds
    fewer, which are then reused) and the held-out ones (None when `eval_tokens` is 0)."""
    wanted = hyper.steps * hyper.batch_size
    n_eval = -(-eval_tokens // hyper.seq_len)
    own = n_eval if eval_data is None else 0
    sequences = pack(read_corpus(data, text_column), lm.tokenizer, hyper.seq_len,
                     max_sequences=wanted + own)  # fmt: skip
    if len(sequences) <= own:
        raise TokenprobeError(
            f"`data` holds {len(sequences)} sequences of `seq_len` {hyper.seq_len} tokens, all "
            f"of them needed for the held-out {eval_tokens} `eval_tokens`: give more text, "
            "`eval_data`, or fewer `eval_tokens`"
        )
    held_out = sequences[len(sequences) - own :] if own else None
    train = sequences[: len(sequences) - own]
    if eval_data is not None and n_eval:
        held_out = pack(read_corpus(eval_data, text_column), lm.tokenizer, hyper.seq_len,
                        max_sequences=n_eval, source="`eval_data`")  # fmt: skip
    if wanted > len(train):
        warn(
            f"the data holds {len(train)} training sequences of {hyper.seq_len} tokens, fewer "
            f"than `tokens` asks for ({wanted}): they are reused {wanted / len(train):.1f} "
            "times; give more text for a better dictionary"
        )
    return train, held_out


def _train(
    trainer: Trainer,
    start: int,
    log: list[np.ndarray],
    store: Checkpoint | None,
    every: int,
    progress: bool | None,
) -> None:
    """Steps `start`.. of the training, appending each step's numbers, with a progress bar of
    tokens; the state goes to `store` every `every` steps and after the last."""
    hyper = trainer.hyper
    per_step = hyper.batch_size * hyper.seq_len
    bar = tqdm(
        total=hyper.steps * per_step,
        initial=start * per_step,
        desc="train-sae",
        unit="tok",
        unit_scale=True,
        disable=None if progress is None else not progress,
    )
    with bar:
        for step in range(start, hyper.steps):
            log.append(trainer.step(step))
            if not np.isfinite(log[-1]).all():
                raise TokenprobeError(
                    f"training diverged: the loss is not finite at step {step + 1} of "
                    f"{hyper.steps} (`lr` {hyper.lr:g}): lower `lr`; nothing was saved"
                )
            bar.update(per_step)
            fve, l0, dead = log[-1][:3]
            bar.set_postfix_str(f"FVE {fve:.3f} L0 {l0:.1f} dead {dead:.1%}", refresh=False)
            done = step + 1
            if store is not None and (done % every == 0 or done == hyper.steps):
                _save_state(store, trainer.state(done, log), done, hyper.steps)
            step_done(done)


def _save_state(store: Checkpoint, state: dict[str, Any], step: int, steps: int) -> None:
    """The state after `step` as the only part (older states are removed once it is written)."""
    store.write(
        step,
        STATE,
        lambda p: torch.save(state, p),
        unit="training state",
        count=step,
        total=steps,
        latest=True,
    )
