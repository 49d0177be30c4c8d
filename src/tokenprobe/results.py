"""The base of every analysis's result: a table, heatmap views, save and load.

Each analysis defines its result type in its own folder (`analyses/<name>/result.py`); this
module knows none of them (`loading.load_result` reads any saved one back by its `kind`).

A saved result is a folder: `<kind>.parquet` (the tidy table, also what `load` reads back),
`meta.json` (model, inputs, options, versions, the files written) and figures. Saving never
silently replaces an earlier result.

A save is atomic as a whole: every file is first written beside its final name as a hidden
`.NAME.PID@HOST-XXXX.tokenprobe-new` file; then a journal (`.tokenprobe-save.json`) naming them is
written in one step, which commits the save; then the files are renamed into place, the
previous result's files that the new one does not write are removed, and so is the finished
checkpoint the result was built from; last the journal goes. A save killed before its journal
exists leaves the folder as it was (its hidden files are removed by the next save); one killed
after it is completed by the next save, load or `check_writable` of that folder.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from . import journal, registry
from .errors import TokenprobeError
from .files import host as _host
from .journal import SAVE_JOURNAL, atomic_write, complete_save, roll_forward
from .provenance import json_default

if TYPE_CHECKING:
    from .heatmap import Heatmap

FIGURE_FORMATS = ("png", "svg", "pdf")


def _previous_files(out: Path) -> set[str]:
    """The files of the result already saved in `out` (those its meta.json lists, or for older
    results those its kind writes), so that --overwrite leaves none of them behind."""
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    # only a meta.json of a result kind, and only names that kind writes: a meta.json listing
    # other files must never get them deleted
    if not isinstance(meta, dict):
        return set()
    try:
        kind = registry.by_kind(meta.get("kind")).result
    except TokenprobeError:
        return set()
    names = set(kind.saved_names(meta))
    if "data_rows" in meta:  # a data-set run: its tables and its rows' figures
        names = {
            n
            for n in map(str, meta.get("files") or [])
            if n.startswith((kind.kind, *kind.old_kinds))
        }
        names.add("meta.json")
    files = meta.get("files")
    if isinstance(files, list):
        names &= {str(f) for f in files}
    # only plain files directly in `out`, never a hidden or a nested one
    return {n for n in names if n and "/" not in n and "\\" not in n and not n.startswith(".")}


class Result:
    """Base of all results; each analysis's subclass sets `kind` and implements the table
    (`to_frame`, `from_frame`) and its heatmaps (`views`)."""

    kind: ClassVar[str] = ""
    old_kinds: ClassVar[tuple[str, ...]] = ()  # what earlier versions saved this kind as
    meta: dict[str, Any]
    # the finished checkpoint this result was built from, kept until save() has written it
    # (set by Checkpoint.finish inside checkpoint.kept_until_saved(); None otherwise)
    checkpoint: Path | None = None

    # -- implemented by each kind
    def to_frame(self) -> pd.DataFrame:
        raise NotImplementedError

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> Result:
        raise NotImplementedError

    @classmethod
    def from_folder(cls, folder: Path, frame: pd.DataFrame, meta: dict[str, Any]) -> Result:
        """A saved result from its folder's table and meta.json; a kind that keeps more files
        beside them (flips' per-class tables, a tuned lens) reads them from `folder` here."""
        return cls.from_frame(frame, meta)

    def views(self, *args: Any, **options: Any) -> list[tuple[str, Heatmap]]:
        """(file stem, heatmap) of each figure, for the saved figures and the page alike;
        `options` are the figure options the analysis takes (e.g. the lens's `zoom`), each an
        analysis's own keyword-only parameters (`*args` lets them narrow this signature)."""
        raise NotImplementedError

    def plot(self, **options: Any) -> Any:
        """The (first) figure as a matplotlib Figure; options as in `views`."""
        return self.views(**options)[0][1].figure()

    def sections(self) -> list[dict[str, Any]]:
        """The report's sections: each view drawn with the options its figures were saved with."""
        options = self.meta.get("plot_options") or {}
        model = (self.meta.get("model") or {}).get("name", "")
        about = json.dumps(self.meta.get("options", {}), default=str)
        out = []
        for _, view in self.views(**options):
            for section in view.sections():  # a composite figure: each of its parts
                section["kind"] = self.kind
                section["about"] = [f"model: {model}", *section["about"], f"options: {about}"]
                out.append(section)
        return out

    def summary(self) -> str:
        """One line saying what the result holds."""
        return f"{self.kind} result"

    def _repr_html_(self) -> str:
        """Notebooks show the same interactive heatmap as the HTML report."""
        from .heatmap import page

        return page(self.sections(), title=f"tokenprobe {self.kind}")

    # -- shared
    @classmethod
    def files(cls, formats: Iterable[str] = ("png",)) -> list[str]:
        """The file names a saved result of this kind occupies."""
        return [f"{cls.kind}.parquet", "meta.json", *(f"{cls.kind}.{fmt}" for fmt in formats)]

    @classmethod
    def saved_names(cls, meta: dict[str, Any]) -> list[str]:
        """Every file a saved result of this kind with this meta.json can occupy, in any
        format (for results saved before meta.json listed its files, or under an old kind)."""
        stems = (cls.kind, *cls.old_kinds)
        names = [f"{stem}.{ext}" for stem in stems for ext in ("parquet", *FIGURE_FORMATS)]
        return [*cls.files(FIGURE_FORMATS), *names]

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables a saved result holds, by file stem; the first is what `load` reads."""
        return {self.kind: self.to_frame()}

    def extra_meta(self) -> dict[str, Any]:
        """What `from_frame` needs beyond the table, stored in meta.json."""
        return {}

    def row_frame(self) -> pd.DataFrame:
        """This result as one row's part of a data-set table (`rowset.RowSet`): its table,
        with columns that would differ between rows (e.g. named after a row's target) made
        uniform. `from_row_frame` undoes it."""
        return self.to_frame()

    @classmethod
    def from_row_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> Result:
        """One row's result back from its part of a data-set table and its meta."""
        return cls.from_frame(frame, meta)

    def save(
        self,
        out_dir: str | os.PathLike[str],
        *,
        formats: Iterable[str] = ("png",),
        overwrite: bool = False,
        plot_options: dict[str, Any] | None = None,
    ) -> dict[str, Path]:
        """Write tables, meta.json and figures into `out_dir`; refuse to replace files unless asked.

        The save is atomic as a whole (see the module's docstring): killed at any point, the
        folder holds either the previous result or, once the next save, load or check of the
        folder has completed it, this one. With `overwrite`, the previous result's files that
        this one does not write (e.g. the figure of a class it no longer has) are removed;
        other files are never touched. A result built with a checkpoint kept until it is saved
        (`checkpoint.kept_until_saved()`, as the command line runs) has that checkpoint
        removed here, once every file is in place.
        """
        formats = list(dict.fromkeys(formats))
        bad = [f for f in formats if f not in FIGURE_FORMATS]
        if bad:
            raise TokenprobeError(
                f"unknown figure format {bad[0]!r}: use {', '.join(FIGURE_FORMATS)}"
            )
        out = Path(out_dir)
        tables = self.tables()
        figures = self.views(**(plot_options or {})) if formats else []
        names = [f"{t}.parquet" for t in tables] + ["meta.json"]
        names += [f"{stem}.{fmt}" for stem, _ in figures for fmt in formats]
        if out.is_dir():
            complete_save(out, discard_staged=True)
        check_writable(out, names, overwrite)
        stale = sorted(_previous_files(out) - set(names)) if overwrite else []
        out.mkdir(parents=True, exist_ok=True)
        plan, written = self._stage_and_commit(
            out, names, stale, tables, figures, formats, plot_options
        )
        journal.step("committed")
        roll_forward(out, plan)
        self.checkpoint = None
        return written

    def _stage_and_commit(
        self,
        out: Path,
        names: list[str],
        stale: list[str],
        tables: dict[str, pd.DataFrame],
        figures: list[tuple[str, Heatmap]],
        formats: list[str],
        plot_options: dict[str, Any] | None,
    ) -> tuple[dict[str, Any], dict[str, Path]]:
        """Write every file of `save` under its hidden name, then the journal that commits them
        (the plan, returned with {what: final path}); killed before that, nothing is changed."""
        tag = f"{os.getpid()}@{_host()}-{uuid.uuid4().hex[:8]}"
        staged: dict[str, str] = {}  # final name -> the hidden name it is written under first
        written: dict[str, Path] = {}

        def stage(name: str, write: Any) -> Path:
            tmp = out / f".{name}.{tag}.tokenprobe-new"
            staged[name] = tmp.name
            write(tmp)
            journal.step("staging")
            return out / name

        try:
            for name, frame in tables.items():
                path = stage(
                    f"{name}.parquet", lambda p, frame=frame: frame.to_parquet(p, index=False)
                )
                written["table" if len(tables) == 1 else name] = path
            meta = {**self.meta, **self.extra_meta(), "kind": self.kind, "files": names}
            if plot_options:  # so that the HTML report draws what the figures drew
                meta["plot_options"] = plot_options
            text = json.dumps(meta, indent=2, default=json_default) + "\n"
            written["meta"] = stage("meta.json", lambda p: p.write_text(text, encoding="utf-8"))
            written.update(_stage_figures(figures, formats, stage))
            plan = {
                "files": staged,
                "remove": stale,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            }
            atomic_write(
                out / SAVE_JOURNAL, lambda p: p.write_text(json.dumps(plan), encoding="utf-8")
            )
        except BaseException:
            if not (out / SAVE_JOURNAL).exists():  # not committed: leave the folder as it was
                for tmp in staged.values():
                    (out / tmp).unlink(missing_ok=True)
            raise
        return plan, written


def _stage_figures(
    figures: list[tuple[str, Heatmap]], formats: list[str], stage: Any
) -> dict[str, Path]:
    """Draw each view once and stage it in every format; {what: final path}."""
    if not figures:
        return {}
    import matplotlib.pyplot as plt

    written = {}
    for stem, view in figures:
        fig = view.figure()
        try:
            for fmt in formats:
                path = stage(
                    f"{stem}.{fmt}",
                    lambda p, fmt=fmt, fig=fig: fig.savefig(
                        p, format=fmt, dpi=150, bbox_inches="tight"
                    ),
                )
                written[f"{stem}.{fmt}" if len(figures) > 1 else fmt] = path
        finally:
            plt.close(fig)
    return written


def check_writable(out: Path, names: Iterable[str], overwrite: bool) -> None:
    """Refuse to replace earlier outputs unless asked (called before long work, and at save).
    A save into `out` that was killed after it committed is completed first, so the answer is
    about the outputs as they will stay."""
    if out.exists() and not out.is_dir():
        raise TokenprobeError(f"{out} is a file, not a folder: choose another `out_dir`")
    if (out / SAVE_JOURNAL).is_file():
        try:
            complete_save(out)
        except OSError:
            pass  # e.g. a read-only folder: the save itself will say so
    clash = [name for name in names if (out / name).exists()]
    if clash and not overwrite:
        raise TokenprobeError(
            f"{out} already holds {', '.join(clash)}: choose another `out_dir` or pass `overwrite`"
        )
