"""Compile time against program size: entry-wise programs, and array programs (issue 12).

    python -m benchmarks.compile_curve [--max 100000] [--out benchmarks/COMPILE.md]
    python -m benchmarks.compile_curve --arrays [--out benchmarks/COMPILE_ARRAYS.md]

Two families (the programs of `benchmarks.problems`), each compiled once per size from a
freshly built program (a second compile of the same expressions would hit SymPy's cache):

* chains z_0 = x, z_k = sin(z_{k−1} + x): many small constraints, 2 couplings each;
* dense equilibrium layers h = tanh(W h + U x + b), n units, d = 20 inputs: n constraints
  of 2n + 2d + 1 couplings each (the benchmark problem at n = 200: 88,400 couplings).

A *coupling* is one nonzero local partial ∂f_i/∂z_j, i.e. an edge of the computation graph.
Building the program (SymPy constructing the expressions) is timed apart from
``prog.compile()``. The slope of log(compile time) against log(couplings) is fitted per
family; 1 means linear.

With ``--arrays``, the two array families of `benchmarks.problems` instead, written with
one constraint per layer (docs/design.md "Array programs"):

* the MLP 784-h-h-10 with softmax cross-entropy, h = 64 … 1,024 (the benchmark's h = 256);
* the equilibrium model h = tanh(W h + U x + b) as one array constraint, n = 100 … 2,000.

Each point runs in a fresh Python process (so that SymPy's caches and earlier points
do not hide memory, and a point that takes too long can be stopped: ``--timeout``), and
reports the build and compile seconds of lagrangian_ad with the peak resident memory
above the level before each, then its first value_and_grad call, and — side by side —
the cold start of JAX's jitted value_and_grad of the same problem (`impl_jax`:
``jax.jit``, tracing, XLA compilation and the first call; custom_root for the
equilibrium model), with its peak resident memory. Where lagrangian_ad lacks the array
API, its cells say so and JAX's are still measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import lagrangian_ad as lad

from . import impl_jax, problems

HERE = Path(__file__).resolve().parent


def couplings(prog: lad.Program) -> int:
    return sum(len(c.expr.free_symbols) for c in prog.ir.constraints)


def measure(family: str, size: int) -> dict:
    t0 = time.perf_counter()
    problem = problems.chain(size) if family == "chain" else problems.equilibrium(size)
    prog = problem.program()
    ir = prog.ir  # freezing and validating belongs to the build
    t1 = time.perf_counter()
    prog.compile()
    t2 = time.perf_counter()
    return {
        "family": family,
        "size": size,
        "constraints": len(ir.constraints),
        "couplings": couplings(prog),
        "build": t1 - t0,
        "compile": t2 - t1,
    }


def sizes(family: str, most: int) -> list[int]:
    if family == "chain":  # 2 couplings per step
        return [s for s in (500, 2_000, 8_000, 25_000, 50_000) if 2 * s <= most]
    # each row reads W_i·, h, U_i·, x and b_i: n (2n + 2d + 1) + n couplings; the last
    # size goes past ``most`` (to about 2·10^5 at the default) to show the trend beyond it
    sizes = [n for n in (25, 50, 100, 200, 300) if n * (2 * n + 42) <= 2 * most]
    return sizes


# --------------------------------------------------------------------------- arrays

ARRAY_SIZES = {"mlp784": (64, 128, 256, 512, 1_024), "deq": (100, 250, 500, 1_000, 2_000)}
ARRAY_BATCH = {"mlp784": 128, "deq": 100}  # the batch JAX compiles for


def array_problem(family: str, size: int) -> problems.Problem:
    return problems.mlp784(hidden=size) if family == "mlp784" else problems.deq(size)


def measure_array(family: str, size: int) -> dict:
    """One point of the array curves, in this process (`main` runs it in a fresh one)."""
    from . import impl_jax_root, impl_lad
    from .timing import rss_peak_during

    problem = array_problem(family, size)
    batch = ARRAY_BATCH[family]
    inputs = problem.inputs(batch)
    out: dict = {
        "family": family,
        "size": size,
        "parameters": int(sum(np.size(a) for k, a in inputs.items() if k not in problem.batched)),
    }
    missing = impl_lad.missing_array_api()
    if missing:
        out["lad"], out["lad_detail"] = "not supported yet", f"needs {missing}"
    else:
        try:
            t0 = time.perf_counter()
            prog, out["build_rss"] = rss_peak_during(problem.program)
            t1 = time.perf_counter()
            fn, out["compile_rss"] = rss_peak_during(prog.compile)
            t2 = time.perf_counter()
            options = {} if problem.wrt is None else {"wrt": list(problem.wrt)}
            fn.value_and_grad(inputs, **options)  # as JAX's column: the first call
            out["build"], out["compile"] = t1 - t0, t2 - t1
            out["first_call"] = time.perf_counter() - t2
        except Exception as err:  # a point that fails is a cell, not a crash
            out["lad"], out["lad_detail"] = "error", f"{type(err).__name__}: {err}"[:300]
    ok, _ = impl_jax.available()
    if ok:  # jax.jit, then its first call: tracing, XLA compilation and one run
        builder = (impl_jax_root if family == "deq" else impl_jax).BUILDERS[family]
        impl_jax._jax()  # importing JAX is not part of the cold start

        def cold():
            builder(problem, inputs, batch).value_and_grad()

        t0 = time.perf_counter()
        _, out["jax_rss"] = rss_peak_during(cold)
        out["jax_cold"] = time.perf_counter() - t0
    return out


def _run_point(family: str, size: int, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.compile_curve", "--point", f"{family}:{size}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env.setdefault("XLA_FLAGS", impl_jax.SINGLE_THREAD_FLAGS)
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent, env=env
        )
    except subprocess.TimeoutExpired:
        return {"family": family, "size": size, "lad": f"stopped after {timeout:g} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"family": family, "size": size, "lad": "failed", "lad_detail": last[:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mb(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 1e6:.0f} MB"


def array_table(rows: list[dict]) -> list[str]:
    lines = [
        "| family | size | parameters | build | build RSS Δ | compile | compile RSS Δ "
        "| first value_and_grad | JAX jit + first call | JAX RSS Δ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "build" in r:
            ours = (
                f"{r['build']:.2f} s | {_mb(r['build_rss'])} | {r['compile']:.2f} s "
                f"| {_mb(r['compile_rss'])} | {r['first_call']:.2f} s"
            )
        else:
            ours = f"{r.get('lad', 'n/a')} | — | — | — | —"
        jax = f"{r['jax_cold']:.2f} s | {_mb(r['jax_rss'])}" if "jax_cold" in r else "— | —"
        lines.append(
            f"| {r['family']} | {r['size']:,} | {r.get('parameters', 0):,} | {ours} | {jax} |"
        )
    return lines


def main_arrays(args: argparse.Namespace) -> None:
    rows = []
    for family, sizes_ in ARRAY_SIZES.items():
        for size in sizes_:
            r = _run_point(family, size, args.timeout)
            rows.append(r)
            print(json.dumps(r), flush=True)
    lines = [
        "# Build and compile time of array programs against size",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        "`python -m benchmarks.compile_curve --arrays` (see its docstring): one fresh "
        "process per point, one thread. Targets of issue 12: the MLP 784-256-256-10 builds "
        "and compiles in under 1 s and 200 MB; the equilibrium model at n = 1,000 compiles "
        "in under 2 s. RSS Δ is the peak resident memory above the level before the step. "
        "The first value_and_grad (lagrangian_ad) and JAX's column are at the batch below, "
        "gradients of the parameters only, as in `python -m benchmarks`. "
        f"JAX: jit and first value_and_grad call at batch {ARRAY_BATCH['mlp784']} (MLP) and "
        f"{ARRAY_BATCH['deq']} (equilibrium: `jax.lax.custom_root`, as in the benchmark), "
        "putting the inputs on the device included, importing JAX not (the first jit of a "
        "fresh process also sets up XLA's compiler: most of its 80-odd MB).",
        "",
        *array_table(rows),
        "",
    ]
    details = dict.fromkeys(f"{r['lad']}: {r['lad_detail']}" for r in rows if "lad_detail" in r)
    lines += [f"- lagrangian_ad {d}" for d in details] + ([""] if details else [])
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print(f"written to {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max", type=int, default=100_000, help="most couplings to try")
    parser.add_argument(
        "--out",
        default=None,
        help="Markdown report (default: COMPILE.md, "
        "or COMPILE_ARRAYS.md with --arrays, in benchmarks/)",
    )
    parser.add_argument("--arrays", action="store_true", help="the array families instead")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per array point")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # FAMILY:SIZE, one array point
    args = parser.parse_args(argv)
    if args.point:  # one CPU, as `python -m benchmarks` runs
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        family, size = args.point.split(":")
        print(json.dumps(measure_array(family, int(size))))
        return
    if args.arrays:
        args.out = args.out or str(HERE / "COMPILE_ARRAYS.md")
        main_arrays(args)
        return
    args.out = args.out or str(HERE / "COMPILE.md")
    rows = []
    for family in ("chain", "equilibrium"):
        for size in sizes(family, args.max):
            r = measure(family, size)
            rows.append(r)
            print(
                f"{family:12s} size {size:>6,}: {r['couplings']:>7,} couplings, "
                f"build {r['build']:6.2f} s, compile {r['compile']:6.2f} s",
                flush=True,
            )
    lines = [
        "# Compile time against program size",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        "`python -m benchmarks.compile_curve` (see its docstring). One compile per size, "
        "so single points are noisy; the machine is shared.",
        "",
        "| family | size | constraints | couplings | build (SymPy) | compile "
        "| compile per 1,000 couplings |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['size']:,} | {r['constraints']:,} | {r['couplings']:,} "
            f"| {r['build']:.2f} s | {r['compile']:.2f} s "
            f"| {1e3 * r['compile'] / r['couplings']:.3f} s |"
        )
    lines.append("")
    for family in ("chain", "equilibrium"):
        pts = np.array([(r["couplings"], r["compile"]) for r in rows if r["family"] == family])
        if len(pts) > 1:
            slope = np.polyfit(np.log(pts[:, 0]), np.log(pts[:, 1]), 1)[0]
            biggest = pts[-1]
            lines.append(
                f"- {family}: compile time ∝ couplings^{slope:.2f}; largest "
                f"{int(biggest[0]):,} couplings in {biggest[1]:.1f} s."
            )
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[-2:]))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
