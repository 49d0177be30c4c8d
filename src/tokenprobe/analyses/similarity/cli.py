"""`tokenprobe similarity`: --text or --data -> `past_similarity` -> one result folder, a
--data run checkpointed in --out so that --resume continues it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...data import read_texts
from ...errors import TokenprobeError
from ..base import Session
from .compute import past_similarity
from .options import SimilarityFigure, SimilarityOptions
from .result import SimilarityResult


def command(session: Session) -> None:
    """One text or a data set's texts -> one result in --out (a --data run checkpointed there)."""
    args = session.args
    if (args.text is None) == (args.data is None):
        raise TokenprobeError("give one of --text TEXT or --data FILE")
    if args.resume and args.data is None:
        raise TokenprobeError(
            "--resume continues a --data run; a single --text is not checkpointed"
        )
    if args.text is not None and not args.text.strip():  # before the model loads
        raise TokenprobeError("the text is empty: give some text with --text or --data")
    if args.ray and args.data is None:
        raise TokenprobeError("--ray runs a --data data set; a single --text runs here")
    options = session.options(SimilarityOptions)  # checked before the model loads
    figure = session.options(SimilarityFigure)
    texts: str | list[str] = (
        args.text if args.text is not None else read_texts(args.data, args.text_column)
    )
    out = Path(args.out)
    session.check_out(out, SimilarityResult.files(args.format))
    result = past_similarity(
        session.load(),
        texts,
        options=options,
        checkpoint=out if args.data is not None else None,
        resume=args.resume,
        executor=session.executor(),
    )
    if args.data:
        result.meta["data"] = args.data
    session.save(result, out, figure)


def demo(session: Session, entry: dict[str, Any], out: Path) -> None:
    """One demo.json similarity entry: a text, its marker, which occurrence, window, centring."""
    result = past_similarity(
        session.load(),
        entry["text"],
        marker=entry["marker"],
        occurrence=entry["occurrence"],
        window=entry["window"],
        centre=entry["centre"],
    )
    session.save(result, out)
