"""Loading refuses, in one line, what tokenprobe cannot use as asked: a speech or image
encoder-decoder, a text one as a classifier, a sequence classifier loaded as a causal LM, and
any model whose loading leaves a weight newly initialised at random (which would give other
outputs at every load). A text encoder-decoder (BART, T5) loads as a seq2seq LM, and every
analysis that does not take one yet refuses it in one line. Ordinary folders (tied and untied
embeddings, classifiers) still load."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import zoo
from conftest import CORPUS, make_tokenizer

import tokenprobe
from tokenprobe import TokenprobeError
from tokenprobe.cli import main
from tokenprobe.model import newly_initialised

REFUSED = "does not support encoder-decoder models yet"
# the analyses whose registration does not declare that they take an encoder-decoder, and the
# list the refusal names (those that do)
REFUSING = sorted(n for n, a in tokenprobe.analyses.ANALYSES.items() if not a.seq2seq)
TAKING = ", ".join(a.name for a in tokenprobe.analyses.ANALYSES.values() if a.seq2seq)


def save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny model folders: two encoder-decoders, causal LMs, classifiers, and broken ones."""
    from safetensors.torch import load_file, save_file
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        T5Config,
        T5ForConditionalGeneration,
    )

    root = tmp_path_factory.mktemp("refusals")
    bpe = make_tokenizer()
    vocab = len(bpe)
    torch.manual_seed(0)
    bart = BartConfig(
        vocab_size=vocab,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=bpe.pad_token_id,
        bos_token_id=bpe.bos_token_id,
        eos_token_id=bpe.eos_token_id,
    )
    t5 = T5Config(
        vocab_size=vocab,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=4,
        pad_token_id=bpe.pad_token_id,
        eos_token_id=bpe.eos_token_id,
    )
    found = {
        "bart": save(BartForConditionalGeneration(bart), bpe, root / "bart"),
        "t5": save(T5ForConditionalGeneration(t5), bpe, root / "t5"),
    }
    for arch in ("qwen2", "llama", "gpt2"):
        lm = zoo.make_causal(arch, bpe)
        found[arch] = save(lm.model, lm.tokenizer, root / arch)
    tokenizers = {
        "wordpiece": lambda: zoo.wordpiece_tokenizer(root, CORPUS),
        "roberta": lambda: zoo.roberta_tokenizer(bpe),
        "bpe": lambda: copy.deepcopy(bpe),
    }
    for arch in ("bert", "roberta", "llama"):
        lm = zoo.make_classifier(arch, tokenizers[zoo.CLASSIFIERS[arch][1]]())
        found[f"{arch}-classifier"] = save(lm.model, lm.tokenizer, root / f"{arch}-classifier")
    # a Llama folder whose weights lack the LM head and one MLP matrix
    headless = save(zoo.make_causal("llama", bpe).model, bpe, root / "headless")
    weights = load_file(headless / "model.safetensors")
    for key in ("lm_head.weight", "model.layers.0.mlp.up_proj.weight"):
        del weights[key]
    save_file(weights, headless / "model.safetensors", metadata={"format": "pt"})
    found["headless"] = headless
    # a Llama folder whose config asks for a wider MLP than its weights hold
    wider = save(zoo.make_causal("llama", bpe).model, bpe, root / "wider")
    config = json.loads((wider / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps({**config, "intermediate_size": 80}))
    found["wider"] = wider
    return found


def one_line_error(capsys, *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("tokenprobe: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------ encoder-decoder


@pytest.mark.parametrize("arch, cls", [("bart", "Bart"), ("t5", "T5")])
def test_a_text_encoder_decoder_loads_as_a_seq2seq_lm(folders, arch, cls):
    lm = tokenprobe.load(str(folders[arch]), device="cpu")
    assert type(lm.model).__name__ == f"{cls}ForConditionalGeneration"
    assert lm.is_seq2seq and lm.adapter is None and lm.seq2seq is not None
    with pytest.raises(TokenprobeError) as info:
        lm.require_adapter()  # the decoder-only adapter would find the encoder's blocks
    assert "\n" not in str(info.value) and "this analysis does not support" in str(info.value)


@pytest.mark.parametrize("arch, cls", [("bart", "Bart"), ("t5", "T5")])
def test_an_encoder_decoder_as_a_classifier_is_refused_in_one_line(folders, arch, cls):
    with pytest.raises(TokenprobeError) as info:
        tokenprobe.load(str(folders[arch]), device="cpu", task="sequence-classification")
    message = str(info.value)
    assert "\n" not in message and "not as a sequence classifier" in message
    assert f"({cls}ForConditionalGeneration)" in message and str(folders[arch]) in message


def test_speech_and_image_encoder_decoders_are_refused_in_one_line():
    from transformers import (
        BertConfig,
        EncoderDecoderConfig,
        ProphetNetConfig,
        T5Gemma2Config,
        VisionEncoderDecoderConfig,
        ViTConfig,
        WhisperConfig,
    )

    from tokenprobe.model.checks import check_supported

    bert, vit = BertConfig(), ViTConfig()
    configs = [
        WhisperConfig(),
        T5Gemma2Config(),
        VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit, bert),
        EncoderDecoderConfig.from_encoder_decoder_configs(bert, bert),
    ]
    with pytest.raises(TokenprobeError, match="n-gram prediction streams"):
        check_supported("m", ProphetNetConfig(), "causal-lm")
    for config in configs:
        with pytest.raises(TokenprobeError) as info:
            check_supported("m", config, "causal-lm")
        assert "\n" not in str(info.value) and "does not take text on both sides" in str(
            info.value
        ), config.model_type


def _dummy(param: str) -> object:
    return ["The quick brown fox"] if param in ("texts", "data") else "The quick brown fox"


@pytest.mark.parametrize("name", REFUSING)
def test_every_analysis_refuses_an_encoder_decoder_in_one_line(folders, name):
    """The gate of `with_options`: each registered analysis's library function that does not
    declare `seq2seq`, given an encoder-decoder (or a classifier around one), refuses it before
    any work, naming those that take one."""
    import inspect

    from tokenprobe.analyses import ANALYSES
    from tokenprobe.analyses.flips.classifiers import PromptedClassifier

    spec = ANALYSES[name]
    lm = tokenprobe.load(str(folders["t5"]), device="cpu")
    params = list(inspect.signature(spec.run).parameters.values())
    first = PromptedClassifier(lm, ["joy", "anger"]) if name == "flips" else lm
    rest = [
        _dummy(p.name)
        for p in params[1:]
        if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
    ]
    with pytest.raises(TokenprobeError) as info:
        spec.run(first, *rest)
    message = str(info.value)
    assert "\n" not in message and str(folders["t5"]) in message
    assert f"(T5ForConditionalGeneration): the {name} analysis {REFUSED}" in message
    assert f"(those that do: {TAKING or 'none yet'})" in message


def _command_args(tmp_path) -> dict[str, list[str]]:
    from tokenprobe import TunedLens, save_lens

    text = tmp_path / "train.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    lens = tmp_path / "lens"
    save_lens(TunedLens(2, 32), lens)
    table = tmp_path / "t.csv"
    table.write_text("text,label\nhello world,joy\nthe fox,anger\n")
    prompt = ["--prompt", "The quick brown fox"]
    return {
        "lens": prompt,
        "similarity": ["--text", "a b _PAUSE_ c"],
        "attribute": [*prompt, "--target", " fox"],
        "logit-attribution": [*prompt, "--target", " fox"],
        "flips": ["--data", str(table)],
        "tune-lens": ["--data", str(text), "--tokens", "256", "--seq-len", "16", "--batch", "4"],
        "lens-eval": ["--lens", str(lens), "--data", str(text), "--seq-len", "16"],
        "trace": [*prompt, "--target", " fox", "--subject", "quick"],
        "attention": prompt,
        "features": prompt,
        "train-sae": ["--data", str(text), "--layer", "1"],
    }


def test_every_command_refuses_an_encoder_decoder_in_one_line(folders, tmp_path, capsys):
    from tokenprobe.analyses import ANALYSES

    commands = _command_args(tmp_path)
    assert set(commands) == {spec.command for spec in ANALYSES.values()}  # a new one: add it
    model = str(folders["t5"])
    for spec in (s for s in ANALYSES.values() if not s.seq2seq):
        out = str(tmp_path / spec.command)
        code = main([spec.command, "--model", model, "--out", out, *commands[spec.command]])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()  # info and warning lines may come first
        assert code == 2 and sum("error" in line for line in lines) == 1, (spec.command, err)
        lines = lines[-1:]
        assert lines[0].startswith(f"tokenprobe: error: {model} is an encoder-decoder model")
        assert f"the {spec.name} analysis {REFUSED}" in lines[0], lines[0]


def test_bart_as_a_causal_lm_would_leave_its_head_random(folders):
    """What BART loaded as a causal LM used to give silently (its encoder dropped, its LM head
    new on every load): the loading info names the new weights, and they are refused."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folders["bart"], output_loading_info=True)
    fresh = newly_initialised(model, info)
    assert "lm_head.weight" in fresh
    with pytest.raises(
        TokenprobeError,
        match=r"BartForCausalLM with 2 weight\(s\) .* \(lm_head.weight, model.decoder",
    ):
        tokenprobe.model.check_nothing_initialised("bart", model, info)


# ------------------------------------------------------------------------------ random weights


def test_missing_weights_are_refused_naming_them(folders, tmp_path, capsys):
    with pytest.raises(TokenprobeError) as info:
        tokenprobe.load(str(folders["headless"]), device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert "loads as LlamaForCausalLM with 2 weight(s) initialised at random" in message
    assert "(lm_head.weight, model.layers.0.mlp.up_proj.weight)" in message
    model = str(folders["headless"])
    line = one_line_error(
        capsys, "lens", "--model", model, "--prompt", "hi", "--out", str(tmp_path / "o")
    )
    assert "lm_head.weight" in line and "--model" not in line.split(":")[0]


def test_weights_of_another_shape_are_refused_naming_them(folders, tmp_path, capsys):
    with pytest.raises(TokenprobeError) as info:
        tokenprobe.load(str(folders["wider"]), device="cpu")
    message = str(info.value)
    assert "\n" not in message and "6 weight(s) initialised at random" in message
    assert "saved with another shape (model.layers.0.mlp.down_proj.weight," in message
    assert "and 2 more" in message
    line = one_line_error(
        capsys,
        "lens",
        "--model",
        str(folders["wider"]),
        "--prompt",
        "hi",
        "--out",
        str(tmp_path / "o"),
    )
    assert "model.layers.0.mlp.down_proj.weight" in line


def test_a_causal_lm_loaded_as_a_classifier_is_refused_naming_its_new_head(folders):
    with pytest.raises(
        TokenprobeError, match=r"LlamaForSequenceClassification .*\(score\.weight\)"
    ):
        tokenprobe.load(str(folders["llama"]), device="cpu", task="sequence-classification")


@pytest.mark.parametrize("arch", ["bert", "roberta", "llama"])
def test_a_classifier_loaded_as_a_causal_lm_is_refused(folders, arch, tmp_path, capsys):
    folder = str(folders[f"{arch}-classifier"])
    with pytest.raises(TokenprobeError) as info:
        tokenprobe.load(folder, device="cpu")
    assert f"{folder} is a sequence classifier (" in str(info.value)
    assert "ForSequenceClassification), not a causal language model" in str(info.value)
    line = one_line_error(
        capsys, "lens", "--model", folder, "--prompt", "hello", "--out", str(tmp_path / "o")
    )
    assert "is a sequence classifier" in line and "tokenprobe flips" in line


# ------------------------------------------------------------------------------ still loads


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_causal_lm_folders_still_load(folders, arch):
    lm = tokenprobe.load(str(folders[arch]), device="cpu")
    assert lm.adapter is not None
    head, embed = lm.model.get_output_embeddings(), lm.model.get_input_embeddings()
    tied = head.weight.data_ptr() == embed.weight.data_ptr()
    assert tied == (arch in ("qwen2", "gpt2"))  # both tie their head to the embedding


@pytest.mark.parametrize("arch", ["bert", "roberta", "llama"])
def test_classifier_folders_still_load_as_classifiers(folders, arch):
    lm = tokenprobe.load(
        str(folders[f"{arch}-classifier"]), device="cpu", task="sequence-classification"
    )
    assert type(lm.model).__name__.endswith("ForSequenceClassification")
    assert lm.model.config.id2label[0] == zoo.CLASS_LABELS[0]


def test_a_tied_weight_reported_missing_is_not_new(folders):
    """A head tied to the input embedding shares its tensor: were transformers to report it
    missing, the embedding it is tied to was loaded, so nothing is random."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folders["qwen2"])
    assert newly_initialised(model, {"missing_keys": {"lm_head.weight"}}) == []
    both = {"missing_keys": {"lm_head.weight", "model.embed_tokens.weight"}}
    assert newly_initialised(model, both) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert newly_initialised(model, {"missing_keys": {"model.rotary_emb.inv_freq"}}) == []


@pytest.mark.parametrize("arch", ["bert", "roberta", "llama"])
def test_every_causal_lm_command_refuses_a_classifier_in_one_line(folders, arch, tmp_path, capsys):
    from tokenprobe import TunedLens, save_lens

    text = tmp_path / "train.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    lens = tmp_path / "lens"
    save_lens(TunedLens(2, 32), lens)
    prompt = ["--prompt", "The quick brown fox"]
    commands = {
        "lens": prompt,
        "trace": [*prompt, "--target", " fox", "--subject", "quick"],
        "attribute": [*prompt, "--target", " fox"],
        "similarity": ["--text", "a b _PAUSE_ c"],
        "tune-lens": ["--data", str(text), "--tokens", "256", "--seq-len", "16", "--batch", "4"],
        "lens-eval": ["--lens", str(lens), "--data", str(text), "--seq-len", "16"],
    }
    folder = str(folders[f"{arch}-classifier"])
    for command, argv in commands.items():
        out = str(tmp_path / command)
        line = one_line_error(capsys, command, "--model", folder, "--out", out, *argv)
        assert f"{folder} is a sequence classifier (" in line, (command, line)
