"""Timing, peak-memory and result-recording helpers shared by the benchmarks (run them as
`python bench/X.py`; `make bench` runs them all and prints bench/table.py's table).

Every script takes `--threads N` (default: the THREADS environment variable, else torch's
own choice), `--json FILE` (default: BENCH_JSON, else bench/results.json) and `--smoke` (a
tiny job, seconds: checks the plumbing, its figures mean nothing). `record()` appends one row
per job to the JSON file.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"

# the package whose version a peer's row names, by the peer name's first word
PEER_PACKAGES = {
    "nnsight": "nnsight",
    "transformer_lens": "transformer-lens",
    "transformerlens": "transformer-lens",
    "captum": "captum",
    "inseq": "inseq",
    "sae-lens": "sae-lens",
}

if os.environ.get("THREADS"):  # `THREADS=1 make bench`: before any torch work of the script
    torch.set_num_threads(int(os.environ["THREADS"]))

_settings: dict[str, object] = {"json": None, "smoke": False}


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark shares: --threads, --json, --smoke."""
    parser.add_argument("--threads", type=int, default=None, help="torch threads (env THREADS)")
    parser.add_argument("--json", default=None, help="append rows here (env BENCH_JSON)")
    parser.add_argument("--smoke", action="store_true", help="a tiny job: checks the plumbing")


def configure(args: argparse.Namespace) -> argparse.Namespace:
    """Apply --threads and remember --json/--smoke for `record()`; returns `args`."""
    if args.threads:
        torch.set_num_threads(args.threads)
    _settings["json"] = args.json
    _settings["smoke"] = bool(args.smoke)
    return args


def json_path() -> Path:
    given = _settings["json"] or os.environ.get("BENCH_JSON")
    return Path(str(given)) if given else DEFAULT_JSON


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _timing(value: float | tuple[float, float] | None) -> dict[str, float | None] | None:
    """(seconds, peak MB) or seconds, as the row's {"seconds", "memory_mb"}."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return {"seconds": float(value[0]), "memory_mb": float(value[1])}
    return {"seconds": float(value), "memory_mb": None}


def record(
    job: str,
    *,
    tokenprobe: float | tuple[float, float],
    floor: float | tuple[float, float] | None = None,
    floor_name: str | None = None,
    peers: Mapping[str, float | tuple[float, float]] | None = None,
    memory: float | None = None,
    notes: str = "",
    lm: object = None,
    model: str | None = None,
) -> dict:
    """Append one job's figures to the JSON file (seconds; `(seconds, peak MB)` pairs too):
    tokenprobe's, the floor's (the unavoidable work, named by `floor_name`), each peer's
    (its package version looked up), with the thread count and the versions of this run.
    `lm` (a LoadedModel) names the model, device and dtype; else `model` names it (CPU)."""
    ours = _timing(tokenprobe)
    assert ours is not None
    if memory is not None:
        ours["memory_mb"] = float(memory)
    peer_rows = {}
    for name, value in (peers or {}).items():
        package = PEER_PACKAGES.get(name.split()[0].lower())
        peer_rows[name] = {**(_timing(value) or {}), "version": package and _version(package)}
    row = {
        "job": job,
        "script": Path(sys.argv[0]).name,
        "tokenprobe": ours,
        "floor": _timing(floor),
        "floor_name": floor_name,
        "peers": peer_rows,
        "threads": torch.get_num_threads(),
        "model": getattr(lm, "name", model),
        "device": str(getattr(lm, "device", "cpu")),
        "dtype": str(getattr(lm, "dtype", "float32")).replace("torch.", ""),
        "smoke": bool(_settings["smoke"]),
        "notes": notes,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "tokenprobe": _version("tokenprobe"),
        },
        "load_average": os.getloadavg()[0],
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = json_path()
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    path.write_text(json.dumps({"rows": [*rows, row]}, indent=1) + "\n")
    return row


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRSS:
    """Samples this process's resident memory every few milliseconds; peak above the start."""

    def __init__(self) -> None:
        self.base = _rss_mb()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, float]:
    """Median seconds over `repeats` runs after a warm-up, and peak memory above the start in MB
    (sampled RSS on CPU, the allocator's peak on CUDA)."""
    fn()  # warm-up
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    with _PeakRSS() as rss:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        return statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2**20
    return statistics.median(times), rss.peak - rss.base
