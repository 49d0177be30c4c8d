"""Past similarity of an encoder-decoder model: each text is a source the encoder reads, and
the decoder reads its start token, the token forced after it (`target_lang`) and
`decoder_text`. The marker is compared within one stream: the encoder's states of the source
(`side` "source") or the decoder's states of its input (`side` "decoder"); by default the side
the marker is in. Layer 0 is that stack's first block input, layer i its block i output."""

from __future__ import annotations

from typing import Any

import torch

from ...errors import TokenprobeError
from ...model import LoadedModel
from ...model.seq2seq_input import pad_batch
from ...runner import pad_id_of
from ...text import ensure_marker, prepare_seq2seq
from .cosines import Cosines, Texts
from .markers import anchors_of, find_marker, insert_markers
from .options import SimilarityOptions

_SEQ2SEQ_ONLY = ("target_lang", "decoder_text")


def layers_text(side: str) -> str:
    """What meta.json says a row is, on an encoder-decoder's `side`."""
    stack = "encoder" if side == "source" else "decoder"
    return (
        f"{stack} layers: layer 0 = the {stack}'s embeddings (block 0 input), layer i = "
        f"{stack} block i output (the last one before its final norm); positions: the "
        f"{'source' if side == 'source' else 'decoder input (start token, forced token, decoder text)'}"
    )


def check_options(lm: LoadedModel, o: SimilarityOptions, executor: Any) -> None:
    """What the model's kind refuses, in one line: Ray workers for an encoder-decoder; `side`,
    `target_lang` and `decoder_text` for a causal LM."""
    if lm.is_seq2seq:
        if executor is not None:
            raise TokenprobeError(
                f"{lm.name} is an encoder-decoder model: its past similarity runs here only, not "
                "on Ray workers: leave out `executor`"
            )
        return
    given = [n for n in _SEQ2SEQ_ONLY if getattr(o, n) is not None]
    given += ["side"] if o.side != "auto" else []
    if given:
        raise TokenprobeError(
            f"`{given[0]}` is for encoder-decoder models; {lm.name} is a causal LM: leave it out "
            "(its one stream is compared)"
        )


def _patterns(lm: LoadedModel, o: SimilarityOptions) -> tuple[list[int], list[int]]:
    """The marker's ids in the source and in the decoder's input (the tokenizer's target
    side); one added token on both with `add_marker`."""
    if o.add_marker:
        one = [ensure_marker(lm, o.marker)]
        return one, one
    source = lm.tokenizer.encode(o.marker, add_special_tokens=False)
    target = lm.tokenizer(text_target=o.marker, add_special_tokens=False)["input_ids"]
    if not source or not target:
        raise TokenprobeError(f"the marker {o.marker!r} gives no tokens")
    return [int(i) for i in source], [int(i) for i in target]


def _side(o: SimilarityOptions, in_source: bool, in_decoder: bool) -> str:
    """`side`, or where the marker is (auto): one line where it is in both or neither."""
    if o.side != "auto":
        return o.side
    if in_source and in_decoder:
        raise TokenprobeError(
            f"the marker {o.marker!r} is in the source and in `decoder_text`: give `side` source "
            "or decoder"
        )
    return "decoder" if in_decoder else "source"


def encode_pairs(lm: LoadedModel, items: list[str], single: bool, o: SimilarityOptions) -> Texts:
    """Markers inserted (into the source, or into `decoder_text` with `side` decoder), each
    text's source and decoder ids, and the `occurrence`-th marker of the compared side."""
    source_pattern, decoder_pattern = _patterns(lm, o)
    decoder_text = o.decoder_text

    def insert(text: str) -> str:
        return insert_markers(lm, text, o.marker, every=o.insert_every, after=o.insert_after)

    if o.side == "decoder":
        if decoder_text is None:
            raise TokenprobeError(
                "`side` decoder compares the decoder's states: give `decoder_text` (with the "
                "marker in it, or insert it with `insert_every` or `insert_after`)"
            )
        decoder_text = insert(decoder_text)
    else:
        items = [insert(t) for t in items]
    inputs = [prepare_seq2seq(lm, t, target=decoder_text, target_lang=o.target_lang) for t in items]
    in_source = any(find_marker(x.input_ids, source_pattern) for x in inputs)
    in_decoder = bool(find_marker(inputs[0].decoder_ids, decoder_pattern))
    side = _side(o, in_source, in_decoder)
    if side == "source":
        encoded, pattern, where = [x.input_ids for x in inputs], source_pattern, "the text"
    else:
        encoded = [x.decoder_ids for x in inputs]
        pattern, where = decoder_pattern, "the decoder input (`decoder_text`)"
    anchors = anchors_of(encoded, pattern, o.occurrence, single, o.marker, where)
    pairs = [(x.input_ids, x.decoder_ids) for x in inputs]
    return Texts(items, encoded, anchors, pattern, single, side, pairs)


class Seq2SeqCosines(Cosines):
    """The cosines within one stream of an encoder-decoder: the encoder's (side "source") or
    the decoder's (side "decoder"), each batch one forward pass of the whole model."""

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
        self.pair = lm.require_seq2seq()  # after the marker was added: it finds the head again
        source = texts.side == "source"
        blocks = self.pair.n_encoder_blocks if source else self.pair.n_blocks
        self.n_layers = blocks + 1
        pad = getattr(lm.model.config, "pad_token_id", None)
        self.pad = pad if isinstance(pad, int) else pad_id_of(lm.tokenizer)
        self.batching = None
        self.alone = False

    def _size(self, i: int) -> tuple[int, ...]:
        """Text `i`'s source and decoder lengths: either padded runs the batch's check."""
        assert self.texts.pairs is not None
        source, decoder = self.texts.pairs[i]
        return (len(source) + len(decoder), len(source), len(decoder))

    def _states(self, batch: list[int]) -> torch.Tensor:
        """(layers, B, T, D) of the compared stack: the source's positions (encoder) or the
        decoder input's, right-padded."""
        assert self.texts.pairs is not None
        pairs = [self.texts.pairs[i] for i in batch]
        given = pad_batch([p[0] for p in pairs], [p[1] for p in pairs], self.pad, self.lm.device)
        with torch.inference_mode(), self.pair.record() as streams:
            self.lm.model(**given, use_cache=False)
        stack = streams.encoder if self.texts.side == "source" else streams.decoder
        if len(stack) != self.n_layers:
            raise TokenprobeError(
                f"{type(self.lm.model).__name__} ran its blocks {len(stack) - 1} times for "
                f"{self.n_layers - 1} blocks in one forward pass; cannot tell which state is "
                "which layer's"
            )
        return torch.stack(stack)
