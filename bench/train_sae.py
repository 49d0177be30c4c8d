"""Benchmark `train-sae` against sae-lens's own training loop: tokens per second of training a
TopK SAE on the same model, layer, latents, k, sequence length and tokens per step.

    python bench/train_sae.py [--model smollm2] [--layer 15] [--latents 8192] [--k 32]
                              [--seq-len 256] [--batch 8] [--steps 16] [--data FILE]
                              [--peer-python .venv-sae/bin/python]

Each side runs in a fresh process, in turns for `--rounds` rounds (each keeps its best: other
processes on a shared machine slow whichever side they overlap):

- tokenprobe: `train_sae` (activations streamed from the model, the forward stopped at the
  site; Adam, AuxK) with no held-out evaluation;
- sae-lens 6.54: `LanguageModelSAETrainingRunner.run()` unmodified with a
  `TopKTrainingSAEConfig`, the model loaded as `AutoModelForCausalLM` from the same folder
  (its `HookedProxyLM`, hook `model.layers.{L-1}`: the residual stream after L blocks; it
  also stops the forward there), the same texts as an `override_dataset`, its activation
  buffer at 2 training batches (`n_batches_in_buffer` counts sequences), no wandb, no checkpoints.

Both include making the activations (the model's forward), which dominates on a CPU. `total`
is tokens / wall time of the whole training call; `steady` leaves out the first step (the
warm-up, and for sae-lens the first buffer fill). Peak memory is the process's maximum RSS.
The text: `--data`, else every .md/.rst/METADATA file under this Python's site-packages (the
machine has no network; the speed does not depend on what the text says).
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
from _common import add_args, configure, record

ROOT = Path(__file__).resolve().parent.parent

PEER = r"""
import json, os, resource, sys, time
import torch
if os.environ.get("THREADS"):
    torch.set_num_threads(int(os.environ["THREADS"]))
from datasets import Dataset
from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
from sae_lens import LoggingConfig, TopKTrainingSAEConfig
from sae_lens.training import sae_trainer

folder, data, layer, latents, k, seq_len, batch, steps, lr, width = sys.argv[1:11]
layer, latents, k, seq_len, batch, steps, width = map(int, (layer, latents, k, seq_len, batch, steps, width))
texts = [t for t in open(data, encoding="utf-8").read().split("\n\n") if t.strip()]
stamps = []
original = sae_trainer.SAETrainer.step
def step(self, *a, **kw):
    out = original(self, *a, **kw)
    stamps.append(time.perf_counter())
    return out
sae_trainer.SAETrainer.step = step
cfg = LanguageModelSAERunnerConfig(
    sae=TopKTrainingSAEConfig(d_in=width, d_sae=latents, k=k, aux_loss_coefficient=1 / 32),
    model_name=folder, model_class_name="AutoModelForCausalLM", hook_name=f"model.layers.{layer - 1}",
    dataset_path="local", is_dataset_tokenized=False, streaming=False, context_size=seq_len,
    training_tokens=steps * batch * seq_len, train_batch_size_tokens=batch * seq_len,
    store_batch_size_prompts=batch, n_batches_in_buffer=2 * batch, lr=float(lr), device="cpu",
    logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=None,
    n_checkpoints=0, verbose=False,
)
runner = LanguageModelSAETrainingRunner(cfg, override_dataset=Dataset.from_dict({"text": texts}))
t0 = time.perf_counter()
runner.run()
t1 = time.perf_counter()
print(json.dumps({"seconds": t1 - t0, "stamps": [s - t0 for s in stamps],
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def corpus(path: Path) -> Path:
    """The default text: the package documentation under site-packages, one file a paragraph."""
    site = Path(sys.prefix) / "lib"
    files = sorted([*site.rglob("*.md"), *site.rglob("*.rst"), *site.rglob("METADATA")], key=str)
    texts = [f.read_text(encoding="utf-8", errors="ignore").strip() for f in files]
    path.write_text("\n\n".join(t for t in texts if t), encoding="utf-8")
    return path


def ours(args: argparse.Namespace) -> dict:
    """One tokenprobe run in this process (`--side ours`)."""
    import tokenprobe
    import tokenprobe.sae.train as train_module
    from tokenprobe.analyses.train_sae import train_sae

    lm = tokenprobe.load(args.model)
    texts = [t for t in Path(args.data).read_text(encoding="utf-8").split("\n\n") if t.strip()]
    stamps: list[float] = []
    train_module.step_done = lambda step: stamps.append(time.perf_counter())
    t0 = time.perf_counter()
    result = train_sae(lm, texts, layer=args.layer, latents=args.latents, k=args.k,
                       seq_len=args.seq_len, batch_size=args.batch_size,
                       tokens=args.steps * args.batch_size * args.seq_len, eval_tokens=0,
                       progress=False)  # fmt: skip
    t1 = time.perf_counter()
    return {
        "seconds": t1 - t0,
        "stamps": [s - t0 for s in stamps],
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "fve_last": float(result.table["fve"][-1]),
        "folder": str(lm.folder),
        "name": lm.name,
        "width": lm.require_adapter().width,
    }


def rates(run: dict, per_step: int, steps: int) -> dict:
    stamps = run["stamps"]
    steady = (len(stamps) - 1) * per_step / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None
    return {"total": steps * per_step / run["seconds"], "steady": steady, "rss_mb": run["rss_mb"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--latents", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", dest="batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--data")
    p.add_argument("--peer-python", default=str(ROOT / ".venv-sae" / "bin" / "python"))
    p.add_argument("--side", choices=["both", "ours"], default="both")
    add_args(p)
    args = configure(p.parse_args())
    if args.smoke:
        args.latents, args.k, args.seq_len, args.batch_size, args.steps = 256, 8, 32, 2, 2
    os.environ["THREADS"] = str(torch.get_num_threads())  # both sides' processes use as many
    if args.side == "ours":
        print(json.dumps(ours(args)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-train-sae-"))
    args.data = args.data or str(corpus(work / "corpus.txt"))
    per_step = args.batch_size * args.seq_len
    lr = 2e-4 / (args.latents / 2**14) ** 0.5
    best: dict[str, dict] = {}
    model_name = args.model
    for _ in range(args.rounds):
        me = [sys.executable, __file__, "--side", "ours", "--data", args.data]
        me += [f"--{k.replace('_', '-')}={v}" for k, v in (
            ("model", args.model), ("layer", args.layer), ("latents", args.latents),
            ("k", args.k), ("seq_len", args.seq_len), ("steps", args.steps))]  # fmt: skip
        me += [f"--batch={args.batch_size}"]
        out = subprocess.run(me, capture_output=True, text=True, check=True).stdout
        run = json.loads(out.strip().splitlines()[-1])
        model_name = run["name"]
        mine = rates(run, per_step, args.steps) | {"fve_last": run["fve_last"]}
        if mine["total"] > best.get("tokenprobe", {}).get("total", 0):
            best["tokenprobe"] = mine
        if not Path(args.peer_python).is_file():
            continue
        peer = [args.peer_python, "-c", PEER, run["folder"], args.data, *map(str, (
            args.layer, args.latents, args.k, args.seq_len, args.batch_size, args.steps, lr,
            run["width"]))]  # fmt: skip
        done = subprocess.run(peer, capture_output=True, text=True, check=False)
        if done.returncode:
            best["sae-lens"] = {"error": done.stderr.strip().splitlines()[-1]}
            continue
        theirs = rates(json.loads(done.stdout.strip().splitlines()[-1]), per_step, args.steps)
        if theirs["total"] > best.get("sae-lens", {}).get("total", 0):
            best["sae-lens"] = theirs
    setup = {k: getattr(args, k) for k in ("model", "layer", "latents", "k", "seq_len",
                                           "batch_size", "steps")}  # fmt: skip
    print(json.dumps({"setup": setup, "tokens_per_s": best}, indent=1))
    tokens = args.steps * per_step

    def seconds(side: dict) -> tuple[float, float]:
        return tokens / side["total"], side["rss_mb"]

    peer = best.get("sae-lens", {})
    record(
        f"train-sae TopK, {args.latents} latents, k {args.k}, {tokens} tokens",
        tokenprobe=seconds(best["tokenprobe"]),
        peers={"sae-lens": seconds(peer)} if "total" in peer else {},
        notes=f"peak memory: whole process RSS; sae-lens: {peer['error']}"
        if "error" in peer
        else "peak memory: whole process RSS (model included)",
        model=model_name,
    )


if __name__ == "__main__":
    main()
