"""Timing and peak-memory helpers shared by the benchmarks (run them as `python bench/X.py`)."""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Callable

import torch


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
