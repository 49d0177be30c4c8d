"""The `tokenprobe` command: one subcommand per registered analysis (generated from its
spec), plus `report` and `demo`. A thin layer over the public API."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .. import __version__
from ..analyses import ANALYSES, by_command
from ..checkpoint import drop_unstarted, interrupted_note, kept_until_saved
from ..errors import TokenprobeError, TokenprobeWarning
from ..model import offline, offline_wanted
from ..runner import is_oom
from .demo import add_demo, demo_specs, run_demo
from .flags import COMMON_FLAGS, DEBUG_ENV, DEBUG_HELP, Parser, add_analysis, check_utf8
from .report import add_report, run_report
from .session import Session

__all__ = ["build_parser", "demo_specs", "main"]

log = logging.getLogger("tokenprobe")
BUG_REPORT = "report it on the tokenprobe issue tracker with that traceback"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: a subcommand per registered analysis, then report and demo."""
    parser = Parser(
        prog="tokenprobe",
        description="Token-level analysis of transformer language models. Every command writes a "
        "table (Parquet), figures and meta.json into --out.",
    )
    parser.add_argument("--version", action="version", version=f"tokenprobe {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for spec in ANALYSES.values():
        add_analysis(sub, spec)
    add_report(sub)
    add_demo(sub)
    for command in sub.choices.values():  # --debug after the command too (SUPPRESS: no override)
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (not the stream of the first
    run: tests and notebooks swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _configure_output(flags: dict[str, str]) -> None:
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("tokenprobe: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False

    def show(message: Warning | str, *_: Any, **__: Any) -> None:
        text = message.render(flags) if isinstance(message, TokenprobeWarning) else str(message)
        print(f"tokenprobe: warning: {text}", file=sys.stderr)

    warnings.showwarning = show
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _one_line(text: str) -> str:
    return " ".join(str(text).split("\n")).strip()


def _flags_of(command: str) -> dict[str, str]:
    """Library parameter -> flag, for error messages: this command's options first."""
    flags = dict(COMMON_FLAGS)
    for spec in ANALYSES.values():
        if spec.command != command:
            flags = {**spec.flags(), **flags}
    for spec in ANALYSES.values():
        if spec.command == command:
            flags.update(spec.flags())
    return flags


def error_line(
    exc: BaseException, flags: dict[str, str] | None = None, command: str | None = None
) -> tuple[str, int]:
    """The one line a failure ends in, and the exit status: 2 for bad input (a TokenprobeError,
    a file that cannot be read or written), 1 for anything else, which is tokenprobe's fault.
    Parameters named in a TokenprobeError are shown as the flags in `flags`; out of memory
    gives the advice of `command`'s analysis (of every analysis without one)."""
    if isinstance(exc, TokenprobeError):
        return f"tokenprobe: error: {_one_line(exc.render(flags or {}))}", 2
    if isinstance(exc, OSError) and exc.filename is not None:
        paths = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        why = exc.strerror or type(exc).__name__
        return f"tokenprobe: error: {paths}: {why} (check the path and its permissions)", 2
    lines = str(exc).strip().splitlines()
    first = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
    if is_oom(exc):  # one input too large for the device even alone, or a count set too high
        return f"tokenprobe: error: out of memory ({_allocation(first)}): {_oom_advice(command)}", 2
    return (
        f"tokenprobe: error: {first} (this looks like a bug in tokenprobe or an input it does not "
        f"handle; rerun with --debug for the traceback and {BUG_REPORT})",
        1,
    )


def _oom_advice(command: str | None) -> str:
    """What to lower when a run is out of memory: the generic advice with the analysis's own
    (`Analysis.oom_advice`); for no analysis's command, every analysis's, each named."""
    spec = next((s for s in ANALYSES.values() if s.command == command), None)
    generic = "use --dtype bfloat16, shorter inputs, or --device cpu"
    if spec is not None:
        advice = ["lower --batch-tokens" if spec.batch_tokens else "", spec.oom_advice, generic]
        return ", ".join(a for a in advice if a)
    named = "; ".join(f"{s.command}: {s.oom_advice}" for s in ANALYSES.values() if s.oom_advice)
    return f"lower --batch-tokens, {generic}" + (f" ({named})" if named else "")


def _allocation(first: str) -> str:
    """The CPU allocator's long message as the size it was asked for; any other as it is."""
    asked = re.search(r"tried to allocate (\d+) bytes", first)
    return f"{int(asked.group(1)) / 2**30:,.1f} GiB asked for" if asked else first


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command."""
    if args.command == "report":
        return run_report(args)
    if args.command == "demo":
        return run_demo(Session(args))
    spec = by_command(args.command)
    spec.cli(Session(args, spec))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Every failure ends in one line on stderr: exit status 2 for bad input, 1 for
    an internal error (--debug or TOKENPROBE_DEBUG=1 print the traceback too), 130 on Ctrl-C,
    whenever it comes (reading the flags, loading the model, or the run itself)."""
    args: argparse.Namespace | None = None
    try:
        if getattr(signal.getsignal(signal.SIGINT), "tokenprobe_startup", False):
            # the command's handler while its imports ran (one line, exit 130): from here a
            # Ctrl-C is a KeyboardInterrupt again, so a run can keep what it finished
            signal.signal(signal.SIGINT, signal.default_int_handler)
        parser = build_parser()
        args = parser.parse_args(argv)
        return _run(parser, args)
    except KeyboardInterrupt:
        # the command's last act (argv None): a second Ctrl-C must not cut this line short
        # with a traceback; a Python caller gets its handler back
        previous = _ignore_interrupts()
        hint = ""
        if args is not None and getattr(args, "resume", None) is not None:  # checkpointing commands
            hint = interrupted_note(Path(args.out))  # what is kept, only if something is
        print(f"tokenprobe: interrupted{hint}", file=sys.stderr)
        if argv is not None and previous is not None:
            signal.signal(signal.SIGINT, previous)
        return 130


def _ignore_interrupts() -> Any:
    """Ignore SIGINT from now on; the handler it had (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The parsed command, every failure as its one line and exit status."""
    _configure_output(_flags_of(args.command))
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        check_utf8(parser, args)
        # offline (--offline, HF_HUB_OFFLINE=1): no connection, even where a hub id is only
        # looked up; kept_until_saved: a checkpoint goes only once the outputs are all written
        network = (
            offline() if offline_wanted(getattr(args, "offline", False) or None) else nullcontext()
        )
        with network, kept_until_saved():
            return run_command(args)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        line, status = error_line(exc, _flags_of(args.command), args.command)
        if getattr(args, "resume", None) is not None:  # a refused run leaves no checkpoint
            drop_unstarted(Path(args.out))
        print(line, file=sys.stderr)
        return status
