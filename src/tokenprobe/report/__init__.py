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

import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import FINISHED
from ..errors import TokenprobeError
from ..heatmap import page
from ..loading import load_result
from ..results import SAVE_JOURNAL, Result, complete_save

__all__ = [
    "check_page_path",
    "collect",
    "draw",
    "gather",
    "page_of",
    "render",
    "sections_of",
    "write_page",
    "write_report",
]


def sections_of(result: Result) -> list[dict[str, Any]]:
    """The heatmap sections one result contributes to a page, checked to go on it: finite
    numbers (the page's JSON has no NaN) and colour maps the page can draw."""
    import matplotlib

    sections = result.sections()
    json.dumps(sections, allow_nan=False)  # what `page` does: fails here, for this result alone
    unknown = [s["cmap"] for s in sections if s["cmap"] not in matplotlib.colormaps]
    if unknown:
        raise TokenprobeError(f"its colour map {unknown[0]!r} is not one matplotlib has")
    return sections


def render(results: Sequence[Result], title: str = "tokenprobe report") -> str:
    """The whole page as one string; a result that cannot be drawn is left out with a warning."""
    named = [(Path(f"result {i + 1}"), r) for i, r in enumerate(results)]
    drawn = draw(named, stacklevel=3)
    if named and not drawn:
        raise TokenprobeError(
            f"none of the {len(named)} result(s) could be drawn (see the warnings)"
        )
    return page([s for _, sections in drawn for s in sections], title)


def collect(root: str | Path) -> list[tuple[Path, Result]]:
    """Every saved result under `root` (folders holding a meta.json), sorted by path; a folder
    that cannot be read is skipped with a warning."""
    found, skipped = _load_all(root)
    _require(found, skipped, root)
    return found


def gather(root: str | Path) -> list[tuple[Path, list[dict[str, Any]]]]:
    """Every result under `root` with its drawn sections: what `report` writes. A folder that
    cannot be read or drawn is skipped with a warning naming it and why; the others stay."""
    found, skipped = _load_all(root)
    drawn = draw(found, stacklevel=3)
    _require(drawn, skipped + len(found) - len(drawn), root)
    return drawn


def draw(
    found: Sequence[tuple[Path, Result]], stacklevel: int = 2
) -> list[tuple[Path, list[dict[str, Any]]]]:
    """Each result's sections; one that fails to draw (any error: a damaged meta.json or
    table that loaded) is skipped with a warning, so one folder never stops the page."""
    out = []
    for folder, result in found:
        try:
            out.append((folder, sections_of(result)))
        except Exception as exc:  # whatever one damaged result breaks, the others are drawn
            warnings.warn(
                f"skipped {folder}: cannot be drawn: {_damage(exc)}",
                UserWarning,
                stacklevel=stacklevel,
            )
    return out


def page_of(drawn: Sequence[tuple[Path, list[dict[str, Any]]]], title: str) -> str:
    """The page of `gather`'s drawn sections."""
    return page([s for _, sections in drawn for s in sections], title)


def _load_all(root: str | Path) -> tuple[list[tuple[Path, Result]], int]:
    """The results under `root` that load, and how many folders did not (each warned about)."""
    base = Path(root)
    if not base.is_dir():
        raise TokenprobeError(
            f"{root} is not a folder: pass the folder the results were written to"
        )
    for journal in sorted(base.rglob(SAVE_JOURNAL)):  # a save killed after it committed
        try:
            complete_save(journal.parent)
        except (TokenprobeError, OSError) as exc:  # e.g. a folder that cannot be written
            warnings.warn(f"skipped {journal.parent}: {exc}", UserWarning, stacklevel=3)
    for finished in sorted(base.rglob(f"*.partial/{FINISHED}")):
        warnings.warn(
            f"{finished.parent.parent} holds a finished run whose outputs were not written: run "
            "its command again with --resume to write them",
            UserWarning,
            stacklevel=3,
        )
    found = []
    skipped = 0
    for meta in sorted(base.rglob("meta.json")):
        try:
            found.append((meta.parent, load_result(meta.parent)))
        except Exception as exc:  # a damaged folder must not stop the report of the others
            skipped += 1
            warnings.warn(f"skipped {meta.parent}: {_damage(exc)}", UserWarning, stacklevel=3)
    return found, skipped


def _require(found: Sequence[Any], skipped: int, root: str | Path) -> None:
    """One error when nothing under `root` can go on the page."""
    if found:
        return
    if skipped:
        raise TokenprobeError(
            f"none of the {skipped} result folder(s) under {root} could be read (see the "
            "warnings above): re-run the analyses"
        )
    raise TokenprobeError(
        f"no tokenprobe results under {root}: run an analysis with --out there first"
    )


def _damage(exc: Exception) -> str:
    """One line saying why a saved result could not be read or drawn."""
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
    return write_page(render(list(results), title), out)


def write_page(text: str, path: Path) -> Path:
    """Write a rendered page where `check_page_path` allowed it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
