"""`tokenprobe lens`: flags -> prompts -> `logit_lens` -> one result folder per prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import TokenprobeError
from ...heatmap import clip_range, parse_range
from ..base import Session
from .compute import logit_lens
from .result import LensResult


def command(session: Session) -> None:
    args = session.args
    prompts = list(args.prompt or [])
    if args.prompt_file:
        prompts.append(session.read_text_file(args.prompt_file, "--prompt-file"))
    if not prompts:
        raise TokenprobeError("no prompt: give --prompt TEXT or --prompt-file FILE")
    figure = session.params("figure")
    if args.no_frame:
        figure["frame"] = False
    for name in ("zoom", "frame"):
        if figure[name] is not False:
            parse_range(figure[name], name)  # fail on a malformed range before loading the model
    outs = (
        [Path(args.out)]
        if len(prompts) == 1
        else [Path(args.out) / f"prompt_{i + 1:02d}" for i in range(len(prompts))]
    )
    for out in outs:  # before the model runs, not after
        session.check_out(out, LensResult.files(args.format))
    results = logit_lens(session.load(), prompts, **session.params("run"))
    assert isinstance(results, list)
    for out, result in zip(outs, results, strict=True):
        for name in ("zoom", "frame"):
            if figure[name]:
                clip_range(parse_range(figure[name], name), result.n_positions, name)
        session.save(result, out, figure)


def demo(session: Session, entry: dict[str, Any], out: Path) -> None:
    """One demo.json lens entry: a prompt, chat or not, dummies and targets."""
    result = logit_lens(
        session.load(),
        entry["prompt"],
        chat=entry.get("chat", False),
        dummy=entry.get("dummy", 0),
        targets=entry.get("targets", []),
    )
    assert not isinstance(result, list)
    session.save(result, out)
