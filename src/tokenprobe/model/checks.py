"""What a model folder must be for tokenprobe to use it, checked around loading: the files it
needs, a kind of model it supports (a text encoder-decoder as a seq2seq LM, not a speech or
image one; no classifier as a causal LM), and no weight that loading would initialise at
random."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import TokenprobeError
from .hub import hub_error

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.pt", "*.h5", "*.msgpack")


def check_model_folder(name: str, folder: Path) -> None:
    """A model folder with config.json but no tokenizer or no weights: one line saying what is
    missing, instead of the tokenizer library's cut-off message."""
    missing = []
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        missing.append("no tokenizer files (tokenizer.json, tokenizer_config.json, ...)")
    if not any(next(folder.glob(p), None) is not None for p in _WEIGHT_FILES):
        missing.append("no weights (model.safetensors or pytorch_model.bin)")
    if missing:
        raise TokenprobeError(
            f"the model folder {name} holds config.json but {' and '.join(missing)}: save both there with "
            "model.save_pretrained(FOLDER) and tokenizer.save_pretrained(FOLDER)"
        )


_CLASSIFIER_SUFFIX = "ForSequenceClassification"


def text_seq2seq_types() -> set[str]:
    """The model types transformers loads as text-to-text sequence-to-sequence LMs
    (AutoModelForSeq2SeqLM) that take text on both sides: not speech or image-text ones, nor
    EncoderDecoderModel (two whole models joined by a config)."""
    from transformers.models.auto import modeling_auto as auto

    other = set(auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES)
    other |= set(auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    return set(auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES) - other - {"encoder-decoder"}


_NOT_ONE_STREAM = {"prophetnet", "xlm-prophetnet"}


def _check_encoder_decoder(name: str, config: Any, task: str, kind: str) -> None:
    """A text encoder-decoder loads as a seq2seq LM; anything else of the kind, or one asked
    for as a sequence classifier, is one line."""
    model_type = getattr(config, "model_type", "?")
    if model_type not in text_seq2seq_types():
        raise TokenprobeError(
            f"{name} holds an encoder-decoder model ({kind}) that does not take text on both "
            "sides (speech, images, or two models joined as EncoderDecoderModel): tokenprobe "
            "reads text encoder-decoders (T5, BART, Marian, ...) and decoder-only causal LMs"
        )
    if model_type in _NOT_ONE_STREAM:
        raise TokenprobeError(
            f"{name} holds a {kind}: its decoder runs n-gram prediction streams beside the main "
            "one, not one residual stream, which tokenprobe does not read"
        )
    if task != "causal-lm":
        raise TokenprobeError(
            f"{name} holds an encoder-decoder model ({kind}): it loads as a sequence-to-sequence "
            "LM (the default task), not as a sequence classifier; encoder-decoder classifiers "
            "are not supported yet"
        )


def check_supported(name: str, config: Any, task: str) -> None:
    """Before any weight is read: refuse a speech or image encoder-decoder model (or a text
    one asked for as a classifier), and a sequence classifier loaded as a causal LM (its LM
    head would be new and random), in one line each."""
    architectures = list(getattr(config, "architectures", None) or [])
    kind = architectures[0] if architectures else getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False):
        _check_encoder_decoder(name, config, task, kind)
    if (
        task == "causal-lm"
        and architectures
        and all(a.endswith(_CLASSIFIER_SUFFIX) for a in architectures)
    ):
        raise TokenprobeError(
            f"{name} is a sequence classifier ({kind}), not a causal language model: this needs a "
            "causal LM (a ...ForCausalLM model, a .gguf file or a built-in name); a classifier "
            "goes to flip rates (tokenprobe flips, or load it with task='sequence-classification')"
        )


def newly_initialised(model: nn.Module, info: dict[str, Any]) -> list[str]:
    """The parameters `from_pretrained` did not find in the saved weights (or found with
    another shape) and so initialised at random, from its loading info. A weight tied to one
    that was loaded (an LM head tied to the input embedding) shares its tensor and is not new;
    buffers (rotary frequencies, masks, zero biases) are computed, not random, and are left out."""
    missing = {str(k) for k in info.get("missing_keys") or ()}
    names: dict[int, list[str]] = {}
    params: dict[str, nn.Parameter] = {}
    for key, param in model.named_parameters(remove_duplicate=False):
        params[key] = param
        names.setdefault(id(param), []).append(key)
    fresh = [
        key
        for key in sorted(missing)
        if key in params and all(alias in missing for alias in names[id(params[key])])
    ]
    mismatched = {  # (key, saved shape, model shape)
        str(entry[0] if isinstance(entry, (tuple, list)) else entry)
        for entry in info.get("mismatched_keys") or ()
    }
    return fresh + sorted(mismatched - set(fresh))


def check_nothing_initialised(name: str, model: nn.Module, info: dict[str, Any]) -> None:
    """One line naming the weights when loading left any newly initialised (see
    `newly_initialised`): such a model gives different outputs at every load."""
    fresh = newly_initialised(model, info)
    if not fresh:
        return
    shown = ", ".join(fresh[:4]) + (f" and {len(fresh) - 4} more" if len(fresh) > 4 else "")
    cls = type(model).__name__
    raise TokenprobeError(
        f"{name} loads as {cls} with {len(fresh)} weight(s) initialised at random on every load, "
        f"missing from its saved weights or saved with another shape ({shown}): its outputs "
        f"would be noise; pass a checkpoint that holds them (a {cls} saved with save_pretrained)"
    )


def load_error(
    name: str, folder: str, exc: BaseException, *, hub: bool, offline: bool, trust: bool
) -> TokenprobeError:
    """The one line for a model that `from_pretrained` could not load: its custom code not
    trusted (naming `trust_remote_code`), a hub id's failure (`hub.hub_error`), or the first line
    of the library's message."""
    text = str(exc)
    if not trust and ("trust_remote_code" in text or "contains custom code" in text):
        return TokenprobeError(
            f"{name} ships its own Python code (custom model classes, named in its config.json's "
            "auto_map): loading it runs that code on this machine; pass `trust_remote_code` only "
            "if you trust where it comes from"
        )
    if hub:
        return hub_error(name, exc, offline)
    return TokenprobeError(
        f"cannot load model from {folder}: {(text.splitlines() or [type(exc).__name__])[0]}"
    )
