"""Checkpoints for long runs (over a data set, or over many perturbed inputs).

Each finished piece of work is written to a folder as soon as it is done, next to the settings
of the run, so an interrupted run resumes where it stopped and a resume with other settings
(another model, other texts, other options) is refused instead of mixing two runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TokenprobeError
from .model import LoadedModel

# what reading a damaged part or settings file raises (pyarrow's errors are ValueErrors)
_DAMAGED = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def digest(*columns: Sequence[object] | None) -> str:
    """A short hash of what a run works on (texts, labels, token ids), to tell two runs apart."""
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
                old = self._read(path, lambda p: json.loads(p.read_text(encoding="utf-8")))
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

    def read(self, suffix: str, reader: Callable[[Path], Any] | None = None) -> dict[int, Any]:
        """The finished parts with this suffix, by number, each read by `reader` (by default
        the arrays of an .npz file)."""
        parts = sorted(self.folder.glob(f"part-[0-9]*{suffix}"))
        return {int(p.name[5:10]): self._read(p, reader or _read_npz) for p in parts}

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

    def _read(self, path: Path, reader: Callable[[Path], Any]) -> Any:
        try:
            return reader(path)
        except _DAMAGED as exc:
            raise TokenprobeError(
                f"{path} is damaged and cannot be read ({type(exc).__name__}): delete {self.folder} "
                "and run again without --resume"
            ) from exc

    @staticmethod
    def _atomic(path: Path, writer: Callable[[Path], object]) -> Path:
        tmp = path.with_name(f".{path.name}.tmp")
        writer(tmp)
        tmp.replace(path)
        return path


def npz_writer(**arrays: Any) -> Callable[[Path], None]:
    """A part writer that stores `arrays` as one .npz file."""

    def write(path: Path) -> None:
        with open(path, "wb") as f:  # a file object: np.savez would add .npz to a path
            np.savez(f, **arrays)

    return write


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as part:
        return {name: part[name] for name in part.files}
