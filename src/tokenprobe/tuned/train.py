"""Training a tuned lens: each layer's translator learns to make the layer's decoded
distribution match the model's final one, KL(final || translated layer through the final
norm and unembedding), averaged over every position of the training text.

The optimiser and schedule are the tuned-lens package's defaults (`scripts/ingredients.py`,
`scripts/train_loop.py`): SGD with Nesterov momentum 0.9, learning rate `lr` x (1 - momentum)
(lr 1.0; PyTorch's momentum scales the step by 1 / (1 - momentum)), weight decay 1e-3, no
warm-up, a linear decay to 0 over the run, gradients clipped to norm 1, translators that start
at the identity, and where the hardware has them (`precision="auto"`) the translators' and the
unembedding's products in bfloat16, as the package's autocast does. One step sees `batch_size`
sequences of `seq_len` tokens, run through the model `batch_tokens` tokens at a time.

Faster than the package's loop for the same numbers: the model's final distribution and its
entropy are computed once per batch rather than once per layer, and the KL's gradient
(softmax(q) - p) is written out instead of differentiated through log_softmax. Training is
deterministic: the order of the sequences follows from `seed` and the step alone, and a
checkpoint holds the translators, the momentum and the losses, so a resumed run equals an
uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import Checkpoint
from ..errors import TokenprobeError, warn
from ..model import LoadedModel, weight_of
from .corpus import check_seq_len, fingerprint, pack, read_corpus
from .lens import TunedLens, check_finite, residual_width, unembed_hash

if TYPE_CHECKING:  # the settings are declared with the command (analyses/tune_lens/options.py)
    from ..analyses.tune_lens.options import TuneLensOptions

PRECISIONS = ("float32", "bfloat16")
STATE = ".state.pt"  # a checkpoint part: the training state after some step
DEFAULT_MEMORY_MB = {"cpu": 512, "cuda": 4096}  # float32 logits of one layer decoded at once


def step_done(step: int) -> None:
    """Test hook: called after each optimiser step (tests interrupt training here)."""


@dataclass
class Hyper:
    """What decides the trained numbers (a resumed run must have the same)."""

    tokens: int
    seq_len: int = 512
    batch_size: int = 8
    lr: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-3
    warmup_steps: int = 0
    seed: int = 0
    precision: str = "float32"  # of the translators' and the unembedding's products

    @property
    def steps(self) -> int:
        return self.tokens // (self.batch_size * self.seq_len)

    def lr_at(self, step: int) -> float:
        """The package's schedule: linear warm-up, then linear decay to 0 at the last step."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        return self.lr * max(0.0, (self.steps - step) / max(1, self.steps - self.warmup_steps))


@dataclass
class Training:
    """A trained lens and how it got there: `losses` (steps, L) is each step's mean KL per
    layer (nats), before the step's update."""

    lens: TunedLens
    losses: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two (n, V) tensors without an (n, V) temporary (einsum runs a
    batched product: 2.5x faster than `vecdot`, which multiplies then sums, on 2 CPU cores)."""
    return torch.einsum("nv,nv->n", a, b)


class _KL(torch.autograd.Function):
    """Per-row KL(p || softmax(logits)) with its gradient written out: softmax(logits) - p."""

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, p: torch.Tensor, plogp: torch.Tensor
    ) -> torch.Tensor:
        logq = torch.log_softmax(logits.float(), dim=-1)  # one pass fewer than logsumexp, subtract
        ctx.save_for_backward(logq, p)
        return plogp - rowdot(p, logq)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logq, p = ctx.saved_tensors
        return logq.exp_().sub_(p).mul_(grad[:, None]), None, None


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """The model's weights without gradients while the translators train (the unembedding's
    gradient would cost as much as the translators' own)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class Trainer:
    """One training run: the model, the packed sequences, the lens and its optimiser."""

    def __init__(
        self,
        lm: LoadedModel,
        sequences: torch.Tensor,
        hyper: Hyper,
        batch_tokens: int,
        memory_mb: float | None,
    ) -> None:
        self.lm, self.sequences, self.hyper = lm, sequences, hyper
        self.adapter = lm.require_adapter()
        device = lm.device
        info = {
            "model": lm.name,
            "model_path": lm.folder or lm.name,
            "unembed_hash": unembed_hash(self.adapter, lm.loaded_vocab),
        }
        self.lens = TunedLens(self.adapter.n_blocks, residual_width(lm), info).to(device)
        self.opt = torch.optim.SGD(
            self.lens.parameters(),
            lr=hyper.lr * (1 - hyper.momentum),
            momentum=hyper.momentum,
            nesterov=hyper.momentum > 0,
            weight_decay=hyper.weight_decay,
        )
        self.micro = max(1, batch_tokens // hyper.seq_len)
        vocab = int(weight_of(self.adapter.unembed).shape[0])
        if memory_mb is None:
            memory_mb = DEFAULT_MEMORY_MB["cuda" if device.type == "cuda" else "cpu"]
        self.rows = max(1, int(memory_mb * 2**20) // (vocab * 4 * 3))
        self._perms: dict[int, torch.Tensor] = {}
        self.bf16 = hyper.precision == "bfloat16"
        unembed = self.adapter.unembed
        linear = self.bf16 and isinstance(unembed, torch.nn.Linear)
        self.w16 = weight_of(unembed).detach().to(torch.bfloat16) if linear else None
        bias = getattr(unembed, "bias", None) if linear else None
        self.b16 = bias.detach().to(torch.bfloat16) if bias is not None else None

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
        """One optimiser step; the mean KL per layer before it."""
        hyper, lens, device = self.hyper, self.lens, self.lm.device
        for group in self.opt.param_groups:
            group["lr"] = hyper.lr_at(step) * (1 - hyper.momentum)
        self.opt.zero_grad(set_to_none=False)
        ids = self.batch(step).to(device)
        total = ids.numel()
        losses = torch.zeros(lens.n_blocks, dtype=torch.float64)
        for start in range(0, len(ids), self.micro):
            losses += self._accumulate(ids[start : start + self.micro], total)
        torch.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
        self.opt.step()
        return losses.numpy()

    def _accumulate(self, ids: torch.Tensor, total: int) -> torch.Tensor:
        """Gradients of one micro-batch's summed KL / `total`, layer by layer."""
        n_blocks = self.adapter.n_blocks
        with torch.no_grad(), self.adapter.record() as hidden:
            logits = self.lm.model(input_ids=ids, use_cache=False).logits
        with torch.no_grad():
            logp = torch.log_softmax(logits.flatten(0, -2).float(), dim=-1)
            p = logp.exp()
            plogp = rowdot(p, logp)
        del logits, logp
        sums = torch.zeros(n_blocks, dtype=torch.float64)
        for layer in range(n_blocks):
            h = hidden[layer].flatten(0, -2)
            for r in range(0, h.shape[0], self.rows):
                rows = slice(r, r + self.rows)
                decoded = self._decode(h[rows], layer)
                kl = _KL.apply(decoded, p[rows], plogp[rows])
                (kl.sum() / total).backward()
                sums[layer] += float(kl.detach().sum()) / total
        return sums

    def _decode(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer `layer`'s states translated and decoded as `Adapter.logits` does; in bfloat16,
        against a bfloat16 copy of the unembedding made once (autocast would cast the frozen
        matrix again for every product)."""
        adapter = self.adapter
        if not self.bf16:
            return adapter.logits(self.lens.transform(h, layer).to(h.dtype))
        with torch.autocast(h.device.type, dtype=torch.bfloat16):
            z = self.lens.transform(h, layer).to(h.dtype)
            if self.w16 is None:
                return adapter.logits(z)
            z = adapter.final_norm(z)
            if adapter.projection is not None and z.shape[-1] == adapter.projection.in_features:
                z = adapter.projection(z)
        logits = torch.nn.functional.linear(z.to(torch.bfloat16), self.w16, self.b16).float()
        if adapter.logit_multiplier != 1.0:
            logits = logits * adapter.logit_multiplier
        if adapter.softcap:
            logits = torch.tanh(logits / adapter.softcap) * adapter.softcap
        return logits

    def state(self, step: int, losses: list[np.ndarray]) -> dict[str, Any]:
        return {
            "step": step,
            "lens": self.lens.state_dict(),
            "optim": self.opt.state_dict(),
            "losses": torch.from_numpy(np.stack(losses))
            if losses
            else torch.zeros(0, self.lens.n_blocks, dtype=torch.float64),
        }

    def restore(self, state: dict[str, Any]) -> tuple[int, list[np.ndarray]]:
        self.lens.load_state_dict(state["lens"])
        self.opt.load_state_dict(state["optim"])
        return int(state["step"]), list(state["losses"].numpy())


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bfloat16 products (as the tuned-lens package's autocast) where the hardware has
    them, a CUDA GPU or a CPU with native bf16 (AVX-512 BF16, AMX: 1.3-1.7x float32's tokens/s
    measured on 2 Zen 4 cores), else float32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bfloat16" if device.type == "cpu" and native else "float32"


def train_lens(
    lm: LoadedModel,
    data: str | Sequence[str],
    *,
    options: TuneLensOptions,
    checkpoint: Callable[[dict[str, Any]], Checkpoint] | None = None,
    progress: bool | None = None,
) -> Training:
    """Train a tuned lens for `lm` on `options.tokens` tokens of `data` (a data set path or
    texts). `options` (`TuneLensOptions`, checked when it was built) holds every setting:
    `precision` (auto, float32, bfloat16) is that of the translators' and the unembedding's
    matrix products; the KL and the weights stay float32.

    `checkpoint(settings)` opens the run's checkpoint (`checkpoint.Checkpoint`, resumed or
    new): every `checkpoint_every` steps, and after the last, the training state goes there,
    and a resumed run starts from its last state (a finished one recomputes nothing). The
    caller finishes it once the lens is saved.
    """
    o = options
    hyper = Hyper(o.tokens, o.seq_len, o.batch_size, o.lr, o.momentum, o.weight_decay,
                  o.warmup_steps, o.seed, resolve_precision(o.precision, lm.device))  # fmt: skip
    check_seq_len(o.seq_len, lm.context_length)
    sequences = _sequences(lm, data, hyper, o.text_column)
    trainer = Trainer(lm, sequences, hyper, o.batch_tokens, o.memory_mb)
    settings = {
        "model": {k: lm.describe()[k] for k in ("name", "source", "class", "dtype")},
        "data": fingerprint(sequences),
        **vars(hyper),
        "batch_tokens": o.batch_tokens,
        "memory_mb": o.memory_mb,
    }
    store = checkpoint(settings) if checkpoint is not None else None
    start, losses = 0, list[np.ndarray]()
    if store is not None:
        states = store.read(
            STATE, lambda p: torch.load(p, map_location=lm.device, weights_only=True)
        )
        if states:
            start, losses = trainer.restore(states[max(states)])
    with frozen(lm.model):
        _train(trainer, start, losses, store, o.checkpoint_every, progress)
    lens = trainer.lens.eval()
    check_finite(lens, "the trained lens")
    passes = round(hyper.steps * hyper.batch_size / len(sequences), 3)
    lens.info.update(
        training={**settings, "steps": hyper.steps, "sequences": len(sequences), "passes": passes}
    )
    return Training(lens, np.stack(losses), settings)


def _sequences(
    lm: LoadedModel, data: str | Sequence[str], hyper: Hyper, text_column: str
) -> torch.Tensor:
    """The training sequences: `data`'s texts packed into `seq_len` tokens, as many as the
    steps use (with a warning when the data holds fewer, which are then reused)."""
    wanted = hyper.steps * hyper.batch_size
    sequences = pack(
        read_corpus(data, text_column), lm.tokenizer, hyper.seq_len, max_sequences=wanted
    )
    if wanted > len(sequences):
        warn(
            f"the data holds {len(sequences)} sequences of {hyper.seq_len} tokens, fewer than "
            f"`tokens` asks for ({wanted}): they are reused {wanted / len(sequences):.1f} "
            "times; give more text for a better lens"
        )
    return sequences


def _train(
    trainer: Trainer,
    start: int,
    losses: list[np.ndarray],
    store: Checkpoint | None,
    every: int,
    progress: bool | None,
) -> None:
    """Steps `start`.. of the training, appending each step's losses, with a progress bar of
    tokens; the state goes to `store` every `every` steps and after the last."""
    hyper = trainer.hyper
    per_step = hyper.batch_size * hyper.seq_len
    bar = tqdm(
        total=hyper.steps * per_step,
        initial=start * per_step,
        desc="tune-lens",
        unit="tok",
        unit_scale=True,
        disable=None if progress is None else not progress,
    )
    with bar:
        for step in range(start, hyper.steps):
            losses.append(trainer.step(step))
            if not np.isfinite(losses[-1]).all():
                raise TokenprobeError(
                    f"training diverged: the loss is not finite at step {step + 1} of "
                    f"{hyper.steps} (`lr` {hyper.lr:g}, `weight_decay` {hyper.weight_decay:g}): "
                    "lower `lr`; nothing was saved"
                )
            bar.update(per_step)
            bar.set_postfix_str(band_text(losses[-1]), refresh=False)
            done = step + 1
            if store is not None and (done % every == 0 or done == hyper.steps):
                _save_state(store, trainer.state(done, losses), done)
            step_done(done)


def _save_state(store: Checkpoint, state: dict[str, Any], step: int) -> None:
    """The state after `step` as the only part (older states are removed once it is written)."""
    store.write(
        step, STATE, lambda p: torch.save(state, p), unit="training state", count=step, latest=True
    )


def band_text(losses: np.ndarray, bands: int = 3) -> str:
    """Mean KL per band of layers, e.g. `KL 0-9 4.1 | 10-19 1.3 | 20-29 0.2`."""
    n = len(losses)
    edges = [round(i * n / bands) for i in range(bands + 1)]
    parts = [
        f"{a}-{b - 1} {np.mean(losses[a:b]):.3g}"
        for a, b in zip(edges, edges[1:], strict=False)
        if b > a
    ]
    return "KL " + " | ".join(parts)
