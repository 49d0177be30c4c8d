"""Benchmark flip rates: texts/s, the ratio to a bare forward pass over the same perturbed
inputs, and the ratio to the same job done with captum's FeatureAblation, in one run.

    python bench/flips.py [--model smollm2] [--texts 24] [--device auto] [--dtype auto]

The job: the built-in prompted classifier on the first N texts of sample:emotion, every word
replaced by the unk token (captum replaces, it cannot delete), flips counted. captum runs one
text at a time with its default perturbations_per_eval=1, its forward function returning
whether the prediction kept the original label, so its attribution of a word is 1 where the
word's perturbation flips the label; the bench checks that both find the same flips.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from _common import add_args, configure, record

import tokenprobe
from tokenprobe.analyses.flips import perturb, tokenize_words
from tokenprobe.data import read_table
from tokenprobe.runner import pad_batch, pad_id_of, token_budget_batches

LABELS = ["anger", "joy", "optimism", "sadness"]
FLOOR = "bare batched forward over the same perturbed inputs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--texts", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of tokenprobe (median)")
    add_args(parser)
    args = configure(parser.parse_args())
    if args.smoke:
        args.texts = 2

    lm = tokenprobe.load(args.model, device=args.device, dtype=args.dtype)
    frame = read_table("sample:emotion").head(args.texts)
    texts = frame["text"].astype(str).tolist()
    clf = tokenprobe.PromptedClassifier(lm, LABELS)
    unk = lm.tokenizer.unk_token_id
    inputs = [tokenize_words(lm.tokenizer, t) for t in texts]
    n_words = sum(len(i.words) for i in inputs)
    print(
        f"model {lm.name} on {lm.device}, {lm.dtype}; torch threads {torch.get_num_threads()}; {len(texts)} texts, {n_words} word occurrences"
    )

    # before (every copy whole after the prompt prefix's cache) and after (each copy continued
    # from its text's cache), interleaved so that a noisy machine weighs on both alike
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeat):
        for cont in (True, False):
            clf.continue_copies = cont
            start = time.perf_counter()
            res = tokenprobe.flip_rates(clf, texts, perturbation="mask", progress=False)
            times[cont].append(time.perf_counter() - start)
            if cont:
                ours = res
            else:
                flips_before = res.occurrences["flipped"].to_numpy()
    t_ours, t_before = (float(np.median(times[c])) for c in (True, False))
    assert (ours.occurrences["flipped"].to_numpy() == flips_before).all()
    print(f"earlier positions: {ours.meta['earlier_positions']}")

    seqs = []
    for inp in inputs:
        seqs.append(clf.prefix_ids + inp.ids + clf.suffix_ids)
        seqs += [
            clf.prefix_ids + perturb(inp, w, "mask", [unk]) + clf.suffix_ids
            for w in range(len(inp.words))
        ]
    start = time.perf_counter()
    for batch in token_budget_batches([len(s) for s in seqs], 4096):
        ids, mask = pad_batch([seqs[i] for i in batch], pad_id_of(lm.tokenizer), lm.device)
        with torch.inference_mode():
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    t_bare = time.perf_counter() - start

    job = f"flip rates, {len(texts)} texts / {n_words} words"
    try:
        from captum.attr import FeatureAblation
    except ImportError:
        print("captum is not installed: pip install captum")
        record(job, tokenprobe=t_ours, floor=t_bare, floor_name=FLOOR, lm=lm)
        return 1
    verb = torch.tensor(clf.verbaliser_ids, device=lm.device)
    p, s = len(clf.prefix_ids), len(clf.suffix_ids)
    start = time.perf_counter()
    captum_flips: list[bool] = []
    single: list[bool] = []
    for inp in inputs:
        full = torch.tensor([clf.prefix_ids + inp.ids + clf.suffix_ids], device=lm.device)
        with torch.inference_mode():
            original = int(lm.model(full).logits[0, -1, verb].argmax())

        def keeps_label(ids: torch.Tensor, original: int = original) -> torch.Tensor:
            with torch.inference_mode():
                return (lm.model(ids).logits[:, -1, verb].argmax(-1) == original).float()

        mask = torch.full_like(
            full, len(inp.words)
        )  # template tokens: one group, never perturbed meaningfully
        for w, toks in enumerate(inp.word_tokens):
            mask[0, [p + t for t in toks]] = w
        attr = FeatureAblation(keeps_label).attribute(full, baselines=unk, feature_mask=mask)
        # attribution = f(x) - f(x ablated) = 1 - keeps_label: 1 where the word's ablation flips
        captum_flips += [bool(attr[0, p + toks[0]] > 0.5) for toks in inp.word_tokens]
        single += [len(toks) == 1 for toks in inp.word_tokens]
    t_captum = time.perf_counter() - start
    del s

    theirs_f = np.array(captum_flips)
    ours_f = ours.occurrences["flipped"].to_numpy()
    one = np.array(single)
    agree_single = float((theirs_f[one] == ours_f[one]).mean())
    agree_all = float((theirs_f == ours_f).mean())
    print(f"{'method':<34}{'seconds':>9}{'texts/s':>9}{'x forward':>11}")
    print(
        f"{'bare forward (same inputs)':<34}{t_bare:>9.2f}{len(texts) / t_bare:>9.2f}{1.0:>10.1f}x"
    )
    print(
        f"{'tokenprobe flip_rates':<34}{t_ours:>9.2f}{len(texts) / t_ours:>9.2f}{t_ours / t_bare:>10.2f}x"
    )
    print(
        f"{'  copies whole (before issue 29)':<34}{t_before:>9.2f}{len(texts) / t_before:>9.2f}{t_before / t_bare:>10.2f}x"
    )
    print(
        f"{'captum FeatureAblation (per text)':<34}{t_captum:>9.2f}{len(texts) / t_captum:>9.2f}{t_captum / t_bare:>10.1f}x"
    )
    print(f"tokenprobe is {t_captum / t_ours:.1f}x faster than captum")
    print(
        f"same flip decisions: {agree_single:.1%} of single-token words, {agree_all:.1%} of all words "
        "(captum masks every token of a word, tokenprobe puts one mask token in its place)"
    )
    record(
        job,
        tokenprobe=t_ours,
        floor=t_bare,
        floor_name=FLOOR,
        peers={"captum FeatureAblation": t_captum},
        notes=f"same flips: {agree_single:.1%} of single-token words, {agree_all:.1%} of all; "
        f"copies whole (before prefix continuation) {t_before:.2f} s",
        lm=lm,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
