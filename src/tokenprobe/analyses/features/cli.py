"""`tokenprobe features`: flags -> prompt (or --data) and settings (checked before the model
loads) -> the dictionary (loaded and checked against the model) -> `features` (or
`feature_contexts` over the data set, checkpointed in --out) -> tables, figures, meta.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import TokenprobeError
from ..base import Session, read_prompt
from .compute import features
from .contexts import FeatureContextsResult
from .dataset import feature_contexts
from .options import FeaturesFigure, FeaturesOptions
from .result import FeaturesResult

# settings of one mode that the other would silently ignore: (setting, its flag)
PROMPT_ONLY = (("target", "--target"), ("foil", "--foil"), ("top", "--top"),
               ("ablate", "--no-ablate"), ("chat", "--chat"), ("system", "--system"))  # fmt: skip
DATA_ONLY = (("top_examples", "--top-examples"), ("context", "--context"),
             ("text_column", "--text-column"), ("limit", "--limit"))  # fmt: skip


def command(session: Session) -> None:
    args = session.args
    options = session.options(FeaturesOptions)
    figure = session.options(FeaturesFigure)
    if args.data is not None:
        _data_command(session, options, figure)
        return
    prompt = read_prompt(session, or_data=True)
    changed = options.changed()
    used = [flag for name, flag in DATA_ONLY if name in changed]
    used += [flag for flag, on in (("--resume", args.resume), ("--ray", args.ray)) if on]
    if "examples" in figure.changed():
        used.append("--examples")
    if used:
        raise TokenprobeError(f"{used[0]} goes with --data FILE; --prompt runs one prompt here")
    out = Path(args.out)
    session.check_out(out, FeaturesResult.files(args.format))
    result = features(session.load(), prompt, options=options, offline=session.offline)
    session.save(result, out, figure)


def _data_command(session: Session, options: FeaturesOptions, figure: FeaturesFigure) -> None:
    """--data: per feature its stats and top contexts over the data set's texts."""
    args = session.args
    if args.prompt is not None or args.prompt_file is not None:
        raise TokenprobeError("give one of --prompt TEXT, --prompt-file FILE or --data FILE")
    changed = options.changed()
    used = [flag for name, flag in PROMPT_ONLY if name in changed]
    if used:
        raise TokenprobeError(
            f"{used[0]} goes with --prompt; --data ranks each feature's top contexts instead"
        )
    if options.sae is None:
        raise TokenprobeError("`sae` is required: give --sae DIR (a SAELens, sparsify or "
                              "Gemma Scope folder) or a hub id")  # fmt: skip
    out = Path(args.out)
    session.check_out(out, FeatureContextsResult.files(args.format))
    result = feature_contexts(
        session.load(),
        args.data,
        options=options,
        offline=session.offline,
        checkpoint=out,
        resume=args.resume,
        executor=session.executor(),
    )
    session.save(result, out, figure)


def demo(session: Session, entry: dict[str, Any], out: Path) -> None:
    """One demo.json features entry: a prompt and its settings, or a data set ("data") and the
    settings of its top contexts."""
    options = {k: v for k, v in entry.items() if k not in ("name", "prompt", "data")}
    lm = session.load()
    if "data" in entry:
        result: Any = feature_contexts(lm, entry["data"], offline=session.offline, **options)
    else:
        result = features(lm, entry["prompt"], offline=session.offline, **options)
    session.save(result, out)


def demo_files(entry: dict[str, Any], formats: Sequence[str]) -> list[str]:
    """The files a demo entry writes: a data set's top contexts, or one prompt's features."""
    kind = FeatureContextsResult if "data" in entry else FeaturesResult
    return kind.files(formats)
