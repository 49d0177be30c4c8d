"""Benchmark the causal trace against TransformerLens's and nnsight's activation patching and
against the floor, in one run.

    python bench/trace.py [--model smollm2] [--repeats 1] [--device auto] [--peers tl,nnsight]

The same job for every tool: a 20-token clean prompt and a corrupted one of the same length,
the residual stream (layer 0 = embeddings, layer i = output of block i: 31 x 20 cells on
SmolLM2), each cell's clean state restored into the corrupted run, scored by p(' Paris') at the
last position. Tools: tokenprobe's exact trace and its estimate (attribution patching);
TransformerLens 4's `patching.get_act_patch_resid_pre` (its resid_pre rows are our layers
0..L-1; the last layer is its `resid_post` of the last block, patched with
`generic_activation_patch`); nnsight's documented pattern (every patch an `invoke` of one
`trace`, which nnsight runs as one batch); and the floor, one batched forward pass over all
the restored inputs, patched by hooks. Peers run where importable (`make .venv-bench/.installed`,
then run this with .venv-bench/bin/python). Prints seconds, peak memory, the ratio to the floor
and to each peer, and the largest difference of each grid from tokenprobe's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import numpy as np
import torch
from _common import add_args, configure, record, timed

import tokenprobe

CLEAN = "The Eiffel Tower, the iron tower that was built for a fair, stands in the city of"
CORRUPTED = "The Colosseum, the old arena that was built for a fair, stands in the city of"
TARGET = " Paris"
# --smoke: a 9-token pair (the same length on SmolLM2's tokenizer), peers left out
SMOKE = ("The Eiffel Tower stands in the city of", "The Colosseum stands in the city of")


def _metric(lm) -> Callable[[torch.Tensor], torch.Tensor]:
    target = lm.tokenizer.encode(TARGET, add_special_tokens=False)[0]
    return lambda logits: torch.softmax(logits[:, -1].float(), dim=-1)[:, target]


def ours(lm, method: str = "exact") -> Callable[[], np.ndarray]:
    def run() -> np.ndarray:
        res = tokenprobe.causal_trace(
            lm, CLEAN, corrupted=CORRUPTED, target=TARGET, method=method, progress=False
        )
        return res.scores["resid"]

    return run


def _resid_hooks(lm, change: Callable[[int, torch.Tensor], torch.Tensor]) -> list:
    """Hooks giving layer k's residual stream to `change(k, state)` (k = 0: block 0's input)."""
    blocks = lm.model.model.layers

    def pre(_m, args, kwargs):
        if args:
            return (change(0, args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": change(0, kwargs["hidden_states"])}

    handles = [blocks[0].register_forward_pre_hook(pre, with_kwargs=True)]
    for k, block in enumerate(blocks, start=1):
        handles.append(block.register_forward_hook(lambda _m, _a, out, k=k: change(k, out)))
    return handles


def floor(lm) -> Callable[[], np.ndarray]:
    """One forward pass over all L+1 x T restored inputs at once, each row patched by a hook."""
    clean = torch.tensor([lm.tokenizer.encode(CLEAN)], device=lm.device)
    bad = torch.tensor([lm.tokenizer.encode(CORRUPTED)], device=lm.device)
    n_layers, n_pos = lm.n_layers, clean.shape[1]
    metric = _metric(lm)
    states: list[torch.Tensor] = []
    handles = _resid_hooks(lm, lambda k, h: states.append(h) or h)
    with torch.inference_mode():
        lm.model(input_ids=clean, use_cache=False)
    for h in handles:
        h.remove()
    rows = torch.arange(n_pos, device=lm.device)

    def patch(k: int, h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        block = slice(k * n_pos, (k + 1) * n_pos)  # rows of layer k: position p in row k*T + p
        h[block][rows, rows] = states[k][0, rows]
        return h

    def run() -> np.ndarray:
        handles = _resid_hooks(lm, patch)
        try:
            with torch.inference_mode():
                ids = bad.expand(n_layers * n_pos, -1)
                logits = lm.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
        finally:
            for h in handles:
                h.remove()
        return metric(logits).double().cpu().numpy().reshape(n_layers, n_pos)

    return run


def transformer_lens(lm) -> Callable[[], np.ndarray] | None:
    """TransformerLens 4: a TransformerBridge over the same HF model, run_with_cache on the
    clean prompt, then its resid_pre patching (and resid_post of the last block)."""
    try:
        import pandas as pd
        import transformer_lens.model_bridge.sources.transformers  # noqa: F401 - attaches boot_transformers
        from transformer_lens import patching
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    bridge = TransformerBridge.boot_transformers(
        lm.folder, hf_model=lm.model, tokenizer=lm.tokenizer, device=str(lm.device)
    )
    bridge.eval()
    clean = torch.tensor([lm.tokenizer.encode(CLEAN)], device=lm.device)
    bad = torch.tensor([lm.tokenizer.encode(CORRUPTED)], device=lm.device)
    metric = _metric(lm)
    last = lm.n_blocks - 1
    index = pd.DataFrame({"layer": [last] * clean.shape[1], "pos": list(range(clean.shape[1]))})

    def run() -> np.ndarray:
        with torch.inference_mode():
            _, cache = bridge.run_with_cache(clean)
            pre = patching.get_act_patch_resid_pre(bridge, bad, cache, lambda x: metric(x)[0])
            post = patching.generic_activation_patch(
                bridge,
                bad,
                cache,
                lambda x: metric(x)[0],
                patch_setter=patching.layer_pos_patch_setter,
                activation_name="resid_post",
                index_df=index,
            )
        return torch.cat([pre, post[None]]).double().cpu().numpy()

    return run


def nnsight_trace(lm) -> Callable[[], np.ndarray] | None:
    """nnsight's patching pattern: the clean states saved in one trace, then one trace with an
    invoke per (layer, position) writing the clean state into the corrupted run (nnsight runs
    a trace's invokes as one batch)."""
    try:
        from nnsight import LanguageModel
    except ImportError:
        return None
    wrapped = LanguageModel(lm.model, tokenizer=lm.tokenizer)
    layers = wrapped.model.layers
    n_layers, n_pos = lm.n_layers, len(lm.tokenizer.encode(CLEAN))
    target = lm.tokenizer.encode(TARGET, add_special_tokens=False)[0]

    def state(k: int):
        return layers[0].input if k == 0 else layers[k - 1].output

    def run() -> np.ndarray:
        with torch.inference_mode():
            saved: list = []  # filled inside the trace (names bound there do not leave a function's trace)
            with wrapped.trace(CLEAN):
                for k in range(n_layers):
                    saved.append(state(k).save())
            clean = [getattr(s, "value", s) for s in saved]
            results = []
            with wrapped.trace() as tracer:
                for k in range(n_layers):
                    for p in range(n_pos):
                        with tracer.invoke(CORRUPTED):
                            state(k)[:, p, :] = clean[k][:, p, :]
                            logits = wrapped.lm_head.output
                            results.append(torch.softmax(logits[0, -1].float(), -1)[target].save())
        values = [float(getattr(r, "value", r)) for r in results]
        return np.asarray(values).reshape(n_layers, n_pos)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--peers", default="tl,nnsight", help="comma-separated subset of tl, nnsight"
    )
    add_args(parser)
    args = configure(parser.parse_args())
    if args.smoke:
        global CLEAN, CORRUPTED
        (CLEAN, CORRUPTED), args.peers = SMOKE, ""

    lm = tokenprobe.load(args.model, device=args.device, dtype=args.dtype)
    n_pos = len(lm.tokenizer.encode(CLEAN))
    assert n_pos == len(lm.tokenizer.encode(CORRUPTED))
    print(
        f"model {lm.name} ({lm.n_blocks} blocks) on {lm.device}, {lm.dtype}; torch threads "
        f"{torch.get_num_threads()}; {n_pos} positions x {lm.n_layers} layers = {n_pos * lm.n_layers} cells; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    peers = args.peers.split(",")
    methods: list[tuple[str, Callable[[], Callable[[], np.ndarray] | None]]] = [
        ("floor (one batch)", lambda: floor(lm)),
        ("tokenprobe", lambda: ours(lm)),
        ("tokenprobe estimate", lambda: ours(lm, "estimate")),
        ("nnsight", lambda: nnsight_trace(lm) if "nnsight" in peers else None),
        ("transformer_lens", lambda: transformer_lens(lm) if "tl" in peers else None),
    ]
    results: dict[str, tuple[float, float]] = {}
    grids: dict[str, np.ndarray] = {}
    print(
        f"{'method':<22}{'seconds':>9}{'x floor':>9}{'peak MB':>9}{'max |diff| vs tokenprobe':>26}",
        flush=True,
    )
    for name, make in methods:
        try:
            fn = make()
            if fn is None:
                print(f"{name:<22} not run (not installed, or not in --peers)", flush=True)
                continue
            grids[name] = fn()
            results[name] = timed(fn, args.repeats, lm.device)
        except Exception as exc:  # a peer's API change must not lose the other lines
            print(
                f"{name:<22} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                flush=True,
            )
            continue
        sec, peak = results[name]
        floor_t = results.get("floor (one batch)", (sec, 0.0))[0]
        diff = (
            float(np.abs(grids[name] - grids["tokenprobe"]).max())
            if "tokenprobe" in grids
            else float("nan")
        )
        print(f"{name:<22}{sec:>9.3f}{sec / floor_t:>9.2f}{peak:>9.0f}{diff:>26.3g}", flush=True)
    base = grids["tokenprobe"]
    if "floor (one batch)" in grids:
        print(
            f"floor vs tokenprobe: max |diff| {float(np.abs(grids['floor (one batch)'] - base).max()):.3g}"
        )
    ours_t = results["tokenprobe"][0]
    est_t = results["tokenprobe estimate"][0]
    exact, est = base.ravel(), grids["tokenprobe estimate"].ravel()
    print(
        f"estimate: {ours_t / est_t:.1f}x faster than the exact trace; correlation {np.corrcoef(exact, est)[0, 1]:.3f}"
    )
    for peer in ("transformer_lens", "nnsight"):
        if peer in results:
            print(f"tokenprobe vs {peer}: {results[peer][0] / ours_t:.2f}x faster")
    cells = f"{n_pos * lm.n_layers} cells"
    floor_t = results.get("floor (one batch)")
    record(
        f"causal trace, {cells}",
        tokenprobe=results["tokenprobe"],
        floor=floor_t,
        floor_name="one batched forward over every restored input, patched by hooks",
        peers={p: results[p] for p in ("nnsight", "transformer_lens") if p in results},
        lm=lm,
    )
    record(
        f"causal trace, {cells}, estimate (attribution patching)",
        tokenprobe=results["tokenprobe estimate"],
        floor=floor_t,
        floor_name="the exact trace's floor",
        notes=f"correlation with the exact trace {np.corrcoef(exact, est)[0, 1]:.3f}",
        lm=lm,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
