"""What every attribution method works on: the prompt and target ids, the features and target
rows, how a feature is taken out of the prompt (`Perturbation`), how a prompt is scored
(`Problem.score_prompts`, batched with out-of-memory back-off) and where finished scores go
so that an interrupted run resumes (`ScoreStore`)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...checkpoint import Checkpoint, npz_writer
from ...errors import TokenprobeError
from ...prefix import Prefix, continue_copies
from ...runner import (
    CheckedBatching,
    PathUnavailable,
    keep_last,
    left_positions,
    map_batches,
    pad_batch,
    pad_id_of,
    takes,
)

if TYPE_CHECKING:
    from ...model import LoadedModel
    from .features import AttributionInput, Feature

BASELINES = ("remove", "pad", "unk", "mask")  # what replaces an ablated feature (or any text)
DEFAULT_BASELINE = "remove"
SCORES = ("logprob", "prob")  # a row's score: log-probability or probability
PARTIAL = "attribute.partial"  # the checkpoint folder inside --out (<kind>.partial)
FLUSH_SECONDS = 30.0  # how often finished work is written to the checkpoint during a run


# ----------------------------------------------------------------------------- checkpoint


class ScoreStore:
    """The checkpoint of one run: the scores of prompts already scored (by a 16-byte key of
    their ids) and finished integration steps, read on resume and written as the run goes."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.stored: dict[bytes, torch.Tensor] = {}
        self.pending: list[tuple[bytes, torch.Tensor]] = []
        self.flushed_at = time.monotonic()
        self.step_parts: list[tuple[np.ndarray, np.ndarray]] = []  # resumed IG steps
        # integrated gradients: how many steps the run needs (other methods: one gradient),
        # as the run's settings say (`compute._open_store` keeps its options there)
        ig = checkpoint.settings.get("method") == "integrated_gradients"
        steps = checkpoint.settings.get("steps") if ig else None
        self.steps: int | None = int(steps) if steps else None
        if self.steps is not None:
            checkpoint.expect("integration step", self.steps)
        for part in checkpoint.read(".scores.npz").values():
            for key, value in zip(part["keys"], part["scores"], strict=True):
                self.stored[bytes(key)] = torch.from_numpy(value)
        for part in checkpoint.read(".steps.npz").values():
            self.step_parts.append((part["steps"], part["per_token"]))

    def add(self, key: bytes, scores: torch.Tensor) -> None:
        """Scores of one prompt, written with the next flush."""
        self.pending.append((key, scores))

    def add_steps(self, steps: Sequence[int], per_token: np.ndarray) -> None:
        """Per-token sums of finished integration steps, written at once."""
        done = np.asarray(steps, dtype=np.int64)
        writer = npz_writer(steps=done, per_token=per_token)
        if self.steps is None:  # saliency, input x gradient: the one step is the gradients
            self.checkpoint.append(".steps.npz", writer, unit="gradient")
        else:
            step = {"unit": "integration step", "count": len(done), "total": self.steps}
            self.checkpoint.append(".steps.npz", writer, **step)

    def flush_if_due(self) -> None:
        """Flush when FLUSH_SECONDS have passed since the last flush."""
        if time.monotonic() - self.flushed_at > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the scores computed since the last flush as one checkpoint part."""
        if not self.pending:
            return
        keys = np.array([k for k, _ in self.pending], dtype="S16")
        scores = torch.stack([v for _, v in self.pending]).numpy()
        writer = npz_writer(keys=keys, scores=scores)
        self.checkpoint.append(".scores.npz", writer, unit="scored input", count=len(keys))
        self.pending.clear()
        self.flushed_at = time.monotonic()

    def discard(self) -> None:
        """Forget the run (bad options can never finish: a kept checkpoint would only make the
        corrected command ask for `resume`)."""
        self.pending.clear()
        self.checkpoint.discard()


# ----------------------------------------------------------------------------- perturbation


class Perturbation:
    """Prompts with features taken out: deleted or replaced by `baseline`."""

    lm: LoadedModel
    prompt_ids: list[int]
    features: list[Feature]
    baseline: str

    def replacement(self) -> list[int] | None:
        """Ids that replace each ablated token; None means delete it; a list for a string."""
        if self.baseline == "remove":
            return None
        tok = self.lm.tokenizer
        if self.baseline in ("pad", "unk", "mask"):
            tid = getattr(tok, f"{self.baseline}_token_id", None)
            if tid is None:
                raise TokenprobeError(
                    f"this tokenizer has no {self.baseline} token: choose another `baseline`"
                )
            return [int(tid)]
        ids = tok.encode(self.baseline, add_special_tokens=False)
        if not ids:
            raise TokenprobeError(f"`baseline` {self.baseline!r} gives no tokens")
        return ids

    def perturbed(self, absent: Sequence[int], replacement: list[int] | None) -> list[int]:
        """The prompt with the features in `absent` deleted or replaced (a string replaces a whole feature)."""
        drop: dict[int, list[int]] = {}
        for f in absent:
            positions = self.features[f].positions
            for k, p in enumerate(positions):
                if replacement is None:
                    drop[p] = []
                elif len(replacement) == 1:
                    drop[p] = replacement
                else:  # a multi-token string stands in for the whole feature once
                    drop[p] = replacement if k == 0 else []
        out: list[int] = []
        for i, t in enumerate(self.prompt_ids):
            out.extend(drop.get(i, [t]))
        return out


# ----------------------------------------------------------------------------- scoring


@dataclass
class Problem(Perturbation):
    """Everything a method needs: ids, features, target rows, how to score and to perturb."""

    lm: LoadedModel
    prompt_ids: list[int]
    target_ids: list[int]
    features: list[Feature]
    rows: list[list[int]]  # target token indices of each row
    row_texts: list[str]
    score: str = "logprob"
    foil_id: int | None = None  # contrastive: a row's score less the foil's at its first position
    baseline: str = "remove"
    batch_tokens: int = 4096
    cache: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)
    forward_passes: int = 0
    head_ok: bool | None = None  # does the adapter rebuild the model's logits (gradient path)?
    bar: Any = None  # a tqdm bar counting model inputs (or integration steps)
    store: ScoreStore | None = None  # where finished scores go, so an interrupted run resumes
    after_batch: Callable[[], None] | None = None  # test hook: called after each model batch
    batching: CheckedBatching | None = None  # how batches run, checked on the run's first
    reuse_prefix: bool = True  # continue perturbed prompts from the unperturbed one's cache?
    prefix: Prefix | None = None  # the unperturbed sequence's run and cache, once made

    @classmethod
    def of(cls, lm: LoadedModel, inp: AttributionInput, **options: Any) -> Problem:
        """The problem of a prepared input; `options` as the fields after `row_texts`."""
        return cls(
            lm, inp.prompt_ids, inp.target_ids, inp.features, inp.rows, inp.row_texts, **options
        )

    def row_scores(self, token_logprobs: torch.Tensor) -> torch.Tensor:
        """(B, m) target-token log-probabilities to (B, rows) scores."""
        cols = token_logprobs.unbind(dim=1)
        return torch.stack([self.row_score(cols, r) for r in range(len(self.rows))], dim=1)

    def row_score(self, cols: Sequence[torch.Tensor], r: int) -> torch.Tensor:
        """(B,) score of row r from per-target-token (B,) log-probability columns.

        Taking columns, not one stacked tensor, lets a backward from one row skip the others.
        """
        s = torch.stack([cols[j] for j in self.rows[r]]).sum(dim=0)
        if self.foil_id is None:
            return s.exp() if self.score == "prob" else s
        # contrastive (`foil`): the foil's column at the row's first target position
        foil = cols[len(self.target_ids) + self.rows[r][0]]
        return s.exp() - foil.exp() if self.score == "prob" else s - foil

    def token_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, m, V) logits predicting the targets to the (B, m) target log-probabilities,
        followed with a foil by its (B, m) log-probabilities at the same positions."""
        return target_logprobs(logits, self.target_ids, self.foil_id)

    def score_prompts(self, prompts: Sequence[list[int]]) -> torch.Tensor:
        """Scores (len(prompts), rows) of many perturbed prompts, batched by a token budget;
        prompts already scored by an interrupted run are taken from its checkpoint."""
        out = torch.empty((len(prompts), len(self.rows)), dtype=torch.float64)
        keys = [_prompt_key(p) for p in prompts]
        stored = self.store.stored if self.store is not None else {}
        todo = []
        for i, key in enumerate(keys):
            if key in stored:
                out[i] = stored[key]
            else:
                todo.append(i)
        self.grow_bar(len(prompts), len(prompts) - len(todo))
        seqs = [self.sequence(prompts[i]) for i in todo]
        for batch, scores in self._batches(seqs):
            for j, i in enumerate(batch):
                out[todo[i]] = scores[j]
            if self.store is not None:
                for j, i in enumerate(batch):
                    self.store.add(keys[todo[i]], scores[j])
            self.batch_done(len(batch))
        return out

    def _batches(self, seqs: list[list[int]]) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Scores of token-budget batches of prompt + target sequences: continued from the
        unperturbed sequence's key/value cache from each one's first change on, where
        `tokenprobe.prefix` finds that checked and cheaper; else each run whole."""
        if len(seqs) < 2 or not self.reuse_prefix or self.lm.is_seq2seq:
            lengths = [len(s) for s in seqs]
            yield from map_batches(lengths, self.batch_tokens, lambda b: self._score(seqs, b))
            return
        if self.prefix is None:
            self.prefix = Prefix(
                self.lm.model,
                [self.sequence(self.prompt_ids)],
                keep=len(self.target_ids) + 1,
                pad_id=self.pad_id,
                dtype=self.lm.dtype,
                what=f"attribution on {type(self.lm.model).__name__}",
                max_tokens=self.batch_tokens,
            )
        before = self.prefix.forwards

        def read(logits: torch.Tensor) -> torch.Tensor:
            return self.row_scores(self.token_logprobs(logits[:, :-1])).double().cpu()

        bases = [0] * len(seqs)  # every sequence continues from the one unperturbed run
        for batch, scores in continue_copies(
            self.prefix, seqs, bases, self.batch_tokens, lambda b: self._score(seqs, b), read
        ):
            self.forward_passes += self.prefix.forwards - before
            before = self.prefix.forwards
            yield batch, scores

    @property
    def earlier_positions(self) -> str:
        """How the perturbed prompts' positions before their first change ran, for meta.json."""
        if self.prefix is not None:
            return self.prefix.note
        if not self.reuse_prefix:
            return (
                "recomputed: the prefix cache is turned off (reuse_prefix=False, --no-prefix-cache)"
            )
        return "recomputed: no batch of perturbed prompts ran"

    @property
    def pad_id(self) -> int:
        """The id padding goes in with: the tokenizer's pad (else eos) id."""
        return int(pad_id_of(self.lm.tokenizer))

    def sequence(self, prompt: Sequence[int]) -> list[int]:
        """The ids a prompt is scored with: the prompt, then the target. An empty prompt (every
        feature removed) has no position to predict the first target token from: the pad
        token stands in for it, whichever way the batch runs."""
        return (list(prompt) or [self.pad_id]) + self.target_ids

    def _score(self, seqs: list[list[int]], batch: list[int]) -> torch.Tensor:
        """(len(batch), rows) float64 scores of one batch of prompt + target sequences."""
        if self.batching is None:
            self.batching = CheckedBatching(
                {"left": self._left_padded, "right": self._right_padded},
                {"left": "left-padded batches with position ids", "right": "right-padded batches"},
                self._alone,
                dtype=self.lm.dtype,
                what=f"attribution on {type(self.lm.model).__name__}",
                min_probe=len(self.target_ids) + 1,
            )
        before = self.batching.forwards
        with torch.inference_mode():
            logits = self.batching([seqs[i] for i in batch])
        self.forward_passes += self.batching.forwards - before
        return self.row_scores(self.token_logprobs(logits)).double().cpu()

    # -- the ways a batch runs: (B, m, V) logits predicting the target tokens
    def _left_padded(self, seqs: list[list[int]]) -> torch.Tensor:
        """Left padding with position ids counting from each row's first token: the targets end
        every row, so only the last m + 1 columns are unembedded."""
        lm, m = self.lm, len(self.target_ids)
        if not takes(lm.model, "position_ids"):
            raise PathUnavailable("its forward takes no position_ids", quiet=True)
        ids, mask = pad_batch(seqs, self.pad_id, lm.device, side="left")
        logits = lm.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=left_positions(mask),
            use_cache=False,
            **keep_last(lm.model, m + 1),
        ).logits
        return logits[:, -(m + 1) : -1]

    def _right_padded(self, seqs: list[list[int]]) -> torch.Tensor:
        """Right padding, the model's own positions: each row's targets end where it ends."""
        lm, m = self.lm, len(self.target_ids)
        ids, mask = pad_batch(seqs, self.pad_id, lm.device, side="right")
        width = ids.shape[1]
        cols = mask.sum(dim=1, keepdim=True) - m - 1 + torch.arange(m, device=lm.device)
        k = width - int(cols.min())  # the last k columns hold every row's
        logits = lm.model(
            input_ids=ids, attention_mask=mask, use_cache=False, **keep_last(lm.model, k)
        ).logits[:, -k:]
        rows = torch.arange(len(seqs), device=lm.device)[:, None]
        return logits[rows, cols - (width - k)]

    def _alone(self, seq: list[int]) -> torch.Tensor:
        """(m, V) logits of one sequence run alone, unpadded."""
        lm, m = self.lm, len(self.target_ids)
        ids = torch.tensor([seq], device=lm.device)
        logits = lm.model(input_ids=ids, use_cache=False, **keep_last(lm.model, m + 1)).logits
        return logits[0, -(m + 1) : -1]

    def coalition_scores(self, coalitions: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        """Scores with only the features in each coalition present (cached across calls)."""
        repl = self.replacement()
        todo = sorted({c for c in coalitions if c not in self.cache})
        if todo:
            every = range(len(self.features))
            prompts = [self.perturbed([f for f in every if f not in set(c)], repl) for c in todo]
            for c, s in zip(todo, self.score_prompts(prompts), strict=True):
                self.cache[c] = s
        return [self.cache[c] for c in coalitions]

    # -- progress and checkpoint
    def grow_bar(self, total: int, done: int) -> None:
        """`total` more units of work, `done` of them already (taken from the checkpoint)."""
        if self.bar is not None:
            self.bar.total = (self.bar.total or 0) + total
            self.bar.update(done)
            self.bar.refresh()

    def batch_done(self, n: int) -> None:
        """A model batch of `n` units finished: count it, flush the checkpoint when due."""
        if self.bar is not None:
            self.bar.update(n)
        if self.store is not None:
            self.store.flush_if_due()
        if self.after_batch is not None:
            self.after_batch()

    def flush(self) -> None:
        """Write the scores computed since the last flush (if there is a checkpoint)."""
        if self.store is not None:
            self.store.flush()


def _prompt_key(ids: Sequence[int]) -> bytes:
    """A 16-byte digest of a prompt's ids: the key of its scores in a checkpoint."""
    return hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=16).digest()


def target_logprobs(
    logits: torch.Tensor, target_ids: list[int], foil_id: int | None = None
) -> torch.Tensor:
    """(B, m, V) logits predicting the targets to (B, m) float32 log-probabilities of the
    targets; with `foil_id`, (B, 2m): the foil's log-probabilities at the same positions after."""
    tgt = torch.tensor(target_ids, device=logits.device).expand(logits.shape[0], -1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return out if foil_id is None else torch.cat([out, logp[..., foil_id]], dim=1)
