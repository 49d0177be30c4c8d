"""`tokenprobe trace`: flags -> prompt and settings (checked before the model loads) ->
`causal_trace` (checkpointed in --out, so that --resume continues it) -> one result folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..base import Session, read_prompt
from .compute import causal_trace
from .options import TraceFigure, TraceOptions
from .result import TraceResult


def command(session: Session) -> None:
    """Check the prompt and the settings before the model loads, then run and save."""
    args = session.args
    prompt = read_prompt(session)
    options = session.options(TraceOptions)
    figure = session.options(TraceFigure)
    out = Path(args.out)
    session.check_out(out, TraceResult.files(args.format))
    result = causal_trace(
        session.load(), prompt, options=options, checkpoint=out, resume=args.resume
    )
    session.save(result, out, figure)


def demo(session: Session, entry: dict[str, Any], out: Path) -> None:
    """One demo.json trace entry: a prompt, a target, and a corruption."""
    options = {k: v for k, v in entry.items() if k not in ("name", "prompt")}
    result = causal_trace(session.load(), entry["prompt"], progress=False, **options)
    session.save(result, out)
