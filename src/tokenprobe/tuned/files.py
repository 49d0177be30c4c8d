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
from .lens import TunedLens, check_finite, residual_width, unembed_hash

FORMATS = ("tokenprobe", "tuned-lens")
OURS_META, OURS_WEIGHTS = "tuned-lens.json", "tuned-lens.safetensors"
THEIRS_CONFIG, THEIRS_WEIGHTS = "config.json", "params.pt"
FORMAT_TAG = "tokenprobe tuned lens"
BUILTIN = "builtin"  # the lens shipped for the built-in model (SmolLM2-135M-Instruct)


def resolve_lens(folder: str | os.PathLike[str]) -> Path:
    """The folder of a lens: as given, or for `builtin` (when no folder has that name) the
    package's own lens for the built-in model."""
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
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in lens.translators.state_dict().items()}
    written: dict[str, Path] = {}
    if "tokenprobe" in formats:
        from safetensors.torch import save_file

        meta = {"format": FORMAT_TAG, "version": 1, "n_blocks": lens.n_blocks, "width": lens.width, **lens.info}
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
    """A lens saved in either format, in float32 on `lm`'s device; with `lm`, checked against
    it (blocks and width must match: one error saying which differs)."""
    fmt = lens_format(folder)
    path = resolve_lens(folder)
    try:
        if fmt == "tokenprobe":
            from safetensors.torch import load_file

            info = json.loads((path / OURS_META).read_text(encoding="utf-8"))
            state = {k.removeprefix("translators."): v for k, v in load_file(str(path / OURS_WEIGHTS)).items()}
        else:
            config = json.loads((path / THEIRS_CONFIG).read_text(encoding="utf-8"))
            state = torch.load(path / THEIRS_WEIGHTS, map_location="cpu", weights_only=True)
            info = _info_of_config(config, folder)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # damaged JSON, weights, pickle
        raise TokenprobeError(f"`lens` {folder} cannot be read ({type(exc).__name__}): save it again") from exc
    n_blocks, width = _shape_of(state, folder)
    if lm is not None:
        check_fits(n_blocks, width, lm, folder)
    lens = TunedLens(n_blocks, width, {k: v for k, v in info.items() if k not in ("n_blocks", "width", "format", "version")})
    lens.translators.load_state_dict({k: v.float() for k, v in state.items()})
    check_finite(lens, f"`lens` {folder}")
    lens.info["format"] = fmt
    if lm is not None:
        lens.to(lm.device)
        saved = info.get("unembed_hash")
        if saved and saved != unembed_hash(lm.require_adapter(), lm.loaded_vocab):
            warn(f"`lens` {folder} was trained with another unembedding than {lm.name}'s (same shape, other weights): its rows may mislead")
    return lens.eval()


def _info_of_config(config: Any, folder: Any) -> dict[str, Any]:
    if not isinstance(config, dict) or "d_model" not in config or "num_hidden_layers" not in config:
        raise TokenprobeError(f"`lens` {folder}: its {THEIRS_CONFIG} is not a tuned-lens config (no d_model, num_hidden_layers)")
    if config.get("lens_type", "linear_tuned_lens") != "linear_tuned_lens" or config.get("bias") is False:
        raise TokenprobeError(f"`lens` {folder}: only linear tuned lenses with a bias are read, not {config.get('lens_type')!r}")
    return {"model": config.get("base_model_name_or_path", ""), "unembed_hash": config.get("unembed_hash")}


def _shape_of(state: dict[str, torch.Tensor], folder: Any) -> tuple[int, int]:
    """Blocks and width from the weights themselves (what the decoding depends on)."""
    n = len({k.split(".")[0] for k in state})
    expected = {f"{i}.{p}" for i in range(n) for p in ("weight", "bias")}
    weight = state.get("0.weight")
    if n == 0 or set(state) != expected or weight is None or weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
        raise TokenprobeError(f"`lens` {folder}: its weights are not one square translator per layer: save it again")
    return n, int(weight.shape[0])


def check_fits(n_blocks: int, width: int, lm: LoadedModel, folder: Any) -> None:
    """One error when the lens was trained for another model: which of blocks, width differ."""
    adapter = lm.require_adapter()
    model_width = residual_width(lm)
    whose = " (the built-in model's lens)" if str(folder) == BUILTIN else ""
    if n_blocks != adapter.n_blocks:
        raise TokenprobeError(
            f"`lens` {folder}{whose} was trained for a model with {n_blocks} blocks; {lm.name} has "
            f"{adapter.n_blocks}: train one for this model with tune-lens"
        )
    if width != model_width:
        raise TokenprobeError(
            f"`lens` {folder}{whose} was trained for a model of hidden size {width}; {lm.name}'s is "
            f"{model_width}: train one for this model with tune-lens"
        )
