"""`tokenprobe trace`: flags -> prompt and corruption -> `causal_trace` -> one result folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import TokenprobeError
from ..base import Session
from .compute import causal_trace
from .inputs import check_settings
from .result import TraceResult


def command(session: Session) -> None:
    """Check the prompt and the corruption settings before the model loads, then run and save."""
    args = session.args
    if (args.prompt is None) == (args.prompt_file is None):
        raise TokenprobeError("give one of --prompt TEXT or --prompt-file FILE")
    prompt = (
        args.prompt
        if args.prompt is not None
        else session.read_text_file(args.prompt_file, "--prompt-file")
    )
    if not prompt.strip():
        raise TokenprobeError("the prompt is empty: give --prompt or --prompt-file")
    params = session.params("run")
    check_settings(
        params["target"],
        params["foil"],
        params["corrupted"],
        params["corrupt"],
        params["subject"],
        params["noise"],
        params["components"],
        params["metric"],
    )
    out = Path(args.out)
    session.check_out(out, TraceResult.files(args.format))
    result = causal_trace(session.load(), prompt, **params)
    session.save(result, out, session.params("figure"))


def demo(session: Session, entry: dict[str, Any], out: Path) -> None:
    """One demo.json trace entry: a prompt, a target, and a corruption."""
    options = {k: v for k, v in entry.items() if k not in ("name", "prompt")}
    result = causal_trace(session.load(), entry["prompt"], progress=False, **options)
    session.save(result, out)
