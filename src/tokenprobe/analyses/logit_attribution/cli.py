"""`tokenprobe logit-attribution`: flags -> prompt and settings (checked before the model
loads) -> `logit_attribution` -> the table, the figures and meta.json in --out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..base import Session, read_prompt
from .compute import logit_attribution
from .options import LogitAttributionFigure, LogitAttributionOptions
from .result import LogitAttributionResult


def command(session: Session) -> None:
    args = session.args
    prompt = read_prompt(session)
    options = session.options(LogitAttributionOptions)
    figure = session.options(LogitAttributionFigure)
    out = Path(args.out)
    session.check_out(out, LogitAttributionResult.files(args.format))
    result = logit_attribution(session.load(), prompt, options=options)
    session.save(result, out, figure)


def demo(session: Session, entry: dict[str, Any], out: Path) -> None:
    """One demo.json logit_attribution entry: a prompt and its settings."""
    options = {k: v for k, v in entry.items() if k not in ("name", "prompt")}
    session.save(logit_attribution(session.load(), entry["prompt"], **options), out)
