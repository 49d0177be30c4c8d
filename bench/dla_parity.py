"""Parity of tokenprobe's per-head direct logit attribution with TransformerLens's, on SmolLM2.

    .venv-bench/bin/python bench/dla_parity.py [--model smollm2] [--device auto]

Not a test: a check against a peer, run where TransformerLens is installed (`make
.venv-bench/.installed`, then this script with .venv-bench/bin/python; elsewhere it says it
was not run). The same job for both: logit(' Paris') - logit(' Rome') at every position of the
Eiffel Tower prompt, per head. TransformerLens 4: a TransformerBridge over the same HF model in
compatibility mode (fold_ln, so its final-norm gain sits in W_U), `run_with_cache`, then
`cache.stack_head_results(apply_ln=True)` (the cached final-norm scale), dotted with the
`logit_diff_directions` (`tokens_to_residual_directions(target) - (foil)`). tokenprobe runs
first: compatibility mode rewrites the model's weights in place. Prints the largest difference
per head and position, relative to the largest value, and both top heads at the last position.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

import tokenprobe
from tokenprobe.analyses.logit_attribution import logit_attribution

PROMPT = "The Eiffel Tower is in the city of"
TARGET, FOIL = " Paris", " Rome"


def ours(lm) -> tuple[np.ndarray, float]:
    """(layers, heads, positions) per-head values, and the seconds it took."""
    start = time.perf_counter()
    result = logit_attribution(lm, PROMPT, target=TARGET, foil=FOIL)
    seconds = time.perf_counter() - start
    heads = result.frame[result.frame["component"] == "head"]
    n_pos = len(result.tokens)
    grid = np.full((lm.n_blocks, int(heads["head"].max()) + 1, n_pos), np.nan)
    grid[
        heads["layer"].to_numpy(dtype=int),
        heads["head"].to_numpy(dtype=int),
        heads["position"].to_numpy(dtype=int),
    ] = heads["value"].to_numpy()
    print(result.summary())
    return grid, seconds


def transformer_lens(lm) -> tuple[np.ndarray, float] | None:
    """The same grid from TransformerLens 4, or None where it is not installed."""
    try:
        import transformer_lens.model_bridge.sources.transformers  # noqa: F401 - attaches boot_transformers
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    bridge = TransformerBridge.boot_transformers(
        lm.folder, hf_model=lm.model, tokenizer=lm.tokenizer, device=str(lm.device)
    )
    bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.eval()
    ids = lm.tokenizer.encode(PROMPT)
    tokens = torch.tensor([ids], device=lm.device)
    target = lm.tokenizer.encode(TARGET, add_special_tokens=False)[0]
    foil = lm.tokenizer.encode(FOIL, add_special_tokens=False)[0]
    start = time.perf_counter()
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(tokens)
        stack = cache.stack_head_results(layer=-1, apply_ln=True)  # (L x H, batch, pos, width)
        directions = bridge.tokens_to_residual_directions(torch.tensor([target, foil]))
        logit_diff_directions = directions[0] - directions[1]
        values = torch.einsum("cbpd,d->cbp", stack.float(), logit_diff_directions.float())
    seconds = time.perf_counter() - start
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    return values[:, 0].reshape(n_layers, n_heads, -1).double().cpu().numpy(), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    lm = tokenprobe.load(args.model, device=args.device, dtype="float32")
    print(f"model {lm.name} ({lm.n_blocks} blocks) on {lm.device}, {lm.dtype}")
    mine, t_mine = ours(lm)
    peer = transformer_lens(lm)
    if peer is None:
        print("transformer_lens: not run (not installed here; use .venv-bench/bin/python)")
        return 0
    theirs, t_peer = peer
    if theirs.shape != mine.shape:
        print(f"shapes differ: tokenprobe {mine.shape}, transformer_lens {theirs.shape}")
        return 1
    diff = float(np.abs(mine - theirs).max())
    top = float(np.abs(mine).max())
    print(
        f"per-head DLA, {mine.shape[0]} x {mine.shape[1]} heads x {mine.shape[2]} positions: "
        f"max |tokenprobe - transformer_lens| {diff:.3g} ({diff / top:.2g} of the largest "
        f"|value| {top:.3g}); tokenprobe {t_mine:.2f} s, transformer_lens {t_peer:.2f} s "
        "(its cache and stack, after loading)"
    )
    for name, grid in (("tokenprobe", mine), ("transformer_lens", theirs)):
        last = grid[:, :, -1]
        order = np.argsort(-np.abs(last), axis=None)[:5]
        heads = [np.unravel_index(i, last.shape) for i in order]
        print(
            f"{name:>17} top heads at the last position: "
            + ", ".join(f"L{a}H{b} {last[a, b]:+.3f}" for a, b in heads)
        )
    return 0 if diff <= 1e-3 * max(1.0, top) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
