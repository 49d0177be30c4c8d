"""Flip rates: perturb each word occurrence of each text, re-classify, and count label flips per
(word, relative position bucket).

Words are lowercase runs of word characters ("couldn't" gives "couldn" and "t"), each mapped to
the model tokens its characters fall in; perturbing a word perturbs all of its tokens. The
bucket of the i-th of n words is floor(B * i / n). Every perturbed text of a chunk of texts
goes through the model in length-sorted token-budget batches; finished chunks are written to
disk so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..batching import left_positions, pad_batch, pad_id_of, progress_disabled, token_budget_batches
from ..checkpoint import Checkpoint, digest, model_settings
from ..errors import TokenprobeError
from ..model import LoadedModel
from ..results import FlipResult, now, versions
from ..stats import wilson
from ..text import render, token_texts

PERTURBATIONS = ("delete", "mask", "filler")
WORD = re.compile(r"\w+")
DEFAULT_TEMPLATE = (
    "Classify the emotion expressed in the text as one of: {labels}.\n\nText: {text}\nEmotion:"
)


PARTIAL = "flips.partial"  # the checkpoint folder inside --out


@dataclass
class TextInput:
    """A text's own tokens (no template, no special tokens) and its words' token positions."""

    text: str
    ids: list[int]
    words: list[str]
    word_tokens: list[list[int]]


def tokenize_words(tokenizer: Any, text: str, *, add_special_tokens: bool = False) -> TextInput:
    """Tokens of `text` and, for each lowercase word, the tokens its characters fall in, from one
    tokenizer call (with the tokenizer's own special tokens when `add_special_tokens`: they
    cover no characters, so they belong to no word and survive every perturbation)."""
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    words, word_tokens = [], []
    for match in WORD.finditer(text):
        s, e = match.span()
        toks = [i for i, (a, b) in enumerate(offsets) if b > a and a < e and b > s]
        if toks:
            words.append(match.group().lower())
            word_tokens.append(toks)
    return TextInput(text, ids, words, word_tokens)


def bucket_of(i: int, n: int, buckets: int) -> int:
    """Relative position bucket of the i-th (0-based) of n words."""
    return (buckets * i) // n


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
        raise NotImplementedError

    def predict(self, texts: Sequence[list[int]], batch_tokens: int) -> np.ndarray:
        return self.scores(texts, batch_tokens).argmax(-1)

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


class SequenceClassifier(Classifier):
    """An AutoModelForSequenceClassification; labels from its config unless given.

    A text's ids are exactly what the tokenizer gives for it (`tokenizer(text)`, with
    `[CLS]`/`[SEP]` or `<s>`/`</s>`), as in the model's own pipeline.
    """

    special_tokens = True

    def __init__(self, lm: LoadedModel, labels: Sequence[str] | None = None) -> None:
        self.lm = lm
        config = lm.model.config
        config_labels = [config.id2label[i] for i in range(config.num_labels)]
        if labels is not None and len(labels) != len(config_labels):
            raise TokenprobeError(
                f"--labels gives {len(labels)} labels but the model has {len(config_labels)} ({', '.join(config_labels)})"
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
        for batch in token_budget_batches([len(s) for s in texts], batch_tokens):
            ids, mask = pad_batch([texts[i] for i in batch], self.pad_id, self.lm.device)
            with torch.inference_mode():
                logits = self.lm.model(input_ids=ids, attention_mask=mask).logits
            out[batch] = logits.float().cpu().numpy()
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
            raise TokenprobeError(
                "give the labels with --labels (e.g. --labels anger joy optimism sadness)"
            )
        check_template(template)
        self.lm = lm
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
        first = []
        for label, verb in zip(self.labels, self.verbalisers, strict=True):
            ids = tok.encode(verb, add_special_tokens=False)
            if not ids:
                raise TokenprobeError(f"the verbaliser {verb!r} for {label!r} gives no tokens")
            if len(ids) > 1:
                pieces = token_texts(tok, ids)
                warnings.warn(
                    f"verbaliser {verb!r} is split into {len(ids)} tokens {pieces}; its first token {pieces[0]!r} "
                    "stands for it",
                    UserWarning,
                    stacklevel=2,
                )
            first.append(int(ids[0]))
        dupes = {t for t in first if first.count(t) > 1}
        if dupes:
            clash = [v for v, t in zip(self.verbalisers, first, strict=True) if t in dupes]
            raise TokenprobeError(
                f"verbalisers {clash} begin with the same token: choose words whose first tokens differ (label=word)"
            )
        self.verbaliser_ids = first
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
                cache = getattr(
                    self.lm.model(input_ids=ids, use_cache=True), "past_key_values", None
                )
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
        for batch in token_budget_batches(
            [len(s) + (p if self.reuse_prefix else 0) for s in seqs], batch_tokens
        ):
            with torch.inference_mode():
                if self.reuse_prefix:
                    logits = self._cached_last_logits([seqs[i] for i in batch], pad)
                else:
                    # left padding: every row ends in the last column, so only it is unembedded
                    ids, mask = pad_batch([seqs[i] for i in batch], pad, lm.device, side="left")
                    logits = lm.model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=left_positions(mask),
                        use_cache=False,
                        logits_to_keep=1,
                    ).logits[:, -1]
            out[batch] = logits[:, verb].float().cpu().numpy()
        return out

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
            past_key_values=cache,
            use_cache=True,
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


def perturb(inp: TextInput, word: int, how: str, replacement: list[int]) -> list[int]:
    """The text's ids with all tokens of word `word` deleted or replaced (once) by `replacement`."""
    positions = inp.word_tokens[word]
    head, tail = positions[0], positions[-1]
    keep_between = [inp.ids[i] for i in range(head, tail + 1) if i not in positions]
    new = [] if how == "delete" else replacement
    return inp.ids[:head] + new + keep_between + inp.ids[tail + 1 :]


def _replacement(lm: LoadedModel, how: str, filler: str | None) -> list[int]:
    tok = lm.tokenizer
    if how == "delete":
        return []
    if how == "mask":
        for attr in ("mask_token_id", "unk_token_id"):
            tid = getattr(tok, attr, None)
            if tid is not None:
                return [int(tid)]
        raise TokenprobeError(
            "this tokenizer has neither a mask nor an unk token: use --perturb delete or filler WORD"
        )
    if how == "filler":
        if not filler or not filler.strip():
            raise TokenprobeError("--perturb filler needs a word: --perturb filler WORD")
        return tok.encode(" " + filler.strip(), add_special_tokens=False)
    raise TokenprobeError(f"unknown --perturb {how!r}: use {', '.join(PERTURBATIONS)}")


def rates_table(occurrences: pd.DataFrame, labels: Sequence[str], group: str) -> pd.DataFrame:
    """Flips, occurrences, rate and Wilson interval per (class, word, bucket)."""
    col = "original" if group == "predicted" else "gold"
    frame = occurrences[occurrences[col].notna()]
    grouped = (
        frame.groupby([col, "word", "bucket"], sort=True)["flipped"]
        .agg(flips="sum", occurrences="count")
        .reset_index()
    )
    grouped = grouped.rename(columns={col: "class"})
    grouped["flips"] = grouped["flips"].astype(np.int64)
    grouped["rate"] = grouped["flips"] / grouped["occurrences"]
    low, high = wilson(grouped["flips"].to_numpy(), grouped["occurrences"].to_numpy())
    grouped["wilson_low"], grouped["wilson_high"] = low, high
    return grouped


def _check_context(classifier: Classifier, inputs: Sequence[TextInput], replacement: int) -> None:
    """Refuse, naming the first one, a text whose longest perturbed copy (template included)
    does not fit the model's context."""
    limit = classifier.lm.context_length
    if limit is None:
        return
    for i, inp in enumerate(inputs):
        if not inp.words:
            continue
        grow = max(0, replacement - min(len(w) for w in inp.word_tokens))
        need = classifier.input_length(len(inp.ids) + grow)
        if need > limit:
            raise TokenprobeError(
                f"text {i + 1} needs {need} tokens (with the prompt template and the longest perturbation), "
                f"longer than the model's context of {limit}: shorten it or leave it out"
            )


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def flip_rates(
    classifier: Classifier,
    texts: Sequence[str],
    gold: Sequence[str] | None = None,
    *,
    perturbation: str = "delete",
    filler: str | None = None,
    buckets: int = 10,
    group: str = "predicted",
    batch_tokens: int = 4096,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    chunk_texts: int = 32,
    progress: bool | None = None,
    _after_chunk: Callable[[int], None] | None = None,
) -> FlipResult:
    """Flip rate of every (word, bucket) over `texts`, with per-occurrence rows.

    `gold` labels (optional) give accuracy and `group="gold"`. With `checkpoint`, each finished
    chunk of texts is written there; `resume=True` reuses the chunks already written.
    """
    if not texts:
        raise TokenprobeError("the data set is empty: give at least one text")
    if buckets < 1:
        raise TokenprobeError(f"--buckets must be at least 1, not {buckets}")
    if group not in ("predicted", "gold"):
        raise TokenprobeError(f"--group must be predicted or gold, not {group!r}")
    if group == "gold" and gold is None:
        raise TokenprobeError("--group gold needs gold labels: give --label-column")
    labels = classifier.labels
    if gold is not None:
        unknown = sorted({g for g in gold if g not in labels})
        if unknown:
            raise TokenprobeError(
                f"labels in the data are not in --labels: {', '.join(map(str, unknown[:5]))}; the labels are {', '.join(labels)}"
            )
    lm = classifier.lm
    replacement = _replacement(lm, perturbation, filler)
    inputs = [classifier.encode(t) for t in texts]
    empty = [i for i, inp in enumerate(inputs) if not inp.ids or not inp.words]
    _check_context(classifier, inputs, len(replacement))
    if len(empty) == len(inputs):
        raise TokenprobeError("every text is empty after tokenization: check --text-column")

    chunks = _chunks(len(inputs), chunk_texts)
    ckpt = None
    done: dict[int, pd.DataFrame] = {}
    if checkpoint is not None:
        settings = {
            "analysis": "flip rates",
            "model": model_settings(lm),
            # the prefix cache changes speed, not predictions
            "classifier": {
                k: v for k, v in classifier.describe().items() if k != "prefix_cache_reused"
            },
            "texts": digest(texts, gold),
            "perturbation": perturbation,
            "filler": filler,
            "buckets": buckets,
            "chunk_texts": chunk_texts,
        }
        ckpt = Checkpoint(Path(checkpoint) / PARTIAL, settings, resume)
        done = ckpt.read(".parquet", pd.read_parquet)
    todo = [k for k in range(len(chunks)) if k not in done]
    disable = progress_disabled(progress)
    with tqdm(
        total=len(inputs),
        initial=sum(len(chunks[k]) for k in done),
        desc="flip rates",
        unit="text",
        disable=disable,
    ) as bar:
        for k in todo:
            done[k] = _run_chunk(
                classifier,
                inputs,
                chunks[k],
                gold,
                perturbation,
                replacement,
                buckets,
                batch_tokens,
            )
            if ckpt is not None:
                ckpt.write(k, ".parquet", lambda p, part=done[k]: part.to_parquet(p, index=False))
            bar.update(len(chunks[k]))
            if _after_chunk is not None:
                _after_chunk(k)
    occurrences = pd.concat([done[k] for k in range(len(chunks))], ignore_index=True)
    originals = occurrences.drop_duplicates("text_id")
    accuracy = None
    if gold is not None:
        per_text = _original_predictions(occurrences, len(inputs))
        scored = [(p, g) for p, g in zip(per_text, gold, strict=True) if p is not None]
        accuracy = float(np.mean([p == g for p, g in scored])) if scored else None
    rates = rates_table(occurrences, labels, group)
    result = FlipResult(
        occurrences=occurrences,
        rates=rates,
        labels=list(labels),
        buckets=buckets,
        meta={
            "analysis": "flip rates",
            "model": lm.describe(),
            "classifier": classifier.describe(),
            "texts": len(inputs),
            "texts_empty_skipped": len(empty),
            "word_occurrences": int(len(occurrences)),
            "accuracy": accuracy,
            "predicted_distribution": originals["original"].value_counts().to_dict(),
            "options": {
                "perturbation": perturbation,
                "filler": filler,
                "buckets": buckets,
                "group": group,
                "batch_tokens": batch_tokens,
            },
            "words": "lowercase runs of word characters (regex \\w+), each mapped to the tokens its characters fall in",
            "versions": versions(),
            "created": now(),
        },
    )
    if ckpt is not None:
        ckpt.finish(result)  # removed now, or by result.save() inside kept_until_saved()
    return result


def _original_predictions(occurrences: pd.DataFrame, n: int) -> list[str | None]:
    first = occurrences.drop_duplicates("text_id").set_index("text_id")["original"]
    return [first.get(i) for i in range(n)]


def _run_chunk(
    classifier: Classifier,
    inputs: list[TextInput],
    chunk: range,
    gold: Sequence[str] | None,
    perturbation: str,
    replacement: list[int],
    buckets: int,
    batch_tokens: int,
) -> pd.DataFrame:
    """Predictions for the chunk's texts and every perturbed copy, in one batched call."""
    ids_list: list[list[int]] = []
    owners: list[tuple[int, int]] = []  # (text, word) ; word -1 = the unperturbed text
    for i in chunk:
        inp = inputs[i]
        if not inp.ids or not inp.words:
            continue
        ids_list.append(inp.ids)
        owners.append((i, -1))
        for w in range(len(inp.words)):
            ids_list.append(perturb(inp, w, perturbation, replacement))
            owners.append((i, w))
    labels = classifier.labels
    preds = classifier.predict(ids_list, batch_tokens) if ids_list else np.empty(0, dtype=np.int64)
    original = {i: int(p) for (i, w), p in zip(owners, preds, strict=True) if w == -1}
    rows = []
    for (i, w), p in zip(owners, preds, strict=True):
        if w == -1:
            continue
        n = len(inputs[i].words)
        rows.append(
            {
                "text_id": i,
                "word": inputs[i].words[w],
                "word_index": w,
                "n_words": n,
                "bucket": bucket_of(w, n, buckets),
                "original": labels[original[i]],
                "gold": gold[i] if gold is not None else None,
                "perturbed": labels[int(p)],
                "flipped": int(p) != original[i],
            }
        )
    columns = [
        "text_id",
        "word",
        "word_index",
        "n_words",
        "bucket",
        "original",
        "gold",
        "perturbed",
        "flipped",
    ]
    return pd.DataFrame(rows, columns=columns)
