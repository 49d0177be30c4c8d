"""`tokenprobe tune-lens`: flags -> training (checkpointed in --out) -> the lens files, the
training curve and meta.json in --out."""

from __future__ import annotations

from pathlib import Path

from ...tuned import FORMATS, lens_files
from ..base import Session
from .compute import tune_lens
from .options import TuneLensOptions
from .result import TuneLensResult


def command(session: Session) -> None:
    args = session.args
    out = Path(args.out)
    formats = FORMATS if args.lens_format == "both" else (args.lens_format,)
    names = [*TuneLensResult.files(args.format)]
    session.check_out(out, [n for n in names if n not in lens_files() or n in lens_files(formats)])
    options = session.options(TuneLensOptions)  # every setting checked before the model loads
    result = tune_lens(session.load(), args.data, out=out, resume=args.resume, options=options)
    result.lens_formats = tuple(formats)
    session.save(result, out)
