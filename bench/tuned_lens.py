"""Benchmark tuned-lens training against the tuned-lens package's own training loop, and the
cost of applying a tuned lens against the logit lens, in one run.

    python bench/tuned_lens.py [--model smollm2] [--seq-len 64] [--batch 4] [--steps 3]
                               [--peer-python /tmp/tl-venv/bin/python] [--prompts 8] [--tokens 64]

Training: each side runs in a fresh process on the same model, the same texts (the packaged
`sample:emotion` set), the same sequence length, sequences per step, optimiser and schedule
(SGD, Nesterov momentum 0.9, lr 1.0 x (1 - 0.9), weight decay 1e-3, linear decay, clip 1);
tokenprobe in float32 and in bfloat16 products (the package's loop autocasts to bfloat16):
`tokenprobe.tuned.train.Trainer` steps here, and the package's `Train.execute()` from
`tuned_lens/scripts/train_loop.py` unmodified, with one stand-in: its model loader passes
`load_in_8bit=` to `from_pretrained`, which transformers 5 refuses, so the peer loads the same
folder with `from_pretrained(folder, dtype=float32)` instead. The first step of each is a
warm-up; tokens/s is over the steps after it; the sides run in turns for `--rounds` rounds and
each keeps its best (other processes on a shared machine slow whichever side they overlap).
Peak memory is the process's maximum RSS (model and data included). The package needs its own
virtualenv (`pip install --no-deps tuned-lens torchdata==0.9.0` and `simple-parsing
flatten-dict`, next to torch, transformers and datasets); without `--peer-python` (or
TUNED_LENS_PYTHON) only tokenprobe's side runs.

Applying: `logit_lens` on the same prompts with the model's own head and with a tuned lens
(`TunedDecoder`, random translators: the cost does not depend on their values); goal <= 1.3x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import timed

PEER = r"""
import json, resource, sys, time
from pathlib import Path
import torch as th
from transformers import AutoModelForCausalLM
import tuned_lens.scripts.ingredients as ing
import tuned_lens.scripts.train_loop as tl

folder, data, seq_len, batch, steps, out = sys.argv[1:7]
seq_len, batch, steps = int(seq_len), int(batch), int(steps)
stamps = []
original = tl.trange

def trange(*a, **kw):  # the loop's own progress range, timestamped at every step boundary
    for i in original(*a, **kw):
        stamps.append(time.perf_counter())
        yield i
    stamps.append(time.perf_counter())

def load(self, device, must_use_cache=False):  # its loader passes load_in_8bit=, which transformers 5 refuses
    model = AutoModelForCausalLM.from_pretrained(self.name, dtype=th.float32)
    model.eval()
    model.requires_grad_(False)
    return model, self.load_tokenizer(must_use_cache=must_use_cache)

tl.trange = trange
ing.Model.load = load
train = tl.Train(model=ing.Model(name=folder, precision="float32"),
                 data=ing.Data(name=[data], max_length=seq_len), opt=ing.Optimizer(),
                 dist=ing.Distributed(per_gpu_batch_size=batch), output=Path(out),
                 num_steps=steps, tokens_per_step=batch * seq_len)
train.execute()
print("RESULT " + json.dumps({"stamps": stamps, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def ours_child(model: str, data: str, seq_len: int, batch: int, steps: int, precision: str) -> None:
    """tokenprobe's side, in its own process: load, pack, then time optimiser steps."""
    import tokenprobe
    from tokenprobe.tuned import pack, read_corpus
    from tokenprobe.tuned.train import Hyper, Trainer, frozen

    lm = tokenprobe.load(model, device="cpu", dtype="float32")
    sequences = pack(read_corpus(data), lm.tokenizer, seq_len, max_sequences=steps * batch)
    hyper = Hyper(
        tokens=steps * batch * seq_len, seq_len=seq_len, batch_size=batch, precision=precision
    )
    trainer = Trainer(lm, sequences, hyper, batch_tokens=batch * seq_len, memory_mb=None)
    stamps = [time.perf_counter()]
    with frozen(lm.model):
        for step in range(steps):
            trainer.step(step)
            stamps.append(time.perf_counter())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"stamps": stamps, "peak_mb": peak}))


def run_child(argv: list[str], env: dict[str, str]) -> dict | None:
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    print("    failed: " + " | ".join(tail))
    return None


def throughput(result: dict | None, per_step: int) -> tuple[float, float, float] | None:
    """(tokens/s after the warm-up step, seconds per step, peak MB)."""
    if result is None:
        return None
    stamps = result["stamps"]
    timed_steps = len(stamps) - 2  # the first interval is the warm-up step
    seconds = (stamps[-1] - stamps[1]) / timed_steps
    return per_step / seconds, seconds, result["peak_mb"]


def training(args: argparse.Namespace, folder: str, tmp: Path) -> None:
    import tokenprobe.tuned  # noqa: F401 - the packaged sample's path
    from tokenprobe.tuned import read_corpus

    data = tmp / "texts.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for text in read_corpus("sample:emotion"):
            f.write(json.dumps({"text": text}) + "\n")
    steps = args.steps + 1
    per_step = args.batch * args.seq_len
    print(
        f"training: {args.batch} sequences x {args.seq_len} tokens per step, 1 warm-up + {args.steps} timed steps, "
        f"best of {args.rounds} round(s) taken in turns"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    here = [
        sys.executable,
        __file__,
        "--child",
        args.model,
        str(data),
        str(args.seq_len),
        str(args.batch),
        str(steps),
    ]
    sides = {f"tokenprobe {p}": ([*here, p], env) for p in ("float32", "bfloat16")}
    peer = args.peer_python or os.environ.get("TUNED_LENS_PYTHON")
    if peer:
        argv = [
            peer,
            "-c",
            PEER,
            folder,
            str(data),
            str(args.seq_len),
            str(args.batch),
            str(steps),
            str(tmp / "peer"),
        ]
        sides["tuned-lens package"] = (argv, {**env, "WANDB_MODE": "disabled"})
    else:
        print("  tuned-lens package: not run (give --peer-python, the python of its virtualenv)")
    rows: dict[str, tuple[float, float, float] | None] = {name: None for name in sides}
    for _ in range(args.rounds):  # the sides take turns; each keeps its best round
        for name, (argv, child_env) in sides.items():
            row = throughput(run_child(argv, child_env), per_step)
            if row is not None and (rows[name] is None or row[0] > rows[name][0]):
                rows[name] = row
    print(f"{'trainer':<22}{'tokens/s':>10}{'s/step':>10}{'peak MB':>10}")
    for name, row in rows.items():
        if row is not None:
            print(f"{name:<22}{row[0]:>10.1f}{row[1]:>10.2f}{row[2]:>10.0f}")
    theirs = rows.get("tuned-lens package")
    for precision in ("float32", "bfloat16"):
        ours = rows.get(f"tokenprobe {precision}")
        if ours and theirs:
            print(
                f"tokenprobe {precision} vs tuned-lens package (bfloat16 autocast): {ours[0] / theirs[0]:.2f}x "
                f"the throughput, {ours[2] / theirs[2]:.2f}x the peak memory"
            )


def applying(args: argparse.Namespace, lm) -> None:
    from lens import prompts_of

    import tokenprobe
    from tokenprobe import TunedDecoder, TunedLens
    from tokenprobe.tuned import residual_width

    batch = prompts_of(lm.tokenizer, args.prompts, args.tokens)
    inputs = [
        tokenprobe.PreparedInput(prompt="", text="", input_ids=list(p), tokens=[""] * len(p))
        for p in batch
    ]
    lens = TunedLens(lm.n_blocks, residual_width(lm)).to(lm.device)
    with torch.no_grad():
        for p in lens.parameters():
            p.normal_(0, 0.01)
    decoder = TunedDecoder(lens, lm.require_adapter())
    logit = timed(
        lambda: tokenprobe.logit_lens(lm, inputs, progress=False), args.repeats, lm.device
    )
    tuned = timed(
        lambda: tokenprobe.logit_lens(lm, inputs, progress=False, decoder=decoder),
        args.repeats,
        lm.device,
    )
    print(
        f"applying: {args.prompts} prompts x {args.tokens} tokens, {lm.n_layers} rows, median of {args.repeats}"
    )
    print(f"{'lens':<22}{'seconds':>10}{'peak MB':>10}")
    print(f"{'logit lens':<22}{logit[0]:>10.3f}{logit[1]:>10.0f}")
    print(f"{'tuned lens':<22}{tuned[0]:>10.3f}{tuned[1]:>10.0f}")
    print(f"tuned lens / logit lens: {tuned[0] / logit[0]:.2f}x (goal <= 1.3x)")
    width = residual_width(lm)
    params = lm.n_blocks * (width * width + width)
    print(
        f"a tuned lens for {lm.name}: {lm.n_blocks} translators of {width}x{width} + bias = {params:,} "
        f"parameters, {params * 2 / 2**20:.1f} MiB in float16, {params * 4 / 2**20:.1f} MiB in float32"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument(
        "--peer-python", help="python of a virtualenv with tuned-lens (or TUNED_LENS_PYTHON)"
    )
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of the training sides, in turns (best kept)"
    )
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-applying", action="store_true")
    args = parser.parse_args()

    import tokenprobe

    lm = tokenprobe.load(args.model, device="cpu", dtype="float32")
    print(
        f"model {lm.name} ({lm.n_blocks} blocks) on {lm.device}, {lm.dtype}; torch threads {torch.get_num_threads()}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_training:
            training(args, lm.folder, Path(tmp))
    if not args.skip_applying:
        applying(args, lm)
    print(
        f"load average at the end {os.getloadavg()[0]:.1f} (other processes share these CPUs: compare sides, not runs)"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, data, seq_len, batch, steps, precision = sys.argv[2:8]
        ours_child(model, data, int(seq_len), int(batch), int(steps), precision)
        sys.exit(0)
    sys.exit(main())
