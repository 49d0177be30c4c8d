"""Markers in texts: writing them in (every N tokens, or after a substring) and finding the
k-th one among a text's tokens."""

from __future__ import annotations

from ...errors import TokenprobeError
from ...model import LoadedModel


def insert_markers(
    lm: LoadedModel, text: str, marker: str, *, every: int | None = None, after: str | None = None
) -> str:
    """`text` with `marker` written after every `every` tokens or after each `after` substring.

    Markers are written with no extra spaces at token boundaries, so the text around them
    tokenizes exactly as before.
    """
    if every is not None:
        if every < 1:
            raise TokenprobeError(f"`insert_every` must be at least 1, not {every}")
        enc = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ends = [end for i, (_, end) in enumerate(enc["offset_mapping"]) if (i + 1) % every == 0]
        pieces, last = [], 0
        for end in ends:
            pieces += [text[last:end], marker]
            last = end
        return "".join(pieces) + text[last:]
    if after is not None:
        if not after:
            raise TokenprobeError(
                "`insert_after` is empty: give the substring to insert markers after"
            )
        return text.replace(after, after + marker)
    return text


def find_marker(ids: list[int], pattern: list[int]) -> list[int]:
    """Positions of the last token of each non-overlapping occurrence of `pattern` in `ids`."""
    hits, i, n = [], 0, len(pattern)
    while i + n <= len(ids):
        if ids[i : i + n] == pattern:
            hits.append(i + n - 1)
            i += n
        else:
            i += 1
    return hits


def anchors_of(
    encoded: list[list[int]],
    pattern: list[int],
    occurrence: int,
    single: bool,
    marker: str,
    where: str = "the text",
) -> list[int | None]:
    """Each text's `occurrence`-th marker (its last token; None: the text has fewer, which
    one text alone may not: one line saying what to do)."""
    anchors: list[int | None] = []
    for ids in encoded:
        hits = find_marker(ids, pattern)
        if len(hits) >= occurrence:
            anchors.append(hits[occurrence - 1])
            continue
        if single:
            fix = (
                "insert markers with `insert_every` or `insert_after`"
                if not hits
                else "lower `occurrence`"
            )
            raise TokenprobeError(
                f"{where} has {len(hits)} {marker!r} marker(s), fewer than `occurrence` "
                f"{occurrence}: {fix}"
            )
        anchors.append(None)
    return anchors
