"""`tokenprobe features`: flags -> prompt and settings (checked before the model loads) -> the
dictionary (loaded and checked against the model) -> `features` -> tables, figures, meta.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..base import Session, read_prompt
from .compute import features
from .options import FeaturesFigure, FeaturesOptions
from .result import FeaturesResult


def command(session: Session) -> None:
    args = session.args
    prompt = read_prompt(session)
    options = session.options(FeaturesOptions)
    figure = session.options(FeaturesFigure)
    out = Path(args.out)
    session.check_out(out, FeaturesResult.files(args.format))
    result = features(session.load(), prompt, options=options, offline=session.offline)
    session.save(result, out, figure)


def demo(session: Session, entry: dict[str, Any], out: Path) -> None:
    """One demo.json features entry: a prompt and its settings."""
    options = {k: v for k, v in entry.items() if k not in ("name", "prompt")}
    session.save(features(session.load(), entry["prompt"], offline=session.offline, **options), out)
