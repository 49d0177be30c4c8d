"""Print the benchmarks' results (the JSON file `make bench` fills) as one markdown table.

    python bench/table.py [bench/results.json]

Columns: the job; tokenprobe's seconds; the floor's seconds (the unavoidable work of that job,
e.g. the matrix products alone) and tokenprobe / floor; each peer's seconds with
peer / tokenprobe (above 1: tokenprobe is faster) and its peak memory; tokenprobe's peak
memory; the torch thread count; and the versions of anything that differs from the line
above the table (torch, transformers, tokenprobe) plus each peer's package version.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"
CORE = ("torch", "transformers", "tokenprobe")


def _num(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def _memory(mb: float | None) -> str:
    if mb is None:
        return ""
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def peer_names(rows: list[dict]) -> list[str]:
    """Every peer named in any row, in order of first appearance."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row.get("peers") or {}))
    return list(names)


def common_versions(rows: list[dict]) -> dict[str, str]:
    """The most frequent (torch, transformers, tokenprobe) versions over the rows."""
    counts = Counter(tuple(row["versions"].get(k) for k in CORE) for row in rows)
    return dict(zip(CORE, counts.most_common(1)[0][0], strict=True)) if counts else {}


def _most(rows: list[dict], key: str) -> object:
    """The most frequent value of `key` over the rows."""
    counts = Counter(row.get(key) for row in rows)
    return counts.most_common(1)[0][0] if counts else None


def _peer_cell(row: dict, name: str) -> str:
    peer = (row.get("peers") or {}).get(name)
    if not peer or peer.get("seconds") is None:
        return ""
    ratio = _ratio(peer["seconds"], row["tokenprobe"]["seconds"])
    extra = ", ".join(
        x for x in (f"{ratio:.2f}x" if ratio else "", _memory(peer.get("memory_mb"))) if x
    )
    return f"{peer['seconds']:.2f} ({extra})" if extra else f"{peer['seconds']:.2f}"


def _versions_cell(row: dict, common: dict[str, str]) -> str:
    own = [f"{k} {row['versions'].get(k)}" for k in CORE if row["versions"].get(k) != common.get(k)]
    peers = [
        f"{n.split()[0]} {p['version']}"
        for n, p in (row.get("peers") or {}).items()
        if p.get("version")
    ]
    return ", ".join(dict.fromkeys(own + peers))


def table(rows: list[dict]) -> str:
    """The markdown table of `rows` (as `_common.record` writes them), with a heading line."""
    peers = peer_names(rows)
    common = common_versions(rows)
    head = ["job", "tokenprobe s", "floor s", "tokenprobe / floor"]
    head += [f"{p} s" for p in peers]
    head += ["tokenprobe peak memory", "threads", "versions"]
    lines = [
        "| " + " | ".join(head) + " |",
        "| --- | " + " | ".join(["---:"] * (len(head) - 2)) + " | --- |",
    ]
    for row in rows:
        ours, floor = row["tokenprobe"], row.get("floor") or {}
        job = row["job"] + (" (smoke)" if row.get("smoke") else "")
        for key in ("model", "device", "dtype"):  # what differs from the heading line
            if row.get(key) != _most(rows, key):
                job += f" [{row.get(key)}]"
        cells = [
            job,
            _num(ours["seconds"]),
            _num(floor.get("seconds")),
            _num(_ratio(ours["seconds"], floor.get("seconds"))),
            *(_peer_cell(row, p) for p in peers),
            _memory(ours.get("memory_mb")),
            str(row.get("threads", "")),
            _versions_cell(row, common),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    about = ", ".join(f"{k} {v}" for k, v in common.items())
    where = f"{_most(rows, 'device')}, {_most(rows, 'dtype')}, model {_most(rows, 'model')}"
    legend = (
        "peer cells: seconds (peer seconds / tokenprobe seconds: above 1, tokenprobe is faster; "
        "the peer's peak memory where measured)"
    )
    return f"{about}; {where}\n\n" + "\n".join(lines) + f"\n\n{legend}"


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT_JSON
    if not path.is_file():
        print(f"no results at {path}: run `make bench` (or a bench/*.py script) first")
        return 1
    rows = json.loads(path.read_text())["rows"]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
