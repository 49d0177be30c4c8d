"""Result types: arrays + labels + metadata, each with a table, a figure, save and load.

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
import platform
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from .errors import TokenprobeError

FIGURE_FORMATS = ("png", "svg", "pdf")
_REGISTRY: dict[str, type[Result]] = {}


def versions() -> dict[str, str]:
    """Versions that decide the numbers, recorded in every meta.json."""
    import torch
    import transformers

    from . import __version__

    return {
        "tokenprobe": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _atomic_write(path: Path, write: Any) -> None:
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


def _step(name: str) -> None:
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
            _roll_forward(folder, plan)
    if discard_staged and folder.is_dir():
        from .model import _host, _process_alive

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


def _roll_forward(folder: Path, plan: dict[str, Any]) -> None:
    from .checkpoint import remove_finished

    for name, staged in plan.get("files", {}).items():
        try:
            os.replace(folder / staged, folder / name)
        except FileNotFoundError:  # renamed already (by an earlier try or another process)
            pass
        _step("moving")
    for name in plan.get("remove", []):
        (folder / name).unlink(missing_ok=True)
    _step("moved")
    if plan.get("checkpoint"):
        remove_finished(plan["checkpoint"])
    _step("checkpoint removed")
    (folder / SAVE_JOURNAL).unlink(missing_ok=True)


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
    if meta.get("kind") not in _REGISTRY:
        return set()
    names = set(_REGISTRY[meta["kind"]].saved_names(meta))
    files = meta.get("files")
    if isinstance(files, list):
        names &= {str(f) for f in files}
    # only plain files directly in `out`, never a hidden or a nested one
    return {n for n in names if n and "/" not in n and "\\" not in n and not n.startswith(".")}


class Result:
    """Base of all results; subclasses set `kind` and implement the table and figure."""

    kind: ClassVar[str] = ""
    meta: dict[str, Any]
    # the finished checkpoint this result was built from, kept until save() has written it
    # (set by Checkpoint.finish inside checkpoint.kept_until_saved(); None otherwise)
    checkpoint: Path | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _REGISTRY[cls.kind] = cls

    # -- implemented by each kind
    def to_frame(self) -> pd.DataFrame:
        raise NotImplementedError

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> Result:
        raise NotImplementedError

    plotter: ClassVar[str] = ""  # name of the figure function in plots.py

    def plot(self, **options: Any) -> Any:
        """The static figure (a matplotlib Figure); options as in `plots.<plotter>`."""
        from . import plots

        return getattr(plots, self.plotter)(self, **options)

    def summary(self) -> str:
        """One line saying what the result holds."""
        return f"{self.kind} result"

    def _repr_html_(self) -> str:
        """Notebooks show the same interactive heatmap as the HTML report."""
        from .report import render

        return render([self], title=f"tokenprobe {self.kind}")

    # -- shared
    @classmethod
    def files(cls, formats: Iterable[str] = ("png",)) -> list[str]:
        """The file names a saved result of this kind occupies."""
        return [f"{cls.kind}.parquet", "meta.json", *(f"{cls.kind}.{fmt}" for fmt in formats)]

    @classmethod
    def saved_names(cls, meta: dict[str, Any]) -> list[str]:
        """Every file a saved result of this kind with this meta.json can occupy, in any
        format (for results saved before meta.json listed its files)."""
        return cls.files(FIGURE_FORMATS)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables a saved result holds, by file stem; the first is what `load` reads."""
        return {self.kind: self.to_frame()}

    def figure_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """(file stem, plot options) of each figure a saved result holds."""
        return [(self.kind, {})]

    def extra_meta(self) -> dict[str, Any]:
        """What `from_frame` needs beyond the table, stored in meta.json."""
        return {}

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
        figures = self.figure_specs() if formats else []
        names = [f"{t}.parquet" for t in tables] + ["meta.json"]
        names += [f"{stem}.{fmt}" for stem, _ in figures for fmt in formats]
        if out.is_dir():
            complete_save(out, discard_staged=True)
        check_writable(out, names, overwrite)
        stale = sorted(_previous_files(out) - set(names)) if overwrite else []
        out.mkdir(parents=True, exist_ok=True)
        from .model import _host

        tag = f"{os.getpid()}@{_host()}-{uuid.uuid4().hex[:8]}"
        staged: dict[str, str] = {}  # final name -> the hidden name it is written under first
        written: dict[str, Path] = {}

        def stage(name: str, write: Any) -> Path:
            tmp = out / f".{name}.{tag}.tokenprobe-new"
            staged[name] = tmp.name
            write(tmp)
            _step("staging")
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
            text = json.dumps(meta, indent=2, default=_json_default) + "\n"
            written["meta"] = stage("meta.json", lambda p: p.write_text(text, encoding="utf-8"))
            if figures:
                import matplotlib.pyplot as plt

                for stem, options in figures:
                    fig = self.plot(**options, **(plot_options or {}))
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
            plan = {
                "files": staged,
                "remove": stale,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            }
            _atomic_write(
                out / SAVE_JOURNAL, lambda p: p.write_text(json.dumps(plan), encoding="utf-8")
            )
        except BaseException:
            if not (out / SAVE_JOURNAL).exists():  # not committed: leave the folder as it was
                for tmp in staged.values():
                    (out / tmp).unlink(missing_ok=True)
            raise
        _step("committed")
        _roll_forward(out, plan)
        self.checkpoint = None
        return written

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Result:
        """Load any saved result from its folder (or its meta.json)."""
        folder = Path(path)
        if folder.name == "meta.json":
            folder = folder.parent
        if (folder / SAVE_JOURNAL).is_file():  # a save was killed after it committed: finish it
            try:
                complete_save(folder)
            except OSError as exc:
                raise TokenprobeError(
                    f"{folder} holds a save that was interrupted and cannot be completed here "
                    f"({exc.strerror or exc}): run the analysis again"
                ) from exc
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            raise TokenprobeError(
                f"{folder} holds no tokenprobe result (no meta.json): pass a folder written by save()"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TokenprobeError(
                f"{meta_path} is not readable JSON ({exc}): re-run the analysis"
            ) from exc
        kind = meta.get("kind")
        if kind not in _REGISTRY:
            raise TokenprobeError(f"{meta_path} names an unknown result kind {kind!r}")
        cls = _REGISTRY[kind]
        table = folder / f"{kind}.parquet"
        if not table.exists():
            raise TokenprobeError(f"{folder} lacks {table.name}: re-run the analysis")
        meta["_folder"] = str(folder)
        result = cls.from_frame(pd.read_parquet(table), meta)
        result.meta.pop("_folder", None)
        result.meta.pop("files", None)  # what the folder holds, not part of the result
        return result


def check_writable(out: Path, names: Iterable[str], overwrite: bool) -> None:
    """Refuse to replace earlier outputs unless asked (called before long work, and at save).
    A save into `out` that was killed after it committed is completed first, so the answer is
    about the outputs as they will stay."""
    if out.exists() and not out.is_dir():
        raise TokenprobeError(f"{out} is a file, not a folder: choose another --out")
    if (out / SAVE_JOURNAL).is_file():
        try:
            complete_save(out)
        except OSError:
            pass  # e.g. a read-only folder: the save itself will say so
    clash = [name for name in names if (out / name).exists()]
    if clash and not overwrite:
        raise TokenprobeError(
            f"{out} already holds {', '.join(clash)}: choose another --out or pass --overwrite"
        )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ----------------------------------------------------------------------------- logit lens


@dataclass
class LensResult(Result):
    """Per (layer, position): entropy, top-k tokens and probabilities, target probability/rank.

    Rows are layers 0..L: layer 0 is the embedding output, layer i the output of block i, and
    the last row ("output") is the model's own logits.
    """

    kind: ClassVar[str] = "lens"
    plotter: ClassVar[str] = "plot_lens"

    tokens: list[str]
    token_ids: list[int]
    layer_labels: list[str]
    entropy: np.ndarray  # (rows, positions) float32, nats
    top_ids: np.ndarray  # (rows, positions, k) int64
    top_tokens: np.ndarray  # (rows, positions, k) str
    top_probs: np.ndarray  # (rows, positions, k) float32
    targets: list[str] = field(default_factory=list)
    target_ids: list[int] = field(default_factory=list)
    target_probs: np.ndarray | None = None  # (rows, positions, n_targets)
    target_ranks: np.ndarray | None = None  # (rows, positions, n_targets), 1 = top
    marked: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(self.entropy.shape[0])

    @property
    def n_positions(self) -> int:
        return int(self.entropy.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.top_ids.shape[2])

    @property
    def top1(self) -> np.ndarray:
        return self.top_tokens[:, :, 0]

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, position)."""
        rows, positions = self.entropy.shape
        layer = np.repeat(np.arange(rows), positions)
        pos = np.tile(np.arange(positions), rows)
        data: dict[str, Any] = {
            "layer": layer,
            "layer_label": np.asarray(self.layer_labels, dtype=object)[layer],
            "position": pos,
            "token": np.asarray(self.tokens, dtype=object)[pos],
            "token_id": np.asarray(self.token_ids, dtype=np.int64)[pos],
            "entropy": self.entropy.reshape(-1),
        }
        for j in range(self.top_k):
            data[f"top{j + 1}"] = self.top_tokens[:, :, j].reshape(-1)
            data[f"top{j + 1}_prob"] = self.top_probs[:, :, j].reshape(-1)
            data[f"top{j + 1}_id"] = self.top_ids[:, :, j].reshape(-1)
        for t, name in enumerate(self.targets):
            assert self.target_probs is not None and self.target_ranks is not None
            data[f"prob[{name}]"] = self.target_probs[:, :, t].reshape(-1)
            data[f"rank[{name}]"] = self.target_ranks[:, :, t].reshape(-1)
        return pd.DataFrame(data)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> LensResult:
        frame = frame.sort_values(["layer", "position"])
        rows = int(frame["layer"].max()) + 1
        positions = int(frame["position"].max()) + 1
        first_row = frame[frame["layer"] == 0]
        k = sum(1 for c in frame.columns if c.startswith("top") and c.endswith("_id"))

        def grid(col: str) -> np.ndarray:
            return frame[col].to_numpy().reshape(rows, positions)

        targets = list(meta.get("targets", []))
        marked = meta.get("marked")
        return cls(
            tokens=[str(t) for t in first_row["token"]],
            token_ids=[int(t) for t in first_row["token_id"]],
            layer_labels=[str(x) for x in frame.groupby("layer")["layer_label"].first()],
            entropy=grid("entropy").astype(np.float32),
            top_ids=np.stack([grid(f"top{j + 1}_id") for j in range(k)], axis=-1).astype(np.int64),
            top_tokens=np.stack([grid(f"top{j + 1}").astype(object) for j in range(k)], axis=-1),
            top_probs=np.stack([grid(f"top{j + 1}_prob") for j in range(k)], axis=-1).astype(
                np.float32
            ),
            targets=targets,
            target_ids=list(meta.get("target_ids", [])),
            target_probs=np.stack([grid(f"prob[{t}]") for t in targets], axis=-1).astype(np.float32)
            if targets
            else None,
            target_ranks=np.stack([grid(f"rank[{t}]") for t in targets], axis=-1).astype(np.int64)
            if targets
            else None,
            marked=tuple(marked) if marked else None,
            meta=meta,
        )

    def summary(self) -> str:
        last = self.n_positions - 1
        return (
            f"lens of {str(self.meta.get('prompt', ''))[:50]!r}: {self.n_positions} positions x {self.n_rows} rows; "
            f"output top-1 at the last position {self.top1[-1, last]!r} (p={self.top_probs[-1, last, 0]:.3f})"
        )


# ----------------------------------------------------------------------------- past similarity


@dataclass
class SimilarityResult(Result):
    """Cosine similarity of a marker's hidden state with the tokens before (or after) it.

    `cosine[layer, d-1]` is the mean over texts at distance d; NaN where no text reaches that
    far (padded). `count[d-1]` is the number of texts behind each distance.
    """

    kind: ClassVar[str] = "similarity"
    plotter: ClassVar[str] = "plot_similarity"

    layer_labels: list[str]
    cosine: np.ndarray  # (layers, window) float32, NaN = padded
    count: np.ndarray  # (window,) int64
    tokens: list[str | None]  # text of the token at each distance (one text), else None
    marker: str
    occurrence: int
    direction: str = "past"
    centre: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def window(self) -> int:
        return int(self.cosine.shape[1])

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, distance)."""
        layers, window = self.cosine.shape
        layer = np.repeat(np.arange(layers), window)
        dist = np.tile(np.arange(1, window + 1), layers)
        return pd.DataFrame(
            {
                "layer": layer,
                "layer_label": np.asarray(self.layer_labels, dtype=object)[layer],
                "distance": dist,
                "token": np.asarray(self.tokens, dtype=object)[dist - 1],
                "cosine": self.cosine.reshape(-1),
                "count": self.count[dist - 1],
            }
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> SimilarityResult:
        frame = frame.sort_values(["layer", "distance"])
        layers = int(frame["layer"].max()) + 1
        window = int(frame["distance"].max())
        first = frame[frame["layer"] == 0]
        opts = meta.get("options", {})
        return cls(
            layer_labels=[str(x) for x in frame.groupby("layer")["layer_label"].first()],
            cosine=frame["cosine"].to_numpy(dtype=np.float32).reshape(layers, window),
            count=first["count"].to_numpy(dtype=np.int64),
            tokens=[
                None if t is None or (isinstance(t, float) and np.isnan(t)) else str(t)
                for t in first["token"]
            ],
            marker=opts.get("marker", ""),
            occurrence=int(opts.get("occurrence", 1)),
            direction=opts.get("direction", "past"),
            centre=bool(opts.get("centre", False)),
            meta=meta,
        )

    def summary(self) -> str:
        texts = self.meta.get("texts_used", 1)
        kind = "centred " if self.centre else ""
        return (
            f"{kind}{self.direction} similarity of {self.marker} #{self.occurrence}: {len(self.layer_labels)} layers x "
            f"{self.window} distances over {texts} text(s)"
        )


# ----------------------------------------------------------------------------- attribution


@dataclass
class AttributionResult(Result):
    """Attribution of each target row (output token or span) to each input feature.

    `scores[row, feature]`; `stderr` for sampled methods (Shapley); `target_scores[row]` is the
    row's own score (log-probability under teacher forcing, or probability).
    """

    kind: ClassVar[str] = "attr"
    plotter: ClassVar[str] = "plot_attribution"

    features: list[dict[str, Any]]  # text, start, end (character range in the prompt), positions
    rows: list[str]
    row_positions: list[list[int]]
    scores: np.ndarray  # (rows, features)
    stderr: np.ndarray | None
    target_scores: np.ndarray  # (rows,)
    method: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per (feature, target row)."""
        n_rows, n_feat = self.scores.shape
        row = np.repeat(np.arange(n_rows), n_feat)
        feat = np.tile(np.arange(n_feat), n_rows)
        return pd.DataFrame(
            {
                "feature": feat,
                "feature_text": np.asarray([f["text"] for f in self.features], dtype=object)[feat],
                "feature_start": np.asarray([f["start"] for f in self.features], dtype=np.int64)[
                    feat
                ],
                "feature_end": np.asarray([f["end"] for f in self.features], dtype=np.int64)[feat],
                "row": row,
                "target": np.asarray(self.rows, dtype=object)[row],
                "score": self.scores.reshape(-1),
                "stderr": self.stderr.reshape(-1)
                if self.stderr is not None
                else np.full(row.shape, np.nan),
                "target_score": self.target_scores[row],
                "method": self.method,
            }
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> AttributionResult:
        frame = frame.sort_values(["row", "feature"])
        n_rows = int(frame["row"].max()) + 1
        n_feat = int(frame["feature"].max()) + 1
        first = frame[frame["row"] == 0]
        per_row = frame[frame["feature"] == 0]
        stderr = frame["stderr"].to_numpy(dtype=np.float64).reshape(n_rows, n_feat)
        positions = meta.get("feature_positions") or [[] for _ in range(n_feat)]
        return cls(
            features=[
                {"text": str(t), "start": int(s), "end": int(e), "positions": list(p)}
                for t, s, e, p in zip(
                    first["feature_text"],
                    first["feature_start"],
                    first["feature_end"],
                    positions,
                    strict=True,
                )
            ],
            rows=[str(t) for t in per_row["target"]],
            row_positions=meta.get("row_positions") or [[] for _ in range(n_rows)],
            scores=frame["score"].to_numpy(dtype=np.float64).reshape(n_rows, n_feat),
            stderr=None if np.isnan(stderr).all() else stderr,
            target_scores=per_row["target_score"].to_numpy(dtype=np.float64),
            method=str(first["method"].iloc[0]),
            meta=meta,
        )

    def summary(self) -> str:
        n_rows, n_feat = self.scores.shape
        return f"{self.method} attribution: {n_rows} target rows x {n_feat} features; max |score| {np.abs(self.scores).max():.4f}"

    def extra_meta(self) -> dict[str, Any]:
        return {
            "feature_positions": [f["positions"] for f in self.features],
            "row_positions": self.row_positions,
        }


# ----------------------------------------------------------------------------- flip rates


@dataclass
class FlipResult(Result):
    """Per word occurrence: did perturbing it flip the prediction; and the rates per (class, word, bucket).

    Saved as `flips.parquet` (occurrences), `rates.parquet`, `meta.json` and one figure per
    class, `flips_<class>.<fmt>`.
    """

    kind: ClassVar[str] = "flips"
    plotter: ClassVar[str] = "plot_flips"

    occurrences: pd.DataFrame
    rates: pd.DataFrame
    labels: list[str]
    buckets: int = 10
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """The per-occurrence rows."""
        return self.occurrences

    def classes(self) -> list[str]:
        """Classes that have rows, in label order."""
        present = set(self.rates["class"])
        return [label for label in self.labels if label in present]

    @classmethod
    def files(cls, formats: Iterable[str] = ("png",)) -> list[str]:
        """The tables and meta.json (the figures' names depend on the classes found)."""
        return ["flips.parquet", "rates.parquet", "meta.json"]

    @classmethod
    def saved_names(cls, meta: dict[str, Any]) -> list[str]:
        labels = meta.get("labels") if isinstance(meta.get("labels"), list) else []
        figures = [f"flips_{_safe(c)}.{fmt}" for c in labels for fmt in FIGURE_FORMATS]
        return [*cls.files(), *figures]

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"flips": self.occurrences, "rates": self.rates}

    def figure_specs(self) -> list[tuple[str, dict[str, Any]]]:
        return [(f"flips_{_safe(c)}", {"label": c}) for c in self.classes()]

    def extra_meta(self) -> dict[str, Any]:
        return {"labels": self.labels, "buckets": self.buckets}

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict[str, Any]) -> FlipResult:
        folder = Path(meta.pop("_folder"))
        return cls(
            occurrences=frame,
            rates=pd.read_parquet(folder / "rates.parquet"),
            labels=list(meta.get("labels", [])),
            buckets=int(meta.get("buckets", 10)),
            meta=meta,
        )

    def summary(self) -> str:
        acc = self.meta.get("accuracy")
        acc_text = f"; accuracy on the unperturbed texts {acc:.1%}" if acc is not None else ""
        rate = float(self.occurrences["flipped"].mean()) if len(self.occurrences) else float("nan")
        return (
            f"flip rates over {self.meta.get('texts')} texts, {len(self.occurrences)} word occurrences, "
            f"overall flip rate {rate:.1%}{acc_text}"
        )

    def plot(self, label: str | None = None, **options: Any) -> Any:
        """The (word x bucket) heatmap of one class; see `plots.plot_flips`."""
        return super().plot(label=label or self.classes()[0], **options)


def _safe(name: str) -> str:
    """A class name usable in a file name."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name)) or "class"
