"""`tokenprobe train-sae`: flags -> training (checkpointed in --out) -> the SAELens folder, the
training log and curves, and meta.json in --out."""

from __future__ import annotations

from pathlib import Path

from ..base import Session
from .compute import train_sae
from .options import TrainSaeOptions
from .result import TrainSaeResult


def command(session: Session) -> None:
    args = session.args
    out = Path(args.out)
    session.check_out(out, TrainSaeResult.files(args.format))
    options = session.options(TrainSaeOptions)  # every setting checked before the model loads
    result = train_sae(
        session.load(),
        args.data,
        eval_data=args.eval_data,
        out=out,
        resume=args.resume,
        options=options,
    )
    session.save(result, out)
