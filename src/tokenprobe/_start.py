"""The `tokenprobe` command's entry point: a Ctrl-C while torch and transformers are imported
ends in one line and exit status 130 (`cli.main` takes over from there)."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    """SIGINT before `cli.main` runs: one line, exit 130 (no traceback from inside an import)."""
    print("tokenprobe: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


_interrupted_while_starting.tokenprobe_startup = True  # type: ignore[attr-defined]


def main() -> int:
    """Install the start-up handler, then import and run the command line."""
    signal.signal(signal.SIGINT, _interrupted_while_starting)
    from .cli import main as cli_main

    return cli_main()
