"""Benchmark flip rates on Ray against the same job run here, in one run.

    python bench/scale.py [--model smollm2] [--texts 64] [--workers 1 2] [--cpus-per-worker 1]

The job: the built-in prompted classifier on the first N texts of sample:emotion, every word
deleted, flips counted, in chunks of 8 texts. It runs here (torch with every core), then on a
local Ray cluster with each number of workers in --workers (each worker loads its own copy of
the model; the time counts from the call, so model loading on the workers is included, the
cluster start is not). Prints texts/s and the ratio to the local run; the tables must equal
the local run's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import tokenprobe
from tokenprobe.data import read_table
from tokenprobe.executors import RayExecutor

LABELS = ["anger", "joy", "optimism", "sadness"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    args = parser.parse_args()

    lm = tokenprobe.load(args.model)
    frame = read_table("sample:emotion").head(args.texts)
    texts = frame["text"].astype(str).tolist()
    clf = tokenprobe.PromptedClassifier(lm, LABELS)
    print(f"flip rates, {len(texts)} texts, {os.cpu_count()} cores, {lm.name}")
    tokenprobe.flip_rates(clf, texts[:8], chunk_texts=8, progress=False)  # warm-up
    start = time.perf_counter()
    local = tokenprobe.flip_rates(clf, texts, chunk_texts=8, progress=False)
    here = time.perf_counter() - start
    print(f"  here                 {here:7.1f} s  {len(texts) / here:6.2f} texts/s  1.00x")
    import ray

    ray.init(
        num_cpus=int(max(args.workers) * args.cpus_per_worker),
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    ok = True
    for n in args.workers:
        executor = RayExecutor(workers=n, cpus_per_worker=args.cpus_per_worker)
        start = time.perf_counter()
        res = tokenprobe.flip_rates(clf, texts, chunk_texts=8, progress=False, executor=executor)
        took = time.perf_counter() - start
        same = res.occurrences.equals(local.occurrences)
        ok &= same
        print(
            f"  Ray, {n} worker(s)     {took:7.1f} s  {len(texts) / took:6.2f} texts/s  "
            f"{took / here:.2f}x the local time  (tables equal: {same})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
