"""Benchmark `features --data` against the floor: the forward pass run only to the dictionary's
layer (batched) plus the encoder's matmul, on the same texts.

    python bench/features.py [--model smollm2] [--texts 8] [--tokens 64] [--layer 15]
                             [--latents 8192] [--repeats 3]

A random ReLU autoencoder of --latents latents reads the residual stream after --layer blocks.
Goal: tokenprobe within 1.3x of the floor. Prints seconds, the ratio and peak memory.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from _common import add_args, configure, record, timed

import tokenprobe
from tokenprobe.analyses.features import feature_contexts
from tokenprobe.runner import pad_batch, pad_id_of
from tokenprobe.sae import Dictionary, SaeSite

PASSAGE = (
    "The history of the printing press begins in the fifteenth century, when movable type made "
    "books cheaper to produce than ever before. Within fifty years presses were running in more "
    "than two hundred cities across Europe, and the number of books in circulation grew from "
    "thousands to millions. Scholars argue about how quickly ordinary readers gained access, "
    "but pamphlets, calendars and broadsheets reached markets and taverns within a generation. "
)


def texts_of(lm: tokenprobe.LoadedModel, n: int, tokens: int) -> list[str]:
    """n texts of about `tokens` tokens each, cut from different places of a long passage."""
    ids = lm.tokenizer(PASSAGE * 8, add_special_tokens=False)["input_ids"]
    return [lm.tokenizer.decode(ids[7 * i : 7 * i + tokens - 1]) for i in range(n)]


def random_sae(width: int, latents: int, layer: int) -> Dictionary:
    g = torch.Generator().manual_seed(0)
    return Dictionary(
        w_enc=torch.randn(width, latents, generator=g) / width**0.5,
        b_enc=-0.5 * torch.rand(latents, generator=g),
        w_dec=torch.randn(latents, width, generator=g) / latents**0.5,
        b_dec=torch.zeros(width),
        activation="relu",
        site=SaeSite("resid", layer),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--latents", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    add_args(parser)
    args = configure(parser.parse_args())
    if args.smoke:
        args.texts, args.tokens, args.latents, args.repeats = 2, 16, 256, 1

    lm = tokenprobe.load(args.model, device=args.device, dtype=args.dtype)
    texts = texts_of(lm, args.texts, args.tokens)
    sae = random_sae(lm.require_adapter().width, args.latents, args.layer)
    on_device = sae.to(lm.device)
    encoded = [lm.tokenizer(t)["input_ids"] for t in texts]
    ids, mask = pad_batch(encoded, pad_id_of(lm.tokenizer), lm.device)
    print(
        f"model {lm.name} on {lm.device}, {lm.dtype}; torch threads {torch.get_num_threads()}; "
        f"{len(texts)} texts, {sum(map(len, encoded))} tokens; {args.latents} latents at "
        f"resid {args.layer}"
    )
    base = lm.model.model
    layers = base.layers

    def floor() -> object:
        base.layers = layers[: args.layer]  # the blocks after the site are not run
        try:
            with torch.inference_mode():
                out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                x = out.hidden_states[args.layer][mask.bool()].float()
                return torch.relu((x - on_device.b_dec) @ on_device.w_enc + on_device.b_enc)
        finally:
            base.layers = layers

    def ours() -> object:
        return feature_contexts(lm, texts, dictionary=sae, top_examples=20, progress=False)

    results = {
        "forward to the layer + encoder (floor)": timed(floor, args.repeats, lm.device),
        "tokenprobe features --data": timed(ours, args.repeats, lm.device),
    }
    floor_s = results["forward to the layer + encoder (floor)"][0]
    print(f"{'method':<40}{'seconds':>9}{'x floor':>9}{'peak MB':>10}")
    for name, (sec, peak) in results.items():
        print(f"{name:<40}{sec:>9.3f}{sec / floor_s:>9.2f}{peak:>10.0f}")
    record(
        f"features --data, {len(texts)} texts, {args.latents} latents",
        tokenprobe=results["tokenprobe features --data"],
        floor=results["forward to the layer + encoder (floor)"],
        floor_name="forward to the dictionary's layer + encoder matmul",
        lm=lm,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
