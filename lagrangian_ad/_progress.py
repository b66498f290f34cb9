"""Progress of long compiles: a status line on stderr, or a callback.

Compiling derives partials with SymPy and writes code for every constraint, which takes
seconds for programs of 10⁴–10⁵ constraints. ``Program.compile(progress=…)`` chooses:

* ``None`` (default): after ``DELAY`` seconds, a status line on stderr — only when stderr
  is a terminal, so logs and test output stay clean;
* ``True`` / ``False``: always / never print (still only after ``DELAY`` seconds for
  ``True``: short compiles stay silent);
* a callable ``report(stage, done, total, elapsed)``: called for every update, from the
  start; nothing is printed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress"]

DELAY = 2.0  # seconds before the first printed line
EVERY = 0.5  # seconds between printed updates


class Progress:
    """Throttled reporting of (stage, done, total)."""

    def __init__(self, setting: Any = None, stream: Any = None):
        self.stream = stream if stream is not None else sys.stderr
        self.callback: Callable | None = setting if callable(setting) else None
        if setting is None:
            isatty = getattr(self.stream, "isatty", None)
            self.enabled = bool(isatty and isatty())
        else:
            self.enabled = bool(setting) and self.callback is None
        self.start = time.perf_counter()
        self._last = -EVERY
        self._printed = False

    def __call__(self, stage: str, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.start
        if self.callback is not None:
            self.callback(stage, done, total, elapsed)
            return
        if not self.enabled or elapsed < DELAY or elapsed - self._last < EVERY:
            return
        self._last = elapsed
        self._printed = True
        share = f" {done:,}/{total:,}" if total else ""
        self.stream.write(f"\rlagrangian_ad: {stage}{share} ({elapsed:.1f} s)\033[K")
        self.stream.flush()

    def done(self, what: str) -> None:
        """End the status line, if one was printed."""
        elapsed = time.perf_counter() - self.start
        if self.callback is not None:
            self.callback("done", 1, 1, elapsed)
        elif self._printed:
            self.stream.write(f"\rlagrangian_ad: compiled {what} in {elapsed:.1f} s\033[K\n")
            self.stream.flush()
