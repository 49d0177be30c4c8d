"""Checkpoints for long runs (over a data set, or over many perturbed inputs).

Each finished piece of work is written to a folder as soon as it is done, next to the settings
of the run, so an interrupted run resumes where it stopped and a resume with other settings
(another model, other texts, other options) is refused instead of mixing two runs.

When the run is done, `Checkpoint.finish` removes the folder, except inside
`kept_until_saved()` (the command line runs every command in it): there the folder is marked
finished and handed to the result, whose `save()` removes it only once every output file is in
place, so a crash while the outputs are written loses nothing and a resume writes them without
recomputing.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import TokenprobeError

if TYPE_CHECKING:
    from .model import LoadedModel

# what reading a damaged part or settings file raises (pyarrow's errors are ValueErrors)
_DAMAGED = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)
LOCK = "run.lock"  # in a checkpoint folder: "HOST PID" of the process working in it
FINISHED = "finished.json"  # in a checkpoint folder: the run is done, its outputs not yet saved
ABOUT = "about-"  # about-KKKKK<suffix>.json: what part KKKKK holds, written before the part
TOTALS = "totals.json"  # in a checkpoint folder: unit -> how many the whole run needs
_KEEP_UNTIL_SAVED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tokenprobe_keep_until_saved", default=False
)


@contextlib.contextmanager
def kept_until_saved() -> Iterator[None]:
    """Runs finished inside this block keep their checkpoint until their result is saved.

    `Checkpoint.finish` then marks the folder finished instead of removing it, and
    `Result.save` removes it once every output file is in place: a crash while saving loses
    nothing, and the same run with `resume=True` (`--resume`) writes the outputs without
    recomputing. Outside the block (the default for Python callers) a run removes its
    checkpoint when it returns. The command line runs every command inside it.
    """
    token = _KEEP_UNTIL_SAVED.set(True)
    try:
        yield
    finally:
        _KEEP_UNTIL_SAVED.reset(token)


def is_finished(folder: Path) -> bool:
    """Does the checkpoint `folder` hold a finished run (whose outputs may not be saved yet)?"""
    return (folder / FINISHED).is_file()


def remove_finished(folder: str | Path) -> None:
    """Remove the checkpoint `folder` if its run is finished (never an unfinished one)."""
    folder = Path(folder)
    if is_finished(folder):
        shutil.rmtree(folder, ignore_errors=True)


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

    A part may say what it holds (`write`'s `unit`, `count`, `total`, `latest`), so that an
    interrupted run's message names the finished work in words without knowing the analysis.

    The folder is created on the first run; with `resume=False` an existing folder is an error
    (an unfinished run would otherwise be thrown away silently), and with `resume=True` it must
    hold a run with the same settings.
    """

    def __init__(self, folder: Path, settings: dict[str, Any], resume: bool) -> None:
        self.folder = folder
        settings = json.loads(json.dumps(settings, default=str))  # the form it has on disk
        self.settings = settings
        path = folder / "settings.json"
        if folder.exists():
            if not resume and is_finished(folder):
                raise TokenprobeError(
                    f"{folder} holds a finished run whose outputs were not all written: pass "
                    "`resume` to write them (nothing is recomputed), or delete it"
                )
            if held_by_another(folder):  # live: neither resumed nor to be deleted
                raise TokenprobeError(
                    f"another tokenprobe run ({_owner(folder)}) is working in {folder} right "
                    "now: wait for it to finish, or give this run another output folder"
                )
            if not resume:
                raise TokenprobeError(
                    f"{folder} holds an unfinished run: pass `resume` to continue it, or delete it"
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
        self._lock()
        if not path.exists():
            self._atomic(path, lambda p: p.write_text(json.dumps(settings, indent=1), "utf-8"))

    def _lock(self) -> None:
        """Claim the folder for this process: two runs resuming the same checkpoint at once
        would each write parts the other then counts twice. A lock left by a process that is
        gone (or by this one, from a run that stopped on an error) is taken over."""
        from .files import host as _host
        from .files import process_alive as _process_alive

        lock = self.folder / LOCK
        me = f"{_host()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    host, pid = lock.read_text(encoding="utf-8").split()
                    owner = int(pid)
                except (OSError, ValueError):
                    host, owner = "", -1
                alive = host == _host() and owner != os.getpid() and _process_alive(owner)
                if alive or (host and host != _host()):
                    where = f"process {owner}" + ("" if host == _host() else f" on {host}")
                    raise TokenprobeError(
                        f"another tokenprobe run ({where}) is working in {self.folder}: wait for "
                        f"it to finish, or stop it (delete {lock} if it is gone)"
                    ) from None
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(me + "\n")
            atexit.register(self._unlock)
            return

    def _unlock(self) -> None:
        """Give the folder up (when the run stops, finished or not)."""
        from .files import host as _host

        lock = self.folder / LOCK
        try:
            if lock.read_text(encoding="utf-8").split() == [_host(), str(os.getpid())]:
                lock.unlink()
        except (OSError, ValueError):
            pass

    def read(self, suffix: str, reader: Callable[[Path], Any] | None = None) -> dict[int, Any]:
        """The finished parts with this suffix, by number, each read by `reader` (by default
        the arrays of an .npz file)."""
        parts = sorted(self.folder.glob(f"part-[0-9]*{suffix}"))
        return {int(p.name[5:10]): self._read(p, reader or _read_npz) for p in parts}

    def write(
        self,
        k: int,
        suffix: str,
        writer: Callable[[Path], object],
        *,
        unit: str | None = None,
        count: int | None = None,
        total: int | None = None,
        latest: bool = False,
    ) -> Path:
        """Write part `k` through a temporary file, so a part on disk is always complete.

        With `unit` (a singular noun: "row") the part says what it holds, written first so no
        finished part lacks it: `count` units (None: the whole, "the gradients") of `total`,
        adding up over the parts; with `latest` it is a state after step `count` that replaces
        the earlier parts of this suffix (removed once it is written)."""
        if unit is not None:
            about = {"unit": unit, "count": count, "total": total, "latest": latest}
            self._atomic(self.folder / f"{ABOUT}{k:05d}{suffix}.json", _json_writer(about))
        path = self._atomic(self.folder / f"part-{k:05d}{suffix}", writer)
        for old in self.folder.glob(f"part-[0-9]*{suffix}") if latest else ():
            if int(old.name[5:10]) < k:
                old.unlink(missing_ok=True)
                (self.folder / f"{ABOUT}{old.name[5:]}.json").unlink(missing_ok=True)
        return path

    def append(self, suffix: str, writer: Callable[[Path], object], **about: Any) -> Path:
        """Write the next part, numbered after every part there (`about` as `write` takes)."""
        taken = [int(p.name[5:10]) for p in self.folder.glob("part-[0-9]*")]
        return self.write(max(taken, default=-1) + 1, suffix, writer, **about)

    def expect(self, unit: str, total: int) -> None:
        """The whole run needs `total` of `unit`: an interrupted run says how many are done
        ("0 of 8 steps") even before the first part of them."""
        totals = {**(_read_json(self.folder / TOTALS) or {}), unit: total}
        self._atomic(self.folder / TOTALS, _json_writer(totals))

    def finish(self, result: Any = None) -> None:
        """The run is done and `result` built from it: remove the folder, or, inside
        `kept_until_saved()`, mark it finished and hand it to `result` (as `result.checkpoint`),
        whose `save()` removes it once every output file is in place."""
        if result is None or not _KEEP_UNTIL_SAVED.get():
            self.discard()
            return
        self._atomic(self.folder / FINISHED, _json_writer({"finished": True}))
        self._unlock()
        result.checkpoint = self.folder.absolute()

    def discard(self) -> None:
        """Remove the folder now (a run that can never finish, or one whose result is kept)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _read(self, path: Path, reader: Callable[[Path], Any]) -> Any:
        try:
            return reader(path)
        except _DAMAGED as exc:
            raise TokenprobeError(
                f"{path} is damaged and cannot be read ({type(exc).__name__}): delete {self.folder} "
                "and run again without `resume`"
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


def _json_writer(value: Any) -> Callable[[Path], object]:
    """A writer of `value` as JSON: a part's description, the totals, the finished mark."""
    return lambda p: p.write_text(json.dumps(value) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    """A small JSON file's value, or None where it is missing or damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _unstarted(folder: Path) -> bool:
    """Does the folder hold no finished part (settings, lock and descriptions at most)?"""
    return all(
        p.name in ("settings.json", LOCK, TOTALS) or p.name.startswith(ABOUT)
        for p in folder.iterdir()
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as part:
        return {name: part[name] for name in part.files}


def interrupted_note(out: Path) -> str:
    """What an interrupted run in `out` left in its checkpoint, for the message on Ctrl-C.

    Finished work is named only when a finished part is there: a run stopped before its first
    part keeps nothing, and its folder (which holds only the settings) is removed so that the
    same command starts afresh without --resume.
    """
    for folder in sorted(Path(out).glob("*.partial")):
        if not folder.is_dir():
            continue
        if is_finished(folder):
            return (
                f": the run had finished, but its outputs were not all written; run the same "
                f"command with --resume to write them from {folder} (nothing is recomputed)"
            )
        kept = _kept_work(folder)
        if kept:
            return (
                f": finished work is kept in {folder} ({kept}); run the same command with "
                "--resume to go on from it"
            )
        if held_by_another(folder):  # a live run's checkpoint: never touched from here
            continue
        if _unstarted(folder):
            shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            return f": nothing was finished yet; delete {folder} to start afresh"
        return ": nothing was finished yet, so nothing is kept"
    return ""


def drop_unstarted(out: str | Path) -> None:
    """Remove the checkpoints in `out` that hold no finished work (settings and a lock at
    most) and no live run: a run refused before its first part leaves nothing behind, so the
    corrected command starts afresh instead of being asked for --resume."""
    for folder in Path(out).glob("*.partial"):
        if not folder.is_dir() or held_by_another(folder) or is_finished(folder):
            continue
        if _unstarted(folder):
            shutil.rmtree(folder, ignore_errors=True)


def held_by_another(folder: Path) -> bool:
    """Is the checkpoint in `folder` locked by another process that is alive (or by one on
    another host, which cannot be asked)?"""
    from .files import host as _host
    from .files import process_alive as _process_alive

    try:
        host, pid = (folder / LOCK).read_text(encoding="utf-8").split()
        owner = int(pid)
    except (OSError, ValueError):
        return False
    if host != _host():
        return True
    return owner != os.getpid() and _process_alive(owner)


def _owner(folder: Path) -> str:
    """Who holds the checkpoint's lock, in words ("process 123", "process 123 on HOST")."""
    from .files import host as _host

    try:
        host, pid = (folder / LOCK).read_text(encoding="utf-8").split()
    except (OSError, ValueError):
        return "another process"
    return f"process {pid}" + ("" if host == _host() else f" on {host}")


def _kept_work(folder: Path) -> str:
    """The finished parts in a checkpoint folder, in words ("" when there are none): each
    unit's count summed over the parts that describe themselves (the latest one's where the
    latest part stands), then the parts that do not ("2 finished parts")."""
    parts = sorted(folder.glob("part-[0-9]*"))
    if not parts:
        return ""
    work: dict[str, dict[str, Any]] = {}  # unit -> count, total, latest
    plain = 0
    for part in parts:
        about = _read_json(folder / f"{ABOUT}{part.name[5:]}.json")
        if not isinstance(about, dict) or not isinstance(about.get("unit"), str):
            plain += 1  # written without a description (or by an older version)
            continue
        seen = work.setdefault(about["unit"], {"count": 0, "total": None, "latest": False})
        count = about.get("count")
        if about.get("latest"):
            seen["latest"], seen["count"] = True, count
        elif count is None or seen["count"] is None:
            seen["count"] = None
        else:
            seen["count"] += count
        seen["total"] = about.get("total") or seen["total"]
    for unit, total in (_read_json(folder / TOTALS) or {}).items():  # maybe none done yet
        seen = work.setdefault(unit, {"count": 0, "total": None, "latest": False})
        seen["total"] = seen["total"] or total
    words = [_in_words(unit, **seen) for unit, seen in work.items()]
    if plain:
        words.append(f"{plain} finished part{'s' * (plain != 1)}")
    return ", ".join(words)


def _in_words(unit: str, count: int | None, total: int | None, latest: bool) -> str:
    """One unit's finished work: "3 rows", "12 of 256 steps", "the gradients", "the state
    after step 7"."""
    of = f" of {total}" if total is not None else ""
    if latest:
        return f"the {unit} after step {count}{of}"
    if count is None:
        return f"the {unit}s"
    many = (total if total is not None else count) != 1
    return f"{count}{of} {unit}{'s' * many}"
