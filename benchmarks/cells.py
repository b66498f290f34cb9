"""What a benchmark run measures, as data: a cell per implementation, a row per problem
and batch, the run's settings, and how times and sizes are printed. The runner fills
them; the report and the JSON records read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import problems as problems_mod
from .implementations import Memory
from .timing import Timing

__all__ = ["Cell", "Row", "RunConfig", "fmt_bytes", "fmt_time"]


@dataclass
class Cell:
    """One implementation on one problem and batch.

    ``status`` is ``"ok"`` (timed), ``"wrong"`` (gradient check failed), ``"unsupported"``,
    ``"missing"`` (library not installed) or ``"error"``; ``text`` is the table cell for
    the statuses other than ok.
    """

    impl: str
    status: str
    text: str = ""
    value: Timing | None = None
    value_and_grad: Timing | None = None
    cold: float | None = None
    memory: Memory | None = None
    error: float | None = None
    checked_against: str = ""
    note: str = ""
    detail: str = ""
    setup: dict[str, float | None] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value and self.value_and_grad:
            return self.value_and_grad.median / self.value.median
        return None


@dataclass
class Row:
    """One problem at one batch size: a cell per implementation."""

    problem: problems_mod.Problem
    batch: int
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    target: float = 0.2  # seconds per measurement
    min_runs: int = 5
    slow: float = 10.0  # seconds: a call this slow is timed once
    seed: int = 0
    verbose: bool = True


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale or unit == "µs":
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"
