"""The batches of past similarity: each text's cosines between its marker's state and the
states around it, with the run-time check that a padded batch equals one text alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import warn
from ...model import LoadedModel
from ...runner import float_tolerance, map_batches, pad_batch, pad_id_of, relative_error


@dataclass
class Texts:
    """The texts as run: markers inserted, token ids, each one's anchor (None: skipped)."""

    items: list[str]
    encoded: list[list[int]]
    anchors: list[int | None]
    pattern: list[int]  # the marker's token ids; the anchor is its last token
    single: bool
    side: str | None = None  # an encoder-decoder's compared stream: "source" or "decoder"
    # an encoder-decoder's (source ids, decoder ids) of each text; `encoded` is `side`'s
    pairs: list[tuple[list[int], list[int]]] | None = None

    @property
    def used(self) -> list[int]:
        return [i for i, a in enumerate(self.anchors) if a is not None]


class Cosines:
    """One batch of texts through the model: each text's cosines (layers, m) and m, the
    number of tokens it has on the compared side within the window."""

    def __init__(
        self,
        lm: LoadedModel,
        texts: Texts,
        window: int,
        direction: str,
        centre: bool,
        centre_skip_first: bool,
    ) -> None:
        self.lm, self.texts, self.window, self.direction = lm, texts, window, direction
        self.centre, self.centre_skip_first = centre, centre_skip_first
        self.adapter = lm.require_adapter()
        self.n_layers = self.adapter.n_blocks + 1
        self.pad = pad_id_of(lm.tokenizer)
        self.batching: str | None = None  # how batches ran, once the first padded one is checked
        self.alone = False  # one text per forward: a padded batch was not exact on this model

    def _states(self, batch: list[int]) -> torch.Tensor:
        """(layers, B, T, D) of these texts, right-padded: block 0's input, each block's
        output."""
        seqs = [self.texts.encoded[i] for i in batch]
        ids, mask = pad_batch(seqs, self.pad, self.lm.device)
        with torch.inference_mode(), self.adapter.record() as hidden:
            self.lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
        return torch.stack(hidden)

    def _size(self, i: int) -> tuple[int, ...]:
        """Text `i`'s lengths: a batch of several sizes is padded."""
        return (len(self.texts.encoded[i]),)

    def _alone(self, batch: list[int]) -> list[torch.Tensor]:
        return [self._states([i])[:, 0, : len(self.texts.encoded[i])] for i in batch]

    def _rows(self, batch: list[int]) -> list[torch.Tensor]:
        """Each text's (layers, n, D) states; the first padded batch of a run is checked:
        a few of its padded texts run alone must give the same states, else every text runs
        alone (a window shorter than the text, as Doge's, is not
        padding-invariant in transformers itself), said once and in meta.json."""
        if self.alone:
            return self._alone(batch)
        lengths = [len(self.texts.encoded[i]) for i in batch]
        states = self._states(batch)
        rows = [states[:, b, :n] for b, n in enumerate(lengths)]
        sizes = [self._size(i) for i in batch]
        if self.batching is None and len(set(sizes)) > 1:
            # up to 4 padded texts of lengths spread over the batch (not only the most padded:
            # Doge's dynamic mask changed a middle one and left the shortest alone)
            order = sorted(range(len(batch)), key=lambda k: sizes[k])[:-1]
            probes = sorted({order[round(q * (len(order) - 1))] for q in (0, 1 / 3, 2 / 3, 1)})
            err = max(relative_error(rows[b], self._alone([batch[b]])[0]) for b in probes)
            if err <= float_tolerance(self.lm.dtype):
                self.batching = "padded batches (checked against one text alone)"
            else:
                self.alone = True
                self.batching = (
                    f"one text at a time: a padded batch differed from one text alone "
                    f"by {err:.1e} (relative error)"
                )
                warn(
                    f"past similarity: {type(self.lm.model).__name__} {self.batching} on this model; "
                    "each text runs alone (the same numbers, slower)"
                )
                return self._alone(batch)
        return rows

    def __call__(self, batch: list[int]) -> list[tuple[torch.Tensor, int]]:
        encoded, window = self.texts.encoded, self.window
        states = self._rows(batch)
        rows = []
        for b, i in enumerate(batch):
            n = len(encoded[i])
            h = states[b].float()
            if self.centre:
                # the first position often carries massive activations (an attention sink, 100x
                # the norm of the rest) that would dominate the mean: leave it out unless asked
                base = h[:, 1:] if (self.centre_skip_first and n > 1) else h
                h = h - base.mean(dim=1, keepdim=True)
            p = self.texts.anchors[i]
            assert p is not None
            others = (
                [p - d for d in range(1, window + 1)]
                if self.direction == "past"
                else [p + d for d in range(1, window + 1)]
            )
            others = [o for o in others if 0 <= o < n]
            cos = (
                F.cosine_similarity(h[:, p : p + 1], h[:, others], dim=-1)
                if others
                else h.new_zeros((self.n_layers, 0))
            )
            rows.append((cos.cpu(), len(others)))
        return rows

    def sums(self, chunk: Sequence[int], batch_tokens: int, bar: Any) -> dict[str, np.ndarray]:
        """One chunk's float64 sum of cosines per (layer, distance), its counts and its texts."""
        chunk = list(chunk)
        part_total = torch.zeros((self.n_layers, self.window), dtype=torch.float64)
        part_count = np.zeros(self.window, dtype=np.int64)
        lengths = [len(self.texts.encoded[i]) for i in chunk]
        for sub, rows in map_batches(lengths, batch_tokens, lambda b: self([chunk[j] for j in b])):
            for cos, m in rows:
                part_total[:, :m] += cos.double()
                part_count[:m] += 1
            bar.update(len(sub))
        texts_done = np.asarray(chunk, dtype=np.int64)
        return {"total": part_total.numpy(), "count": part_count, "texts": texts_done}
