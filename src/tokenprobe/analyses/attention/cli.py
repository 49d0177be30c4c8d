"""`tokenprobe attention`: flags -> one prompt -> `attention` -> the tables, figures and
meta.json in --out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..base import Session, read_prompt
from .compute import attention
from .options import AttentionOptions
from .result import AttentionResult


def command(session: Session) -> None:
    args = session.args
    prompt = read_prompt(session)
    options = session.options(AttentionOptions)  # checked before the model loads
    out = Path(args.out)
    session.check_out(out, AttentionResult.files(args.format))
    result = attention(session.load(), prompt, options=options)
    session.save(result, out)


def demo(session: Session, entry: dict[str, Any], out: Path) -> None:
    """One demo.json attention entry: a prompt and its settings."""
    options = {k: v for k, v in entry.items() if k not in ("name", "prompt")}
    session.save(attention(session.load(), entry["prompt"], **options), out)
