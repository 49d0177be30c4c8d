"""bench/table.py on a hand-written results file: its columns and ratios (nothing is timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TABLE = Path(__file__).resolve().parent.parent / "bench" / "table.py"
CORE = {"python": "3.11", "torch": "2.13.0", "transformers": "5.25.0", "tokenprobe": "0.1.0"}


def _row(job: str, ours: float, floor: float | None, peers: dict, **extra) -> dict:
    return {
        "job": job,
        "tokenprobe": {"seconds": ours, "memory_mb": 480.0},
        "floor": None if floor is None else {"seconds": floor, "memory_mb": None},
        "peers": peers,
        "threads": 2,
        "model": "smollm2",
        "device": "cpu",
        "dtype": "float32",
        "versions": dict(CORE),
        **extra,
    }


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_table_columns_and_ratios(tmp_path):
    rows = [
        _row(
            "logit lens",
            10.0,
            8.0,
            {
                "nnsight": {"seconds": 30.0, "memory_mb": 14745.6, "version": "0.5.0"},
                "transformer_lens": {"seconds": 25.0, "memory_mb": None, "version": "3.0"},
            },
        ),
        _row(
            "flip rates",
            4.0,
            None,
            {"captum FeatureAblation": {"seconds": 50.0, "memory_mb": None, "version": "0.8.0"}},
            threads=1,
            versions={**CORE, "transformers": "5.0.0"},
        ),
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"rows": rows}))
    out = subprocess.run(
        [sys.executable, str(TABLE), str(path)], capture_output=True, text=True, check=True
    ).stdout
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert "torch 2.13.0, transformers 5.25.0, tokenprobe 0.1.0; cpu, float32" in out
    assert "peer cells: seconds (peer seconds / tokenprobe seconds" in out
    head = _cells(lines[0])
    assert head[:4] == ["job", "tokenprobe s", "floor s", "tokenprobe / floor"]
    assert head[4:7] == ["nnsight s", "transformer_lens s", "captum FeatureAblation s"]
    assert head[-3:] == ["tokenprobe peak memory", "threads", "versions"]
    lens, flips = (dict(zip(head, _cells(line), strict=True)) for line in lines[2:4])
    assert lens["tokenprobe s"] == "10.00" and lens["floor s"] == "8.00"
    assert lens["tokenprobe / floor"] == "1.25"
    assert lens[head[4]] == "30.00 (3.00x, 14.40 GB)"  # nnsight / tokenprobe
    assert lens[head[5]] == "25.00 (2.50x)"
    assert lens[head[6]] == ""  # a peer this job does not have
    assert lens["tokenprobe peak memory"] == "480 MB" and lens["threads"] == "2"
    assert lens["versions"] == "nnsight 0.5.0, transformer_lens 3.0"
    assert flips["floor s"] == "" and flips["tokenprobe / floor"] == ""
    assert flips[head[6]] == "50.00 (12.50x)" and flips["threads"] == "1"
    assert flips["versions"] == "transformers 5.0.0, captum 0.8.0"  # differs from the heading
