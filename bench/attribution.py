"""Benchmark attribution against captum's LLMAttribution / LLMGradientAttribution (and inseq), in one run.

    python bench/attribution.py [--model smollm2] [--repeats 2] [--device auto]
        [--jobs ablation,integrated_gradients,inseq]

The same job for every tool: a 20-token prompt (every token a feature), a 10-token target,
(1) feature ablation replacing a token by id 0 (captum's default baseline), (2) integrated
gradients with 32 steps from the embedding of id 0, and (3) where inseq is installed (`make
bench-peers` puts it in .venv-inseq), inseq's integrated gradients against ours scored by
probability. Prints seconds, peak memory, the ratio to the peer, the ratio to a bare batched
forward pass over the same inputs, and the largest difference between the matrices (or, for
inseq, which defines the quantity differently, their correlation).
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import version

import numpy as np
import torch
from _common import add_args, configure, record, timed

import tokenprobe
from tokenprobe.runner import pad_batch

FLOOR = "bare batched forward over the same inputs"
PROMPT = "Q: Ben has 7 bags with 5 marbles in each bag, and he gives 3 marbles to Ann. How many marbles does he have left?\nA:"
TARGET = " 7 x 5 = 35 and 35 - 3 = 32. The answer is 32."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--target-tokens", type=int, default=10)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--jobs",
        default="ablation,integrated_gradients,inseq",
        help="comma-separated subset of: ablation, integrated_gradients, inseq",
    )
    add_args(parser)
    args = configure(parser.parse_args())
    if args.smoke:
        args.features, args.target_tokens, args.steps, args.repeats = 4, 2, 4, 1

    lm = tokenprobe.load(args.model, device=args.device, dtype=args.dtype)
    tok = lm.tokenizer
    prompt = tok.decode(tok.encode(PROMPT, add_special_tokens=False)[: args.features])
    target = tok.decode(tok.encode(TARGET, add_special_tokens=False)[: args.target_tokens])
    n = len(tok.encode(prompt, add_special_tokens=False))
    m = len(tok.encode(target, add_special_tokens=False))
    print(
        f"model {lm.name} on {lm.device}, {lm.dtype}; torch threads {torch.get_num_threads()}; prompt {n} tokens (features), target {m} tokens"
    )

    try:
        from captum.attr import (
            FeatureAblation,
            LayerIntegratedGradients,
            LLMAttribution,
            LLMGradientAttribution,
            TextTokenInput,
        )
    except ImportError:
        print("captum is not installed: pip install captum")
        return 1
    model = lm.model

    def ours(method: str) -> tokenprobe.AttributionResult:
        kwargs = (
            {"baseline": "unk"}
            if method == "ablation"
            else {"steps": args.steps, "ig_baseline": "unk"}
        )
        return tokenprobe.attribute(lm, prompt, target=target, method=method, **kwargs)

    def captum_ablation(forward_in_tokens: bool = True) -> object:
        inp = TextTokenInput(prompt, tok, baselines=0)
        return LLMAttribution(FeatureAblation(model), tok).attribute(
            inp, target=target, forward_in_tokens=forward_in_tokens
        )

    def captum_ig() -> object:
        inp = TextTokenInput(prompt, tok, baselines=0)
        return LLMGradientAttribution(
            LayerIntegratedGradients(model, model.get_input_embeddings()), tok
        ).attribute(inp, target=target, n_steps=args.steps)

    ids = tok.encode(prompt, add_special_tokens=False) + tok.encode(
        target, add_special_tokens=False
    )
    forward_inputs = {"ablation": [ids] * (n + 1), "integrated_gradients": [ids] * args.steps}

    def bare(method: str):
        batch, mask = pad_batch(forward_inputs[method], 0, lm.device)

        def run() -> object:
            with torch.inference_mode():
                return model(input_ids=batch, attention_mask=mask, use_cache=False).logits

        return run

    tok_id0 = getattr(tok, "unk_token_id", None)
    if tok_id0 != 0:
        print(
            f"note: this tokenizer's unk id is {tok_id0}, not captum's baseline 0; the matrices will differ"
        )
    print(f"{'job':<34}{'tool':<30}{'seconds':>9}{'peak MB':>9}{'speed-up':>10}{'x forward':>11}")
    jobs = [
        (
            "ablation",
            f"ablation ({n + 1} inputs)",
            [
                ("captum default", captum_ablation),
                ("captum one-pass", lambda: captum_ablation(False)),
            ],
        ),
        (
            "integrated_gradients",
            f"integrated gradients ({args.steps} steps)",
            [("captum IG", captum_ig)],
        ),
    ]
    for method, label, peers in jobs:
        if method not in args.jobs:
            continue
        t_bare, _ = timed(bare(method), args.repeats, lm.device)
        t_ours, mem_ours = timed(lambda method=method: ours(method), args.repeats, lm.device)
        print(
            f"{label:<34}{'tokenprobe':<30}{t_ours:>9.2f}{mem_ours:>9.0f}{'':>10}{t_ours / t_bare:>10.1f}x"
        )
        a = ours(method).scores
        timings: dict[str, tuple[float, float]] = {}
        for name, fn in peers:
            t_peer, mem_peer = timed(fn, args.repeats, lm.device)
            timings[name] = (t_peer, mem_peer)
            b = fn().token_attr.detach().cpu().numpy()
            diff = (
                f"max |diff| {np.abs(a - b).max():.1e}" if a.shape == b.shape else "shapes differ"
            )
            print(
                f"{'':<34}{name:<30}{t_peer:>9.2f}{mem_peer:>9.0f}{t_peer / t_ours:>9.1f}x{t_peer / t_bare:>10.1f}x  {diff}"
            )
        record(
            label,
            tokenprobe=(t_ours, mem_ours),
            floor=t_bare,
            floor_name=FLOOR,
            peers=timings,
            lm=lm,
        )
    if "inseq" in args.jobs:
        t_bare, _ = timed(bare("integrated_gradients"), args.repeats, lm.device)
        inseq_job(lm, prompt, target, args.steps, args.repeats, t_bare)
    print(
        "speed-up = peer seconds / tokenprobe seconds; x forward = seconds / one bare batched forward of the same inputs"
    )
    return 0


def inseq_job(
    lm: tokenprobe.LoadedModel,
    prompt: str,
    target: str,
    steps: int,
    repeats: int,
    t_bare: float,
) -> None:
    """inseq's integrated gradients on the same prompt and target, where inseq is installed.

    inseq attributes each generated token's probability (it has no log-probability step
    function), interpolates the earlier generated tokens too, and starts from the unk token:
    so it computes a different matrix, and the line prints its correlation with ours (scored
    by probability) instead of a difference.
    """
    try:
        import inseq
    except ImportError:
        print(
            "inseq: not installed here; `make bench-peers` runs this benchmark in .venv-inseq, "
            "where it is (its typeguard pin cannot share an environment with transformer-lens)"
        )
        return
    wrapped = inseq.load_model(lm.model, "integrated_gradients", tokenizer=lm.tokenizer)

    def run() -> object:
        return wrapped.attribute(
            prompt,
            prompt + target,
            n_steps=steps,
            internal_batch_size=steps,
            show_progress=False,
        )

    t_peer, mem_peer = timed(run, repeats, lm.device)

    def ours() -> tokenprobe.AttributionResult:
        return tokenprobe.attribute(
            lm,
            prompt,
            target=target,
            method="integrated_gradients",
            steps=steps,
            ig_baseline="unk",
            score="prob",
        )

    t_ours, mem_ours = timed(ours, repeats, lm.device)
    mine = ours().scores
    seq = run().sequence_attributions[0]
    attr = seq.target_attributions  # (every position, generated tokens, embedding dims)
    n, m = mine.shape[1], mine.shape[0]
    theirs = attr.sum(-1)[:n, :m].T.double().numpy() if attr.shape[1] == m else None
    if theirs is None:
        note = f"shapes differ ({tuple(attr.shape)})"
    else:
        ok = np.isfinite(theirs)
        r = np.corrcoef(mine[ok], theirs[ok])[0, 1]
        note = f"corr {r:.2f} with ours scored by probability (different definition, see docstring)"
    label = "integrated gradients, probability"
    peer = "inseq " + version("inseq")
    print(
        f"{label:<34}{'tokenprobe':<30}{t_ours:>9.2f}{mem_ours:>9.0f}{'':>10}"
        f"{t_ours / t_bare:>10.1f}x"
    )
    print(
        f"{'':<34}{peer:<30}{t_peer:>9.2f}{mem_peer:>9.0f}{t_peer / t_ours:>9.1f}x"
        f"{t_peer / t_bare:>10.1f}x  {note}"
    )
    record(
        f"{label} ({steps} steps)",
        tokenprobe=(t_ours, mem_ours),
        floor=t_bare,
        floor_name=FLOOR,
        peers={"inseq IG": (t_peer, mem_peer)},
        notes=note,
        lm=lm,
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
