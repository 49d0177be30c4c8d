"""`tokenprobe attribute`: flags -> prompt -> `attribute` (checkpointed in --out) -> result."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, cast

from ...data import read_prompts
from ...errors import TokenprobeError
from ...rowset import RowSet
from ..base import Session, check_rows_flags, read_prompt
from .compute import attribute
from .options import AttributionFigure, AttributionOptions
from .result import AttributionResult
from .rows import attribute_rows


def command(session: Session) -> None:
    """Check the settings and the prompt before the model loads, then run and save."""
    args = session.args
    options = session.options(AttributionOptions)
    figure = session.options(AttributionFigure)
    if args.data is not None:
        return _over_data(session, options, figure)
    check_rows_flags(args)
    prompt = read_prompt(session, or_data=True)
    out = Path(args.out)
    session.check_out(out, AttributionResult.files(args.format))
    result = attribute(session.load(), prompt, options=options, checkpoint=out, resume=args.resume)
    session.save(result, out, figure)


def _over_data(session: Session, options: AttributionOptions, figure: AttributionFigure) -> None:
    """--data: every row's prompt attributed to its --target-column target (or --target /
    --generate for all), one table."""
    args = session.args
    if args.prompt is not None or args.prompt_file is not None:
        raise TokenprobeError(
            "give the prompts with --data or with --prompt/--prompt-file, not both"
        )
    given = options.target is not None or options.generate is not None
    if args.target_column is not None and given:
        raise TokenprobeError(
            "--target-column gives each row's target: leave out --target and --generate"
        )
    if args.target_column is None and not given:
        raise TokenprobeError(
            "give --target-column NAME (each row's target), --target TEXT or --generate N"
        )
    rows = read_prompts(args.data, args.prompt_column, args.target_column)
    out = Path(args.out)
    session.check_out(
        out, RowSet.names(AttributionResult.kind, len(rows), args.figures, args.format)
    )
    # read_prompts gives every row a prompt, and a target when there is a target column
    prompts = cast(list[str], [r["prompt"] for r in rows])
    targets = None if args.target_column is None else cast(list[str], [r["target"] for r in rows])
    result = attribute_rows(
        session.load(),
        prompts,
        targets,
        figures=args.figures,
        checkpoint=out,
        resume=args.resume,
        executor=session.executor(),
        data=args.data,
        options=options,
    )
    session.save(result, out, figure)


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
