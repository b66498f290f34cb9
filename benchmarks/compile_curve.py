"""Compile time against program size, up to 10^5 scalar couplings.

    python -m benchmarks.compile_curve [--max 100000] [--out benchmarks/COMPILE.md]

Two families (the programs of `benchmarks.problems`), each compiled once per size from a
freshly built program (a second compile of the same expressions would hit SymPy's cache):

* chains z_0 = x, z_k = sin(z_{k−1} + x): many small constraints, 2 couplings each;
* dense equilibrium layers h = tanh(W h + U x + b), n units, d = 20 inputs: n constraints
  of 2n + 2d + 1 couplings each (the benchmark problem at n = 200: 88,400 couplings).

A *coupling* is one nonzero local partial ∂f_i/∂z_j, i.e. an edge of the computation graph.
Building the program (SymPy constructing the expressions) is timed apart from
``prog.compile()``. The slope of log(compile time) against log(couplings) is fitted per
family; 1 means linear.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import lagrangian_ad as lad

from . import problems

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max", type=int, default=100_000, help="most couplings to try")
    parser.add_argument("--out", default=str(HERE / "COMPILE.md"), help="Markdown report")
    args = parser.parse_args(argv)
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
