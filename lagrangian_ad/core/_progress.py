"""Progress of long work: a tqdm bar (in a terminal or in Jupyter), or a callback.

Building a long program spends seconds in SymPy (constructing its expressions, one
`Program.define` after another; `lad.parse` of a long file), and compiling derives
partials and writes code for every constraint, seconds again for 10⁴–10⁵ constraints.
Each of these takes a ``progress`` setting (``Program(progress=…)``,
``Program.compile(progress=…)``, ``lad.parse(…, progress=…)``):

* ``None`` (default): a bar once the work has lasted ``DELAY`` seconds, only where
  someone watches — stderr is a terminal, or the code runs in a Jupyter kernel (where
  ``tqdm.auto`` draws a widget if ipywidgets is installed, text otherwise) — so logs,
  pipes and test output stay clean, and short work is silent everywhere;
* ``True`` / ``False``: always / never show the bar (``True`` still waits ``DELAY``
  seconds, so short work stays silent);
* a callable ``report(stage, done, total, elapsed)``: called for every update from the
  start, and once with ``stage="done"`` at the end; nothing is shown. ``total`` is 0
  when the stage has no known size (building: the number of constraints is not known
  in advance).

Building is counted per *streak*: `Program.define` and `Program.equation` calls that
follow each other within ``PAUSE`` seconds. A streak ends when the program is next read
(compiled, solved, printed: anything that freezes it) or at the next call after a pause.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["BuildProgress", "Progress"]

DELAY = 2.0  # seconds of work before a bar appears
EVERY = 0.5  # seconds between redraws of the bar
PAUSE = 1.0  # seconds between two define calls that end a building streak


class Progress:
    """Throttled reporting of (stage, done, total) for one piece of work.

    Parameters
    ----------
    setting : None, bool or callable
        See the module docstring.
    stream : file-like, optional
        Where the bar is written (a plain tqdm bar). Default: stderr, or a Jupyter
        widget in a notebook (``tqdm.auto``).
    """

    def __init__(self, setting: Any = None, stream: Any = None):
        self.stream = stream
        self.callback: Callable | None = setting if callable(setting) else None
        if self.callback is not None:
            self.enabled = False
        elif setting is None:
            self.enabled = _watched(stream)
        else:
            self.enabled = bool(setting)
        self.start = time.perf_counter()
        self._bar: Any = None
        self._stage: str | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.start
        if self.callback is not None:
            self.callback(stage, done, total, elapsed)
            return
        if not self.enabled or elapsed < DELAY:
            return
        bar = self._bar
        if bar is None:
            bar = self._bar = _new_bar(self.stream, self.start)
        if stage != self._stage:
            self._stage = stage
            bar.bar_format = _FORMAT if total else _FORMAT_NO_TOTAL
            bar.set_description_str(f"lagrangian_ad: {stage}", refresh=False)
            if (total or None) != bar.total or done < bar.n:  # new counts: start over
                bar.reset(total=total or None)  # (None keeps the old total: cleared below)
                bar.total = total or None
                _start_clock(bar, self.start)  # the clock counts the whole work
            bar.n = bar.last_print_n = done
            bar.refresh()
        elif done > bar.n:
            bar.update(done - bar.n)  # redrawn at most every EVERY seconds

    def done(self, what: str, verb: str = "compiled") -> None:
        """End the work: the callback's ``"done"``, or the bar's last line, if one was shown."""
        elapsed = time.perf_counter() - self.start
        if self.callback is not None:
            self.callback("done", 1, 1, elapsed)
        elif self._bar is not None:
            bar, self._bar = self._bar, None
            bar.total = None  # the work is complete, whatever the last stage counted
            bar.bar_format = "{desc}"
            summary = f"lagrangian_ad: {verb} {what} in {elapsed:.1f} s"
            bar.set_description_str(summary, refresh=False)
            bar.close()


class BuildProgress:
    """The building streaks of one program: constraints counted, a bar when long.

    Parameters
    ----------
    setting : None, bool or callable
        As for `Progress`.
    """

    def __init__(self, setting: Any = None):
        self.setting = setting
        self.count = 0
        self._report: Progress | None = None
        self._last = 0.0

    def step(self, constraints: int) -> None:
        """Count ``constraints`` more (one define call)."""
        now = time.perf_counter()
        if self._report is not None and now - self._last > PAUSE:
            self.end()
        if self._report is None:
            self._report = Progress(self.setting)
            self.count = 0
        self._last = now
        self.count += constraints
        self._report("building", self.count, 0)

    def end(self) -> None:
        """End the current streak, if any."""
        if self._report is not None:
            report, self._report = self._report, None
            report.done(f"{self.count:,} constraints", verb="built")


_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"
_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}]"


def _new_bar(stream: Any, start: float) -> Any:
    """A tqdm bar: plain on ``stream`` if one was given, else `tqdm.auto` on stderr."""
    if stream is not None:
        from tqdm.std import tqdm
    else:
        with warnings.catch_warnings():
            # Jupyter without ipywidgets: tqdm.auto warns, then draws text, which is fine.
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm
    bar = tqdm(
        total=None,
        file=stream if stream is not None else sys.stderr,
        mininterval=EVERY,
        miniters=1,
        leave=True,
        dynamic_ncols=True,
        delay=1e-9,  # nothing drawn until the first update
    )
    _start_clock(bar, start)
    return bar


def _start_clock(bar: Any, start: float) -> None:
    """Date the bar's start back to ``start`` (a `time.perf_counter` reading)."""
    bar.start_t = bar._time() - (time.perf_counter() - start)


def _watched(stream: Any) -> bool:
    """Whether someone sees the bar: a terminal, or (no stream given) a Jupyter kernel."""
    target = stream if stream is not None else sys.stderr
    isatty = getattr(target, "isatty", None)
    try:
        if isatty is not None and isatty():
            return True
    except ValueError:  # a closed stream
        return False
    return stream is None and _in_jupyter()


def _in_jupyter() -> bool:
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython else None
    return type(shell).__name__ == "ZMQInteractiveShell"
