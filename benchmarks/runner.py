"""The benchmark runner: set up, check, then time every implementation on every problem.

For each problem and batch size, every implementation is built and called once (the
cold time: compile / jit / graph construction plus the first value_and_grad call). Its
value and gradient are then checked against lagrangian_ad's — or, where lagrangian_ad
cannot run the problem, against the hand-written NumPy adjoint, which is also what
lagrangian_ad itself is checked against. A relative mismatch beyond 1e-8 (in the max
norm, per array) marks the cell WRONG and it is not timed. The rest are timed
(`timing.measure`: medians, one thread) for ``value`` and ``value_and_grad``, and their
peak memory for one value_and_grad call is measured. `main` writes the Markdown report
(`report`) and the same measurements as JSON (`records`) beside it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import problems as problems_mod
from .cells import Cell, Row, RunConfig, fmt_time
from .implementations import IMPLEMENTATIONS, Bench, Memory, Unsupported, load
from .timing import measure

__all__ = ["TOLERANCE", "Cell", "RunConfig", "check", "main", "rel_error", "run"]

TOLERANCE = 1e-8
MEMORY_TRACE_LIMIT = 0.5  # seconds: slower calls are not run again under a memory tracer
JSON_NAME = "results.json"  # the measurements as data, written beside the Markdown report


# --------------------------------------------------------------------------- checking


def rel_error(ref: tuple[Any, dict], got: tuple[Any, dict]) -> float:
    """Largest relative error, max-norm per array, over the value and every gradient."""
    (ref_value, ref_grads), (got_value, got_grads) = ref, got
    pairs = [(ref_value, got_value)] + [(g, got_grads.get(k)) for k, g in ref_grads.items()]
    worst = 0.0
    for r, g in pairs:
        if g is None or np.shape(g) != np.shape(r):
            return math.inf
        r, g = np.asarray(r, dtype=float), np.asarray(g, dtype=float)
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        diff = float(np.max(np.abs(g - r))) if r.size else 0.0
        err = diff / scale if scale > 0 else diff
        if not math.isfinite(err):
            return math.inf
        worst = max(worst, err)
    return worst


def check(
    results: dict[str, tuple[Any, dict]], reference: str = "lad"
) -> dict[str, tuple[float, str]]:
    """Relative error of each result against its reference, and the reference's name.

    By default (``reference="lad"``) lagrangian_ad is checked against NumPy by hand, and
    every peer against lagrangian_ad — unless lagrangian_ad did not run or failed its
    own check, and then against NumPy by hand, so that one wrong result marks one cell.
    With ``reference="numpy"`` (a problem whose NumPy version is a tight reference, as
    the dense implicit solve of the equilibrium models) everything is checked against
    NumPy by hand.
    """
    out: dict[str, tuple[float, str]] = {}
    if "lad" in results and "numpy" in results:
        out["lad"] = (rel_error(results["numpy"], results["lad"]), "numpy")
    ours_ok = "lad" in results and out.get("lad", (0.0,))[0] <= TOLERANCE
    ref_name = "lad" if ours_ok and reference == "lad" else "numpy"
    for name, got in results.items():
        if name == "lad" or name == ref_name or ref_name not in results:
            continue
        out[name] = (rel_error(results[ref_name], got), ref_name)
    return out


# --------------------------------------------------------------------------- running


def _say(config: RunConfig, text: str) -> None:
    if config.verbose:
        print(text, flush=True)


def _setup(name: str, module, problem, inputs, batch) -> tuple[Cell, Bench | None, Any]:
    """Build and call once (cold); a cell with status, the bench, the NumPy result."""
    builder = module.BUILDERS.get(problem.kind)
    if builder is None:
        return Cell(name, "unsupported", "n/a"), None, None
    before = getattr(module, "before_cold", None)  # work not counted in the cold time
    if before is not None:
        before(problem)
    t0 = time.perf_counter()
    try:
        bench = builder(problem, inputs, batch)
        first = bench.value_and_grad()
        cold = time.perf_counter() - t0
        result = bench.to_numpy(first)
    except Unsupported as exc:
        cause = exc.__cause__
        detail = f"{type(cause).__name__}: {cause}" if cause else ""
        return Cell(name, "unsupported", str(exc), detail=detail[:300]), None, None
    except Exception as exc:  # a broken peer must not stop the run
        return Cell(name, "error", "error", detail=f"{type(exc).__name__}: {exc}"[:300]), None, None
    return Cell(name, "ok", cold=cold, note=bench.note, setup=dict(bench.setup)), bench, result


def _memory(bench: Bench, seconds: float) -> Memory:
    """The implementation's own count of the peak memory of one value_and_grad call."""
    if bench.memory is None:
        return Memory(None, "n/a")
    if seconds > MEMORY_TRACE_LIMIT:  # tracing slows allocation-heavy code 10-100×
        return Memory(None, f"not traced: a call takes over {MEMORY_TRACE_LIMIT} s")
    try:
        return bench.memory()
    except Exception as exc:
        return Memory(None, f"n/a ({type(exc).__name__})")


def run_row(
    problem: problems_mod.Problem,
    batch: int,
    impls: list[str],
    modules: dict[str, Any],
    config: RunConfig,
) -> Row:
    """Set up, check and time every implementation on one problem at one batch size."""
    row = Row(problem, batch)
    inputs = problem.inputs(batch, seed=config.seed)
    benches: dict[str, Bench] = {}
    results: dict[str, Any] = {}
    for name in impls:
        module = modules.get(name)
        if module is None:
            row.cells[name] = Cell(name, "missing", "not installed")
            continue
        cell, bench, result = _setup(name, module, problem, inputs, batch)
        row.cells[name] = cell
        if bench is not None:
            benches[name], results[name] = bench, result
        else:
            _say(config, f"  {problem.name:<12} {batch:>7}  {name:<8} {cell.text}")
    for name, (err, against) in check(results, problem.reference).items():
        cell = row.cells[name]
        cell.error, cell.checked_against = err, against
        if err > TOLERANCE:
            cell.status, cell.text = "wrong", "WRONG"
    for name in list(benches):
        bench, cell = benches.pop(name), row.cells[name]
        if cell.status != "ok":
            where = f"  {problem.name:<12} {batch:>7}  {name:<8}"
            _say(config, f"{where} WRONG (rel. error {cell.error:.1e})")
            continue
        if cell.cold < config.slow:
            bench.value()  # warm up: JAX compiles value on its first call
        cell.value, cell.value_and_grad = measure(
            [bench.value, bench.value_and_grad], config.target, config.min_runs, config.slow
        )
        cell.memory = _memory(bench, cell.value_and_grad.median)
        del bench
        _say(
            config,
            f"  {problem.name:<12} {batch:>7}  {name:<8} value {fmt_time(cell.value.median):>9}"
            f"  value+grad {fmt_time(cell.value_and_grad.median):>9}"
            f"  ratio {cell.ratio:5.2f}  cold {fmt_time(cell.cold):>9}"
            f"  err {cell.error if cell.error is not None else 0:.1e}",
        )
    return row


def run(
    problem_list: list[problems_mod.Problem],
    batches: dict[str, tuple[int, ...]],
    impls: list[str],
    config: RunConfig,
) -> tuple[list[Row], dict[str, str]]:
    """Run every problem at its batch sizes; the rows and the implementations' versions."""
    modules: dict[str, Any] = {}
    versions: dict[str, str] = {}
    for name in impls:
        module, info = load(name)
        if module is not None:
            modules[name] = module
        versions[name] = info if module is not None else f"— ({info})"
    rows = []
    for problem in problem_list:
        for batch in batches[problem.name]:
            rows.append(run_row(problem, batch, impls, modules, config))
    return rows, versions


# --------------------------------------------------------------------------- CLI


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Time lagrangian_ad against a hand-written NumPy adjoint, PyTorch, JAX and "
            "CasADi (single-threaded, medians), after checking every gradient."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: small batches only, fewer repeats; writes no file unless --out",
    )
    groups = "; ".join(f"{g} = {','.join(ps)}" for g, ps in problems_mod.GROUPS.items())
    parser.add_argument(
        "--problems",
        type=_csv,
        default=list(problems_mod.PROBLEMS),
        help=f"comma-separated problems or groups (default: all, "
        f"{','.join(problems_mod.PROBLEMS)}; groups: {groups})",
    )
    parser.add_argument(
        "--batches",
        type=lambda s: [int(float(b)) for b in _csv(s)],
        default=None,
        help="comma-separated batch sizes for every problem (default: each problem's own: "
        "1,1000,100000; chain 1,1000; equilibrium 1000; mlp784 1,128,10000; deq* 100)",
    )
    parser.add_argument(
        "--impls",
        type=_csv,
        default=list(IMPLEMENTATIONS),
        help=f"comma-separated implementations (default: {','.join(IMPLEMENTATIONS)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the Markdown report (default: benchmarks/RESULTS.md for a full run — every "
        "problem, implementation and default batch — and no file otherwise); the "
        f"same measurements go, as JSON, to {JSON_NAME} in the same folder",
    )
    args = parser.parse_args(argv)
    try:
        args.problems = problems_mod.names(args.problems)
    except ValueError as err:
        parser.error(str(err))
    for name in args.impls:
        if name not in IMPLEMENTATIONS:
            parser.error(f"unknown implementation {name!r} (known: {', '.join(IMPLEMENTATIONS)})")
    if args.batches is not None and any(b < 1 for b in args.batches):
        parser.error("batch sizes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    from . import records, report

    args = parse_args(argv)
    config = RunConfig(target=0.02, min_runs=3, slow=1.0) if args.quick else RunConfig()
    problem_list = [problems_mod.get(name) for name in args.problems]
    if args.batches:
        batches = {p.name: tuple(args.batches) for p in problem_list}
    else:
        batches = {p.name: p.quick_batches if args.quick else p.batches for p in problem_list}
    out = args.out
    full = (
        args.problems == list(problems_mod.PROBLEMS)
        and args.impls == list(IMPLEMENTATIONS)
        and not args.batches
    )
    if out is None and full and not args.quick:
        out = Path(__file__).resolve().parent / "RESULTS.md"  # only a full run replaces it
    machine = report.machine_info()
    machine["full"] = full
    print(report.header_text(machine, args.quick), flush=True)
    t0 = time.perf_counter()
    rows, versions = run(problem_list, batches, args.impls, config)
    elapsed = time.perf_counter() - t0
    machine["load_end"] = report.load_average()
    text = report.markdown(
        rows, args.impls, versions, machine, args.quick, elapsed, sys.argv, config.slow
    )
    print()
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        json_path = out.with_name(JSON_NAME)
        data = records.results(
            rows, args.impls, versions, machine, args.quick, elapsed, sys.argv, config
        )
        records.write(json_path, data)
        print(f"written to {out} and {json_path}")
    return 0
