"""The save journal: how a result folder is written atomically as a whole.

Every file is first written beside its final name as a hidden
`.NAME.PID@HOST-XXXX.tokenprobe-new` file; then a journal (`.tokenprobe-save.json`) naming them
is written in one step, which commits the save; then the files are renamed into place, the
files the save replaces are removed, and so is the finished checkpoint the result was built
from; last the journal goes. A save killed before its journal exists leaves the folder as it
was; one killed after it is completed by the next save, load or check of that folder.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from .errors import TokenprobeError
from .files import host as _host
from .files import process_alive as _process_alive


def atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


SAVE_JOURNAL = ".tokenprobe-save.json"  # in a result folder: a committed save not yet complete
# a file written by a save: .NAME.PID@HOST-XXXXXXXX.tokenprobe-new
_STAGED = re.compile(r"^\..+\.(\d+)@([A-Za-z0-9_.]+)-[0-9a-f]{8}\.tokenprobe-new$")
_STALE_SECONDS = 24 * 3600  # an uncommitted save's files this old are left over whatever its PID


def step(name: str) -> None:
    """Test hook: called after each step of a save (tests kill the process here)."""


def complete_save(out: str | os.PathLike[str], *, discard_staged: bool = False) -> None:
    """Complete a save into `out` that was interrupted after it was committed (its journal is
    there): rename its files into place, remove what it replaces, then its journal. With
    `discard_staged`, also remove the files of saves that never committed (their process is
    gone, or it is this one). Safe to run while another process completes the same save."""
    folder = Path(out)
    journal = folder / SAVE_JOURNAL
    if journal.is_file():
        try:
            plan = json.loads(journal.read_text(encoding="utf-8"))
        except FileNotFoundError:
            plan = None  # completed meanwhile by another process
        except (OSError, ValueError) as exc:
            raise TokenprobeError(
                f"{journal} (the record of an interrupted save) is damaged ({exc}): delete it "
                "and run the analysis again"
            ) from exc
        if plan is not None:
            roll_forward(folder, plan)
    if discard_staged and folder.is_dir():
        for path in folder.iterdir():
            match = _STAGED.match(path.name)
            if match is None:
                continue
            pid, host = int(match.group(1)), match.group(2)
            try:
                old = time.time() - path.stat().st_mtime > _STALE_SECONDS
            except FileNotFoundError:
                continue
            # another machine's save (a shared folder) is left alone until it is stale
            here = host == _host()
            if old or (here and (pid == os.getpid() or not _process_alive(pid))):
                path.unlink(missing_ok=True)


def roll_forward(folder: Path, plan: dict[str, Any]) -> None:
    from .checkpoint import remove_finished

    for name, staged in plan.get("files", {}).items():
        try:
            os.replace(folder / staged, folder / name)
        except FileNotFoundError:  # renamed already (by an earlier try or another process)
            pass
        step("moving")
    for name in plan.get("remove", []):
        (folder / name).unlink(missing_ok=True)
    step("moved")
    if plan.get("checkpoint"):
        remove_finished(plan["checkpoint"])
    step("checkpoint removed")
    (folder / SAVE_JOURNAL).unlink(missing_ok=True)
