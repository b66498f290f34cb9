"""The report: machine information, the results tables, issues 4 and 12's targets, Markdown."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .cells import Cell, Row, fmt_bytes, fmt_time
from .implementations import IMPLEMENTATIONS

__all__ = ["header_text", "load_average", "machine_info", "markdown"]

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")
_REPO = Path(__file__).resolve().parent.parent


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def _affinity() -> str:
    """The CPUs this process may run on (``python -m benchmarks`` pins it to one)."""
    if not hasattr(os, "sched_getaffinity"):
        return "n/a"
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def machine_info() -> dict[str, Any]:
    import numpy
    import scipy
    import sympy

    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--", "lagrangian_ad")
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory": _mem_total(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "sympy": sympy.__version__,
        "commit": commit + (" with uncommitted changes to lagrangian_ad/" if dirty else ""),
        "threads": {v: os.environ.get(v, "(unset)") for v in _THREAD_VARS},
        "affinity": _affinity(),
        "load_start": load_average(),
    }


def _kind(machine: dict[str, Any], quick: bool) -> str:
    if quick:
        return "quick smoke run"
    return "full run" if machine.get("full", True) else "partial run"


def header_text(machine: dict[str, Any], quick: bool) -> str:
    kind = _kind(machine, quick)
    return (
        f"lagrangian_ad benchmarks ({kind}), {machine['date']}\n"
        f"{machine['cpu']}, {machine['cpus']} logical CPUs; numpy {machine['numpy']}; "
        f"lagrangian_ad at {machine['commit']}; load {machine['load_start']}"
    )


# --------------------------------------------------------------------------- tables


def _cell_time(cell: Cell | None) -> str:
    if cell is None:
        return "—"
    if cell.status == "ok":
        return fmt_time(cell.value_and_grad.median)
    return cell.text


def _table_head(impls: list[str]) -> list[str]:
    """The head of a table with a row per problem and batch, a column per implementation."""
    labels = [IMPLEMENTATIONS[n].label for n in impls]
    return ["| problem | batch | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(impls)]


def _row_line(row: Row, cells: list[str]) -> str:
    return f"| {row.problem.title} | {row.batch:,} | " + " | ".join(cells) + " |"


def _summary(rows: list[Row], impls: list[str]) -> list[str]:
    lines = _table_head(impls)
    for row in rows:
        cells = [_cell_time(row.cells.get(n)) for n in impls]
        lines.append(_row_line(row, cells))
    return lines


def _timed(timing) -> str:
    text = fmt_time(timing.median)
    return text if timing.runs >= 5 else f"{text} ({timing.runs} run{'s' * (timing.runs > 1)})"


def _details(rows: list[Row], impls: list[str]) -> list[str]:
    lines = [
        "| problem | batch | implementation | value | value+grad | grad/value | cold "
        "| peak memory (own count) | peak RSS Δ | max rel. error | how |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        for name in impls:
            cell = row.cells.get(name)
            if cell is None:
                continue
            label = IMPLEMENTATIONS[name].label
            head = f"| {row.problem.title} | {row.batch:,} | {label} |"
            if cell.status != "ok":
                err = f"{cell.error:.1e}" if cell.error is not None else "—"
                lines.append(f"{head} {cell.text} | — | — | — | — | — | {err} | {cell.note} |")
                continue
            mem = cell.memory
            if mem is None or mem.nbytes is None:
                mem_text = mem.how if mem else "n/a"
            else:
                mem_text = f"{fmt_bytes(mem.nbytes)} ({mem.how})"
            rss = fmt_bytes(cell.value_and_grad.rss_peak)
            err = f"{cell.error:.1e}" if cell.error is not None else "reference"
            lines.append(
                f"{head} {_timed(cell.value)} | {_timed(cell.value_and_grad)} "
                f"| {cell.ratio:.2f} | {fmt_time(cell.cold)} | {mem_text} | {rss} | {err} "
                f"| {cell.note} |"
            )
    return lines


# --------------------------------------------------------------------------- targets


def _find(rows: list[Row], problem: str, batch: int) -> Row | None:
    return next((r for r in rows if r.problem.name == problem and r.batch == batch), None)


def _vag(row: Row | None, impl: str) -> float | None:
    if row is None:
        return None
    cell = row.cells.get(impl)
    return cell.value_and_grad.median if cell and cell.status == "ok" else None


def _compare(rows, problem, batch, peer, factor=1.0) -> str:
    """'met'/'missed' for lagrangian_ad's value_and_grad ≤ factor × peer's."""
    row = _find(rows, problem, batch)
    ours, theirs = _vag(row, "lad"), _vag(row, peer)
    label = IMPLEMENTATIONS[peer].label
    if row is None:
        return f"{label}: not measured in this run"
    if ours is None or theirs is None:
        why = row.cells.get("lad" if ours is None else peer)
        return f"{label}: not measured ({why.text if why else 'not run'})"
    ratio = ours / theirs
    verdict = "met" if ratio <= factor else "MISSED"
    if abs(ratio - 1) < 0.005:
        speed = "as fast"
    else:
        speed = f"{1 / ratio:.2f}× faster" if ratio < 1 else f"{ratio:.2f}× slower"
    return f"{label}: {verdict} — {fmt_time(ours)} vs {fmt_time(theirs)} (lagrangian_ad {speed})"


def _compare_best(rows, problem, batch, peers, factor) -> str:
    """'met'/'missed' for lagrangian_ad's value_and_grad ≤ factor × the fastest peer's."""
    row = _find(rows, problem, batch)
    if row is None:
        return "not measured in this run"
    times = {p: t for p in peers if (t := _vag(row, p)) is not None}
    if not times:
        return "no peer measured"
    best = min(times, key=times.get)
    return _compare(rows, problem, batch, best, factor) + " (the faster peer)"


def _rss(value: float | None) -> str:
    return "n/a" if value is None else fmt_bytes(int(value))


def _setup_target(rows, problem, what: str, seconds: float, nbytes: float | None) -> str:
    """The lagrangian_ad setup of ``problem`` (``what``: "build+compile" or "compile")
    against a time and, if given, a peak resident memory."""
    row = next((r for r in rows if r.problem.name == problem), None)
    cell = row.cells.get("lad") if row else None
    if cell is None:
        return f"{problem}: not measured in this run"
    if "compile_s" not in cell.setup:
        return f"{problem}: not measured ({cell.text or cell.status})"
    setup = cell.setup
    keys = ("build", "compile") if what == "build+compile" else ("compile",)
    took = sum(setup[f"{k}_s"] for k in keys)
    rss = [setup.get(f"{k}_rss") for k in keys]
    peak = None if None in rss else max(rss)
    traced = [setup.get(f"{k}_traced") for k in keys]
    ok = took < seconds and (nbytes is None or (peak is not None and peak < nbytes))

    def step(k: str) -> str:
        text = f"{k} {setup[f'{k}_s']:.2f} s / {_rss(setup.get(f'{k}_rss'))}"
        if setup.get(f"{k}_traced") is not None:
            text += f" / traced {_rss(setup[f'{k}_traced'])}"
        return text

    return (
        f"{problem}: {'met' if ok else 'MISSED'} — {what} {took:.2f} s, peak RSS Δ "
        f"{_rss(peak)}"
        + ("" if None in traced else f", traced peak {_rss(max(traced))}")
        + f" ({', '.join(map(step, keys))})"
    )


def _issue12_targets(rows: list[Row]) -> list[str]:
    peers = ("torch", "jax")
    lines = [
        "**MLP 784-256-256-10: within 1.2× of the faster of PyTorch eager and JAX jit at "
        "batch 128 and 10,000, faster than both at batch 1:**",
        "",
    ]
    for batch in (128, 10_000):
        lines.append(f"- batch {batch:,}, {_compare_best(rows, 'mlp784', batch, peers, 1.2)}")
    for peer in peers:
        lines.append(f"- batch 1, {_compare(rows, 'mlp784', 1, peer)}")
    lines += [
        "",
        "**Equilibrium model, n = 1,000, batch 100: faster than JAX custom_root at the same "
        "tolerance** (and, for the record, n = 100 and 500):",
        "",
    ]
    for n in (1_000, 500, 100):  # at the batch measured (100; a --quick run: 10)
        row = next((r for r in rows if r.problem.name == f"deq{n}"), None)
        batch = row.batch if row else 100
        where = f"n = {n:,}" + ("" if batch == 100 else f", batch {batch:,}")
        lines.append(f"- {where}, {_compare(rows, f'deq{n}', batch, 'jax_root')}")
    lines += [
        "",
        "**Setup: the MLP builds and compiles in under 1 s and 200 MB; the equilibrium model "
        "at n = 1,000 compiles in under 2 s** (each step in a fresh Python process, one "
        "for the times and resident memory, one for tracemalloc: peak RSS Δ is the "
        "resident high-water mark above the level before the step, traced the peak of "
        "Python objects and NumPy buffers; in the benchmark's own process memory freed by "
        "earlier problems is reused without raising the mark; "
        "`python -m benchmarks.compile_curve --arrays` has the curve against size):",
        "",
        f"- {_setup_target(rows, 'mlp784', 'build+compile', 1.0, 200e6)}",
        f"- {_setup_target(rows, 'deq1000', 'compile', 2.0, None)}",
    ]
    return lines


def _issue4_section(rows: list[Row]) -> list[str]:
    if all(r.problem.arrays for r in rows):
        return []
    title = "## Issue 4's targets, for lagrangian_ad as measured in this run"
    return [title, "", *_targets(rows), ""]


def _issue12_section(rows: list[Row]) -> list[str]:
    if not any(r.problem.arrays for r in rows):
        return []
    title = "## Issue 12's targets (array programs), as measured in this run"
    return [title, "", *_issue12_targets(rows), ""]


def _ratios(rows: list[Row], impls: list[str]) -> list[str]:
    """Each cell's value_and_grad time over the fastest in its row (1.00 = fastest)."""
    lines = _table_head(impls)
    for row in rows:
        times = {n: t for n in impls if (t := _vag(row, n)) is not None}
        if not times:
            continue
        best = min(times.values())
        cells = [f"{times[n] / best:.2f}" if n in times else "—" for n in impls]
        lines.append(_row_line(row, cells))
    return lines


def _targets(rows: list[Row]) -> list[str]:
    lines = ["**`value_and_grad` ≤ 3× `value`, every problem and batch** (lagrangian_ad):", ""]
    for row in rows:
        cell = row.cells.get("lad")
        where = f"{row.problem.name}, batch {row.batch:,}"
        if cell is None or cell.status != "ok":
            lines.append(f"- {where}: not measured ({cell.text if cell else 'not run'})")
        else:
            verdict = "met" if cell.ratio <= 3 else "MISSED"
            lines.append(f"- {where}: {verdict} — ratio {cell.ratio:.2f}")
    lines += ["", "**Batch 1: faster per call than PyTorch eager and JAX jit:**", ""]
    for problem in ("blog", "mlp", "chain"):
        for peer in ("torch", "jax"):
            lines.append(f"- {problem}, {_compare(rows, problem, 1, peer)}")
    lines += [
        "",
        "**Batch 10⁵: within 1.5× of NumPy by hand, and faster than JAX jit:**",
        "",
    ]
    for problem in ("blog", "mlp"):
        lines.append(f"- {problem}, {_compare(rows, problem, 100_000, 'numpy', 1.5)}")
        lines.append(f"- {problem}, {_compare(rows, problem, 100_000, 'jax')}")
    lines += ["", "**Equilibrium, batch 10³: faster than backprop through 20 unrolled steps:**", ""]
    for peer in ("torch", "jax"):
        lines.append(f"- {_compare(rows, 'equilibrium', 1_000, peer)}")
    return lines


# --------------------------------------------------------------------------- notes


def _notes(rows: list[Row], impls: list[str]) -> list[str]:
    lines = []
    for row in rows:
        for name in impls:
            cell = row.cells.get(name)
            if cell is None:
                continue
            where = f"{row.problem.name}, batch {row.batch:,}, {IMPLEMENTATIONS[name].label}"
            if cell.detail:
                lines.append(f"- {where}: {cell.text} — `{cell.detail}`")
            timing = cell.value_and_grad  # value and value+grad were timed together
            if timing is not None and timing.cpu_per_wall > 1.15:
                lines.append(
                    f"- {where}: the timed runs used {timing.cpu_per_wall:.2f} CPU seconds "
                    "per wall second (more than one core, or measurement noise)"
                )
    return lines


def markdown(
    rows: list[Row],
    impls: list[str],
    versions: dict[str, str],
    machine: dict[str, Any],
    quick: bool,
    elapsed: float,
    argv: list[str],
    slow: float = 10.0,
) -> str:
    version_text = ", ".join(f"{IMPLEMENTATIONS[n].label} {versions[n]}" for n in impls)
    threads = ", ".join(f"`{k}={v}`" for k, v in machine["threads"].items())
    kind = {
        "quick smoke run": "a quick smoke run (`--quick`): small batches, few repeats",
        "full run": "a full run",
        "partial run": "a partial run: some of the problems, implementations or batches",
    }[_kind(machine, quick)]
    out = [
        "# Benchmark results",
        "",
        f"Measured {machine['date']} by `python -m benchmarks` ({kind}; "
        f"{elapsed / 60:.1f} minutes).",
        "",
        "**Read the ratios, not the absolute times.** This machine is shared and noisy: "
        "what counts are the ratios between implementations measured side by side in one "
        "run; absolute times move from run to run.",
        "",
        f"- Machine: {machine['cpu']}, {machine['cpus']} logical CPUs, {machine['memory']} RAM; "
        f"{machine['os']}; Python {machine['python']}",
        f"- Load average at start / end: {machine['load_start']} / "
        f"{machine.get('load_end', 'n/a')}",
        f"- Versions: {version_text}; NumPy {machine['numpy']}, SciPy {machine['scipy']}, "
        f"SymPy {machine['sympy']}",
        f"- lagrangian_ad at commit {machine['commit']}",
        f"- One thread everywhere: {threads}; `torch.set_num_threads(1)`; JAX with float64; "
        f"the process pinned to CPU {machine.get('affinity', 'n/a')} (XLA uses a second "
        "core for large products whatever its flags say).",
        "",
        "## value_and_grad per call (median)",
        "",
        *_summary(rows, impls),
        "",
        "## All measurements",
        "",
        *_details(rows, impls),
        "",
        "## value_and_grad relative to the fastest in its row",
        "",
        *_ratios(rows, impls),
        "",
        *_issue4_section(rows),
        *_issue12_section(rows),
        "## How this was measured",
        "",
        "- **value** is the forward pass only; **value+grad** the output per sample and "
        "the gradient of its batch sum with respect to every input (data and parameters), "
        "as lagrangian_ad's `value_and_grad` returns. Both are medians of repeated runs "
        "(repeats chosen so one measurement takes about "
        f"{'0.02 s, at least 3 runs' if quick else '0.2 s, at least 5 runs'}; calls under "
        "1 ms are looped), with the garbage collector off. The runs of value and "
        "value+grad alternate, so both see the same machine load. A call slower than "
        f"{slow:g} s is timed once, and the run count is shown beside any time with fewer "
        "than 5 runs.",
        "- **Batch 1** is one sample without a batch axis. Parameters (MLP weights, W, U, b) "
        "are shared over the batch; data (x, t) are batched.",
        "- **cold** is the time from nothing to the first value_and_grad result at this "
        "batch size: lagrangian_ad `prog.compile()` + first call (building the SymPy "
        "program is not included; its time is in the *how* column); JAX `jax.jit` + "
        "first call (trace and XLA compile); PyTorch the first call; CasADi building the "
        "SX graph, its gradient, the map, and the first call; NumPy the first call.",
        "- **peak memory** of one value_and_grad call, measured the way each library "
        "allows: `tracemalloc` peak (NumPy buffers and Python objects) for lagrangian_ad "
        "and NumPy; the PyTorch profiler's allocator events (the highest level of live "
        "tensor memory above the level before the call); "
        "XLA's buffer assignment for the compiled function (temporaries + outputs) for "
        "JAX; CasADi's work vectors (`sz_w`, `sz_iw`) plus outputs. Inputs are not counted. "
        "Calls slower than 0.5 s are not traced again. **peak RSS Δ** is the same for every "
        "library: the process's resident high-water mark during the timed runs (value "
        "and value+grad interleaved) above its resident size before them (the kernel's "
        "mark is reset first); memory an allocator keeps cached from earlier calls is "
        "not seen, so it can read low.",
        "- **max rel. error** is the largest max-norm relative difference over the value and "
        "each gradient, against lagrangian_ad (lagrangian_ad itself against NumPy by hand; "
        "where lagrangian_ad cannot run a problem, everything against NumPy by hand). "
        "Beyond 1e-8 the cell reads WRONG and is not timed.",
        "- Peers get their inputs converted once, before timing, to their own array type "
        "(`torch.from_numpy`, `jax.device_put`, `casadi.DM`); lagrangian_ad and NumPy take "
        "NumPy arrays.",
        "- The peers are written the way a user of each library would write them: matrix "
        "operations for the MLP (lagrangian_ad gets it as scalar constraints: 306 scalar "
        "operations), a loop "
        "for the chain (PyTorch: Python loop; JAX: `lax.scan`; CasADi: an SX graph of "
        "the unrolled chain). For the equilibrium model PyTorch, JAX and CasADi backprop "
        "through 20 unrolled iterations from h = 0 (W is a contraction, so 20 steps agree "
        "with the exact fixed point's gradient far inside the check: see the error column), "
        "while NumPy by hand solves the fixed point and the adjoint (I − J)ᵀλ = 1 by "
        "iteration to 1e-13.",
        "- The array problems (issue 12): the MLP 784-256-256-10 is one array constraint "
        "per layer for lagrangian_ad and matrix operations with the library's stable "
        "log-sum-exp for the peers; every implementation forms the gradient with respect "
        "to the weights and biases only (lagrangian_ad: `value_and_grad(..., wrt=...)`; "
        "PyTorch: only they require grad; JAX: `jax.vjp` over them), and for the "
        "equilibrium models with respect to W, U, b and c. The "
        "equilibrium models (deq*) stop every forward solve at a residual of 1e-12: "
        "lagrangian_ad's default `tol`, JAX custom_root's fixed-point loop (its adjoint by "
        "`lax.custom_linear_solve`, Richardson to 1e-12 relative), and the unrolled peers "
        "take the number of steps the iteration from h = 0 needs to get there; all are "
        "checked against NumPy by hand, which is there the dense implicit-function solve "
        "(fixed point to 1e-15, then (I − Wᵀ D) λ = c by LU per sample).",
        f"- Command: `{' '.join(['python -m benchmarks', *argv[1:]])}`",
    ]
    notes = _notes(rows, impls)
    if notes:
        out += ["", "## Notes from this run", "", *notes]
    return "\n".join(out) + "\n"
