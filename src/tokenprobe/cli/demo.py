"""`tokenprobe demo`: every registered analysis on the built-in model with the inputs in
data/demo.json (keyed by analysis name), then the HTML report."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..analyses import ANALYSES
from ..errors import TokenprobeError
from ..results import check_writable
from .flags import add_common
from .report import check_report_path, in_words, write_report


def demo_help() -> str:
    """`demo --help`'s description: what each registered analysis with a demo runs (its
    `demo_help`, else its one-line help up to the colon), then the report."""
    runs = [
        spec.demo_help or spec.help.split(":")[0]
        for spec in ANALYSES.values()
        if spec.demo is not None
    ]
    text = in_words([*runs, "report.html in --out"])
    return f"{text[:1].upper()}{text[1:]}, on the built-in model: about 3 minutes on 2 cores."


def add_demo(sub: Any) -> None:
    """The `demo` subcommand."""
    demo = sub.add_parser(
        "demo",
        help="run every analysis on the built-in model with the demo inputs, then write the HTML report",
        description=demo_help(),
    )
    add_common(demo, default_out="out/demo", batch_tokens=None)


def demo_specs() -> dict[str, list[dict[str, Any]]]:
    """The demo's inputs per analysis, shipped in the package."""
    path = resources.files("tokenprobe").joinpath("data/demo.json")
    return json.loads(path.read_text(encoding="utf-8"))


def run_demo(session: Any) -> int:
    """Every analysis with demo inputs, in registry order; the outputs are checked first."""
    args = session.args
    out = Path(args.out)
    specs = demo_specs()  # looked up at call time: tests replace `cli.demo.demo_specs`
    if out.exists() and not out.is_dir():
        raise TokenprobeError(f"--out {out} is a file, not a folder: choose another --out")
    todo = [(ANALYSES[name], entry) for name in ANALYSES for entry in specs.get(name, [])]
    for analysis, entry in todo:  # before the model runs, not after
        if analysis.demo_files is not None:
            names = analysis.demo_files(entry, args.format)
        else:
            names = analysis.result.files(args.format)
        check_writable(out / entry["name"], names, args.overwrite)
    check_report_path(out / "report.html", args.overwrite, "--out")
    session.load()  # the model, once, before the first analysis
    for analysis, entry in todo:
        if analysis.demo is None:
            continue
        session.spec = analysis
        analysis.demo(session, entry, out / entry["name"])
    session.spec = None
    write_report(out, out / "report.html", "tokenprobe demo", args.overwrite)
    print(f"demo outputs are in {out}/; open {out / 'report.html'} in a browser")
    return 0
