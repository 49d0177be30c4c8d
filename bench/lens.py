"""Benchmark the logit lens against the minimal by-hand version and against peers, in one run.

    python bench/lens.py [--model smollm2] [--prompts 8] [--tokens 64] [--repeats 3]
                         [--threads N] [--json FILE] [--smoke]

Prints, for the same prompts: a bare batched forward pass (the model alone); the matrix
products alone (final norm + unembedding of every inner row, in the chunks tokenprobe decodes,
from hidden states computed beforehand: the floor of the lens's own work); the by-hand lens
(one forward with output_hidden_states, then final norm + unembedding + entropy/top-k of every
layer in one batched call); tokenprobe's lens; and nnsight / TransformerLens when they are
importable (bench-only extras: `make bench-peers`). Each line gives seconds, the ratio to the
matrix products, to the by-hand lens and to the bare forward, and peak memory (RSS growth on
CPU, allocator peak on CUDA). Records one row (floor: the matrix products) in the JSON file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch
from _common import add_args, configure, record, timed

import tokenprobe
from tokenprobe.analyses.lens.compute import DEFAULT_MEMORY_MB
from tokenprobe.runner import pad_batch

BASE_TEXT = (
    "The history of the city begins with a small settlement on the river, where traders met to exchange "
    "grain, salt and cloth. Over the centuries the town grew into a busy port with markets, churches and "
    "a university, and its people became known for their skill in building ships and bridges across the "
    "wide water that divides the old quarter from the new."
)


def prompts_of(tokenizer, n: int, tokens: int) -> list[list[int]]:
    """n different prompts of exactly `tokens` tokens each (shifted windows of one text)."""
    ids = tokenizer.encode(BASE_TEXT * 4, add_special_tokens=False)
    return [ids[i * 3 : i * 3 + tokens] for i in range(n)]


def bare_forward(lm, batch: list[list[int]]) -> Callable[[], object]:
    ids, mask = pad_batch(batch, 0, lm.device)

    def run() -> object:
        with torch.inference_mode():
            return lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    return run


def matmuls(lm, batch: list[list[int]], memory_mb: float | None = None) -> Callable[[], object]:
    """The floor: final norm + unembedding (the adapter's head, as the lens decodes) of every
    inner (layer, position) row, in the lens's chunks; the hidden states are made beforehand.
    The last row, the model's own logits, comes with the forward pass and is not counted."""
    ids, mask = pad_batch(batch, 0, lm.device)
    adapter = lm.require_adapter()
    with torch.inference_mode(), adapter.record() as hidden:
        lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
    valid = mask.bool()
    rows = torch.cat([h[valid] for h in hidden[: adapter.n_blocks]])
    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    budget = memory_mb or DEFAULT_MEMORY_MB["cuda" if lm.device.type == "cuda" else "cpu"]
    chunk = max(1, int(budget * 2**20) // (vocab * 4 * 4))  # as tokenprobe's lens sizes them

    def run() -> object:
        with torch.inference_mode():
            for i in range(0, rows.shape[0], chunk):
                last = adapter.logits(rows[i : i + chunk])
        return last

    return run


def by_hand(lm, batch: list[list[int]], k: int = 5) -> Callable[[], object]:
    """The floor: one forward with hidden states, one batched unembedding of all layers."""
    ids, mask = pad_batch(batch, 0, lm.device)
    norm, head = lm.model.model.norm, lm.model.lm_head

    def run() -> object:
        with torch.inference_mode():
            out = lm.model(
                input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False
            )
            h = torch.stack(out.hidden_states[:-1])  # (L, B, T, H)
            logits = torch.cat([head(norm(h)), out.logits[None]]).float()
            logp = torch.log_softmax(logits, dim=-1)
            entropy = -(logp.exp() * logp).sum(-1)
            top = logp.topk(k, dim=-1)
            return entropy, top

    return run


def ours(
    lm, batch: list[list[int]], k: int = 5, memory_mb: float | None = None
) -> Callable[[], object]:
    inputs = [
        tokenprobe.PreparedInput(prompt="", text="", input_ids=list(p), tokens=[""] * len(p))
        for p in batch
    ]
    options = {} if memory_mb is None else {"memory_mb": memory_mb}
    return lambda: tokenprobe.logit_lens(lm, inputs, top_k=k, progress=False, **options)


def nnsight_lens(lm, batch: list[list[int]], k: int = 5) -> Callable[[], object] | None:
    try:
        from nnsight import LanguageModel
    except ImportError:
        return None
    wrapped = LanguageModel(lm.model, tokenizer=lm.tokenizer)
    ids, mask = pad_batch(batch, 0, lm.device)
    layers = wrapped.model.layers

    def run() -> object:
        saved = []
        with torch.inference_mode(), wrapped.trace({"input_ids": ids, "attention_mask": mask}):
            for layer in layers:
                out = layer.output
                hidden = out[0] if isinstance(out, tuple) else out
                saved.append(wrapped.lm_head(wrapped.model.norm(hidden)).save())
        logits = torch.stack([s.value if hasattr(s, "value") else s for s in saved]).float()
        logp = torch.log_softmax(logits, dim=-1)
        return -(logp.exp() * logp).sum(-1), logp.topk(k, dim=-1)

    return run


def transformer_lens(lm, batch: list[list[int]], k: int = 5) -> Callable[[], object] | None:
    """TransformerLens 4 (TransformerBridge over the same HF model): cache resid streams, then
    ln_final + unembed of the stack in one call, as its logit-lens tutorials do."""
    try:
        import transformer_lens.model_bridge.sources.transformers  # noqa: F401 - attaches boot_transformers
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    bridge = TransformerBridge.boot_transformers(
        lm.folder, hf_model=lm.model, tokenizer=lm.tokenizer, device=str(lm.device)
    )
    ids, _ = pad_batch(batch, 0, lm.device)  # equal lengths: no padding
    n = lm.n_layers
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n - 1)]

    def run() -> object:
        with torch.inference_mode():
            out, cache = bridge.run_with_cache(ids, names_filter=lambda name: name in names)
            resid = torch.stack([cache[name] for name in names])
            logits = torch.cat([bridge.unembed(bridge.ln_final(resid)), out[None]]).float()
            logp = torch.log_softmax(logits, dim=-1)
            return -(logp.exp() * logp).sum(-1), logp.topk(k, dim=-1)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--memory-mb", type=float, default=None, help="tokenprobe's --memory-mb")
    add_args(parser)
    args = configure(parser.parse_args())
    if args.smoke:
        args.prompts, args.tokens, args.repeats = 2, 8, 1

    lm = tokenprobe.load(args.model, device=args.device, dtype=args.dtype)
    batch = prompts_of(lm.tokenizer, args.prompts, args.tokens)
    print(
        f"model {lm.name} ({lm.n_layers} blocks) on {lm.device}, {lm.dtype}; torch threads {torch.get_num_threads()}; "
        f"{args.prompts} prompts x {args.tokens} tokens = {args.prompts * args.tokens} positions x {lm.n_layers + 1} rows"
    )
    methods: list[tuple[str, Callable[[], object] | None]] = [
        ("bare forward", bare_forward(lm, batch)),
        ("matmuls (floor)", matmuls(lm, batch, args.memory_mb)),
        ("tokenprobe", ours(lm, batch, memory_mb=args.memory_mb)),
        ("nnsight", nnsight_lens(lm, batch)),
        ("transformer_lens", transformer_lens(lm, batch)),
        ("by hand", by_hand(lm, batch)),
    ]  # tokenprobe right after its floor; the 12 GB ones after it (they slowed what ran next)
    results: dict[str, tuple[float, float]] = {}
    for name, fn in methods:
        if fn is None:
            print(f"  {name:<18} not installed (make bench-peers)")
            continue
        try:
            results[name] = timed(fn, args.repeats, lm.device)
        except torch.OutOfMemoryError:  # the by-hand floor holds every layer's logits at once
            print(f"  {name:<18} out of memory")
            torch.cuda.empty_cache()
    floor = results["matmuls (floor)"][0]
    hand = results.get("by hand", (float("nan"), 0.0))[0]
    bare = results["bare forward"][0]
    print(
        f"{'method':<20}{'seconds':>9}{'x matmuls':>11}{'x by hand':>11}{'x forward':>11}"
        f"{'peak MB':>10}"
    )
    for name, (sec, peak) in results.items():
        print(
            f"{name:<20}{sec:>9.3f}{sec / floor:>11.2f}{sec / hand:>11.2f}{sec / bare:>11.2f}"
            f"{peak:>10.0f}"
        )
    if "tokenprobe" not in results:
        return 1
    ours_t = results["tokenprobe"][0]
    print(
        f"tokenprobe / floor (matmuls alone) = {ours_t / floor:.2f}; tokenprobe / (bare forward + "
        f"matmuls) = {ours_t / (bare + floor):.2f}"
    )
    for peer in ("nnsight", "transformer_lens"):
        if peer in results:
            print(f"tokenprobe vs {peer}: {results[peer][0] / ours_t:.2f}x faster")
    record(
        f"logit lens, {args.prompts} x {args.tokens} tokens",
        tokenprobe=results["tokenprobe"],
        floor=results["matmuls (floor)"],
        floor_name="final norm + unembedding of every inner row (matrix products alone)",
        peers={p: results[p] for p in ("nnsight", "transformer_lens") if p in results},
        notes=f"bare forward {bare:.2f} s; by-hand lens {hand:.2f} s",
        lm=lm,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
