"""Classifiers for flip rates: token-id sequences in, label scores out, in batches.

A `SequenceClassifier` is a model with a classification head; a `PromptedClassifier` is a
causal LM asked a question, whose prediction is the argmax over the verbalisers' next-token
scores. Every batch goes through `runner.map_batches` (split in halves on out-of-memory), and
the first batch of a run is checked against one input alone (`runner.CheckedBatching`): where
the batched path differs, the run falls back to another, or to one input at a time.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ...errors import TokenprobeError
from ...executors import worker_load_args
from ...model import LoadedModel
from ...model.kvcache import cache_of, with_cache
from ...prefix import CONTINUED, last_positions
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
from ...text import render, token_texts
from . import continued, seq2seq
from .verbalisers import check_template, verbaliser_ids
from .words import TextInput, tokenize_words

Ids = Sequence[list[int]]  # token-id sequences
Bases = Sequence[int] | None  # each sequence's unperturbed copy, by index

DEFAULT_TEMPLATE = (
    "Classify the emotion expressed in the text as one of: {labels}.\n\nText: {text}\nEmotion:"
)


class Classifier:
    """Turns text-token sequences into label scores and predicted label indices, in batches."""

    labels: list[str]
    lm: LoadedModel
    special_tokens = False  # do a text's ids carry the tokenizer's special tokens?

    def encode(self, text: str) -> TextInput:
        """The ids this classifier is given for `text`, and its words' token positions."""
        return tokenize_words(self.lm.tokenizer, text, add_special_tokens=self.special_tokens)

    def input_length(self, n_text_tokens: int) -> int:
        """Tokens the model runs over for a text of `n_text_tokens` (template included)."""
        return n_text_tokens

    def scores(self, texts: Ids, batch_tokens: int, bases: Bases = None) -> np.ndarray:
        """(texts, labels) float32 scores, the prediction their argmax; `bases` (optional)
        the index of each text's unperturbed copy, which perturbed copies may continue from."""
        raise NotImplementedError

    def predict(self, texts: Ids, batch_tokens: int, bases: Bases = None) -> np.ndarray:
        """The index of each text's predicted label."""
        return self.scores(texts, batch_tokens, bases).argmax(-1)

    def prefix_note(self) -> str | None:
        """How the perturbed copies' earlier positions ran in the last call (None: not
        recorded), for meta.json."""
        return self._prefix_note

    def describe(self) -> dict[str, Any]:
        """What the classifier is, for meta.json and the checkpoint's settings."""
        raise NotImplementedError

    _init: dict[str, Any]  # the constructor's arguments besides the model
    _batching: CheckedBatching | None = None  # how batches run: checked on a run's first
    _prefix_why: str | None = None  # why this run's copies do not continue from a cache
    _prefix_note: str | None = None  # how the last call's copies' earlier positions ran

    def begin_run(self) -> None:
        """Start a run: its first batch is checked against one input alone again."""
        self._batching = None
        self._prefix_why = self._prefix_note = None

    def batching_note(self) -> str | None:
        """Which way this run's batches went through the model and why (None before the
        first batch), for meta.json."""
        notes = (
            [] if self._batching is None or self._batching.note is None else [self._batching.note]
        )
        if self._prefix_note == CONTINUED:
            notes.append(
                "right-padded batches with a key/value cache: the unperturbed texts, and each "
                "perturbed copy continued from its text's cache (see earlier_positions)"
            )
        return " / ".join(notes) or None

    def _checking(self) -> CheckedBatching:
        """The batching of the classifier's current run (a new one checks its first batch)."""
        raise NotImplementedError

    def _batched(self, seqs: list[list[int]]) -> torch.Tensor:
        """(len(seqs), ...) outputs of one batch, by the run's checked path."""
        if self._batching is None:
            self._batching = self._checking()
        with torch.inference_mode():
            return self._batching(seqs)

    def replica(self) -> Callable[[], Classifier]:
        """A picklable factory that builds the same classifier around a fresh copy of the model
        (loaded by name or path, as `load` loaded this one): one per Ray worker."""
        return functools.partial(_rebuild, type(self), worker_load_args(self.lm), dict(self._init))


def _rebuild(kind: type[Classifier], load_args: dict[str, Any], init: dict[str, Any]) -> Classifier:
    """A classifier of `kind` around a model loaded with `load_args` (on a Ray worker)."""
    from ...model import load

    return kind(load(**load_args), **init)  # type: ignore[call-arg]


class SequenceClassifier(Classifier):
    """An AutoModelForSequenceClassification; labels from its config unless given.

    A text's ids are exactly what the tokenizer gives for it (`tokenizer(text)`, with
    `[CLS]`/`[SEP]` or `<s>`/`</s>`), as in the model's own pipeline.
    """

    special_tokens = True

    def __init__(self, lm: LoadedModel, labels: Sequence[str] | None = None) -> None:
        self.lm = lm
        self._init = {"labels": None if labels is None else list(labels)}
        config = lm.model.config
        id2label: Mapping[Any, str] | None = config.id2label  # int keys once the config is built
        if id2label is None:
            raise TokenprobeError(f"{type(lm.model).__name__}'s config has no id2label: no labels")
        config_labels = [id2label[i] for i in range(len(id2label))]
        if labels is not None and len(labels) != len(config_labels):
            raise TokenprobeError(
                f"`labels` gives {len(labels)} labels but the model has {len(config_labels)} ({', '.join(config_labels)})"
            )
        self.labels = list(labels) if labels is not None else config_labels
        if getattr(config, "pad_token_id", None) is None:
            # decoder classifiers (GPT-2's hub config has none) find each row's last token by
            # its padding: without a pad id they refuse batches of more than one text
            pad = pad_id_of(lm.tokenizer, default=None)
            if pad is None:
                raise TokenprobeError(
                    f"{type(lm.model).__name__} has no pad_token_id in its config and its tokenizer has no pad or "
                    "eos token: set config.pad_token_id (e.g. model.config.pad_token_id = tokenizer.pad_token_id)"
                )
            config.pad_token_id = pad
            warnings.warn(
                f"the model's config has no pad_token_id: padding with token {pad} "
                f"({token_texts(lm.tokenizer, [pad])[0]!r}) from the tokenizer",
                UserWarning,
                stacklevel=2,
            )
        self.pad_id = int(config.pad_token_id)

    def scores(self, texts: Ids, batch_tokens: int, bases: Bases = None) -> np.ndarray:
        """(texts, labels) logits of the classification head, float32 (every text whole)."""
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)

        def run(batch: list[int]) -> np.ndarray:
            return self._batched([list(texts[i]) for i in batch]).float().cpu().numpy()

        for batch, logits in map_batches([len(s) for s in texts], batch_tokens, run):
            out[batch] = logits
        return out

    def _checking(self) -> CheckedBatching:
        return CheckedBatching(
            {"right": self._right_padded},
            {"right": "right-padded batches"},
            self._alone,
            dtype=self.lm.dtype,
            what=f"flip rates with {type(self.lm.model).__name__}",
        )

    def _right_padded(self, seqs: list[list[int]]) -> torch.Tensor:
        ids, mask = pad_batch(seqs, self.pad_id, self.lm.device)
        return self.lm.model(input_ids=ids, attention_mask=mask).logits

    def _alone(self, seq: list[int]) -> torch.Tensor:
        return self.lm.model(input_ids=torch.tensor([seq], device=self.lm.device)).logits[0]

    def describe(self) -> dict[str, Any]:
        return {"kind": "sequence classifier", "labels": self.labels}


class PromptedClassifier(Classifier):
    """A causal LM asked a question: the argmax over the verbalisers' next-token scores.

    The template holds `{text}` (and optionally `{labels}`); with `chat` it is the user turn of
    the chat template. Each verbaliser counts by its first token. The part of the prompt before
    the text is run once and its key/value cache reused for every input (`reuse_prefix`).
    An encoder-decoder reads the filled template as its source, and the verbalisers are scored
    at its decoder's first prediction after the start (and forced) tokens (`seq2seq`).
    """

    continue_copies = True  # False: every perturbed copy runs whole (benchmarks, checks)

    def __init__(
        self,
        lm: LoadedModel,
        labels: Sequence[str],
        verbalisers: Sequence[str] | None = None,
        *,
        template: str = DEFAULT_TEMPLATE,
        chat: bool = False,
        reuse_prefix: bool = True,
    ) -> None:
        if not labels:
            raise TokenprobeError("give the labels with `labels` (e.g. anger joy optimism sadness)")
        check_template(template)
        self.lm = lm
        self._init = {
            "labels": list(labels),
            "verbalisers": None if verbalisers is None else list(verbalisers),
            "template": template,
            "chat": chat,
            "reuse_prefix": reuse_prefix,
        }
        self.labels = list(labels)
        self.verbalisers = (
            list(verbalisers) if verbalisers is not None else [f" {label}" for label in labels]
        )
        self.template = template
        self.chat = chat
        self.reuse_prefix = reuse_prefix
        tok = lm.tokenizer
        marker = "\x00TEXT\x00"
        filled = template.replace("{labels}", ", ".join(self.labels)).replace("{text}", marker)
        self._cache = None
        if lm.is_seq2seq:  # the filled template is the source; the decoder gives the answer
            self.rendered = filled.replace(marker, "{text}")
            seq2seq.setup(self, lm, tuple(filled.split(marker)))  # type: ignore[arg-type]
            return
        self.decoder_ids: list[int] = []
        rendered = render(tok, filled, chat=chat)
        prefix_text, suffix_text = rendered.split(marker)
        self.prefix_ids = list(tok(prefix_text, add_special_tokens=not chat)["input_ids"])
        self.suffix_ids = list(tok(suffix_text, add_special_tokens=False)["input_ids"])
        self.rendered = rendered
        self.verbaliser_ids = verbaliser_ids(tok, self.labels, self.verbalisers)
        if not self.prefix_ids:  # a template that starts with the text: no prefix to cache
            self.reuse_prefix = False

    def input_length(self, n_text_tokens: int) -> int:
        return len(self.prefix_ids) + n_text_tokens + len(self.suffix_ids)

    def _prefix_cache(self) -> Any:
        """The prefix's cache, run once and kept (a copy of it starts every batch)."""
        if self._cache is None:
            ids = torch.tensor([self.prefix_ids], device=self.lm.device)
            with torch.inference_mode():
                cache = cache_of(self.lm.model(input_ids=ids, use_cache=True))
            if cache is None:
                raise PathUnavailable("its forward returns no cache")
            if not hasattr(cache, "batch_repeat_interleave"):
                raise PathUnavailable(
                    f"its cache ({type(cache).__name__}) cannot be repeated for a batch"
                )
            self._cache = cache
        return self._cache

    def scores(self, texts: Ids, batch_tokens: int, bases: Bases = None) -> np.ndarray:
        """(texts, labels) next-token logits of the verbalisers' first tokens, float32.

        With the prefix cache, each text follows a copy of the cached prefix directly and the
        padding goes after it (right padding): padding between the prefix and the text would
        shift the text away from the prefix, which changes ALiBi scores and pushes the prefix
        out of sliding windows. Without it, the batch is left-padded with explicit position ids
        (exact where every text keeps its own slots' distances), else right-padded. The first
        batch of a run checks its path against one input alone (a continuation from the cache
        against the whole prompt run at once) and falls back where they differ
        (`runner.CheckedBatching`). With `bases`, the unperturbed texts run keeping their
        caches and each perturbed copy runs only from its first changed position on
        (`tokenprobe.prefix`), where that is checked and saves work.
        """
        seqs = [list(t) + self.suffix_ids for t in texts]
        out = np.empty((len(seqs), len(self.labels)), dtype=np.float32)
        todo = list(range(len(seqs)))
        if bases is not None and self.continue_copies and not self.lm.is_seq2seq:
            todo = continued.scores(self, seqs, bases, batch_tokens, out)
        lengths = [len(self.prefix_ids) + len(seqs[i]) for i in todo]
        for batch, logits in map_batches(
            lengths, batch_tokens, lambda b: self._scored([seqs[todo[j]] for j in b])
        ):
            out[[todo[j] for j in batch]] = logits
        return out

    def _scored(self, seqs: list[list[int]]) -> np.ndarray:
        """(B, labels) verbaliser logits of one batch of texts (each with the suffix), by the
        run's checked path."""
        logits = self._batched(seqs)
        if self._batching is not None and self._batching.path not in (None, "cache"):
            self._cache = None  # not used this run: let it go
        verb = torch.tensor(self.verbaliser_ids, device=logits.device)
        return logits[:, verb].float().cpu().numpy()

    def _checking(self) -> CheckedBatching:
        if self.lm.is_seq2seq:
            return seq2seq.checking(self)
        paths = {"cache": self._after_prefix_cache} if self.reuse_prefix else {}
        paths.update(left=self._left_padded, right=self._right_padded)
        return CheckedBatching(
            paths,
            {
                "cache": "right-padded batches after a copy of the prefix's cache",
                "left": "left-padded batches with position ids",
                "right": "right-padded batches",
            },
            self._alone,
            dtype=self.lm.dtype,
            what=f"flip rates with {type(self.lm.model).__name__}",
        )

    # -- the ways a batch of texts (each with the suffix) runs: (B, V) logits at the last token
    @property
    def pad_id(self) -> int:
        return int(pad_id_of(self.lm.tokenizer))

    def _left_padded(self, seqs: list[list[int]]) -> torch.Tensor:
        """The whole prompts, left-padded: every row's last token is in the last column, so
        only it is unembedded."""
        lm = self.lm
        if not takes(lm.model, "position_ids"):
            raise PathUnavailable("its forward takes no position_ids", quiet=True)
        ids, mask = pad_batch(
            [self.prefix_ids + s for s in seqs], self.pad_id, lm.device, side="left"
        )
        return lm.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=left_positions(mask),
            use_cache=False,
            **keep_last(lm.model, 1),
        ).logits[:, -1]

    def _right_padded(self, seqs: list[list[int]]) -> torch.Tensor:
        """The whole prompts, right-padded, with the model's own positions."""
        lm = self.lm
        ids, mask = pad_batch([self.prefix_ids + s for s in seqs], self.pad_id, lm.device)
        return last_positions(lm.model, ids, mask, 1, use_cache=False)[0][:, 0]

    def _after_prefix_cache(self, seqs: list[list[int]]) -> torch.Tensor:
        """The texts right-padded after a copy of the prefix's cache, repeated for the batch."""
        lm, p = self.lm, len(self.prefix_ids)
        cache = copy.deepcopy(self._prefix_cache())
        cache.batch_repeat_interleave(len(seqs))
        ids, mask = pad_batch(seqs, self.pad_id, lm.device, side="right")
        ones = torch.ones((len(seqs), p), dtype=mask.dtype, device=lm.device)
        extra: dict[str, Any] = {}
        if takes(lm.model, "position_ids"):
            width = ids.shape[1]
            extra["position_ids"] = torch.arange(p, p + width, device=lm.device).expand(
                len(seqs), -1
            )
        full, cached = torch.cat([ones, mask], 1), with_cache(lm.model, cache)
        return last_positions(lm.model, ids, full, 1, **extra, **cached)[0][:, 0]

    def _alone(self, seq: list[int]) -> torch.Tensor:
        """(V,) logits at the last token of one whole prompt run alone, unpadded."""
        lm = self.lm
        ids = torch.tensor([self.prefix_ids + seq], device=lm.device)
        return lm.model(input_ids=ids, use_cache=False, **keep_last(lm.model, 1)).logits[0, -1]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "prompted classifier",
            "labels": self.labels,
            "verbalisers": self.verbalisers,
            "verbaliser_token_ids": self.verbaliser_ids,
            "template": self.template,
            "chat": self.chat,
            "prompt": self.rendered,
            "prefix_tokens": len(self.prefix_ids),
            "prefix_cache_reused": self.prefix_cache_reused,
            **({"decoder_ids": self.decoder_ids} if self.lm.is_seq2seq else {}),
        }

    @property
    def prefix_cache_reused(self) -> bool:
        """Does the run continue every batch from the prefix's cache (asked for with
        `reuse_prefix`, and checked against the whole prompt on the run's first batch)?"""
        checked = None if self._batching is None else self._batching.path
        return self.reuse_prefix if checked is None else checked == "cache"
