"""Benchmark encoder-decoder attribution against inseq: parity and speed, on a tiny Marian and a
tiny T5 built here (random weights, a byte-level BPE tokenizer trained on a few sentences).

    .venv-inseq/bin/python bench/seq2seq.py [--steps 32] [--tokens 8] [--repeats 2] [--smoke]

(1) Parity: saliency and integrated gradients (unk baseline, Gauss-Legendre steps) of each
target token's probability, on a given target: ours against inseq's source and target
attributions summed over embedding dimensions (the definitions agree: both attribute what each
side embeds, Marian's embed_scale included, and inseq's target positions are our decoder
inputs). Where they differ: inseq has no log-probability step function (we score by
probability for it), its target matrix has NaN where we write 0 (decoder inputs at or after
the predicted token), and it cannot remove tokens (ablation/occlusion/Shapley are not compared).
On Marian, transformers 5.25's forward with `decoder_inputs_embeds` (what inseq passes) is not
its forward with `decoder_input_ids` past the first decoder position (probabilities differ by
up to ~20% on the tiny model here): inseq then attributes another function than the model's,
and only the first target token agrees; we hook the embedding output and keep the ids' forward.
(2) Speed: generate-then-attribute 8 sentences with integrated gradients, each tool's one call
for all 8: tokenprobe's `attribute_rows(generate=N)` (`attribute --data`: the sentences
generated together, then attributed one at a time) and inseq's `attribute` (batched), with
the ratio and the floor: one bare batched forward + backward over the same interpolations.
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

SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "What is the capital of Australia?",
    "She sells sea shells by the sea shore.",
    "The house is wonderful and the garden is green.",
    "We will meet again at noon tomorrow.",
    "Tools: hammer, wrench, level, pliers.",
    "Time flies like an arrow; fruit flies like a banana.",
]
TARGET = "Die Katze sass auf der Matte."
FLOOR = "bare batched forward + backward over the same interpolations"


def tokenizer() -> object:
    """A byte-level BPE tokenizer trained on the sentences (pad = eos, unk apart)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<unk>", "<pad>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([*SENTENCES, TARGET] * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )


def tiny(arch: str, tok: object, width: int, layers: int) -> tokenprobe.LoadedModel:
    """A random tiny Marian or T5 (float32, eval), its decoder starting at the pad token."""
    from transformers import AutoModelForSeq2SeqLM, MarianConfig, T5Config

    vocab = len(tok)  # type: ignore[arg-type]
    ids = {k: getattr(tok, k) for k in ("pad_token_id", "eos_token_id")}
    if arch == "marian":
        config = MarianConfig(
            vocab_size=vocab, d_model=width, encoder_layers=layers, decoder_layers=layers,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=4 * width,
            decoder_ffn_dim=4 * width, max_position_embeddings=128, scale_embedding=True,
            decoder_start_token_id=ids["pad_token_id"], **ids,
        )  # fmt: skip
    else:
        config = T5Config(
            vocab_size=vocab, d_model=width, d_kv=width // 4, d_ff=4 * width, num_layers=layers,
            num_heads=4, decoder_start_token_id=ids["pad_token_id"], **ids,
        )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config, dtype=torch.float32).eval()
    model.generation_config.decoder_start_token_id = ids["pad_token_id"]
    # random weights may end a sentence at once: every sentence gets its N tokens, both tools
    model.generation_config.suppress_tokens = [ids["eos_token_id"], ids["pad_token_id"]]
    return tokenprobe.LoadedModel.wrap(model, tok, name=f"tiny-{arch}")


def parity(lm: tokenprobe.LoadedModel, inseq: object, steps: int) -> str:
    """Largest |ours - inseq's| (relative to the largest value) for saliency and IG."""
    notes = []
    for method in ("saliency", "integrated_gradients"):
        ours = tokenprobe.attribute(
            lm, SENTENCES[0], target=TARGET, method=method, score="prob", steps=steps,
            ig_baseline="unk", progress=False,
        )  # fmt: skip
        wrapped = inseq.load_model(lm.model, method, tokenizer=lm.tokenizer)  # type: ignore[attr-defined]
        extra = {"n_steps": steps, "internal_batch_size": steps} if method != "saliency" else {}
        seq = wrapped.attribute(
            input_texts=SENTENCES[0], generated_texts=TARGET, attribute_target=True,
            attributed_fn="probability", show_progress=False, **extra,
        ).sequence_attributions[0]  # fmt: skip
        src = seq.source_attributions.sum(-1).T.double().numpy()  # (rows, source)
        tgt = seq.target_attributions.sum(-1).T.double().numpy()[:, :-1]  # (rows, inputs)
        theirs = np.nan_to_num(np.concatenate([src, tgt], axis=1))
        if theirs.shape != ours.scores.shape:
            notes.append(f"{method}: shapes differ {theirs.shape} vs {ours.scores.shape}")
            continue
        top = float(np.abs(ours.scores).max())
        diff = np.abs(ours.scores - theirs).max(axis=1)
        notes.append(
            f"{method}: max |diff| {diff.max():.1e}, first target token {diff[0]:.1e} "
            f"(max |attr| {top:.1e})"
        )
    return "; ".join(notes)


def floor(
    lm: tokenprobe.LoadedModel, sentences: list[str], made: list[list[int]], steps: int
) -> float:
    """Seconds for one forward + backward of every sentence's steps, batched, padded."""
    from tokenprobe.model.seq2seq_input import pad_batch

    tok = lm.tokenizer
    sources = [tok(s)["input_ids"] for s in sentences] * steps
    decoders = made * steps
    batch = pad_batch(sources, decoders, lm.model.config.pad_token_id)
    emb = lm.model.get_input_embeddings()

    def run() -> None:
        x = emb(batch["input_ids"]).detach().requires_grad_(True)
        y = emb(batch["decoder_input_ids"]).detach().requires_grad_(True)
        out = lm.model(
            inputs_embeds=x, attention_mask=batch["attention_mask"], decoder_inputs_embeds=y,
            decoder_attention_mask=batch["decoder_attention_mask"], use_cache=False,
        )  # fmt: skip
        out.logits.log_softmax(-1).max(-1).values.sum().backward()

    return timed(run, 1, lm.device)[0]


def speed(lm: tokenprobe.LoadedModel, inseq: object, args: argparse.Namespace) -> None:
    """Generate-then-attribute the 8 sentences with IG: tokenprobe, inseq, the floor."""
    sentences = SENTENCES[: args.sentences]

    def ours() -> tokenprobe.RowSet:
        return tokenprobe.attribute_rows(
            lm, sentences, generate=args.tokens, method="integrated_gradients",
            steps=args.steps, score="prob", progress=False,
        )  # fmt: skip

    t_ours, mem_ours = timed(ours, args.repeats, lm.device)
    done = ours()
    made = [done.result(i).meta["decoder_ids"][:-1] for i in range(len(sentences))]
    t_floor = floor(lm, sentences, made, args.steps)
    line = f"{lm.name}: {len(sentences)} sentences x {args.tokens} tokens, IG {args.steps} steps"
    print(f"{line}: tokenprobe {t_ours:.2f}s ({t_ours / t_floor:.1f}x the floor {t_floor:.3f}s)")
    peers = {}
    note = "inseq not installed (run in .venv-inseq)"
    if inseq is not None:
        wrapped = inseq.load_model(lm.model, "integrated_gradients", tokenizer=lm.tokenizer)  # type: ignore[attr-defined]

        def theirs() -> object:
            return wrapped.attribute(
                input_texts=sentences, attribute_target=True, attributed_fn="probability",
                n_steps=args.steps, internal_batch_size=args.steps * len(sentences),
                generation_args={"max_new_tokens": args.tokens, "do_sample": False},
                show_progress=False,
            )  # fmt: skip

        t_peer, mem_peer = timed(theirs, args.repeats, lm.device)
        peers["inseq IG"] = (t_peer, mem_peer)
        note = f"inseq {version('inseq')} {t_peer:.2f}s: tokenprobe {t_peer / t_ours:.2f}x faster"
        print(f"{'':<{len(lm.name)}}  {note} ({t_peer / t_floor:.1f}x the floor)")
    record(
        f"seq2seq generate+IG {len(sentences)} sentences ({lm.name})",
        tokenprobe=(t_ours, mem_ours),
        floor=t_floor,
        floor_name=FLOOR,
        peers=peers,
        notes=note,
        lm=lm,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    add_args(parser)
    args = configure(parser.parse_args())
    if args.smoke:
        args.steps, args.tokens, args.sentences, args.width, args.repeats = 4, 3, 2, 32, 1
    try:
        import inseq
    except ImportError:
        inseq = None
    tok = tokenizer()
    for arch in ("marian", "t5"):
        lm = tiny(arch, tok, args.width, args.layers)
        if inseq is not None:
            print(f"{lm.name} parity with inseq: {parity(lm, inseq, args.steps)}")
        speed(lm, inseq, args)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
