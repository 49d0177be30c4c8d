"""`tokenprobe flips`: flags -> data set -> classifier -> `flip_rates` -> one result folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...data import read_table, require_column
from ...errors import TokenprobeError
from ...model import BUILTIN_MODELS
from ..base import Session
from .classifiers import (
    DEFAULT_TEMPLATE,
    Classifier,
    PromptedClassifier,
    SequenceClassifier,
    check_template,
)
from .compute import flip_rates
from .options import FlipFigure, FlipOptions
from .result import FlipResult


def _is_sequence_classifier(name: str, offline: bool = True) -> bool:
    """Does `name` (a folder or hub id) hold a model with a classification head?"""
    if name in BUILTIN_MODELS or name.lower().endswith(".gguf"):
        return False
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name, local_files_only=offline)
    except (OSError, ValueError):
        return False  # load() will say what is wrong with the name
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def build_classifier(session: Session, gold: list[str] | None) -> Classifier:
    """A sequence classifier or a prompted classifier, from the command's flags."""
    args = session.args
    pairs = [
        label.split("=", 1) if "=" in label else [label, None] for label in (args.labels or [])
    ]
    names = [p[0] for p in pairs]
    if names and len(set(names)) < 2:
        raise TokenprobeError(
            f"--labels names {len(set(names))} label: a classifier needs at least two labels to "
            "flip between (e.g. --labels joy sadness)"
        )
    if _is_sequence_classifier(args.model, offline=getattr(session, "offline", True)):
        return SequenceClassifier(session.load(task="sequence-classification"), names or None)
    if not names:
        if gold is None:
            raise TokenprobeError(
                "give the labels with --labels (e.g. --labels anger joy optimism sadness)"
            )
        names = sorted(set(gold))
        if len(names) < 2:
            raise TokenprobeError(
                f"every text used from --data is labelled {names[0]!r}: a one-class classifier can never "
                "flip; pass --labels with at least two labels (e.g. --labels joy sadness)"
            )
        pairs = [[n, None] for n in names]
    verbalisers = [v if v is not None else f" {n}" for n, v in pairs]
    return PromptedClassifier(
        session.load(),
        names,
        verbalisers,
        template=args.template or DEFAULT_TEMPLATE,
        chat=args.chat,
        reuse_prefix=not args.no_prefix_cache,
    )


def _read_data(args: Any) -> tuple[list[str], list[str] | None]:
    """The texts (and gold labels, when there is a label column) of --data."""
    frame = read_table(args.data)
    require_column(frame, args.data, args.text_column, "--text-column")
    label_column = args.label_column or ("label" if "label" in frame.columns else None)
    if label_column is not None:
        require_column(frame, args.data, label_column, "--label-column")
    frame = frame[frame[args.text_column].notna()]
    if args.limit is not None:
        frame = frame.head(args.limit)
    if frame.empty:
        raise TokenprobeError(f"--data {args.data} has no texts in column {args.text_column!r}")
    texts = [str(t) for t in frame[args.text_column]]
    gold = [str(g) for g in frame[label_column]] if label_column is not None else None
    return texts, gold


def command(session: Session) -> None:
    args = session.args
    how, *rest = args.perturb
    if len(rest) > 1 or (how != "filler" and rest) or (how == "filler" and not rest):
        raise TokenprobeError("--perturb takes delete, mask, or filler WORD")
    if how == "filler" and not rest[0].strip():
        raise TokenprobeError("--perturb filler needs a word: --perturb filler WORD")
    if args.template is not None:  # before the model loads
        check_template(args.template)
    perturbation = {"perturbation": how, "filler": rest[0] if rest else None}
    options = FlipOptions.build(session.options(FlipOptions), perturbation)
    figure = session.options(FlipFigure)
    texts, gold = _read_data(args)
    out = Path(args.out)
    session.check_out(out, FlipResult.files(args.format))
    classifier = build_classifier(session, gold)
    result = flip_rates(
        classifier,
        texts,
        gold,
        options=options,
        checkpoint=out,
        resume=args.resume,
        executor=session.executor(),
    )
    result.meta["data"] = args.data
    session.save(result, out, figure)


def demo(session: Session, entry: dict[str, Any], out: Path) -> None:
    """One demo.json flips entry: the first `limit` rows of a data set, a prompted classifier."""
    frame = read_table(entry["data"]).head(entry["limit"])
    classifier = PromptedClassifier(session.load(), entry["labels"])
    result = flip_rates(
        classifier, frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist()
    )
    result.meta["data"] = f"{entry['data']} (first {entry['limit']} rows)"
    # 200 texts leave ~50 per class: cells backed by 2 occurrences are drawn too
    session.save(result, out, FlipFigure(min_count=2))
