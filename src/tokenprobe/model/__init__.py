"""Load a model (built-in, local folder, hub cache, GGUF) and find its parts for the analyses.

The architecture adapter reads the model's own Hugging Face conventions (input/output
embedding accessors, the config's layer count, the norm that sits beside the block list, the
config's logit soft-capping) instead of keeping a table of model classes, so a new family that
follows those conventions works without a code change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..errors import TokenprobeError
from .adapter import Adapter, text_config, weight_of
from .cache import (
    BUILTIN_MODELS,
    COMPLETE_MARKER,
    DEFAULT_MODEL,
    BuiltinModel,
    _convert_gguf,
    _gguf_cache_dir,
    builtin_gguf,
    cache_root,
    cached_build,
    remove_stale_builds,
)
from .checks import (
    check_model_folder,
    check_nothing_initialised,
    check_supported,
    load_error,
    newly_initialised,
)
from .devices import execution_device, resolve_device, resolve_dtype
from .hub import check_reachable, offline, offline_wanted
from .hub import offline as offline_block
from .placement import parse_max_memory, placement_kwargs
from .seq2seq import Seq2SeqAdapter, refusal

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "BUILTIN_MODELS",
    "COMPLETE_MARKER",
    "DEFAULT_MODEL",
    "Adapter",
    "BuiltinModel",
    "LoadedModel",
    "Seq2SeqAdapter",
    "builtin_gguf",
    "cache_root",
    "check_nothing_initialised",
    "newly_initialised",
    "cached_build",
    "load",
    "offline",
    "parse_max_memory",
    "placement_kwargs",
    "remove_stale_builds",
    "resolve_device",
    "resolve_dtype",
    "execution_device",
    "text_config",
    "weight_of",
]

log = logging.getLogger("tokenprobe")


# ----------------------------------------------------------------------------- loaded model


@dataclass
class LoadedModel:
    """A model, its tokenizer, where it came from, and its adapter."""

    model: PreTrainedModel
    tokenizer: Any
    name: str
    source: str = ""
    adapter: Adapter | None = None
    folder: str = ""  # the Hugging Face folder (or hub id) the weights were read from
    load_args: dict[str, Any] | None = None  # how `load` loaded it (a Ray worker loads it so)
    # embedding rows before a marker token was added (None: none added)
    loaded_vocab: int | None = None
    # an encoder-decoder's two stacks and decoder head (`adapter` stays None for it)
    seq2seq: Seq2SeqAdapter | None = None

    @classmethod
    def wrap(
        cls, model: PreTrainedModel, tokenizer: Any, name: str | None = None, source: str = ""
    ) -> LoadedModel:
        """Wrap an already-built model and tokenizer (e.g. one made in a notebook or a test)."""
        model.eval()
        causal = model.get_output_embeddings() is not None and not _is_seq2seq(model)
        adapter = Adapter.from_model(model) if causal else None
        return cls(
            model=model,
            tokenizer=tokenizer,
            name=name or type(model).__name__,
            source=source,
            adapter=adapter,
        )

    def require_adapter(self) -> Adapter:
        """The decoder-only adapter; an encoder-decoder model is refused in one line (its
        blocks would be found in the encoder: see `require_seq2seq`)."""
        if self.is_seq2seq:
            raise refusal(self.name, type(self.model).__name__)
        if self.adapter is None:
            self.adapter = Adapter.from_model(self.model)
        return self.adapter

    @property
    def is_seq2seq(self) -> bool:
        """An encoder-decoder model (T5, BART, Marian, ...), by its config."""
        return _is_seq2seq(self.model)

    def require_seq2seq(self) -> Seq2SeqAdapter:
        """An encoder-decoder model's adapter (a TokenprobeError for any other model)."""
        if not self.is_seq2seq:
            raise TokenprobeError(f"{self.name} is not an encoder-decoder model")
        if self.seq2seq is None:
            self.seq2seq = Seq2SeqAdapter.from_model(self.model)
        return self.seq2seq

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device (with a device map, the blocks may sit
        on others; an offloaded embedding runs on accelerate's execution device)."""
        found = execution_device(self.model.get_input_embeddings())
        return found or next(p.device for p in self.model.parameters() if p.device.type != "meta")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_blocks(self) -> int:
        """The number of blocks L."""
        return self.require_adapter().n_blocks

    @property
    def n_layers(self) -> int:
        """The number of layers of the residual stream, L + 1: layer 0 is the embedding
        output, layer i the output of block i (the names every analysis uses)."""
        return self.n_blocks + 1

    @property
    def context_length(self) -> int | None:
        cfg = text_config(self.model.config)
        # MPT names it max_seq_len; ALiBi and state-space models without one have no limit
        limit = None
        for attr in (
            "max_position_embeddings",
            "n_positions",
            "max_seq_len",
            "max_sequence_length",
        ):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                limit = value
                break
        # RoBERTa-style position tables start counting after their padding index (roberta-base:
        # 514 rows, 512 positions)
        for name, module in self.model.named_modules():
            if (
                name.endswith("position_embeddings")
                and isinstance(module, nn.Embedding)
                and module.padding_idx is not None
            ):
                usable = module.num_embeddings - module.padding_idx - 1
                limit = usable if limit is None else min(limit, usable)
        return limit

    def describe(self) -> dict[str, Any]:
        """What goes into a result's metadata about the model."""
        adapter = self.adapter
        return {
            "name": self.name,
            "source": self.source,
            "class": type(self.model).__name__,
            "n_blocks": adapter.n_blocks if adapter else None,
            "vocab_size": int(weight_of(self.model.get_input_embeddings()).shape[0]),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "blocks": adapter.blocks_path if adapter else None,
            "final_norm": adapter.final_norm_path if adapter else None,
            "softcap": adapter.softcap if adapter else None,
        }


def _is_seq2seq(model: Any) -> bool:
    return getattr(getattr(model, "config", None), "is_encoder_decoder", False) is True


# ----------------------------------------------------------------------------- load


def _from_folder(
    folder: str,
    task: str,
    dtype: torch.dtype,
    local_only: bool,
    trust: bool = False,
    **placement: Any,
) -> tuple[PreTrainedModel, Any]:
    """The model and tokenizer in `folder` (or of a hub id), refused in one line when tokenprobe
    cannot use them as `task` asks: a speech or image encoder-decoder, a classifier asked for
    as a causal LM, or any weight that loading would initialise at random. A text
    encoder-decoder loads as AutoModelForSeq2SeqLM (`LoadedModel.is_seq2seq`)."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    auto = {
        "causal-lm": AutoModelForCausalLM,
        "sequence-classification": AutoModelForSequenceClassification,
    }
    if task not in auto:
        raise TokenprobeError(f"unknown task '{task}': use causal-lm or sequence-classification")
    if not local_only:  # a hub id: a network that is down is one line now, not minutes of retries
        check_reachable(folder)
    kwargs: dict[str, Any] = {"local_files_only": local_only, "trust_remote_code": trust}
    config = AutoConfig.from_pretrained(folder, **kwargs)
    check_supported(folder, config, task)
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    # a text encoder-decoder (check_supported let only those through) is a seq2seq LM
    seq2seq = getattr(config, "is_encoder_decoder", False) is True
    model, info = (
        AutoModelForSeq2SeqLM if seq2seq else auto[task]
    ).from_pretrained(  # a weight of another shape: refused below
        folder,
        config=config,
        dtype=dtype,
        output_loading_info=True,
        ignore_mismatched_sizes=True,
        **kwargs,
        **placement,
    )
    check_nothing_initialised(folder, model, info)
    return model, tokenizer


def load(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    task: str = "causal-lm",
    offline: bool | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[Any, str] | None = None,
    offload_folder: str | None = None,
) -> LoadedModel:
    """Load `name`: the built-in `smollm2`, a local HF folder, a `.gguf` file, or a hub id.

    A hub id is downloaded into the Hugging Face cache when it is not there, as
    `from_pretrained` does, unless `offline` (default: the HF_HUB_OFFLINE or
    TRANSFORMERS_OFFLINE environment variable); offline, loading makes no network connection
    at all (see `hub.offline`). Code shipped with a model runs only with `trust_remote_code`.
    `device_map` (`auto`, `balanced`, `sequential` or a module -> device dict) and
    `max_memory` (`"0=20GiB,cpu=64GiB"` or a dict) split a model too large for one device
    across devices with accelerate, offloading to `offload_folder` what fits nowhere.
    """
    placement = placement_kwargs(device_map, max_memory, offload_folder, present=True)
    args = {
        "name": name,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "task": task,
        "offline": offline,
        "trust_remote_code": trust_remote_code,
        "device_map": device_map,
        "max_memory": max_memory,
        "offload_folder": offload_folder,
    }
    lm = _load_where(name, device, dtype, task, offline, trust_remote_code, placement)
    lm.load_args = args
    return lm


def _load_where(
    name: str,
    device: str | torch.device,
    dtype: str | torch.dtype,
    task: str,
    offline: bool | None,
    trust_remote_code: bool,
    placement: dict[str, Any],
) -> LoadedModel:
    """`_load` with or without the network, as the name and `offline` say."""
    hub_id = _is_hub_id(name)
    if hub_id and not offline_wanted(offline):
        return _load(
            name, device, dtype, task, local_only=False, trust=trust_remote_code, **placement
        )
    with offline_block():  # local files, or a hub id from the cache only: no connection
        return _load(
            name, device, dtype, task, local_only=True, trust=trust_remote_code, **placement
        )


def _is_hub_id(name: str) -> bool:
    """Not a built-in name, not a GGUF file, not a local path: a hub id."""
    if name in BUILTIN_MODELS or name.lower().endswith(".gguf"):
        return False
    return not Path(name).expanduser().exists()


def _load(
    name: str,
    device: str | torch.device,
    dtype: str | torch.dtype,
    task: str,
    *,
    local_only: bool,
    trust: bool,
    **placement: Any,
) -> LoadedModel:
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    source = name
    display = name
    if name in BUILTIN_MODELS:
        gguf = builtin_gguf(name)
        folder = str(cached_build(_gguf_cache_dir(gguf), lambda d: _convert_gguf(gguf, d)))
        display = BUILTIN_MODELS[name].display_name
        source = str(gguf)
    elif name.lower().endswith(".gguf"):
        gguf = Path(name).expanduser()
        if not gguf.is_file():
            raise TokenprobeError(f"GGUF file not found: {name} (check the path)")
        folder = str(cached_build(_gguf_cache_dir(gguf), lambda d: _convert_gguf(gguf, d)))
        display = gguf.stem
    elif Path(name).expanduser().is_dir():
        folder = str(Path(name).expanduser())
        if not (Path(folder) / "config.json").exists():
            raise TokenprobeError(
                f"{name} is a folder without config.json: point `name` at a Hugging Face model folder"
            )
        check_model_folder(name, Path(folder))
    elif Path(name).expanduser().is_file():
        raise TokenprobeError(
            f"{name} is a file, not a model: pass a model folder, a .gguf file, a cached hub id or "
            f"one of the built-in names ({', '.join(BUILTIN_MODELS)})"
        )
    else:
        folder = name  # a hub id: from the cache, downloaded there unless offline
    try:
        model, tokenizer = _from_folder(folder, task, dt, local_only, trust, **placement)
    except TokenprobeError:
        raise
    except (OSError, ValueError) as exc:
        hub = folder == name and not Path(name).expanduser().exists()
        raise load_error(name, folder, exc, hub=hub, offline=local_only, trust=trust) from exc
    if not placement:  # a device map has placed every module already
        cast(nn.Module, model).to(dev)  # still PreTrainedModel.to (mypy misreads its `wraps`)
    lm = LoadedModel.wrap(model, tokenizer, name=display, source=source)
    lm.folder = folder
    if lm.is_seq2seq:
        lm.require_seq2seq()
    elif task == "causal-lm":
        lm.require_adapter()
    return lm
