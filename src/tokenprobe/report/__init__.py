"""One self-contained interactive HTML page for any mix of saved results.

No library and no network: a small hand-written canvas viewer (`viewer.js`: hover for the
numbers behind a cell, mouse wheel to zoom the long axis, drag to pan, double-click to reset)
in a page template (`page.html`), both package data. Each result contributes the sections its
analysis's views give (`Result.sections`), drawn from the same `Heatmap` as its saved figures.
Every piece of token text travels as JSON inside a non-executable script element (with `<`
escaped) and is put on the page with `textContent` only, so a token such as `<script>` shows
as text. A Content-Security-Policy forbids every network request.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import FINISHED
from ..errors import TokenprobeError
from ..heatmap import page
from ..results import SAVE_JOURNAL, Result, complete_save

__all__ = ["check_page_path", "collect", "render", "sections_of", "write_report"]


def sections_of(result: Result) -> list[dict[str, Any]]:
    """The heatmap sections one result contributes to a page."""
    return result.sections()


def render(results: Sequence[Result], title: str = "tokenprobe report") -> str:
    """The whole page as one string."""
    return page([s for r in results for s in r.sections()], title)


def collect(root: str | Path) -> list[tuple[Path, Result]]:
    """Every saved result under `root` (folders holding a meta.json), sorted by path."""
    base = Path(root)
    if not base.is_dir():
        raise TokenprobeError(
            f"{root} is not a folder: pass the folder the results were written to"
        )
    for journal in sorted(base.rglob(SAVE_JOURNAL)):  # a save killed after it committed
        try:
            complete_save(journal.parent)
        except (TokenprobeError, OSError) as exc:  # e.g. a folder that cannot be written
            warnings.warn(f"skipped {journal.parent}: {exc}", UserWarning, stacklevel=2)
    for finished in sorted(base.rglob(f"*.partial/{FINISHED}")):
        warnings.warn(
            f"{finished.parent.parent} holds a finished run whose outputs were not written: run "
            "its command again with --resume to write them",
            UserWarning,
            stacklevel=2,
        )
    found = []
    skipped = 0
    for meta in sorted(base.rglob("meta.json")):
        try:
            found.append((meta.parent, Result.load(meta.parent)))
        except Exception as exc:  # a damaged folder must not stop the report of the others
            skipped += 1
            warnings.warn(f"skipped {meta.parent}: {_damage(exc)}", UserWarning, stacklevel=2)
    if not found:
        if skipped:
            raise TokenprobeError(
                f"none of the {skipped} result folder(s) under {root} could be read (see the "
                "warnings above): re-run the analyses"
            )
        raise TokenprobeError(
            f"no tokenprobe results under {root}: run an analysis with --out there first"
        )
    return found


def _damage(exc: Exception) -> str:
    """One line saying why a saved result could not be read."""
    lines = str(exc).strip().splitlines()
    if isinstance(exc, TokenprobeError):
        return " ".join(lines)
    why = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return f"its table or meta.json is damaged or not written by this version ({why}); re-run the analysis"


def check_page_path(out: Path, overwrite: bool) -> None:
    """The page is a file to write: not a folder, and not an existing page unless `overwrite`."""
    if out.is_dir():
        raise TokenprobeError(
            f"{out} is a folder: give the .html file to write, e.g. {out / 'report.html'}"
        )
    if out.exists() and not overwrite:
        raise TokenprobeError(f"{out} exists: choose another --html or pass --overwrite")


def write_report(
    results: Iterable[Result],
    path: str | Path,
    *,
    title: str = "tokenprobe report",
    overwrite: bool = False,
) -> Path:
    """Write the page; refuse to replace an existing file unless asked."""
    out = Path(path)
    check_page_path(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(list(results), title), encoding="utf-8")
    return out
