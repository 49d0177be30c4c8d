"""`tokenprobe lens`: flags -> prompts -> `logit_lens` -> one result folder per prompt."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ...data import read_prompts
from ...errors import TokenprobeError, warn
from ...heatmap import clip_range, parse_range
from ...rowset import RowSet
from ...tuned import lens_format, load_lens
from ..base import Session, check_rows_flags
from .compute import logit_lens
from .options import LensFigure, LensOptions
from .result import LensResult
from .rows import lens_rows


def _figure_options(session: Session) -> LensFigure:
    """The figure settings, checked before the model loads (and --lens's folder):
    --no-frame and --overview / --no-overview into them; --colour diff needs --foil."""
    args = session.args
    if args.lens is not None:
        lens_format(args.lens)  # neither format, or no such folder: before the load
    if args.overview and args.no_overview:
        raise TokenprobeError("--overview and --no-overview contradict each other: give one")
    figure = session.options(LensFigure)
    if args.no_frame:
        figure = replace(figure, frame=False)
    if args.overview or args.no_overview:
        figure = replace(figure, overview=bool(args.overview))
    if args.overview and not figure.zoom:
        raise TokenprobeError(
            "--overview boxes the --zoom region on the whole prompt: give --zoom START:END too"
        )
    if figure.colour == "diff" and not args.foil:
        raise TokenprobeError(
            "--colour diff draws logit(target) - logit(foil): give --target and --foil"
        )
    return figure


def _clip(figure: LensFigure, lengths: list[int]) -> None:
    """--zoom and --frame within every drawn prompt's positions, or one line saying which."""
    for name in ("zoom", "frame"):
        value = getattr(figure, name)
        if value and (span := parse_range(value, name)) is not None:
            for n in lengths:
                clip_range(span, n, name)


def command(session: Session) -> None:
    args = session.args
    if args.data is not None:
        return _over_data(session)
    check_rows_flags(args)
    if args.resume:
        raise TokenprobeError(
            "--resume goes with a --data file of prompts; --prompt runs here at once"
        )
    prompts = list(args.prompt or [])
    if args.prompt_file:
        prompts.append(session.read_text_file(args.prompt_file, "--prompt-file"))
    if not prompts:
        raise TokenprobeError("no prompt: give --prompt TEXT, --prompt-file FILE or --data FILE")
    figure = _figure_options(session)
    options = session.options(LensOptions)
    outs = (
        [Path(args.out)]
        if len(prompts) == 1
        else [Path(args.out) / f"prompt_{i + 1:02d}" for i in range(len(prompts))]
    )
    for out in outs:  # before the model runs, not after
        session.check_out(out, LensResult.files(args.format))
    results = logit_lens(session.load(), prompts, options=options)
    assert isinstance(results, list)
    for out, result in zip(outs, results, strict=True):
        _clip(figure, [result.n_positions])
        session.save(result, out, figure)


def _over_data(session: Session) -> None:
    """--data: every row's prompt (and --target-column target) through the lens, one table."""
    args = session.args
    if args.prompt or args.prompt_file:
        raise TokenprobeError(
            "give the prompts with --data or with --prompt/--prompt-file, not both"
        )
    figure = _figure_options(session)
    options = session.options(LensOptions)
    rows = read_prompts(args.data, args.prompt_column, args.target_column)
    out = Path(args.out)
    session.check_out(out, RowSet.names(LensResult.kind, len(rows), args.figures, args.format))
    result = lens_rows(
        session.load(),
        _texts(rows, "prompt"),
        None if args.target_column is None else _texts(rows, "target"),
        figures=args.figures,
        checkpoint=out,
        resume=args.resume,
        executor=session.executor(),
        data=args.data,
        options=options,
    )
    drawn = range(min(args.figures, len(result)))
    frame = result.frame
    _clip(figure, [int(frame.loc[frame["row"] == i, "position"].max()) + 1 for i in drawn])
    session.save(result, out, figure)


def _texts(rows: list[dict[str, str | None]], key: str) -> list[str]:
    """`key` of every row (`read_prompts` fills in the prompt, and the target when a target
    column is given, in every row or fails)."""
    out = []
    for row in rows:
        text = row[key]
        assert text is not None
        out.append(text)
    return out


def demo(session: Session, entry: dict[str, Any], out: Path) -> None:
    """One demo.json lens entry: a prompt, chat or not, dummies, targets, a foil and a tuned
    lens ("builtin": the one shipped for the built-in model); its figure options ("zoom",
    "colour", "overview") if it gives any."""
    lm, lens = session.load(), entry.get("lens")
    if lens is not None:
        try:  # the shipped lens fits the built-in model only: a demo on another model skips it
            load_lens(lens, lm)
        except TokenprobeError as exc:
            warn(f"the demo skips {entry['name']}: {exc}")
            return
    result = logit_lens(
        lm,
        entry["prompt"],
        chat=entry.get("chat", False),
        dummy=entry.get("dummy", 0),
        targets=entry.get("targets", []),
        foil=entry.get("foil"),
        lens=lens,
    )
    assert not isinstance(result, list)
    figure = LensFigure.build(
        None, {k: entry[k] for k in ("zoom", "colour", "overview") if k in entry}
    )
    session.save(result, out, figure)
