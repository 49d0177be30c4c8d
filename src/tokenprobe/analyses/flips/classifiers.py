"""Classifiers for flip rates: token-id sequences in, label scores out, in batches.

A `SequenceClassifier` is a model with a classification head; a `PromptedClassifier` is a
causal LM asked a question, whose prediction is the argmax over the verbalisers' next-token
scores. Every batch goes through `runner.map_batches` (split in halves on out-of-memory).
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ...errors import TokenprobeError
from ...model import LoadedModel
from ...model.kvcache import cache_of, with_cache
from ...runner import left_positions, map_batches, pad_batch, pad_id_of
from ...text import render, token_texts
from .words import TextInput, tokenize_words

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

    def scores(self, texts: Sequence[list[int]], batch_tokens: int) -> np.ndarray:
        """(texts, labels) float32 scores; the prediction is their argmax."""
        raise NotImplementedError

    def predict(self, texts: Sequence[list[int]], batch_tokens: int) -> np.ndarray:
        """The index of each text's predicted label."""
        return self.scores(texts, batch_tokens).argmax(-1)

    def describe(self) -> dict[str, Any]:
        """What the classifier is, for meta.json and the checkpoint's settings."""
        raise NotImplementedError

    _init: dict[str, Any]  # the constructor's arguments besides the model

    def replica(self) -> Callable[[], Classifier]:
        """A picklable factory that builds the same classifier around a fresh copy of the model
        (loaded by name or path, as `load` loaded this one): one per Ray worker."""
        if self.lm.load_args is None:
            raise TokenprobeError(
                "a Ray run loads the model on each worker by name or path: load it with "
                "tokenprobe.load, not LoadedModel.wrap"
            )
        return functools.partial(_rebuild, type(self), dict(self.lm.load_args), dict(self._init))


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
        config_labels = [config.id2label[i] for i in range(config.num_labels)]
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

    def scores(self, texts: Sequence[list[int]], batch_tokens: int) -> np.ndarray:
        """(texts, labels) logits of the classification head, float32."""
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)

        def run(batch: list[int]) -> np.ndarray:
            ids, mask = pad_batch([texts[i] for i in batch], self.pad_id, self.lm.device)
            with torch.inference_mode():
                logits = self.lm.model(input_ids=ids, attention_mask=mask).logits
            return logits.float().cpu().numpy()

        for batch, logits in map_batches([len(s) for s in texts], batch_tokens, run):
            out[batch] = logits
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": "sequence classifier", "labels": self.labels}


def check_template(template: str) -> None:
    """A prompted classifier's template holds `{text}` exactly once (checked before a model is
    loaded, too)."""
    if template.count("{text}") != 1:
        raise TokenprobeError(
            "the template must hold the {text} placeholder exactly once: put one {text} where the text goes"
        )


def _verbaliser_ids(tok: Any, labels: list[str], verbalisers: list[str]) -> list[int]:
    """The first token of each verbaliser (warning where a verbaliser is several); they must
    differ, or two labels could never be told apart."""
    first = []
    for label, verb in zip(labels, verbalisers, strict=True):
        ids = tok.encode(verb, add_special_tokens=False)
        if not ids:
            raise TokenprobeError(f"the verbaliser {verb!r} for {label!r} gives no tokens")
        if len(ids) > 1:
            pieces = token_texts(tok, ids)
            warnings.warn(
                f"verbaliser {verb!r} is split into {len(ids)} tokens {pieces}; its first token {pieces[0]!r} "
                "stands for it",
                UserWarning,
                stacklevel=3,
            )
        first.append(int(ids[0]))
    dupes = {t for t in first if first.count(t) > 1}
    if dupes:
        clash = [v for v, t in zip(verbalisers, first, strict=True) if t in dupes]
        raise TokenprobeError(
            f"verbalisers {clash} begin with the same token: choose words whose first tokens differ (label=word)"
        )
    return first


class PromptedClassifier(Classifier):
    """A causal LM asked a question: the argmax over the verbalisers' next-token scores.

    The template holds `{text}` (and optionally `{labels}`); with `chat` it is the user turn of
    the chat template. Each verbaliser counts by its first token. The part of the prompt before
    the text is run once and its key/value cache reused for every input (`reuse_prefix`).
    """

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
        rendered = render(tok, filled, chat=chat)
        prefix_text, suffix_text = rendered.split(marker)
        self.prefix_ids = list(tok(prefix_text, add_special_tokens=not chat)["input_ids"])
        self.suffix_ids = list(tok(suffix_text, add_special_tokens=False)["input_ids"])
        self.rendered = rendered
        self.verbaliser_ids = _verbaliser_ids(tok, self.labels, self.verbalisers)
        self._cache = None
        if not self.prefix_ids:  # a template that starts with the text: no prefix to cache
            self.reuse_prefix = False

    def input_length(self, n_text_tokens: int) -> int:
        return len(self.prefix_ids) + n_text_tokens + len(self.suffix_ids)

    def _prefix_cache(self) -> Any:
        """The prefix's key/value cache; None (and a warning, once) where the model has no cache
        that can be copied across a batch (state-space and hybrid models)."""
        if self._cache is None:
            ids = torch.tensor([self.prefix_ids], device=self.lm.device)
            with torch.inference_mode():
                cache = cache_of(self.lm.model(input_ids=ids, use_cache=True))
            try:  # Jamba's cache has the method, but its state-space layers lack it
                copy.deepcopy(cache).batch_repeat_interleave(2)
            except (AttributeError, NotImplementedError, TypeError, RuntimeError):
                cache = None
            if cache is None:
                self.reuse_prefix = False
                warnings.warn(
                    f"{type(self.lm.model).__name__} has no key/value cache that can be shared by a batch: "
                    "the whole prompt runs for every input (the same predictions, slower)",
                    UserWarning,
                    stacklevel=3,
                )
                return None
            self._cache = cache
        return self._cache

    def scores(self, texts: Sequence[list[int]], batch_tokens: int) -> np.ndarray:
        """(texts, labels) next-token logits of the verbalisers' first tokens, float32.

        With the prefix cache, each text follows the cached prefix directly and the padding goes
        after it (right padding): padding between the prefix and the text would shift the text
        away from the prefix, which changes ALiBi scores and pushes the prefix out of sliding
        windows. Without it, the batch is left-padded with explicit position ids, which is exact
        because every text keeps its own slots' distances.
        """
        lm = self.lm
        if self.reuse_prefix and texts:
            self._prefix_cache()  # may turn reuse_prefix off for models without a usable cache
        pad = pad_id_of(lm.tokenizer)
        p = len(self.prefix_ids)
        verb = torch.tensor(self.verbaliser_ids, device=lm.device)
        if self.reuse_prefix:
            seqs = [list(t) + self.suffix_ids for t in texts]
        else:
            seqs = [self.prefix_ids + list(t) + self.suffix_ids for t in texts]
        out = np.empty((len(seqs), len(self.labels)), dtype=np.float32)

        def run(batch: list[int]) -> np.ndarray:
            with torch.inference_mode():
                if self.reuse_prefix:
                    logits = self._cached_last_logits([seqs[i] for i in batch], pad)
                else:
                    logits = self._last_logits([seqs[i] for i in batch], pad)
            return logits[:, verb].float().cpu().numpy()

        lengths = [len(s) + (p if self.reuse_prefix else 0) for s in seqs]
        for batch, logits in map_batches(lengths, batch_tokens, run):
            out[batch] = logits
        return out

    def _last_logits(self, seqs: list[list[int]], pad: int) -> torch.Tensor:
        """(B, V) logits at each sequence's last token, the whole prompt run: left padding puts
        every row's last token in the last column, so only it is unembedded."""
        lm = self.lm
        ids, mask = pad_batch(seqs, pad, lm.device, side="left")
        return lm.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=left_positions(mask),
            use_cache=False,
            logits_to_keep=1,
        ).logits[:, -1]

    def _cached_last_logits(self, seqs: list[list[int]], pad: int) -> torch.Tensor:
        """(B, V) logits at each sequence's last token, run after a copy of the prefix cache."""
        lm, p = self.lm, len(self.prefix_ids)
        cache = copy.deepcopy(self._prefix_cache())
        cache.batch_repeat_interleave(len(seqs))
        ids, mask = pad_batch(seqs, pad, lm.device, side="right")
        width = ids.shape[1]
        last = mask.sum(dim=1) - 1
        keep = torch.unique(last)  # sorted; rows of similar length share a few columns
        ones = torch.ones((len(seqs), p), dtype=mask.dtype, device=lm.device)
        positions = torch.arange(p, p + width, device=lm.device).expand(len(seqs), -1)
        logits = lm.model(
            input_ids=ids,
            attention_mask=torch.cat([ones, mask], 1),
            position_ids=positions,
            **with_cache(lm.model, cache),
            logits_to_keep=keep,
        ).logits
        rows = torch.arange(len(seqs), device=lm.device)
        return logits[rows, torch.searchsorted(keep, last)]

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
            "prefix_cache_reused": self.reuse_prefix,
        }
