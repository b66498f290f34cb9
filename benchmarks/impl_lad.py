"""lagrangian_ad itself: ``fn = prog.compile()``, then ``fn.value`` and ``fn.value_and_grad``.

The program is built once per problem with SymPy (not counted in the cold time, the way
writing a PyTorch function is not); the cold time is ``prog.compile()`` plus the first
``value_and_grad`` call. A problem the engine cannot solve yet (the cyclic equilibrium
model until the cyclic solver lands) raises one of the package's errors, which becomes
"not supported yet" in the table; the row fills in by itself once the engine solves it.
The array problems (``problem.arrays``) are written against the array API of docs/design.md
("Array programs (contract)": ``array=True`` inputs, ``lad.tanh``, ``lad.sum`` …);
where this lagrangian_ad does not have it yet, their cells read "not supported yet"
(with the missing piece in the notes) instead of failing.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .implementations import Bench, Memory, Unsupported
from .problems import DEQ_TOL, Inputs, Problem
from .timing import rss_peak_during, tracemalloc_peak

LABEL = "lagrangian_ad"

_programs: dict[tuple, tuple[Any, float]] = {}
_setup: dict[tuple, dict[str, float | None]] = {}


def available() -> tuple[bool, str]:
    return True, ""


def version() -> str:
    import lagrangian_ad

    return lagrangian_ad.__version__


ARRAY_API = ("tanh", "exp", "log", "sum", "mul")  # the helpers the array problems use


def missing_array_api() -> str:
    """What of docs/design.md's array API this lagrangian_ad lacks ("" if nothing)."""
    import lagrangian_ad as lad

    missing = [f"lad.{name}" for name in ARRAY_API if not hasattr(lad, name)]
    for method in ("input", "var"):
        params = inspect.signature(getattr(lad.Program, method)).parameters
        if "array" not in params:
            missing.append(f"Program.{method}(..., array=True)")
    return ", ".join(missing)


def measure_setup(name: str, traced: bool = False) -> dict[str, float | None]:
    """Build and compile problem ``name``'s program in this process, which must be a
    fresh one (`fresh_setup` starts it): the seconds of each step and the peak resident
    memory above the level before it (``build_s``, ``build_rss``, ``compile_s``,
    ``compile_rss``); with ``traced``, tracemalloc's peak of each instead
    (``build_traced``, ``compile_traced``: Python objects and NumPy buffers, the
    steps 2-3× slower, so their seconds are not kept).

    Why a fresh process: in the benchmark's own process, memory freed by the problems
    before stays resident in the allocator's free lists, and the build and compile
    reuse it without raising the resident mark: the mark read a few kB for a compile
    that allocates tens of MB.
    """
    from . import problems

    problem = problems.get(name)
    out: dict[str, float | None] = {}
    measure = _traced if traced else rss_peak_during
    t0 = time.perf_counter()
    prog, peak = measure(problem.program)
    t1 = time.perf_counter()
    fn_peak = measure(prog.compile)[1]
    t2 = time.perf_counter()
    if traced:
        out.update(build_traced=peak, compile_traced=fn_peak)
    else:
        out.update(build_s=t1 - t0, build_rss=peak, compile_s=t2 - t1, compile_rss=fn_peak)
    return out


def _traced(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and tracemalloc's peak during it."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def fresh_setup(problem: Problem, timeout: float = 300.0) -> dict[str, float | None] | None:
    """`measure_setup` of ``problem`` in two fresh Python processes (one timed, one
    traced), one thread and one CPU as the benchmark; None if the problem is not one
    of `problems.PROBLEMS` at its benchmark size, or the measurement failed."""
    from . import problems

    try:
        if problems.get(problem.name).key != problem.key:
            return None
    except ValueError:
        return None
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    out: dict[str, float | None] = {}
    for traced in (False, True):
        code = (
            "import json, os\n"
            "if hasattr(os, 'sched_setaffinity'):\n"
            "    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "import lagrangian_ad\n"
            "from benchmarks import impl_lad\n"
            f"print(json.dumps(impl_lad.measure_setup({problem.name!r}, {traced})))\n"
        )
        try:
            done = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=root,
                env=env,
            )
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0:
            return None
        out.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def program(problem: Problem) -> tuple[Any, float]:
    """The problem's `Program`, built once, and the seconds SymPy took to build it."""
    if problem.key not in _programs:
        t0 = time.perf_counter()
        prog, rss = rss_peak_during(problem.program)
        _programs[problem.key] = (prog, time.perf_counter() - t0)
        _setup[problem.key] = {"build_s": _programs[problem.key][1], "build_rss": rss}
    return _programs[problem.key]


def compiled(problem: Problem) -> tuple[Any, dict[str, float | None]]:
    """``prog.compile()`` of the problem's program, once; and the setup measurements:
    build and compile seconds and the peak resident memory above the level before each
    (``build_s``, ``build_rss``, ``compile_s``, ``compile_rss``; bytes). For the array
    problems, whose setup has targets, these come from fresh processes (`fresh_setup`,
    which adds tracemalloc's peaks ``build_traced``, ``compile_traced``); the others
    are measured here, where the resident mark can read low (see `measure_setup`)."""
    prog, _ = program(problem)
    setup = _setup[problem.key]
    if "compile_s" not in setup:
        t0 = time.perf_counter()
        _, rss = rss_peak_during(prog.compile)  # cached by the program from now on
        setup.update(compile_s=time.perf_counter() - t0, compile_rss=rss)
        setup.update(_fresh.get(problem.key) or {})
    return prog.compile(), setup


_fresh: dict[tuple, dict[str, float | None] | None] = {}


def before_cold(problem: Problem) -> None:
    """Before the runner times the cold start: build the program (SymPy, not in the
    cold time) and, for the array problems, measure the setup in fresh processes."""
    if problem.arrays and problem.key not in _fresh and not missing_array_api():
        _fresh[problem.key] = fresh_setup(problem)
    try:
        program(problem)
    except Exception:  # the cell reports it, from within the timed build
        pass


def _not_supported(err: Exception) -> bool:
    import lagrangian_ad as lad

    text = str(err).lower()
    return isinstance(err, NotImplementedError) or (
        isinstance(err, lad.LagrangianADError)
        and ("not supported" in text or "not implemented" in text)
    )


def build(problem: Problem, inputs: Inputs, batch: int, check_finite: bool = True) -> Bench:
    """The problem's calls; ``check_finite=False`` skips the one pass over every input and
    gradient by which the default refuses NaN and inf (`impl_lad_unchecked`)."""
    if problem.arrays and (missing := missing_array_api()):
        raise Unsupported("not supported yet") from NotImplementedError(
            f"array programs need {missing}"
        )
    try:
        fn, setup = compiled(problem)
    except Exception as err:
        if _not_supported(err):
            raise Unsupported("not supported yet") from err
        raise

    # The equilibrium models: the tolerance every implementation stops at, said explicitly.
    options = {"tol": DEQ_TOL} if problem.kind == "deq" else {}
    if not check_finite:
        options["check_finite"] = False
    grad_options = {} if problem.wrt is None else {"wrt": list(problem.wrt)}

    def value_and_grad():
        try:
            return fn.value_and_grad(inputs, **options, **grad_options)
        except Exception as err:
            if _not_supported(err):
                raise Unsupported("not supported yet") from err
            raise

    def to_numpy(result):
        v, g = result
        return np.asarray(v), {k: np.asarray(a) for k, a in g.items()}

    return Bench(
        value=lambda: fn.value(inputs, **options),
        value_and_grad=value_and_grad,
        to_numpy=to_numpy,
        memory=lambda: Memory(tracemalloc_peak(value_and_grad), "tracemalloc"),
        note=f"program built by SymPy in {setup['build_s']:.2f} s (not in cold), "
        f"compiled once in {setup['compile_s']:.2f} s",
        setup=setup,
    )


BUILDERS = {
    "blog": build,
    "mlp": build,
    "chain": build,
    "equilibrium": build,
    "mlp784": build,
    "deq": build,
}
