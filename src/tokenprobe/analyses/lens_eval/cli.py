"""`tokenprobe lens-eval`: flags -> the lens checked against the model -> the table, the line
plot and meta.json in --out."""

from __future__ import annotations

from pathlib import Path

from ...tuned import lens_format
from ..base import Session
from .compute import lens_eval
from .options import LensEvalOptions
from .result import LensEvalResult


def command(session: Session) -> None:
    args = session.args
    out = Path(args.out)
    lens_format(args.lens)  # a folder that holds no lens fails before the model loads
    session.check_out(out, LensEvalResult.files(args.format))
    options = session.options(LensEvalOptions)  # checked before the model loads
    result = lens_eval(session.load(), args.lens, args.data, options=options)
    session.save(result, out)
