"""Past similarity over a data set on Ray workers: each worker loads the model (and adds the
marker token, as the driver did), then sums the cosines of the chunks it is given."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...executors import worker_load_args
from ...model import LoadedModel
from ...runner import Remote
from ...text import ensure_marker

if TYPE_CHECKING:
    from .options import SimilarityOptions


class _NoBar:
    """A worker has no bar: the driver counts finished chunks."""

    def update(self, n: int) -> None:
        pass


def _worker_state(load_args: dict[str, Any], marker: str | None) -> LoadedModel:
    """The worker's model, with the marker added where the driver added it."""
    from ...model import load

    lm = load(**load_args)
    if marker is not None:
        ensure_marker(lm, marker)
    return lm


def _chunk_on_worker(lm: LoadedModel, payload: tuple) -> dict:
    """One chunk's sums against the worker's model."""
    from .cosines import Cosines, Texts

    chunk, encoded, anchors, (window, direction, centre, skip_first, batch_tokens) = payload
    texts = Texts(items=[], encoded=encoded, anchors=anchors, pattern=[], single=False)
    cosines = Cosines(lm, texts, window, direction, centre, skip_first)
    return cosines.sums(chunk, batch_tokens, _NoBar())


def remote_sums(lm: LoadedModel, texts: Any, marker: str | None, o: SimilarityOptions) -> Remote:
    """How a chunk of texts is summed on a worker (`marker`: the one the driver added, if any)."""
    load_args = worker_load_args(lm)
    settings = (o.window, o.direction, o.centre, o.centre_skip_first, o.batch_tokens)

    def payload(chunk: Sequence[int]) -> tuple:
        encoded = {i: texts.encoded[i] for i in chunk}
        anchors = {i: texts.anchors[i] for i in chunk}
        return list(chunk), encoded, anchors, settings

    return Remote(functools.partial(_worker_state, load_args, marker), _chunk_on_worker, payload)
