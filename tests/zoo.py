"""The model zoo of the conformance matrix: tiny random models of every architecture family
transformers builds from a config here (2 blocks, hidden 32), with weights scaled up so that
their outputs are far from uniform and wrong code changes the numbers.

Causal LMs share the test suite's byte-level BPE tokenizer; encoder classifiers get a real
WordPiece (`BertTokenizer`, `[CLS]`/`[SEP]`) or byte-level BPE (`RobertaTokenizer`,
`<s>`/`</s>`) tokenizer, so that their special tokens come from the tokenizer as on the hub.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import torch

H, FF, LAYERS, HEADS, CTX = 32, 64, 2, 4, 128
WINDOW = 8  # sliding windows far shorter than the test texts, so that they matter


def _c(name: str, **kw: Any) -> Callable[[int], Any]:
    def build(vocab: int) -> Any:
        import transformers

        return getattr(transformers, name)(vocab_size=vocab, **kw)

    return build


_STD = dict(
    hidden_size=H,
    intermediate_size=FF,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    max_position_embeddings=CTX,
)
_GQA = dict(_STD, num_key_value_heads=2)
_SLIDING_TYPES = ["sliding_attention", "full_attention"]

# name -> (config factory taking the vocabulary size, what is special about it)
CAUSAL: dict[str, tuple[Callable[[int], Any], str]] = {
    "llama": (_c("LlamaConfig", **_GQA, tie_word_embeddings=False), ""),
    "mistral": (_c("MistralConfig", **_GQA, sliding_window=None), ""),
    "mistral-sliding": (_c("MistralConfig", **_GQA, sliding_window=WINDOW), "sliding window"),
    "mixtral": (
        _c(
            "MixtralConfig", **_GQA, num_local_experts=4, num_experts_per_tok=2, sliding_window=None
        ),
        "mixture of experts",
    ),
    "qwen2": (_c("Qwen2Config", **_GQA, tie_word_embeddings=True), "tied embeddings"),
    "qwen2_moe": (
        _c(
            "Qwen2MoeConfig",
            **_GQA,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
        ),
        "mixture of experts",
    ),
    "qwen3": (_c("Qwen3Config", **_GQA, head_dim=8), ""),
    "qwen3_moe": (
        _c(
            "Qwen3MoeConfig",
            **_GQA,
            head_dim=8,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
        ),
        "mixture of experts",
    ),
    "gemma": (_c("GemmaConfig", **_GQA, head_dim=8), ""),
    "gemma2": (
        _c(
            "Gemma2Config",
            **_GQA,
            head_dim=8,
            sliding_window=WINDOW,
            final_logit_softcapping=5.0,
            query_pre_attn_scalar=8,
        ),
        "sliding window, logit soft-capping",
    ),
    "gemma3": (
        _c(
            "Gemma3TextConfig",
            **_GQA,
            head_dim=8,
            sliding_window=WINDOW,
            layer_types=_SLIDING_TYPES,
            final_logit_softcapping=5.0,
            query_pre_attn_scalar=8,
        ),
        "sliding window, logit soft-capping",
    ),
    "phi": (_c("PhiConfig", **_STD, partial_rotary_factor=0.5), "partial rotary, parallel block"),
    "phi3": (_c("Phi3Config", **_GQA, sliding_window=None, pad_token_id=0), ""),
    "gpt2": (_c("GPT2Config", n_embd=H, n_layer=LAYERS, n_head=HEADS, n_positions=CTX), ""),
    "gpt_neo": (
        _c(
            "GPTNeoConfig",
            hidden_size=H,
            num_layers=LAYERS,
            num_heads=HEADS,
            attention_types=[[["global", "local"], 1]],
            window_size=WINDOW,
            max_position_embeddings=CTX,
        ),
        "local (sliding-window) attention",
    ),
    "gptj": (
        _c("GPTJConfig", n_embd=H, n_layer=LAYERS, n_head=HEADS, rotary_dim=4, n_positions=CTX),
        "",
    ),
    "gpt_neox": (_c("GPTNeoXConfig", **_STD, use_parallel_residual=True), "parallel residual"),
    "gpt_bigcode": (
        _c(
            "GPTBigCodeConfig",
            n_embd=H,
            n_layer=LAYERS,
            n_head=HEADS,
            n_positions=CTX,
            multi_query=True,
        ),
        "multi-query attention",
    ),
    "opt": (
        _c(
            "OPTConfig",
            hidden_size=H,
            ffn_dim=FF,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=CTX,
            word_embed_proj_dim=H,
        ),
        "",
    ),
    "opt-project": (
        _c(
            "OPTConfig",
            hidden_size=H,
            ffn_dim=FF,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=CTX,
            word_embed_proj_dim=16,
        ),
        "project_out after the final norm",
    ),
    "opt-350m": (
        _c(
            "OPTConfig",
            hidden_size=H,
            ffn_dim=FF,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=CTX,
            word_embed_proj_dim=16,
            do_layer_norm_before=False,
        ),
        "post-norm blocks, no final norm, project_out",
    ),
    "bloom": (_c("BloomConfig", hidden_size=H, n_layer=LAYERS, n_head=HEADS), "ALiBi"),
    "falcon-alibi": (
        _c(
            "FalconConfig",
            hidden_size=H,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            alibi=True,
            max_position_embeddings=CTX,
        ),
        "ALiBi",
    ),
    "falcon": (
        _c(
            "FalconConfig",
            hidden_size=H,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            alibi=False,
            new_decoder_architecture=True,
            num_kv_heads=2,
            max_position_embeddings=CTX,
        ),
        "rotary, parallel attention",
    ),
    "mpt": (
        _c(
            "MptConfig",
            d_model=H,
            n_heads=HEADS,
            n_layers=LAYERS,
            expansion_ratio=2,
            max_seq_len=CTX,
        ),
        "ALiBi, context in max_seq_len",
    ),
    "stablelm": (_c("StableLmConfig", **_GQA, partial_rotary_factor=0.25), "partial rotary"),
    "olmo": (_c("OlmoConfig", **_GQA), "non-parametric norm"),
    "olmo2": (_c("Olmo2Config", **_GQA), "norm after attention and MLP"),
    "olmo3": (
        _c("Olmo3Config", **_GQA, sliding_window=WINDOW, layer_types=_SLIDING_TYPES),
        "sliding window",
    ),
    "cohere": (_c("CohereConfig", **_GQA, logit_scale=0.5), "logit scale"),
    "cohere2": (
        _c(
            "Cohere2Config",
            **_GQA,
            logit_scale=0.5,
            sliding_window=WINDOW,
            layer_types=_SLIDING_TYPES,
        ),
        "sliding window, logit scale",
    ),
    "granite": (
        _c(
            "GraniteConfig",
            **_GQA,
            logits_scaling=2.0,
            embedding_multiplier=2.0,
            residual_multiplier=0.5,
            attention_multiplier=0.25,
        ),
        "logit scaling, multipliers",
    ),
    "codegen": (
        _c(
            "CodeGenConfig",
            n_embd=H,
            n_layer=LAYERS,
            n_head=HEADS,
            rotary_dim=4,
            n_positions=CTX,
            n_ctx=CTX,
        ),
        "",
    ),
    "starcoder2": (_c("Starcoder2Config", **_GQA, sliding_window=WINDOW), "sliding window"),
    "smollm3": (_c("SmolLM3Config", **_GQA), "no rotary in some layers"),
    "glm4": (_c("Glm4Config", **_GQA, head_dim=8), "partial rotary"),
    "mamba": (
        _c(
            "MambaConfig",
            hidden_size=H,
            state_size=8,
            num_hidden_layers=LAYERS,
            expand=2,
            conv_kernel=4,
        ),
        "state space, no attention",
    ),
    "mamba2": (
        _c(
            "Mamba2Config",
            hidden_size=H,
            num_hidden_layers=LAYERS,
            num_heads=4,
            head_dim=16,
            expand=2,
            n_groups=1,
            state_size=8,
            chunk_size=16,
        ),
        "state space, no attention",
    ),
    "jamba": (
        _c(
            "JambaConfig",
            **_GQA,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            num_experts=2,
            num_experts_per_tok=1,
            mamba_d_state=8,
            mamba_d_conv=4,
            mamba_expand=2,
            mamba_dt_rank=4,
        ),
        "hybrid attention / state space, mixture of experts",
    ),
}

# Families a sweep of 2026's architectures found wrong or crashing (the "trust, again" issue):
# name -> (config factory, what is special about it). Each joins CAUSAL once every analysis
# is exact on it; until then the tests of its fix build it from here.
SWEEP: dict[str, tuple[Callable[[int], Any], str]] = {
    "gemma3n": (
        lambda v: _c(
            "Gemma3nTextConfig",
            **dict(_GQA, num_hidden_layers=4),
            head_dim=8,
            vocab_size_per_layer_input=v,
            hidden_size_per_layer_input=8,
            sliding_window=WINDOW,
            layer_types=_SLIDING_TYPES * 2,
            num_kv_shared_layers=0,
            laurel_rank=4,
            altup_num_inputs=4,
            activation_sparsity_pattern=[0.0] * 4,
        )(v),
        "four-stream state (AltUp), per-layer inputs",
    ),
    "gemma4": (
        lambda v: _c(
            "Gemma4TextConfig",
            **_GQA,
            head_dim=8,
            vocab_size_per_layer_input=v,
            hidden_size_per_layer_input=8,
            sliding_window=WINDOW,
            layer_types=_SLIDING_TYPES,
        )(v),
        "ids recovered from inputs_embeds, per-layer inputs",
    ),
    "gemma4-shared-kv": (
        lambda v: _c(
            "Gemma4TextConfig",
            **dict(_GQA, num_hidden_layers=4),
            head_dim=8,
            vocab_size_per_layer_input=v,
            hidden_size_per_layer_input=8,
            sliding_window=WINDOW,
            layer_types=_SLIDING_TYPES * 2,
            num_kv_shared_layers=2,
        )(v),
        "upper layers reuse lower layers' keys and values",
    ),
    "falcon_h1": (
        _c(
            "FalconH1Config",
            **_GQA,
            lm_head_multiplier=0.5,
            embedding_multiplier=2.0,
            # the state-space mixer at test size (its defaults, 128 heads x 256 states in chunks
            # of 256, took 13 s a forward of 8 x 20 tokens on the CPU's reference path); chunks
            # of 8, so that every prompt of the tests crosses a chunk boundary
            mamba_n_heads=4,
            mamba_d_head=8,
            mamba_d_ssm=32,
            mamba_d_state=8,
            mamba_chunk_size=8,
        ),
        "hybrid attention / state space, logit and embedding multipliers",
    ),
    "minimax": (
        _c("MiniMaxConfig", **_GQA, head_dim=8, num_local_experts=2, num_experts_per_tok=1),
        "lightning (linear) attention, mixture of experts",
    ),
    "recurrent_gemma": (
        _c(
            "RecurrentGemmaConfig",
            **dict(_GQA, num_hidden_layers=3),
            lru_width=H,
            attention_window_size=WINDOW,
            logits_soft_cap=5.0,
        ),
        "recurrent blocks, logit soft-cap",
    ),
    "rwkv": (
        _c(
            "RwkvConfig",
            hidden_size=H,
            num_hidden_layers=LAYERS,
            attention_hidden_size=H,
            intermediate_size=FF,
            context_length=CTX,
        ),
        "recurrence that ignores the attention mask",
    ),
    "xlstm": (
        _c(
            "xLSTMConfig",
            hidden_size=2 * H,
            embedding_dim=2 * H,
            num_hidden_layers=LAYERS,
            num_blocks=LAYERS,
            num_heads=2,
            qk_dim_factor=1.0,
            output_logit_soft_cap=5.0,
        ),
        "recurrence, logit soft-cap, no logits_to_keep",
    ),
    "doge-window": (
        _c("DogeConfig", **_GQA, keep_window_size=WINDOW),
        "dynamic mask window shorter than the text: not padding-invariant",
    ),
}

# name -> (config factory, tokenizer kind)
CLASSIFIERS: dict[str, tuple[Callable[[int], Any], str]] = {
    "bert": (_c("BertConfig", **_STD), "wordpiece"),
    "roberta": (_c("RobertaConfig", **_STD, pad_token_id=1), "roberta"),
    "distilbert": (
        _c(
            "DistilBertConfig",
            dim=H,
            hidden_dim=FF,
            n_layers=LAYERS,
            n_heads=HEADS,
            max_position_embeddings=CTX,
        ),
        "wordpiece",
    ),
    "deberta_v2": (_c("DebertaV2Config", **_STD), "wordpiece"),
    "electra": (_c("ElectraConfig", **_STD, embedding_size=16), "wordpiece"),
    "albert": (_c("AlbertConfig", **_STD, embedding_size=16), "wordpiece"),
    "llama": (_c("LlamaConfig", **_GQA), "bpe"),
    "gpt2": (_c("GPT2Config", n_embd=H, n_layer=LAYERS, n_head=HEADS, n_positions=CTX), "bpe"),
}
CLASS_LABELS = ["anger", "joy", "sadness"]


def _scale(model: torch.nn.Module, factor: float, head: float = 1.0) -> None:
    """Larger weights than the default init (and a larger unembedding by `head`), so the
    outputs are far from uniform."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "norm" not in name:
                p.mul_(factor)
        out = model.get_output_embeddings()
        if out is not None and head != 1.0:
            out.weight.mul_(head)


SCALE = {
    "mamba": 3.0,
    "mamba2": 3.0,
    "jamba": 3.0,
    "rwkv": 2.0,
    "gemma4": 4.0,
}  # state-space layers blow up at 8x
HEAD = {"gemma": 2.0, "gemma2": 6.0, "gemma3": 6.0, "jamba": 16.0}  # tied or soft-capped heads


def make_causal(
    arch: str,
    tokenizer: Any,
    device: torch.device | str = "cpu",
    seed: int = 0,
    layers: int | None = None,
):
    """A tiny random causal LM of `arch` (with `layers` blocks instead of the usual number),
    wrapped as a LoadedModel (a fresh tokenizer copy)."""
    from transformers import AutoModelForCausalLM

    from tokenprobe import LoadedModel

    tok = copy.deepcopy(tokenizer)
    torch.manual_seed(seed)
    config = {**CAUSAL, **SWEEP}[arch][0](len(tok))
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config, attr, getattr(tok, attr))
    if layers is not None:
        config.num_hidden_layers = layers
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _scale(model, SCALE.get(arch, 8.0), head=HEAD.get(arch, 4.0))
    return LoadedModel.wrap(model.eval().to(device), tok, name=f"tiny-{arch}")


def wordpiece_tokenizer(tmp: Any, corpus: list[str]) -> Any:
    """A BERT WordPiece tokenizer over the corpus's words ([CLS] text [SEP])."""
    import re

    from transformers import BertTokenizer

    words = sorted({w for text in corpus for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *words,
        *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"),
    ]
    path = tmp / "vocab.txt"
    path.write_text("\n".join(vocab), encoding="utf-8")
    return BertTokenizer(str(path))


def roberta_tokenizer(bpe: Any) -> Any:
    """A RoBERTa byte-level BPE tokenizer (<s> text </s>) with the test BPE's vocabulary."""
    from transformers import RobertaTokenizer

    model = json.loads(bpe.backend_tokenizer.to_str())["model"]
    specials = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0-4, as in RoBERTa
    vocab = {t: i for i, t in enumerate(specials)}
    for token in sorted(model["vocab"], key=model["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    return RobertaTokenizer(vocab=vocab, merges=merges)


def make_classifier(arch: str, tokenizer: Any, device: torch.device | str = "cpu", seed: int = 0):
    """A tiny random sequence classifier of `arch` with three labels, wrapped as a LoadedModel."""
    from transformers import AutoModelForSequenceClassification

    from tokenprobe import LoadedModel

    torch.manual_seed(seed)
    config = CLASSIFIERS[arch][0](len(tokenizer))
    config.num_labels = len(CLASS_LABELS)
    config.id2label = dict(enumerate(CLASS_LABELS))
    config.label2id = {v: k for k, v in config.id2label.items()}
    if tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    _scale(model, 4.0)
    with torch.no_grad():  # and a sharper head, so that the predicted class varies
        for name, p in model.named_parameters():
            if name.startswith(("classifier", "score", "pre_classifier", "sequence_summary")):
                p.mul_(16.0)
    return LoadedModel.wrap(model.eval().to(device), tokenizer, name=f"tiny-{arch}-classifier")


# ----------------------------------------------------------------------------- encoder-decoder

_BART = dict(
    d_model=H,
    encoder_layers=LAYERS,
    decoder_layers=LAYERS,
    encoder_attention_heads=HEADS,
    decoder_attention_heads=HEADS,
    encoder_ffn_dim=FF,
    decoder_ffn_dim=FF,
    max_position_embeddings=CTX,
)
_T5 = dict(
    d_model=H, d_kv=8, d_ff=FF, num_layers=LAYERS, num_decoder_layers=LAYERS, num_heads=HEADS
)
_GEMMA_MODULE = dict(
    hidden_size=H,
    intermediate_size=FF,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=2,
    head_dim=8,
    query_pre_attn_scalar=8,
    sliding_window=WINDOW,
    max_position_embeddings=CTX,
)


def _t5gemma(vocab: int) -> Any:
    from transformers import T5GemmaConfig, T5GemmaModuleConfig

    module = dict(_GEMMA_MODULE, vocab_size=vocab)
    return T5GemmaConfig(
        encoder=T5GemmaModuleConfig(**module),
        decoder=T5GemmaModuleConfig(**module, final_logit_softcapping=5.0),
        vocab_size=vocab,
    )


def _fsmt(vocab: int) -> Any:
    from transformers import FSMTConfig

    return FSMTConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, **_BART)


# name -> (config factory taking the vocabulary size, what is special about it); each with
# 2 encoder and 2 decoder blocks. Left out: prophetnet (its decoder runs n-gram streams whose
# states are not one residual stream), encoder-decoder (EncoderDecoderModel: two whole models
# glued by a config), t5gemma2 (its encoder takes images), seamless_m4t (speech).
SEQ2SEQ: dict[str, tuple[Callable[[int], Any], str]] = {
    "t5": (_c("T5Config", **_T5), "tied head: decoder output x d_model ** -0.5"),
    "t5-untied": (_c("T5Config", **_T5, tie_word_embeddings=False), "T5 v1.1: no output scaling"),
    "mt5": (_c("MT5Config", **_T5, tie_word_embeddings=False), "untied head"),
    "umt5": (_c("UMT5Config", **_T5, tie_word_embeddings=False), "per-layer position biases"),
    "longt5": (
        _c("LongT5Config", **_T5, local_radius=4, global_block_size=4),
        "local encoder attention",
    ),
    "switch_transformers": (
        _c(
            "SwitchTransformersConfig",
            **_T5,
            num_experts=4,
            expert_capacity=64,
            num_sparse_encoder_layers=1,
            num_sparse_decoder_layers=1,
            router_jitter_noise=0.0,
        ),
        "mixture of experts",
    ),
    "bart": (_c("BartConfig", **_BART), "post-norm blocks, final_logits_bias"),
    "mbart": (_c("MBartConfig", **_BART, scale_embedding=True), "decoder.layer_norm"),
    "plbart": (_c("PLBartConfig", **_BART), "post-norm blocks"),
    "mvp": (_c("MvpConfig", **_BART), "post-norm blocks"),
    "marian": (_c("MarianConfig", **_BART, scale_embedding=True), "sinusoidal positions"),
    "m2m_100": (_c("M2M100Config", **_BART), "decoder.layer_norm, scaled embeddings"),
    "pegasus": (_c("PegasusConfig", **_BART), "decoder.layer_norm, sinusoidal positions"),
    "blenderbot": (_c("BlenderbotConfig", **_BART), "decoder.layer_norm"),
    "blenderbot-small": (_c("BlenderbotSmallConfig", **_BART), "post-norm blocks"),
    "led": (
        _c(
            "LEDConfig",
            **{k: v for k, v in _BART.items() if k != "max_position_embeddings"},
            max_encoder_position_embeddings=CTX,
            max_decoder_position_embeddings=CTX,
            attention_window=4,
        ),
        "sliding-window encoder",
    ),
    "bigbird_pegasus": (
        _c("BigBirdPegasusConfig", **_BART, attention_type="original_full"),
        "decoder.layer_norm",
    ),
    "pegasus_x": (
        _c("PegasusXConfig", **_BART, block_size=8, num_global_tokens=4),
        "block-local encoder with global tokens",
    ),
    "nllb-moe": (
        _c(
            "NllbMoeConfig",
            **_BART,
            num_experts=4,
            expert_capacity=64,
            encoder_sparse_step=2,
            decoder_sparse_step=2,
        ),
        "mixture of experts",
    ),
    "fsmt": (_fsmt, "separate source and target vocabularies"),
    "t5gemma": (_t5gemma, "Gemma 2 blocks, soft-capped logits"),
}
SEQ2SEQ_SCALE = {"t5gemma": 4.0}
# families whose decoder starts at EOS and is then forced to the target language's code
# (mBART-50, M2M100, NLLB): a code token is added to the tokenizer and forced
FORCED = {"mbart": "de_DE", "m2m_100": "__de__", "nllb-moe": "deu_Latn"}


def make_seq2seq(
    arch: str, tokenizer: Any, device: torch.device | str = "cpu", seed: int = 0
) -> Any:
    """A tiny random encoder-decoder of `arch` wrapped as a LoadedModel (a fresh tokenizer
    copy serves both sides), its decoder starting at the tokenizer's pad token, and its
    `final_logits_bias` (where it has one) random, so that a head that drops it is wrong."""
    from transformers import AutoModelForSeq2SeqLM

    from tokenprobe import LoadedModel

    tok = copy.deepcopy(tokenizer)
    if arch in FORCED:
        tok.add_special_tokens({"additional_special_tokens": [FORCED[arch]]})
    torch.manual_seed(seed)
    config = SEQ2SEQ[arch][0](len(tok))
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config, attr, getattr(tok, attr))
    start = tok.eos_token_id if arch in FORCED else tok.pad_token_id
    if arch == "fsmt":  # it finds padding by id: a pad apart from its start token (EOS)
        config.pad_token_id = tok.unk_token_id
    config.decoder_start_token_id = start
    model = AutoModelForSeq2SeqLM.from_config(config, dtype=torch.float32)
    factor = SEQ2SEQ_SCALE.get(arch, 8.0)
    _scale(model, factor, head=4.0)
    with torch.no_grad():
        for module in model.modules():  # fixed sinusoids, made again on loading: not scaled
            if "Sinusoidal" in type(module).__name__ and isinstance(module, torch.nn.Embedding):
                module.weight.div_(factor)
        projection = getattr(model.get_decoder(), "output_projection", None)
        if projection is not None:  # FSMT's head, inside its decoder
            projection.weight.mul_(8.0)
        bias = getattr(model, "final_logits_bias", None)
        if isinstance(bias, torch.Tensor):
            bias.copy_(torch.randn_like(bias) * 4.0)
    model.generation_config.decoder_start_token_id = start
    if arch in FORCED:
        model.generation_config.forced_bos_token_id = tok.convert_tokens_to_ids(FORCED[arch])
    return LoadedModel.wrap(model.eval().to(device), tok, name=f"tiny-{arch}")
