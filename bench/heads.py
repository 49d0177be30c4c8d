"""Benchmark per-head patching (`tokenprobe trace --component head`) against TransformerLens's
and nnsight's and against the floor, in one run.

    python bench/heads.py [--model smollm2] [--repeats 1] [--device auto] [--peers tl,nnsight]
                          [--layers N | --stride K]

The same job for every tool: bench/trace.py's 20-token clean prompt and its corrupted twin;
every (layer, query head, position) cell (30 x 9 x 20 = 5,400 on SmolLM2), the clean run's
output of that head (its columns of the output projection's input, TransformerLens's hook_z)
restored into the corrupted run, scored by p(' Paris') at the last position. Tools:
tokenprobe's exact trace; TransformerLens 4's `patching.get_act_patch_attn_head_out_by_pos`
on a TransformerBridge over the same model; nnsight's documented pattern (an `invoke` per cell
writing the head's slice of `o_proj.input`, one `trace` per layer so that a batch fits in
memory); and the floor, plain batched forward passes over all the patched inputs (one batch per
layer), patched by hooks. `--layers N` or `--stride K` (a quicker run): every tool still runs
the full model, and patches only the cells of its first N layers (the worst case for skipping
lower blocks) or of every K-th layer from 0 (the full job's mix of depths). Peers run where importable
(`.venv-bench/bin/python bench/heads.py`); one that is not is said to be skipped. Prints
seconds, peak memory, the ratio to the floor and tokenprobe's to each tool, and the largest
difference of each grid from tokenprobe's and from the floor's (same cells, same metric).
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
from tokenprobe.analyses.trace import TraceOptions, Tracer
from tokenprobe.analyses.trace.cells import plan_cells
from tokenprobe.analyses.trace.inputs import trace_inputs

# bench/trace.py's prompts (not imported: its name is the standard library's `trace`)
CLEAN = "The Eiffel Tower, the iron tower that was built for a fair, stands in the city of"
CORRUPTED = "The Colosseum, the old arena that was built for a fair, stands in the city of"
TARGET = " Paris"
# --smoke: a 9-token pair (the same length on SmolLM2's tokenizer), peers left out
SMOKE = ("The Eiffel Tower stands in the city of", "The Colosseum stands in the city of")


def _metric(lm) -> Callable[[torch.Tensor], torch.Tensor]:
    target = lm.tokenizer.encode(TARGET, add_special_tokens=False)[0]
    return lambda logits: torch.softmax(logits[:, -1].float(), dim=-1)[:, target]


def _geometry(lm) -> tuple[int, int, int]:
    config = lm.model.config
    heads = int(config.num_attention_heads)
    return heads, int(config.hidden_size) // heads, len(lm.tokenizer.encode(CLEAN))


def ours(lm, layers: list[int]) -> Callable[[], np.ndarray]:
    """tokenprobe's exact head trace of the full model: `causal_trace` when every layer is
    asked for; otherwise the same Tracer, inputs and cells (causal_trace has no layer filter),
    those of the chosen blocks only, scored in the same token-budget batches."""
    options = TraceOptions(corrupted=CORRUPTED, target=TARGET, components=["head"])

    def run() -> np.ndarray:
        if len(layers) == lm.n_blocks:
            res = tokenprobe.causal_trace(lm, CLEAN, options=options, progress=False)
            return res.scores["head"]
        given = trace_inputs(lm, CLEAN, options)
        tracer = Tracer(lm, given.problem(options.scored_by, options.direction, None), ["head"])
        cells, where = plan_cells(tracer, "head", options.window, options.positions)
        heads = len(tracer.sites["head"]) // lm.n_blocks  # row = block x heads + head
        at = {k: n for n, k in enumerate(layers)}
        kept = [i for i, (row, _) in enumerate(where) if row // heads in at]
        values = tracer.score_cells([cells[i] for i in kept], options.batch_tokens)
        grid = np.full((len(layers), heads, tracer.n_pos), np.nan)
        for i, v in zip(kept, values, strict=True):
            row, p = where[i]
            grid[at[row // heads], row % heads, p] = v
        return grid

    return run


def floor(lm, layers: list[int]) -> Callable[[], np.ndarray]:
    """Plain forward passes over all the patched inputs, a batch of heads x positions rows per
    layer, each row's head slice written by a pre-hook on the output projection."""
    heads, d, n_pos = _geometry(lm)
    blocks = lm.model.model.layers
    clean = torch.tensor([lm.tokenizer.encode(CLEAN)], device=lm.device)
    bad = torch.tensor([lm.tokenizer.encode(CORRUPTED)], device=lm.device)
    metric = _metric(lm)
    kept: dict[int, torch.Tensor] = {}

    def record_clean() -> None:
        """The clean run, each patched layer's o_proj input kept (part of the timed job)."""
        handles = [
            blocks[k].self_attn.o_proj.register_forward_pre_hook(
                lambda _m, args, k=k: kept.__setitem__(k, args[0].clone())
            )
            for k in layers
        ]
        try:
            with torch.inference_mode():
                lm.model(input_ids=clean, use_cache=False, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()

    rows = torch.arange(heads * n_pos, device=lm.device)
    h_of, p_of = rows // n_pos, rows % n_pos
    cols = (h_of[:, None] * d + torch.arange(d, device=lm.device)[None]).long()

    def patch(k: int) -> Callable:
        def pre(_m, args):
            x = args[0].clone()
            x[rows[:, None], p_of[:, None], cols] = kept[k][0, p_of[:, None], cols]
            return (x,)

        return pre

    def run() -> np.ndarray:
        record_clean()
        out = np.zeros((len(layers), heads, n_pos))
        for n, k in enumerate(layers):
            handle = blocks[k].self_attn.o_proj.register_forward_pre_hook(patch(k))
            try:
                with torch.inference_mode():
                    ids = bad.expand(len(rows), -1)
                    logits = lm.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
            finally:
                handle.remove()
            out[n] = metric(logits).double().cpu().numpy().reshape(heads, n_pos)
        return out

    return run


def transformer_lens(lm, layers: list[int]) -> Callable[[], np.ndarray] | None:
    """TransformerLens 4: a TransformerBridge over the same HF model, run_with_cache on the
    clean prompt, then `get_act_patch_attn_head_out_by_pos` ([layer, pos, head])."""
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

    heads, _, n_pos = _geometry(lm)

    def run() -> np.ndarray:
        with torch.inference_mode():
            _, cache = bridge.run_with_cache(clean)
            if len(layers) == lm.n_blocks:
                grid = patching.get_act_patch_attn_head_out_by_pos(
                    bridge, bad, cache, lambda x: metric(x)[0]
                )
                return grid.double().cpu().numpy().transpose(0, 2, 1)
            # --layers/--stride: the same patch setter and hook (z) over those layers' cells only
            index = pd.DataFrame(
                [(k, p, h) for k in layers for p in range(n_pos) for h in range(heads)],
                columns=["layer", "pos", "head_index"],
            )
            flat = patching.generic_activation_patch(
                bridge,
                bad,
                cache,
                lambda x: metric(x)[0],
                patch_setter=patching.layer_pos_head_vector_patch_setter,
                activation_name="z",
                index_df=index,
            )
        grid = flat.double().cpu().numpy().reshape(len(layers), n_pos, heads)
        return grid.transpose(0, 2, 1)

    return run


def nnsight_heads(lm, layers: list[int]) -> Callable[[], np.ndarray] | None:
    """nnsight's patching pattern: the clean heads' outputs saved in one trace, then per layer
    one trace with an invoke per (head, position) writing the clean slice of `o_proj.input`."""
    try:
        from nnsight import LanguageModel
    except ImportError:
        return None
    wrapped = LanguageModel(lm.model, tokenizer=lm.tokenizer)
    heads, d, n_pos = _geometry(lm)
    target = lm.tokenizer.encode(TARGET, add_special_tokens=False)[0]

    def o_proj(k: int):
        return wrapped.model.layers[k].self_attn.o_proj

    def run() -> np.ndarray:
        out = np.zeros((len(layers), heads, n_pos))
        with torch.inference_mode():
            saved: list = []
            with wrapped.trace(CLEAN):
                for k in layers:
                    saved.append(o_proj(k).input.save())
            clean = [getattr(s, "value", s) for s in saved]
            for n, k in enumerate(layers):
                results = []
                with wrapped.trace() as tracer:
                    for h in range(heads):
                        for p in range(n_pos):
                            with tracer.invoke(CORRUPTED):
                                cols = slice(h * d, (h + 1) * d)
                                o_proj(k).input[:, p, cols] = clean[n][:, p, cols]
                                logits = wrapped.lm_head.output
                                prob = torch.softmax(logits[0, -1].float(), -1)[target]
                                results.append(prob.save())
                values = [float(getattr(r, "value", r)) for r in results]
                out[n] = np.asarray(values).reshape(heads, n_pos)
        return out

    return run


def _report(
    results: dict[str, tuple[float, float]],
    grids: dict[str, np.ndarray],
    layers: list[int],
    heads: int,
    n_pos: int,
) -> None:
    """Each grid's largest difference from tokenprobe's and from the floor's (the same cells,
    (layer, head, position), and the same metric), and tokenprobe's speed against the others."""
    shape = (len(layers), heads, n_pos)
    bad = [f"{n} {g.shape}" for n, g in grids.items() if g.shape != shape or np.isnan(g).any()]
    if bad:
        print(f"grids not {shape} or with NaN: {', '.join(bad)}")
    print(f"{'max |diff|':<20}{'vs tokenprobe':>15}{'vs floor':>15}")
    for name, g in grids.items():
        cols = [
            float(np.abs(g - grids[ref]).max()) if ref in grids and ref != name else float("nan")
            for ref in ("tokenprobe", "floor (batched)")
        ]
        print(f"{name:<20}{cols[0]:>15.3g}{cols[1]:>15.3g}")
    if "tokenprobe" in results:
        ours_t = results["tokenprobe"][0]
        for other in ("floor (batched)", "transformer_lens", "nnsight"):
            if other in results:
                ratio = results[other][0] / ours_t
                print(f"tokenprobe vs {other}: {other} / tokenprobe = {ratio:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--layers", type=int, default=None, help="only the first N layers")
    parser.add_argument("--stride", type=int, default=None, help="only layers 0, K, 2K, ...")
    parser.add_argument(
        "--peers", default="tl,nnsight", help="comma-separated subset of tl, nnsight"
    )
    parser.add_argument("--save", default=None, help="write every grid to this .npz file")
    add_args(parser)
    args = configure(parser.parse_args())
    if args.smoke:
        global CLEAN, CORRUPTED
        (CLEAN, CORRUPTED), args.peers, args.layers, args.stride = SMOKE, "", 2, None

    lm = tokenprobe.load(args.model, device=args.device, dtype=args.dtype)
    heads, d, n_pos = _geometry(lm)
    if args.stride:
        layers = list(range(0, lm.n_blocks, args.stride))
    else:
        layers = list(range(min(args.layers or lm.n_blocks, lm.n_blocks)))
    assert n_pos == len(lm.tokenizer.encode(CORRUPTED))
    print(
        f"model {lm.name} ({lm.n_blocks} blocks, {heads} heads of {d}) on {lm.device}, {lm.dtype}; "
        f"torch threads {torch.get_num_threads()}; layers {layers} x {heads} heads x {n_pos} "
        f"positions = {len(layers) * heads * n_pos} cells; load average {os.getloadavg()[0]:.2f}"
    )
    peers = args.peers.split(",")
    methods: list[tuple[str, Callable[[], Callable[[], np.ndarray] | None]]] = [
        ("floor (batched)", lambda: floor(lm, layers)),
        ("tokenprobe", lambda: ours(lm, layers)),
        ("nnsight", lambda: nnsight_heads(lm, layers) if "nnsight" in peers else None),
        ("transformer_lens", lambda: transformer_lens(lm, layers) if "tl" in peers else None),
    ]
    results: dict[str, tuple[float, float]] = {}
    grids: dict[str, np.ndarray] = {}
    print(f"{'method':<20}{'seconds':>9}{'x floor':>9}{'peak MB':>9}", flush=True)
    for name, make in methods:
        try:
            fn = make()
            if fn is None:
                print(f"{name:<20} skipped (not installed here, or not in --peers)", flush=True)
                continue
            # the last of the warm-up and timed runs leaves its grid
            results[name] = timed(
                lambda fn=fn, name=name: grids.__setitem__(name, fn()), args.repeats, lm.device
            )
        except Exception as exc:  # a peer's API change must not lose the other lines
            print(f"{name:<20} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        sec, peak = results[name]
        floor_t = results.get("floor (batched)", (sec, 0.0))[0]
        print(f"{name:<20}{sec:>9.3f}{sec / floor_t:>9.2f}{peak:>9.0f}", flush=True)
    _report(results, grids, layers, heads, n_pos)
    if "tokenprobe" in results:
        record(
            f"head patching, {len(layers) * heads * n_pos} cells ({len(layers)} layers)",
            tokenprobe=results["tokenprobe"],
            floor=results.get("floor (batched)"),
            floor_name="batched forwards over every patched input, one batch per layer",
            peers={p: results[p] for p in ("nnsight", "transformer_lens") if p in results},
            lm=lm,
        )
    if args.save:
        np.savez(args.save, **{name.split()[0]: g for name, g in grids.items()})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
