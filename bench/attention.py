"""Benchmark attention weights through tokenprobe against a forward with eager attention.

    python bench/attention.py [--model tiny|smollm2|PATH] [--tokens 1024] [--repeats 3]

The floor is one forward pass of the same model switched to eager attention with
`output_attentions=True` (every layer's and head's weights) on a prompt of --tokens tokens.
tokenprobe records the same weights while the model runs with its own kernel (sdpa), on the
CPU in float32 (goal: within 1.5x of the floor); `attention()` adds the long table and the
once-per-run eager check. "tiny" is a random Llama of SmolLM2's width (hidden 576, 9 heads,
3 key/value heads) with 6 blocks. Prints seconds, the ratio and peak memory.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from _common import add_args, configure, record, timed

import tokenprobe
from tokenprobe.analyses.attention import attention, recording

WORDS = "the capital of australia is canberra not sydney tools hammer wrench fruits plum".split()


def tiny(device: str) -> tokenprobe.LoadedModel:
    """A random SmolLM2-wide Llama (6 blocks) with a small byte-level BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False
    )
    tk.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=6,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=4096,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval().to(device)
    return tokenprobe.LoadedModel.wrap(model, tok, name="tiny-llama-576")


def prompt_of(lm: tokenprobe.LoadedModel, n: int) -> tuple[str, torch.Tensor]:
    """A prompt of exactly n tokens (words repeated, cut by tokens) and its ids."""
    text = " ".join(WORDS[i % len(WORDS)] for i in range(4 * n))
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    return lm.tokenizer.decode(ids), torch.tensor([ids], device=lm.device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    add_args(parser)
    args = configure(parser.parse_args())
    if args.smoke:
        args.tokens, args.repeats = 32, 1
    if args.model == "tiny":
        lm = tiny(args.device)
    else:
        lm = tokenprobe.load(args.model, device=args.device, dtype="float32")
    text, ids = prompt_of(lm, args.tokens)
    own = lm.model.config._attn_implementation
    print(f"model {lm.name} on {lm.device} ({own}); torch threads {torch.get_num_threads()}; "
          f"{ids.shape[1]} tokens")  # fmt: skip

    def floor() -> object:
        lm.model.set_attn_implementation("eager")
        try:
            with torch.inference_mode():
                out = lm.model(input_ids=ids, use_cache=False, output_attentions=True)
            return [a[0].float().cpu() for a in out.attentions]
        finally:
            lm.model.set_attn_implementation(own)

    def ours() -> object:
        with recording(lm) as rec, torch.inference_mode():
            lm.model(input_ids=ids, use_cache=False)
        return rec.weights

    results = {
        "eager + output_attentions (floor)": timed(floor, args.repeats, lm.device),
        "tokenprobe recording": timed(ours, args.repeats, lm.device),
        "tokenprobe attention() + table": timed(
            lambda: attention(lm, text, max_cells=10**9, eager_check=False), args.repeats, lm.device
        ),
        "  ... + the eager check": timed(
            lambda: attention(lm, text, max_cells=10**9), args.repeats, lm.device
        ),
    }
    base = results["eager + output_attentions (floor)"][0]
    print(f"{'method':<36}{'seconds':>9}{'x floor':>9}{'peak MB':>10}")
    for name, (sec, peak) in results.items():
        print(f"{name:<36}{sec:>9.3f}{sec / base:>9.2f}{peak:>10.0f}")
    floor = results["eager + output_attentions (floor)"]
    for job, name in (
        ("recording", "tokenprobe recording"),
        ("attention() + table", "tokenprobe attention() + table"),
        ("attention() + table + eager check", "  ... + the eager check"),
    ):
        record(
            f"attention weights, {ids.shape[1]} tokens: {job}",
            tokenprobe=results[name],
            floor=floor,
            floor_name="one eager forward with output_attentions",
            lm=lm,
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
