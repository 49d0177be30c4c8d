"""A tuned lens on disk, in two formats, told apart by their files:

- tokenprobe's: `tuned-lens.json` (the model it was trained for: name, blocks, width,
  vocabulary, unembedding fingerprint; how it was trained) and `tuned-lens.safetensors`
  (`translators.<i>.weight` / `.bias`; no pickle, so loading runs no code);
- the `tuned-lens` package's: `config.json` (`TunedLensConfig`: `base_model_name_or_path`,
  `d_model`, `num_hidden_layers`, `bias`, `base_model_revision`, `unembed_hash`, `lens_type`)
  and `params.pt` (`torch.save` of its `layer_translators.state_dict()`: `<i>.weight`,
  `<i>.bias`), which `TunedLens.from_model_and_pretrained(model, folder)` reads.

`save_lens` writes both by default (each file atomically); `load_lens` reads either, and the
name `builtin` (where no folder has that name) reads the lens shipped for the built-in model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import TokenprobeError, warn
from ..journal import atomic_write
from ..model import LoadedModel
from .lens import TunedLens, check_finite, check_lens, unembed_hash

FORMATS = ("tokenprobe", "tuned-lens")
OURS_META, OURS_WEIGHTS = "tuned-lens.json", "tuned-lens.safetensors"
THEIRS_CONFIG, THEIRS_WEIGHTS = "config.json", "params.pt"
FORMAT_TAG = "tokenprobe tuned lens"
BUILTIN = "builtin"  # the lens shipped for the built-in model (SmolLM2-135M-Instruct)


def resolve_lens(folder: str | os.PathLike[str]) -> Path:
    """The folder of a lens: as given, or for `builtin` (when no folder has that name) the
    package's own lens for the built-in model."""
    if not isinstance(folder, (str, os.PathLike)):
        raise TokenprobeError(
            f"`lens` is of type {type(folder).__name__}: give a tuned lens folder (or `{BUILTIN}`) or a "
            "tokenprobe.tuned.TunedLens"
        )
    path = Path(folder).expanduser()
    if str(folder) == BUILTIN and not path.exists():
        from importlib import resources

        return Path(str(resources.files("tokenprobe").joinpath("data/lenses/smollm2")))
    return path


def lens_files(formats: Iterable[str] = FORMATS) -> list[str]:
    """The files a saved lens occupies in these formats."""
    names = {"tokenprobe": [OURS_META, OURS_WEIGHTS], "tuned-lens": [THEIRS_CONFIG, THEIRS_WEIGHTS]}
    return [n for f in formats for n in names[f]]


def save_lens(
    lens: TunedLens,
    folder: str | os.PathLike[str],
    *,
    formats: Iterable[str] = FORMATS,
    dtype: torch.dtype | None = None,
) -> dict[str, Path]:
    """Write the lens into `folder` in each of `formats` (tokenprobe's, the tuned-lens
    package's); `dtype` (e.g. float16, to ship a lens) defaults to the translators' own."""
    formats = list(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise TokenprobeError(f"`formats` must be among {', '.join(FORMATS)}, not {bad or 'none'}")
    check_finite(lens, f"the lens for {folder}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", dtype or v.dtype).contiguous()
        for k, v in lens.translators.state_dict().items()
    }
    written: dict[str, Path] = {}
    if "tokenprobe" in formats:
        from safetensors.torch import save_file

        meta = {
            "format": FORMAT_TAG,
            "version": 1,
            "n_blocks": lens.n_blocks,
            "width": lens.width,
            **lens.info,
        }
        ours = {f"translators.{k}": v for k, v in state.items()}
        atomic_write(out / OURS_WEIGHTS, lambda p: save_file(ours, str(p)))
        text = json.dumps(meta, indent=1, default=str) + "\n"
        atomic_write(out / OURS_META, lambda p: p.write_text(text, encoding="utf-8"))
        written.update({"lens": out / OURS_WEIGHTS, "lens meta": out / OURS_META})
    if "tuned-lens" in formats:
        config = {
            "base_model_name_or_path": lens.info.get("model_path") or lens.info.get("model", ""),
            "d_model": lens.width,
            "num_hidden_layers": lens.n_blocks,
            "bias": True,
            "base_model_revision": None,
            "unembed_hash": lens.info.get("unembed_hash"),
            "lens_type": "linear_tuned_lens",
        }
        atomic_write(out / THEIRS_WEIGHTS, lambda p: torch.save(state, p))
        text = json.dumps(config)
        atomic_write(out / THEIRS_CONFIG, lambda p: p.write_text(text, encoding="utf-8"))
        written.update(params=out / THEIRS_WEIGHTS, config=out / THEIRS_CONFIG)
    return written


def lens_format(folder: str | os.PathLike[str]) -> str:
    """Which format `folder` holds ("tokenprobe" or "tuned-lens"), or one error saying what a
    lens folder holds."""
    path = resolve_lens(folder)
    if path.is_file():
        raise TokenprobeError(
            f"`lens` {folder} is a file: give the folder that holds the lens, {path.parent}"
        )
    if not path.is_dir():
        raise TokenprobeError(
            f"`lens` {folder}: no such folder: give the --out folder of tune-lens (or `{BUILTIN}` "
            "for the built-in model's)"
        )
    if (path / OURS_META).is_file() and (path / OURS_WEIGHTS).is_file():
        return "tokenprobe"
    if (path / THEIRS_CONFIG).is_file() and (path / THEIRS_WEIGHTS).is_file():
        return "tuned-lens"
    raise TokenprobeError(
        f"`lens` {folder} is not a tuned lens: it holds neither {OURS_META} + {OURS_WEIGHTS} "
        f"(tokenprobe tune-lens) nor {THEIRS_CONFIG} + {THEIRS_WEIGHTS} (the tuned-lens package)"
    )


def lens_digest(folder: str | os.PathLike[str]) -> str:
    """A SHA-256 digest of the weights file of the lens in `folder` (either format)."""
    import hashlib

    path = resolve_lens(folder)
    name = OURS_WEIGHTS if lens_format(folder) == "tokenprobe" else THEIRS_WEIGHTS
    digest = hashlib.sha256()
    with open(path / name, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_lens(folder: str | os.PathLike[str], lm: LoadedModel | None = None) -> TunedLens:
    """A lens saved in either format, in float32 on `lm`'s device. Checked as it is read: every
    file parses, the two files agree, every tensor has its translator's shape and is finite,
    and with `lm` the lens fits it (`check_lens`); else one error naming the file and the fix."""
    fmt = lens_format(folder)
    path = resolve_lens(folder)
    what = f"`lens` {folder}" + (" (the built-in model's lens)" if str(folder) == BUILTIN else "")
    meta_name, weights_name = (
        (OURS_META, OURS_WEIGHTS) if fmt == "tokenprobe" else (THEIRS_CONFIG, THEIRS_WEIGHTS)
    )
    meta = _read_json(path / meta_name, what)
    state = _read_weights(path / weights_name, fmt, what)
    n_blocks, width = _shape_of(state, path / weights_name, what)
    info = _info_of(meta, fmt, (n_blocks, width), path / meta_name, what)
    lens = TunedLens(n_blocks, width, info)
    lens.translators.load_state_dict({k: v.float() for k, v in state.items()})
    if lm is not None:
        check_lens(lens, lm, what)
    else:
        check_finite(lens, what)
    lens.info["format"] = fmt
    if lm is not None:
        lens.to(lm.device)
        saved = info.get("unembed_hash")
        if saved and saved != unembed_hash(lm.require_adapter(), lm.loaded_vocab):
            warn(
                f"{what} was trained with another unembedding than {lm.name}'s (same shape, other weights): its rows may mislead"
            )
    return lens.eval()


def _damaged(what: str, file: Path, problem: str) -> TokenprobeError:
    """The one error of a lens file that cannot be used: which file, what is wrong, the fix."""
    return TokenprobeError(
        f"{what}: {file} {problem}: the lens is damaged or not a lens; train it again with "
        "tune-lens, or give the folder the lens was saved in"
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__


def _read_json(file: Path, what: str) -> dict[str, Any]:
    """A lens's JSON file as an object."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        raise _damaged(what, file, f"is not readable JSON ({_first_line(exc)})") from exc
    if not isinstance(value, dict):
        raise _damaged(what, file, f"holds a JSON {type(value).__name__}, not an object")
    return value


def _read_weights(file: Path, fmt: str, what: str) -> Any:
    """The translators' tensors of either format (keys `<i>.weight`, `<i>.bias`), unchecked."""
    try:
        if fmt == "tokenprobe":
            from safetensors.torch import load_file

            raw = load_file(str(file))
        else:
            raw = torch.load(file, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as exc:  # a truncated or foreign file: safetensors, zip and pickle raise many types
        raise _damaged(what, file, f"cannot be read ({_first_line(exc)})") from exc
    if fmt != "tokenprobe":
        return raw
    stray = [k for k in raw if not k.startswith("translators.")]
    if stray:
        raise _damaged(what, file, f"holds {stray[0]!r}, not a translator's tensor")
    return {k.removeprefix("translators."): v for k, v in raw.items()}


def _shape_of(state: Any, file: Path, what: str) -> tuple[int, int]:
    """Blocks and width from the weights themselves (what the decoding depends on): a dict of
    floating tensors, `<i>.weight` (width x width) and `<i>.bias` (width) for i = 0..n-1."""
    if not isinstance(state, dict):
        raise _damaged(
            what, file, f"holds a {type(state).__name__}, not a dict of translator tensors"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise _damaged(
                what, file, f"holds {key!r}: {type(value).__name__}, not a translator's tensor"
            )
        if not value.is_floating_point():
            raise _damaged(what, file, f"holds {key} as {value.dtype}, not floating point")
    n = len({k.split(".")[0] for k in state})
    expected = {f"{i}.{p}" for i in range(n) for p in ("weight", "bias")}
    if n == 0 or set(state) != expected:
        odd = sorted(set(state) ^ expected)[:3]
        raise _damaged(
            what,
            file,
            f"is not one translator per layer (`<i>.weight`, `<i>.bias`; {n} layers, odd: {', '.join(odd) or 'none'})",
        )
    width = int(state["0.weight"].shape[-1]) if state["0.weight"].dim() else 0
    for i in range(n):
        for part, shape in (("weight", (width, width)), ("bias", (width,))):
            if tuple(state[f"{i}.{part}"].shape) != shape or width == 0:
                got = "x".join(map(str, state[f"{i}.{part}"].shape)) or "a scalar"
                raise _damaged(
                    what, file, f"holds {i}.{part} of shape {got}, not {'x'.join(map(str, shape))}"
                )
    return n, width


def _info_of(
    meta: dict[str, Any], fmt: str, shape: tuple[int, int], file: Path, what: str
) -> dict[str, Any]:
    """What the lens's JSON file says of it, checked against the weights' blocks and width."""
    keys = ("n_blocks", "width") if fmt == "tokenprobe" else ("num_hidden_layers", "d_model")
    if fmt != "tokenprobe":
        if any(k not in meta for k in keys):
            raise _damaged(what, file, "is not a tuned-lens config (no d_model, num_hidden_layers)")
        if (
            meta.get("lens_type", "linear_tuned_lens") != "linear_tuned_lens"
            or meta.get("bias") is False
        ):
            raise TokenprobeError(
                f"{what}: only linear tuned lenses with a bias are read, not {meta.get('lens_type')!r}"
            )
    for key, have, of in zip(keys, shape, ("{} translators", "translators {} wide"), strict=True):
        if key in meta and meta[key] != have:
            raise _damaged(
                what, file, f"says {key} {meta[key]!r}, but the weights are {of.format(have)}"
            )
    if fmt != "tokenprobe":
        return {
            "model": meta.get("base_model_name_or_path", ""),
            "unembed_hash": meta.get("unembed_hash"),
        }
    return {k: v for k, v in meta.items() if k not in ("n_blocks", "width", "format", "version")}
