"""Tiny random models and a tiny tokenizer, built in-process (no downloads, a second or two)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from tokenprobe.tuned import TunedLens

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The tiny models live here: `TOKENPROBE_TEST_DEVICE=cuda pytest -m "not slow"` runs the fast
# suite on a GPU (CI has none, so the default is the CPU).
TEST_DEVICE = torch.device(os.environ.get("TOKENPROBE_TEST_DEVICE", "cpu"))

CORPUS = [
    "What is the capital of Australia? The capital of Australia is Canberra, not Sydney.",
    "Tools: hammer, wrench, level, pliers. Fruits: orange, peach, banana, plum.",
    "The quick brown fox jumps over the lazy dog.\nHello world!\tTabs and newlines.",
    "I couldn't believe it: 8 x 48 = 384 and 3 x 4 = 12.",
] * 5
CHATML = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)


def make_tokenizer(vocab_size: int = 400, corpus: Sequence[str] | None = None):
    """A byte-level BPE tokenizer (GPT-2 style) trained on a few sentences (or `corpus`), with
    a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS if corpus is None else corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def _configs(vocab: int) -> dict[str, Callable[[], object]]:
    from transformers import Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=128,
    )
    return {
        "llama": lambda: LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False),
        "qwen2": lambda: Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True),
        "gemma2": lambda: Gemma2Config(
            **common,
            num_key_value_heads=2,
            head_dim=8,
            final_logit_softcapping=2.0,
            attn_logit_softcapping=50.0,
            tie_word_embeddings=True,
            query_pre_attn_scalar=8,
            sliding_window=64,
        ),
        "gpt2": lambda: GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_positions=128
        ),
        "gpt_neox": lambda: GPTNeoXConfig(
            **common, tie_word_embeddings=False, use_parallel_residual=True
        ),
    }


ARCHS = ["llama", "qwen2", "gemma2", "gpt2", "gpt_neox"]


def make_model(arch: str, tokenizer, seed: int = 0):
    """A tiny random causal LM of one family, wrapped as a LoadedModel, float32, eval mode, on
    TEST_DEVICE."""
    from transformers import AutoModelForCausalLM

    from tokenprobe import LoadedModel

    torch.manual_seed(seed)
    config = _configs(len(tokenizer))[arch]()
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # larger weights than the default init so the logits are far from uniform
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(8.0)
    return LoadedModel.wrap(model.eval().to(TEST_DEVICE), tokenizer, name=f"tiny-{arch}")


@pytest.fixture(params=ARCHS)
def tiny(request, tokenizer):
    """Each tiny architecture in turn (a fresh copy of the tokenizer, as markers modify it)."""
    import copy

    return make_model(request.param, copy.deepcopy(tokenizer))


@pytest.fixture
def llama(tokenizer):
    import copy

    return make_model("llama", copy.deepcopy(tokenizer))


# ------------------------------------------------ text and lenses shared by the lens tests

WORDS = (
    "the capital of australia is canberra not sydney tools hammer wrench level pliers fruits "
    "orange peach banana plum quick brown fox jumps over lazy dog hello world"
).split()


def texts(seed: int, n: int = 40) -> list[str]:
    """Sentences of the tiny tokenizer's words; another seed gives held-out text."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + "." for _ in range(n)]


def randomised(lens: TunedLens, seed: int = 0) -> TunedLens:
    """The lens with random translators (an identity lens would hide wrong keys or transposes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return lens


# ------------------------------------------------------------------------------- test tiers

# Files whose every test belongs to a tier of its own; `make test` runs every tier, `make
# test-fast` (`-m fast`) only the tests in none of them and not marked slow (a few minutes).
TIERS = {
    "matrix": ("test_conformance.py", "test_cli_matrix.py", "test_sweep_adapter.py",
               "test_sweep_padding.py", "test_sweep_gradients.py",
               "test_attention_zoo.py", "test_attention_seq2seq_zoo.py", "test_trace_heads_matrix.py",
               "test_logit_attribution_zoo.py", "test_features_zoo.py",
               "test_features_data_zoo.py", "test_train_sae_zoo.py",
               "test_seq2seq.py", "test_lens_seq2seq_zoo.py", "test_trace_seq2seq_zoo.py",
               "test_similarity_seq2seq_zoo.py", "test_flips_seq2seq_zoo.py", "test_seq2seq_attribution_zoo.py", "test_flips_prefix_zoo.py",
               "test_attribution_prefix_zoo.py"),  # every architecture
    "interrupt": ("test_interrupt.py", "test_trace_resume.py", "test_checkpoint_rules.py"),
    "ray": ("test_ray.py",),  # a local Ray cluster started in the tests
    "readme": ("test_readme_examples.py",),  # every README example as written
}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test of a tier's files with the tier, and the rest `fast` (unless slow or
    marked with a tier in its own file)."""
    for item in items:
        for tier, files in TIERS.items():
            if item.path.name in files:
                item.add_marker(getattr(pytest.mark, tier))
        if not any(item.get_closest_marker(name) for name in ("slow", *TIERS)):
            item.add_marker(pytest.mark.fast)
