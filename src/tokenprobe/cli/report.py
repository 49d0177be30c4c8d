"""`tokenprobe report FOLDER`: one HTML page of every saved result under a folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..analyses import ANALYSES
from .flags import check_can_write


def in_words(items: list[str]) -> str:
    """A list in words: "a", "a and b", "a, b and c"."""
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def add_report(sub: Any) -> None:
    """The `report` subcommand; its help lists the registered analyses' commands."""
    commands = in_words([spec.command for spec in ANALYSES.values()])
    rep = sub.add_parser(
        "report",
        help="one self-contained interactive HTML page of every result under a folder",
        description=f"Collects every saved result under FOLDER (any mix of {commands}) into one "
        "HTML file that opens offline: hover a cell for its numbers, wheel to zoom the long axis, "
        "drag to pan. Prints the file's path and size.",
    )
    rep.add_argument("folder", help="folder holding results (searched recursively)")
    rep.add_argument("--html", help="the page to write (default: FOLDER/report.html)")
    rep.add_argument("--title", default="tokenprobe report", help="page title")
    rep.add_argument("--overwrite", action="store_true", help="replace an existing page")


def check_report_path(html_path: Path, overwrite: bool, flag: str) -> None:
    """Before collecting (or running) anything: the page can be written where it is asked for."""
    from ..report import check_page_path

    check_page_path(html_path, overwrite)
    check_can_write(html_path, flag)


def write_report(folder: Path, html_path: Path, title: str, overwrite: bool) -> Path:
    """Collect the results under `folder` into one page and say where it is; a folder that
    cannot be read or drawn is skipped with a warning (`gather`)."""
    from ..report import check_page_path, gather, page_of, write_page

    drawn = gather(folder)
    check_page_path(html_path, overwrite)
    path = write_page(page_of(drawn, title), html_path)
    size = path.stat().st_size
    print(f"report of {len(drawn)} result(s): {path} ({size / 2**20:.1f} MB)")
    return path


def run_report(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    html_path = Path(args.html) if args.html else folder / "report.html"
    if folder.is_dir():  # else collect() says what is wrong with FOLDER
        check_report_path(html_path, args.overwrite, "--html")
    write_report(folder, html_path, args.title, args.overwrite)
    return 0
