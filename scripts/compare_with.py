"""Does this tree give the same demo tables and the same `--help` as an earlier commit?

    python scripts/compare_with.py REF [--model NAME]

Runs `tokenprobe demo` on the built-in model (or --model) with the code of REF (a git worktree
in out/compare/) and with the code of this tree, then compares every Parquet table the demo
writes (exactly: same columns, dtypes and values) and the `--help` of every command. A
commit's outputs are kept in out/compare/<sha>/ and reused. Exit 0 when all are the same.
For refactors: behaviour is meant to stay put, and this says whether it did.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [
    "",
    "lens",
    "similarity",
    "attribute",
    "flips",
    "tune-lens",
    "lens-eval",
    "trace",
    "report",
    "demo",
]


def _run(src: Path, out: Path, model: str | None) -> None:
    """Demo tables and help texts of the code under `src` (a folder holding tokenprobe/)."""
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "100"}
    cli = [sys.executable, "-m", "tokenprobe.cli"]
    help_dir = out / "help"
    help_dir.mkdir(parents=True, exist_ok=True)
    for command in COMMANDS:
        args = [*cli, *([command] if command else []), "--help"]
        text = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
        (help_dir / f"{command or 'tokenprobe'}.txt").write_text(text, encoding="utf-8")
    demo = [*cli, "demo", "--out", str(out / "demo"), "--overwrite"]
    if model:
        demo += ["--model", model]
    subprocess.run(demo, env=env, check=True)
    (out / "DONE").touch()


def _tree_of(ref: str) -> tuple[str, Path]:
    sha = subprocess.run(
        ["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = ROOT / "out" / "compare" / f"tree-{sha[:12]}"
    if not tree.is_dir():
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-f", str(tree), sha], cwd=ROOT, check=True
        )
    return sha, tree / "src"


def _compare(before: Path, after: Path) -> list[str]:
    problems = []
    tables = sorted(p.relative_to(before) for p in (before / "demo").rglob("*.parquet"))
    if not tables:
        problems.append(f"{before / 'demo'} holds no tables")
    for rel in tables:
        if not (after / rel).is_file():
            problems.append(f"{rel}: missing")
            continue
        try:
            pd.testing.assert_frame_equal(
                pd.read_parquet(before / rel), pd.read_parquet(after / rel), check_exact=True
            )
        except AssertionError as exc:
            problems.append(f"{rel}: {' '.join(str(exc).split())[:300]}")
    extra = (
        sorted(p.relative_to(after) for p in (after / "demo").rglob("*.parquet"))
        if (after / "demo").is_dir()
        else []
    )
    problems += [f"{rel}: new table" for rel in extra if rel not in tables]
    for old in sorted((before / "help").glob("*.txt")):
        new = after / "help" / old.name
        if not new.is_file() or new.read_text() != old.read_text():
            problems.append(f"--help of {old.stem} differs (diff {old} {new})")
    print(
        f"compared {len(tables)} tables and {len(list((before / 'help').glob('*.txt')))} help texts"
    )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", help="the commit to compare with (e.g. HEAD~1)")
    parser.add_argument("--model", help="model for the demo (default: the built-in one)")
    args = parser.parse_args()
    sha, src = _tree_of(args.ref)
    before = ROOT / "out" / "compare" / sha
    if not (before / "DONE").exists():
        _run(src, before, args.model)
    after = ROOT / "out" / "compare" / "working-tree"
    _run(ROOT / "src", after, args.model)
    problems = _compare(before, after)
    for line in problems:
        print("DIFFERENT:", line)
    if not problems:
        print(f"the same as {args.ref} ({sha[:12]}): every demo table and every --help")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
