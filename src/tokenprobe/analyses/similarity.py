"""Past similarity: per layer, the cosine between a marker token's hidden state and the hidden
states of the T tokens before (or after) it, for one text or averaged over a data set.

Layer 0 is the embedding output (the first block's input) and layer i the output of block i,
as in the logit lens, read by hooks on the blocks: `output_hidden_states` ends with the
final-normed state instead, which is not a block output, and some families (Mamba) leave out
the embeddings.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..batching import (
    pad_batch,
    pad_id_of,
    progress_disabled,
    run_with_backoff,
    token_budget_batches,
)
from ..checkpoint import Checkpoint, digest, model_settings, npz_writer
from ..errors import TokenprobeError
from ..model import LoadedModel
from ..results import SimilarityResult, now, versions
from ..text import DEFAULT_MARKER, ensure_marker, token_texts

DIRECTIONS = ("past", "future")
PARTIAL = "similarity.partial"  # the checkpoint folder inside --out


def insert_markers(
    lm: LoadedModel, text: str, marker: str, *, every: int | None = None, after: str | None = None
) -> str:
    """`text` with `marker` written after every `every` tokens or after each `after` substring.

    Markers are written with no extra spaces at token boundaries, so the text around them
    tokenizes exactly as before.
    """
    if every is not None:
        if every < 1:
            raise TokenprobeError(f"--insert-every must be at least 1, not {every}")
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
                "--insert-after is empty: give the substring to insert markers after"
            )
        return text.replace(after, after + marker)
    return text


def _find(ids: list[int], pattern: list[int]) -> list[int]:
    """Positions of the last token of each non-overlapping occurrence of `pattern` in `ids`."""
    hits, i, n = [], 0, len(pattern)
    while i + n <= len(ids):
        if ids[i : i + n] == pattern:
            hits.append(i + n - 1)
            i += n
        else:
            i += 1
    return hits


def past_similarity(
    lm: LoadedModel,
    texts: str | Sequence[str],
    *,
    marker: str = DEFAULT_MARKER,
    occurrence: int = 1,
    window: int = 16,
    centre: bool = False,
    centre_skip_first: bool = True,
    direction: str = "past",
    insert_every: int | None = None,
    insert_after: str | None = None,
    add_marker: bool = True,
    batch_tokens: int = 4096,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    chunk_texts: int = 256,
    progress: bool | None = None,
    _after_chunk: Callable[[int], None] | None = None,
) -> SimilarityResult:
    """Cosine similarity of the `occurrence`-th `marker` with each of the `window` tokens before it
    (`direction="future"`: after it), per layer; over several texts, the mean with its count.

    `centre` subtracts each layer's mean hidden state over the text's positions first (raw
    residual streams share a large common direction, which pushes every cosine towards 1);
    the mean leaves out the first position unless `centre_skip_first=False`, because that
    position often holds massive attention-sink activations that would swamp it.
    A marker that is several tokens (with `add_marker=False`) is represented by its last token.
    With `checkpoint`, the sums over each finished chunk of `chunk_texts` texts are written
    there; `resume=True` skips the texts already summed.
    """
    single = isinstance(texts, str)
    items = [texts] if single else list(texts)  # type: ignore[list-item]
    given = list(items)
    if not items:
        raise TokenprobeError("the data set is empty: give at least one text")
    if window < 1:
        raise TokenprobeError(f"--window must be at least 1, not {window}")
    if occurrence < 1:
        raise TokenprobeError(f"--occurrence counts from 1, not {occurrence}")
    if direction not in DIRECTIONS:
        raise TokenprobeError(f"--direction must be past or future, not {direction!r}")
    if insert_every is not None and insert_after is not None:
        raise TokenprobeError("give --insert-every or --insert-after, not both")
    if any(not str(t).strip() for t in items) and single:
        raise TokenprobeError("the text is empty: give some text with --text or --data")

    tok = lm.tokenizer
    if add_marker:
        pattern = [ensure_marker(lm, marker)]
    else:
        pattern = tok.encode(marker, add_special_tokens=False)
        if not pattern:
            raise TokenprobeError(f"the marker {marker!r} gives no tokens")
    items = [insert_markers(lm, t, marker, every=insert_every, after=insert_after) for t in items]
    encoded = [list(tok(t, add_special_tokens=True)["input_ids"]) for t in items]
    limit = lm.context_length
    anchors: list[int | None] = []
    lacking = 0
    for i, ids in enumerate(encoded):
        hits = _find(ids, pattern)
        if limit is not None and len(ids) > limit:
            raise TokenprobeError(
                f"text {i + 1} is {len(ids)} tokens, longer than the model's context of {limit}: shorten it"
            )
        if len(hits) < occurrence:
            if single:
                where = (
                    "insert markers with --insert-every or --insert-after"
                    if not hits
                    else "lower --occurrence"
                )
                raise TokenprobeError(
                    f"the text has {len(hits)} {marker!r} marker(s), fewer than --occurrence {occurrence}: {where}"
                )
            lacking += 1
            anchors.append(None)
        else:
            anchors.append(hits[occurrence - 1])
    used = [i for i, a in enumerate(anchors) if a is not None]
    # a marker with no token on the compared side would give an all-NaN table
    side = "before" if direction == "past" else "after"
    bare = [i for i in used if anchors[i] == (0 if direction == "past" else len(encoded[i]) - 1)]
    if used and len(bare) == len(used):
        where = "the text" if single else f"each of the {len(used)} texts that have it"
        raise TokenprobeError(
            f"marker {occurrence} ({marker!r}) has no tokens {side} it in {where} (--direction "
            f"{direction}): choose another --occurrence, put text {side} the marker, or use --direction "
            f"{'future' if direction == 'past' else 'past'}"
        )
    if not used:
        raise TokenprobeError(
            f"none of the {len(items)} texts has {occurrence} {marker!r} marker(s): "
            "insert them with --insert-every or --insert-after, or lower --occurrence"
        )
    if lacking:
        warnings.warn(
            f"{lacking} of {len(items)} texts have fewer than {occurrence} {marker!r} marker(s) and were skipped",
            UserWarning,
            stacklevel=2,
        )

    adapter = lm.require_adapter()
    n_layers = adapter.n_blocks + 1
    device = lm.device
    total = torch.zeros((n_layers, window), dtype=torch.float64)
    count = np.zeros(window, dtype=np.int64)
    pad = pad_id_of(tok)

    def run(batch: list[int]) -> list[tuple[torch.Tensor, int]]:
        ids, mask = pad_batch([encoded[i] for i in batch], pad, device)
        with torch.inference_mode(), adapter.record() as hidden:
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
        states = torch.stack(hidden)  # (layers, B, T, D): block 0's input, each block's output
        rows = []
        for b, i in enumerate(batch):
            n = len(encoded[i])
            h = states[:, b, :n].float()
            if centre:
                # the first position often carries massive activations (an attention sink, 100x
                # the norm of the rest) that would dominate the mean: leave it out unless asked
                base = h[:, 1:] if (centre_skip_first and n > 1) else h
                h = h - base.mean(dim=1, keepdim=True)
            p = anchors[i]
            assert p is not None
            others = (
                [p - d for d in range(1, window + 1)]
                if direction == "past"
                else [p + d for d in range(1, window + 1)]
            )
            others = [o for o in others if 0 <= o < n]
            cos = (
                F.cosine_similarity(h[:, p : p + 1], h[:, others], dim=-1)
                if others
                else h.new_zeros((n_layers, 0))
            )
            rows.append((cos.cpu(), len(others)))
        return rows

    options = {
        "marker": marker,
        "marker_token_ids": pattern,
        "add_marker": add_marker,
        "occurrence": occurrence,
        "window": window,
        "centre": centre,
        "centre_skip_first": centre_skip_first,
        "direction": direction,
        "insert_every": insert_every,
        "insert_after": insert_after,
        "batch_tokens": batch_tokens,
    }
    ckpt = None
    done: set[int] = set()
    finished: list[int] = []
    if checkpoint is not None:
        # batching changes speed, not the numbers
        settings = {
            "analysis": "past similarity",
            "model": model_settings(lm),
            "texts": digest(given),
            **{k: v for k, v in options.items() if k != "batch_tokens"},
        }
        ckpt = Checkpoint(Path(checkpoint) / PARTIAL, settings, resume)
        for k, part in ckpt.read(".npz").items():
            total += torch.from_numpy(part["total"])
            count += part["count"]
            done.update(int(i) for i in part["texts"])
            finished.append(k)
    todo = [i for i in used if i not in done]
    chunks = [
        todo[lo : lo + max(1, chunk_texts)] for lo in range(0, len(todo), max(1, chunk_texts))
    ]
    n_batches = len(token_budget_batches([len(encoded[i]) for i in todo], batch_tokens))
    disable = progress_disabled(progress, n_batches if not done else None)
    with tqdm(
        total=len(used),
        initial=len(used) - len(todo),
        desc="past similarity",
        unit="text",
        disable=disable,
    ) as bar:
        for k, chunk in enumerate(chunks, start=max(finished, default=-1) + 1):
            part_total = torch.zeros_like(total)
            part_count = np.zeros_like(count)
            for batch in token_budget_batches([len(encoded[i]) for i in chunk], batch_tokens):
                for sub, rows in run_with_backoff([chunk[j] for j in batch], run):
                    for cos, m in rows:
                        part_total[:, :m] += cos.double()
                        part_count[:m] += 1
                    bar.update(len(sub))
            total += part_total
            count += part_count
            if ckpt is not None:
                texts_done = np.asarray(chunk, dtype=np.int64)
                ckpt.write(
                    k,
                    ".npz",
                    npz_writer(total=part_total.numpy(), count=part_count, texts=texts_done),
                )
            if _after_chunk is not None:
                _after_chunk(k)

    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (total.numpy() / count[None, :]).astype(np.float32)
    mean[:, count == 0] = np.nan
    context_tokens: list[str | None] = [None] * window
    if single:
        p = anchors[0]
        assert p is not None
        ids = encoded[0]
        step = -1 if direction == "past" else 1
        positions = [p + step * d for d in range(1, window + 1)]
        texts_at = token_texts(tok, [ids[q] for q in positions if 0 <= q < len(ids)])
        context_tokens = [*texts_at, *([None] * (window - len(texts_at)))]
    result = SimilarityResult(
        layer_labels=[str(i) for i in range(n_layers)],
        cosine=mean,
        count=count,
        tokens=context_tokens,
        marker=marker,
        occurrence=occurrence,
        direction=direction,
        centre=centre,
        meta={
            "analysis": "past similarity",
            "model": lm.describe(),
            "texts": len(items),
            "texts_used": len(used),
            "texts_skipped": lacking,
            "text": items[0] if single else None,
            "token_ids": encoded[0] if single else None,
            "anchor_position": anchors[0] if single else None,
            "options": options,
            "layers": "layer 0 = embeddings, layer i = output of block i (the last one before the final norm)",
            "versions": versions(),
            "created": now(),
        },
    )
    if ckpt is not None:
        ckpt.finish(result)  # removed now, or by result.save() inside kept_until_saved()
    return result
