"""Checkpoints for long runs over a data set.

Each finished piece of work is written to a folder as soon as it is done, next to the settings
of the run, so an interrupted run resumes where it stopped and a resume with other settings
(another model, other texts, other options) is refused instead of mixing two runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import TokenprobeError
from .model import LoadedModel


def texts_digest(*columns: Sequence[object] | None) -> str:
    """A short hash of the texts (and labels) a run works on, to tell two data sets apart."""
    h = hashlib.sha256()
    for column in columns:
        h.update(b"\x1e" if column is None else json.dumps([str(v) for v in column]).encode())
    return h.hexdigest()[:16]


def model_settings(lm: LoadedModel) -> dict[str, Any]:
    """What of the model decides a run's numbers (not the device it ran on)."""
    d = lm.describe()
    return {k: d[k] for k in ("name", "source", "class", "dtype")}


class Checkpoint:
    """A folder of finished parts of one run, named `part-KKKKK<suffix>`, plus its settings.

    The folder is created on the first run; with `resume=False` an existing folder is an error
    (an unfinished run would otherwise be thrown away silently), and with `resume=True` it must
    hold a run with the same settings.
    """

    def __init__(self, folder: Path, settings: dict[str, Any], resume: bool) -> None:
        self.folder = folder
        settings = json.loads(json.dumps(settings, default=str))  # the form it has on disk
        path = folder / "settings.json"
        if folder.exists():
            if not resume:
                raise TokenprobeError(
                    f"{folder} holds an unfinished run: pass --resume to continue it, or delete it"
                )
            if path.exists():
                old = json.loads(path.read_text(encoding="utf-8"))
                differ = sorted(
                    k for k in old.keys() | settings.keys() if old.get(k) != settings.get(k)
                )
                if differ:
                    raise TokenprobeError(
                        f"{folder} holds a run with other settings (different {', '.join(differ)}): "
                        "resume with the same model, data and flags, or delete it"
                    )
        folder.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            self._atomic(path, lambda p: p.write_text(json.dumps(settings, indent=1), "utf-8"))

    def parts(self, suffix: str) -> dict[int, Path]:
        """The finished parts, by number."""
        return {int(p.name[5:10]): p for p in sorted(self.folder.glob(f"part-[0-9]*{suffix}"))}

    def write(self, k: int, suffix: str, writer: Callable[[Path], object]) -> Path:
        """Write part `k` through a temporary file, so a part on disk is always complete."""
        return self._atomic(self.folder / f"part-{k:05d}{suffix}", writer)

    def append(self, suffix: str, writer: Callable[[Path], object]) -> Path:
        """Write the next part, numbered after every part already there."""
        taken = [int(p.name[5:10]) for p in self.folder.glob("part-[0-9]*")]
        return self.write(max(taken, default=-1) + 1, suffix, writer)

    def finish(self) -> None:
        """Remove the folder once the run's result is built."""
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _atomic(path: Path, writer: Callable[[Path], object]) -> Path:
        tmp = path.with_name(f".{path.name}.tmp")
        writer(tmp)
        tmp.replace(path)
        return path
