"""Benchmark past similarity against a bare forward pass with hidden states on the same batch.

    python bench/similarity.py [--model smollm2] [--texts 32] [--repeats 3]

The floor is one batched forward pass with `output_hidden_states=True` over the same texts
(goal: tokenprobe within 1.2x of it). Prints seconds, the ratio and peak memory.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from _common import add_args, configure, record, timed

import tokenprobe
from tokenprobe.runner import pad_batch, pad_id_of

TOOLS = ["hammer", "wrench", "level", "pliers", "saw", "drill", "chisel", "file", "clamp", "vice"]
FRUITS = ["orange", "peach", "banana", "plum", "apple", "pear", "cherry", "lime", "grape", "mango"]


def texts_of(n: int) -> list[str]:
    """n list-closing texts with two markers each, of varied length."""
    out = []
    for i in range(n):
        k = 3 + i % 6
        tools = ", ".join(TOOLS[(i + j) % 10] for j in range(k))
        fruits = ", ".join(FRUITS[(i * 3 + j) % 10] for j in range(k))
        out.append(f"Tools: {tools} _PAUSE_ Fruits: {fruits} _PAUSE_")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    add_args(parser)
    args = configure(parser.parse_args())
    if args.smoke:
        args.texts, args.repeats = 2, 1

    lm = tokenprobe.load(args.model, device=args.device, dtype=args.dtype)
    texts = texts_of(args.texts)
    tokenprobe.text.ensure_marker(lm, "_PAUSE_")
    encoded = [lm.tokenizer(t)["input_ids"] for t in texts]
    ids, mask = pad_batch(encoded, pad_id_of(lm.tokenizer), lm.device)
    n_tokens = sum(len(e) for e in encoded)
    print(
        f"model {lm.name} on {lm.device}, {lm.dtype}; torch threads {torch.get_num_threads()}; "
        f"{len(texts)} texts, {n_tokens} tokens (padded to {ids.numel()})"
    )

    def floor() -> object:
        with torch.inference_mode():
            return lm.model(
                input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False
            )

    def ours(centre: bool) -> object:
        return tokenprobe.past_similarity(
            lm, texts, occurrence=2, window=16, centre=centre, progress=False
        )

    results = {
        "forward + hidden states (floor)": timed(floor, args.repeats, lm.device),
        "tokenprobe similarity": timed(lambda: ours(False), args.repeats, lm.device),
        "tokenprobe similarity --centre": timed(lambda: ours(True), args.repeats, lm.device),
    }
    base = results["forward + hidden states (floor)"][0]
    print(f"{'method':<34}{'seconds':>9}{'x floor':>9}{'peak MB':>10}")
    for name, (sec, peak) in results.items():
        print(f"{name:<34}{sec:>9.3f}{sec / base:>9.2f}{peak:>10.0f}")
    for name, centre in (
        ("tokenprobe similarity", ""),
        ("tokenprobe similarity --centre", ", centred"),
    ):
        record(
            f"past similarity, {len(texts)} texts{centre}",
            tokenprobe=results[name],
            floor=results["forward + hidden states (floor)"],
            floor_name="one batched forward with output_hidden_states",
            lm=lm,
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
