"""Attribution of an encoder-decoder: each target token's score is attributed to every source
token and to every earlier decoder input (start and forced tokens included), as inseq does.

The features live on one flat axis: source token i is position i, decoder input q (the start
token, the forced language code, then the target's tokens but its last) is position n + q. A
perturbed input is written as the source's ids, then for each decoder input a -1 marker and
the ids standing in for it (none when removed), so that each target token is read where its
own prefix ends: the decoder is causal, so the logits at the last input coming from positions
before target token j are log p(t_j | source', prefix'), whatever was removed earlier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from ...errors import TokenprobeError
from ...model.seq2seq_input import pad_batch
from ...text import prepare_seq2seq, token_texts
from .features import Feature, _char_offsets
from .problem import Problem

if TYPE_CHECKING:
    from transformers import GenerationMixin

    from ...model import LoadedModel

MARK = -1  # opens a decoder input's ids in an encoded perturbed input
SIDES = ("source", "target")


@dataclass
class Seq2SeqAttributionInput:
    """A source and target made ready for attribution (flat positions: see the module)."""

    source: str
    source_text: str  # the source ids decoded (the tokenizer's special tokens included)
    source_ids: list[int]
    decoder_ids: list[int]  # start and forced tokens, then every target token
    decoder_text: str
    forced: int
    features: list[Feature]
    sides: list[str]  # each feature's side: "source" or "target"
    target_text: str
    rows: list[list[int]]
    row_texts: list[str]

    @property
    def target_ids(self) -> list[int]:
        return self.decoder_ids[self.forced :]

    @property
    def flat_ids(self) -> list[int]:
        """Source ids, then the decoder inputs (every decoder id but the last target's)."""
        return self.source_ids + self.decoder_ids[:-1]


def prepare_seq2seq_attribution(
    lm: LoadedModel,
    source: str,
    *,
    target: str | None,
    generate: int | None,
    target_lang: str | None,
    features: Sequence[str] | None,
    target_spans: Sequence[str] | None,
    generated: list[int] | None = None,
) -> Seq2SeqAttributionInput:
    """Tokenize the source, build the decoder ids (the given target, else `generate` tokens of
    the model's greedy output, or its output `generated` already: `generate_together`'s),
    find the features and group the target tokens into rows."""
    inp = prepare_seq2seq(lm, source, target=target, target_lang=target_lang)
    decoder = list(inp.decoder_ids)
    if target is None and generated is not None:
        decoder += new_tokens(lm, generated, decoder)
    elif target is None:
        assert generate is not None
        decoder += _generate(lm, inp.input_ids, decoder, generate)
    tok, n, f = lm.tokenizer, len(inp.input_ids), inp.forced
    source_text, source_offsets = _char_offsets(tok, inp.input_ids)
    decoder_text, decoder_offsets = _char_offsets(tok, decoder)
    prefix_end = decoder_offsets[f - 1][1]
    target_text = decoder_text[prefix_end:]
    texts = [*inp.tokens, *token_texts(tok, decoder)]
    if features:
        feats, sides = _span_features(
            features, (source_text, source_offsets), (decoder_text, decoder_offsets, f), n
        )
    else:
        inputs = len(decoder) - 1
        offsets = source_offsets + decoder_offsets[:inputs]
        feats = [Feature(texts[i], s, e, [i]) for i, (s, e) in enumerate(offsets)]
        sides = ["source"] * n + ["target"] * inputs
    rows, row_texts = _rows(tok, decoder, decoder_text, decoder_offsets, f, target_spans)
    return Seq2SeqAttributionInput(
        source,
        source_text,
        list(inp.input_ids),
        decoder,
        decoder_text,
        f,
        feats,
        sides,
        target_text,
        rows,
        row_texts,
    )


def _rows(
    tok: Any,
    decoder: list[int],
    text: str,
    offsets: list[tuple[int, int]],
    forced: int,
    target_spans: Sequence[str] | None,
) -> tuple[list[list[int]], list[str]]:
    """Target token indices of each row (one per target token, or one per target span)."""
    m = len(decoder) - forced
    if not target_spans:
        return [[j] for j in range(m)], token_texts(tok, decoder[forced:])
    rows = []
    for span in target_spans:
        positions = _find(text, offsets, span, offsets[forced - 1][1])
        if not positions:
            raise TokenprobeError(f"`target_spans` {span!r} is not in the target: give a substring")
        rows.append([q - forced for q in positions])
    return rows, list(target_spans)


def _find(text: str, offsets: list[tuple[int, int]], span: str, after: int) -> list[int]:
    """Token positions of `span`'s first occurrence in `text` at or after `after` ([] if none)."""
    at = text.find(span, after) if span else -1
    if at < 0:
        return []
    end = at + len(span)
    return [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > at]


def _span_features(
    spans: Sequence[str],
    source: tuple[str, list[tuple[int, int]]],
    decoder: tuple[str, list[tuple[int, int]], int],
    n: int,
) -> tuple[list[Feature], list[str]]:
    """One feature per span: found in the source, else in the target (its decoder inputs)."""
    feats: list[Feature] = []
    sides: list[str] = []
    text, offsets, forced = decoder
    inputs = len(offsets) - 1
    for span in spans:
        found = _find(*source, span, 0)
        side, flat = "source", found
        if not found:
            found = [q for q in _find(text, offsets, span, offsets[forced - 1][1]) if q < inputs]
            side, flat = "target", [n + q for q in found]
        if not found:
            raise TokenprobeError(
                f"`features` {span!r} is in neither the source nor the target's decoder inputs "
                "(its last token is never an input): give an exact substring"
            )
        ranges = source[1] if side == "source" else offsets
        for other in feats:
            if set(flat) & set(other.positions):
                raise TokenprobeError(
                    f"spans {other.text!r} and {span!r} overlap (share tokens): make them disjoint"
                )
        feats.append(Feature(span, ranges[found[0]][0], ranges[found[-1]][1], flat))
        sides.append(side)
    return feats, sides


def _generate(lm: LoadedModel, source: list[int], prefix: list[int], n: int) -> list[int]:
    """The model's greedy output of `n` target tokens after its start and forced tokens (as
    its `generate` writes them), without trailing end tokens."""
    return new_tokens(lm, generate_together(lm, [source], prefix, n)[0], prefix)


def generate_together(
    lm: LoadedModel, sources: list[list[int]], prefix: list[int], n: int
) -> list[list[int]]:
    """Each source's greedy output (start and forced tokens first), the sources right-padded
    into one `generate` with their attention mask, each output cut after its first end token
    (where a lone source's generation stops; a batch goes on writing padding)."""
    pad = getattr(lm.model.config, "pad_token_id", None)
    pad = int(pad) if isinstance(pad, int) else int(lm.tokenizer.pad_token_id or 0)
    batch = pad_batch(sources, [prefix] * len(sources), pad, lm.device)
    forced = {"forced_bos_token_id": prefix[1]} if len(prefix) > 1 else {}
    with torch.no_grad():
        out = cast("GenerationMixin", lm.model).generate(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=n + len(prefix) - 1,
            do_sample=False,
            num_beams=1,
            decoder_start_token_id=prefix[0],
            **forced,
        )
    ends = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    ends = set(ends if isinstance(ends, list) else [] if ends is None else [ends])
    made = []
    for row in out.tolist():
        cut = next((i for i in range(len(prefix), len(row)) if row[i] in ends), len(row) - 1)
        made.append([int(t) for t in row[: cut + 1]])
    return made


def new_tokens(lm: LoadedModel, made: list[int], prefix: list[int]) -> list[int]:
    """The target tokens of one generated output (`generate_together`'s): after the start and
    forced tokens, without trailing end tokens; refused where there are none."""
    if made[: len(prefix)] != prefix:
        raise TokenprobeError(
            f"{lm.name}'s generate began with {made[: len(prefix)]}, not its start and forced "
            f"tokens {prefix}: give a `target` instead"
        )
    new = made[len(prefix) :]
    tok = lm.tokenizer
    stops = {tok.eos_token_id, tok.pad_token_id} - {None}
    while new and new[-1] in stops:
        new.pop()
    if not new:
        raise TokenprobeError(
            "the model generated no tokens (it stopped at once): give a `target` instead"
        )
    return new


# ----------------------------------------------------------------------------- scoring


@dataclass
class Seq2SeqProblem(Problem):
    """A `Problem` whose prompt is the flat source + decoder-input axis (see the module):
    perturbed inputs are encoded with markers, and scored on right-padded batches of both
    sides. "remove" deletes a decoder input (the start token too); the inputs after it move
    one position left."""

    n_source: int = 0
    forced: int = 1
    early_note: str = "no gradient batch ran"  # how the gradient methods ran the first half

    @classmethod
    def of_input(
        cls, lm: LoadedModel, inp: Seq2SeqAttributionInput, **options: Any
    ) -> Seq2SeqProblem:
        """The problem of a prepared seq2seq input; `options` as `Problem`'s after `row_texts`."""
        return cls(
            lm,
            inp.flat_ids,
            inp.target_ids,
            inp.features,
            inp.rows,
            inp.row_texts,
            **options,
            n_source=len(inp.source_ids),
            forced=inp.forced,
        )

    def perturbed(self, absent: Sequence[int], replacement: list[int] | None) -> list[int]:
        """The encoded input with the features in `absent` deleted or replaced."""
        return self.positions_out(
            [(p, k) for f in absent for k, p in enumerate(self.features[f].positions)],
            replacement,
        )

    def positions_out(self, out: list[tuple[int, int]], replacement: list[int] | None) -> list[int]:
        """The encoded input with flat positions taken out; each given with its index within
        what is taken out together (a multi-token `replacement` stands in once, at index 0)."""
        drop: dict[int, list[int]] = {}
        for p, k in out:
            if replacement is None or (len(replacement) > 1 and k > 0):
                drop[p] = []
            else:
                drop[p] = replacement
        encoded: list[int] = []
        for i, t in enumerate(self.prompt_ids):
            if i >= self.n_source:
                encoded.append(MARK)
            encoded.extend(drop.get(i, [t]))
        return encoded

    def sequence(self, prompt: Sequence[int]) -> list[int]:
        return list(prompt)

    @property
    def earlier_positions(self) -> str:
        """How perturbed inputs ran, for meta.json: whole, whatever `reuse_prefix` says."""
        off = " (the prefix cache is also turned off)" if not self.reuse_prefix else ""
        return (
            "recomputed: every decoder position reads the whole source, so an encoder-decoder's "
            f"perturbed inputs each run whole{off}"
        )

    @property
    def model_pad(self) -> int:
        """The id the model pads with (FSMT finds padding by it)."""
        pad = getattr(self.lm.model.config, "pad_token_id", None)
        return int(pad) if isinstance(pad, int) else self.pad_id

    def decode(self, encoded: list[int]) -> tuple[list[int], list[int], list[int]]:
        """Source ids, decoder ids, and where each target token's prefix ends in the decoder
        (-1 where every input before it was removed). An empty source has the pad token
        stand in for it."""
        at = encoded.index(MARK)
        source = encoded[:at] or [self.pad_id]
        groups: list[list[int]] = [[]]
        for t in encoded[at + 1 :]:
            if t == MARK:
                groups.append([])
            else:
                groups[-1].append(t)
        ends = np.cumsum([len(g) for g in groups])
        decoder = [t for g in groups for t in g]
        reads = [int(ends[self.forced + j - 1]) - 1 for j in range(len(self.target_ids))]
        return source, decoder, reads

    def _runs(self, encoded: list[list[int]]) -> tuple[list[tuple[list[int], list[int]]], list]:
        """The (source, decoder) pairs a batch of encoded inputs runs as, and where each input's
        target tokens are read: (pair, position). A target token whose prefix was removed
        whole is read from the pad token alone (as the causal path's empty prompt)."""
        runs: list[tuple[list[int], list[int]]] = []
        where = []
        for enc in encoded:
            source, decoder, reads = self.decode(enc)
            if decoder:
                runs.append((source, decoder))
            whole = len(runs) - 1
            if min(reads) < 0:
                runs.append((source, [self.pad_id]))
            where.append([(whole, r) if r >= 0 else (len(runs) - 1, 0) for r in reads])
        return runs, where

    def _score(self, seqs: list[list[int]], batch: list[int]) -> torch.Tensor:
        """(len(batch), rows) float64 scores of a batch of encoded inputs (right padded)."""
        lm = self.lm
        runs, where = self._runs([seqs[i] for i in batch])
        inputs = pad_batch([r[0] for r in runs], [r[1] for r in runs], self.model_pad, lm.device)
        with torch.inference_mode():
            logits = lm.model(**inputs, use_cache=False).logits
            at = torch.tensor(where, device=logits.device)  # (B, m, 2)
            picked = logits[at[..., 0], at[..., 1]]
            scores = self.row_scores(self.token_logprobs(picked)).double().cpu()
        self.forward_passes += 1
        return scores


def seq2seq_occlusion(pb: Seq2SeqProblem, *, window: int, stride: int, **_: Any) -> Any:
    """Occlusion on each side on its own: f(x) - f(x with a window of one side's tokens
    ablated), spread evenly over the window and summed over each feature's tokens."""
    total = len(pb.prompt_ids)
    repl = pb.replacement()
    spans: list[tuple[int, int]] = []
    for lo, hi in ((0, pb.n_source), (pb.n_source, total)):
        w = min(window, hi - lo)
        starts = list(range(lo, hi - w + 1, stride))
        if starts[-1] != hi - w:
            starts.append(hi - w)
        spans += [(s, s + w) for s in starts]
    prompts = [pb.positions_out([(p, p - s) for p in range(s, e)], repl) for s, e in spans]
    scores = pb.score_prompts([pb.perturbed([], None), *prompts])
    diffs = (scores[0:1] - scores[1:]).numpy()
    per_token = np.zeros((len(pb.rows), total))
    covered = np.zeros(total)
    for (s, e), d in zip(spans, diffs, strict=True):
        per_token[:, s:e] += d[:, None]
        covered[s:e] += 1
    per_token /= np.maximum(covered, 1)
    attr = np.stack([per_token[:, f.positions].sum(axis=1) for f in pb.features], axis=1)
    return attr, None, {"windows": len(spans), "window": window, "stride": stride}
