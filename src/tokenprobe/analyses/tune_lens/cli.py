"""`tokenprobe tune-lens`: flags -> training (checkpointed in --out) -> the lens files, the
training curve and meta.json in --out."""

from __future__ import annotations

from pathlib import Path

from ...tuned import FORMATS, lens_files
from ...tuned.train import Hyper, check_hyper
from ..base import Session
from .compute import tune_lens
from .result import TuneLensResult


def command(session: Session) -> None:
    args = session.args
    out = Path(args.out)
    formats = FORMATS if args.lens_format == "both" else (args.lens_format,)
    names = [*TuneLensResult.files(args.format)]
    session.check_out(out, [n for n in names if n not in lens_files() or n in lens_files(formats)])
    params = session.params("run")
    hyper = ("tokens", "seq_len", "batch_size", "lr", "momentum", "weight_decay", "warmup_steps")
    check_hyper(Hyper(**{k: params[k] for k in hyper}))  # before the model loads
    result = tune_lens(session.load(), out=out, **params)
    result.lens_formats = tuple(formats)
    session.save(result, out)
