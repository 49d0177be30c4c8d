"""How a resumed data-set run lays out its chunks: the texts each finished part summed first,
then the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _chunks(used: list[int], done: dict[int, list[int]], chunk_texts: int) -> list[list[int]]:
    """Chunk k of a resumed run holds the texts its part holds (whatever chunk size that run
    used); the texts no part holds follow in chunks of `chunk_texts`."""
    first_new = max(done, default=-1) + 1
    chunks = [done.get(k, []) for k in range(first_new)]
    finished = {i for texts in done.values() for i in texts}
    todo = [i for i in used if i not in finished]
    size = max(1, chunk_texts)
    return chunks + [todo[lo : lo + size] for lo in range(0, len(todo), size)]


def _texts_of_part(path: Path) -> list[int]:
    """The text indices a checkpoint part summed (all a resumed run needs to lay out chunks)."""
    with np.load(path) as part:
        return [int(i) for i in part["texts"]]
