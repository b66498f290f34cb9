"""Timing and memory measurement: medians of repeated runs, one thread, gc off.

`measure` times no-argument callables the way ``timeit`` does, their runs interleaved:
calls shorter than a millisecond are looped so one run lasts about a millisecond, and
the number of runs is chosen so each measurement takes about ``target`` seconds, never
fewer than ``min_runs``. Calls of a second or more count their first call as a run
(they are already warm), and calls longer than ``slow`` seconds are run once, so that
one very slow cell cannot hold up the whole suite; the run count is reported with the
time. The result is the median time of one call, with the process CPU time over wall
time as a check that nothing ran on more than one core, and the process's peak
resident memory above its level before the first run (Linux: the high-water mark is
reset through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Timing", "measure", "rss_peak_during", "tracemalloc_peak"]


@dataclass(frozen=True)
class Timing:
    """Median seconds per call over ``runs`` runs of ``inner`` calls each.

    ``cpu_per_wall`` is process CPU time over wall time during the runs (about 1 for one
    thread); ``rss_peak`` is the peak resident memory during the runs above the resident
    memory before them, in bytes (None where the kernel does not offer it).
    """

    median: float
    runs: int
    inner: int
    cpu_per_wall: float
    rss_peak: int | None = None


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_rss_peak() -> int | None:
    """Reset the kernel's resident high-water mark; the resident memory now, or None."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_kb("VmRSS")


def measure(
    fns: Sequence[Callable[[], Any]],
    target: float = 0.2,
    min_runs: int = 5,
    slow: float = 10.0,
) -> list[Timing]:
    """Median time of one call of each of ``fns`` (warmed up by the caller), interleaved.

    The runs of the functions alternate, so that each sees the same machine: on a shared
    machine the load changes from second to second, and a ratio of two times measured
    one after the other would carry that change. CPU/wall and the resident peak are for
    the whole interleaved measurement.
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        base = _reset_rss_peak()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        once = []
        for fn in fns:
            t0 = time.perf_counter()
            fn()
            once.append(max(time.perf_counter() - t0, 1e-9))
        samples: list[list[float]] = [[t] if t >= 1.0 else [] for t in once]
        inner = [max(1, int(1e-3 / t)) if t < 1e-3 else 1 for t in once]
        per_round = sum(t * k for t, k in zip(once, inner, strict=True))
        if max(once) >= slow:
            runs = 1
        else:
            runs = max(min_runs, min(2_000, int(target * len(fns) / per_round)))
        for _ in range(runs):
            for fn, k, got in zip(fns, inner, samples, strict=True):
                if len(got) >= runs:
                    continue
                t0 = time.perf_counter()
                for _ in range(k):
                    fn()
                got.append((time.perf_counter() - t0) / k)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        peak = _status_kb("VmHWM") if base is not None else None
    finally:
        if enabled:
            gc.enable()
    rss = max(0, peak - base) if peak is not None and base is not None else None
    return [
        Timing(
            median=statistics.median(got),
            runs=len(got),
            inner=k,
            cpu_per_wall=cpu / wall if wall > 0 else 1.0,
            rss_peak=rss,
        )
        for got, k in zip(samples, inner, strict=True)
    ]


def tracemalloc_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated (and traced: Python objects and NumPy buffers) during ``fn()``."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
        del result
    finally:
        tracemalloc.stop()
    return peak


def rss_peak_during(fn: Callable[[], Any]) -> tuple[Any, int | None]:
    """``fn()`` and the process's peak resident memory during it above its level before.

    The kernel's high-water mark (Linux), reset first; None where it is not offered.
    Unlike `tracemalloc_peak` it does not slow the call down (SymPy work runs 2-3×
    slower traced), and it sees every allocation, not only Python's and NumPy's.
    """
    gc.collect()
    base = _reset_rss_peak()
    result = fn()
    peak = _status_kb("VmHWM") if base is not None else None
    return result, (max(0, peak - base) if peak is not None and base is not None else None)
