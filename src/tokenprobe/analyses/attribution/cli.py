"""`tokenprobe attribute`: flags -> prompt -> `attribute` (checkpointed in --out) -> result."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from ...errors import TokenprobeError
from ..base import Session
from .compute import attribute
from .methods import METHODS
from .result import AttributionResult


def command(session: Session) -> None:
    """Check the method and the prompt before the model loads, then run and save."""
    args = session.args
    if args.method not in METHODS:
        raise TokenprobeError(f"unknown method {args.method!r}: use one of {', '.join(METHODS)}")
    if (args.prompt is None) == (args.prompt_file is None):
        raise TokenprobeError("give one of --prompt TEXT or --prompt-file FILE")
    prompt = (
        args.prompt
        if args.prompt is not None
        else session.read_text_file(args.prompt_file, "--prompt-file")
    )
    if not prompt.strip():
        raise TokenprobeError("the prompt is empty: give --prompt or --prompt-file")
    out = Path(args.out)
    session.check_out(out, AttributionResult.files(args.format))
    result = attribute(session.load(), prompt, checkpoint=out, **session.params("run"))
    session.save(result, out)


def demo(session: Session, entry: dict[str, Any], out: Path) -> None:
    """One demo.json attribution entry: a packaged prompt file, a generated target, spans."""
    prompt = (
        resources.files("tokenprobe").joinpath(entry["prompt_file"]).read_text(encoding="utf-8")
    )
    result = attribute(
        session.load(),
        prompt,
        generate=entry["generate"],
        features=entry["spans"],
        method=entry["method"],
        samples=entry["samples"],
    )
    session.save(result, out)
