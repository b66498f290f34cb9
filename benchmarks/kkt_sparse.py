"""The interior point's KKT solve, dense against sparse, on problems with batched data.

``python -m benchmarks.kkt_sparse [--sizes 50,200,800] [--out benchmarks/KKT.md]``
solves two families of constrained problems twice each, in one run, with
``options={"linear_solver": "dense"}`` and ``{"linear_solver": "sparse"}`` (see
`lagrangian_ad.using._interior`), and writes a table:

* ``net``: a 1-3-1 tanh network (10 parameters) fitted by least squares to
  1.2 sin(2.5 s) on B points, with |y(s_b)| ≤ 0.8 at every point: 2B per-sample
  inequality constraints over 10 shared unknowns (a small ridge term keeps the fit well
  posed). KKT dimension 10 + 2B.
* ``project``: B points p_b, one variable point x_b ∈ R² each (x0 with a batch axis),
  min Σ_b ‖x_b − p_b‖² subject to ‖x_b‖² ≤ 1: 2B unknowns and B constraints, KKT
  dimension 3B; the Hessian and the Jacobian are block diagonal, and the known answer
  x_b = p_b / max(1, ‖p_b‖) is checked.

Each cell is the wall time of one solve after a first one that compiles (the first is
not counted), with the iterations; the two paths must reach the same objective (checked
to 1e-8 relative).
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sympy as sp

import lagrangian_ad as lad

BOUND, RIDGE = 0.8, 1e-2
THETA0 = np.array([0.5, -0.3, 0.8, 0.2, 0.4, -0.6, 0.3, -0.2, 0.5, 0.1])


def net_problem(B: int):
    """(program, x0, fixed) of the ``net`` family."""
    prog = lad.Program(progress=False)
    theta = prog.input("theta", shape=(10,))
    s, t = prog.input("s"), prog.input("t")
    h = [prog.define(f"h{k}", sp.tanh(theta[k] * s + theta[3 + k])) for k in range(3)]
    y = prog.define("y", sum(theta[6 + k] * h[k] for k in range(3)) + theta[9])
    prog.define("loss", (y - t) ** 2 + RIDGE / B * sum(theta[k] ** 2 for k in range(10)))
    prog.subject_to(y <= BOUND, name="upper")
    prog.subject_to(y >= -BOUND, name="lower")
    points = np.linspace(-1.0, 1.0, B)
    return prog, {"theta": THETA0}, {"s": points, "t": 1.2 * np.sin(2.5 * points)}


def project_problem(B: int):
    """(program, x0, fixed) of the ``project`` family."""
    prog = lad.Program(progress=False)
    X, P = prog.input("X", shape=(2,)), prog.input("P", shape=(2,))
    prog.define("f", (X[0] - P[0]) ** 2 + (X[1] - P[1]) ** 2)
    prog.subject_to(X[0] ** 2 + X[1] ** 2 <= 1, name="disc")
    P_data = np.random.default_rng(0).normal(size=(B, 2)) * 1.2
    return prog, {"X": np.zeros((B, 2))}, {"P": P_data}


FAMILIES = {"net": net_problem, "project": project_problem}


def run(family: str, B: int, solver: str) -> dict:
    prog, x0, fixed = FAMILIES[family](B)
    options = {"linear_solver": solver}
    lad.minimize(prog, x0, fixed=fixed, options=options)  # compiles
    t0 = time.perf_counter()
    res = lad.minimize(prog, x0, fixed=fixed, options=options)
    elapsed = time.perf_counter() - t0
    if family == "project":
        P = fixed["P"]
        want = P / np.maximum(1, np.linalg.norm(P, axis=1))[:, None]
        assert np.max(np.abs(res.x["X"] - want)) < 1e-6, "project: wrong answer"
    n = sum(np.size(v) for v in x0.values())
    m = sum(np.size(v) for v in res.multipliers.values())
    return {
        "family": family,
        "B": B,
        "solver": solver,
        "n": n,
        "m": m,
        "time": elapsed,
        "nit": res.nit,
        "fun": res.fun,
        "success": bool(res.success),
    }


def markdown(rows: list[dict]) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# The interior point's KKT solve: dense against sparse",
        "",
        f"Measured {when} by `python -m benchmarks.kkt_sparse` (see its docstring), on "
        f"{platform.machine()} with the machine shared with other jobs: times are one "
        "solve each, after a compiling one. Both paths in the same run, row by row.",
        "",
        "| problem | B | unknowns n | constraints m | KKT dim | dense it | dense s | "
        "sparse it | sparse s | dense / sparse |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["family"], r["B"], r["solver"]): r for r in rows}
    for family, B in dict.fromkeys((r["family"], r["B"]) for r in rows):
        d, s = by[(family, B, "dense")], by[(family, B, "sparse")]
        ok = abs(d["fun"] - s["fun"]) <= 1e-8 * (1 + abs(d["fun"]))
        flag = "" if ok and d["success"] and s["success"] else " (**differ**)"
        lines.append(
            f"| {family}{flag} | {B} | {d['n']} | {d['m']} | {d['n'] + d['m']} | "
            f"{d['nit']} | {d['time']:.3f} | {s['nit']} | {s['time']:.3f} | "
            f"{d['time'] / s['time']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,800")
    parser.add_argument("--families", default="net,project")
    parser.add_argument("--out", default=str(Path(__file__).with_name("KKT.md")))
    args = parser.parse_args(argv)
    rows = []
    for family in args.families.split(","):
        for B in map(int, args.sizes.split(",")):
            for solver in ("dense", "sparse"):
                rows.append(run(family, B, solver))
                r = rows[-1]
                print(f"{family} B={B} {solver}: {r['nit']} it, {r['time']:.3f} s", flush=True)
    text = markdown(rows)
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
