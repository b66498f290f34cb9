"""The Hock–Schittkowski suite: lagrangian_ad's interior point against IPOPT and SciPy.

``python -m benchmarks.hock_schittkowski [--only 71,100] [--out benchmarks/HS.md]``
solves every problem of `benchmarks.hs_problems` from its published start with

* ``lad``: ``lad.minimize(prog, x0)`` (``method="interior-point"``), the program read
  from the problem's text;
* ``ipopt``: IPOPT through CasADi's ``nlpsol`` (default options, exact Hessian);
* ``slsqp`` and ``trust-constr``: `scipy.optimize.minimize` with exact gradients (and,
  for trust-constr, exact Hessians of the objective and of the constraints).

One source feeds all four: the text is parsed once by ``lad.parse``; SciPy gets the
SymPy expressions lambdified (and their derivatives by ``sympy.diff``), CasADi gets SX
expressions built by walking the SymPy trees. A problem counts as solved by a solver
when the final point is feasible (violation ≤ 1e-6) and |f − f*| ≤ 1e-6 (1 + |f*|) with
f* the published optimal value, whatever the solver's own status says. Iterations,
objective evaluations and wall time (the second of two runs for lad, so that its
one-time compilation is not counted; compile time is reported separately) are recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.optimize
import sympy as sp

import lagrangian_ad as lad
from benchmarks.hs_problems import PROBLEMS, HSProblem

SOLVERS = ("lad", "ipopt", "slsqp", "trust-constr")
FEAS_TOL = 1e-6


@dataclass
class Run:
    problem: str
    solver: str
    solved: bool
    f: float
    violation: float
    nit: int
    nfev: int
    time: float
    status: str
    compile_time: float = 0.0


@dataclass
class Model:
    """A problem as SymPy: symbols, objective, general constraints (g ≤ 0 or g = 0)
    and bounds."""

    problem: HSProblem
    symbols: list[sp.Symbol]
    f: sp.Expr
    g: list[sp.Expr]
    is_eq: list[bool]
    lo: np.ndarray
    hi: np.ndarray
    general_text: str  # the program text without the bound lines

    def violation(self, x: np.ndarray) -> float:
        if not np.all(np.isfinite(x)):
            return math.inf
        vals = [float(e.subs(dict(zip(self.symbols, x, strict=True)))) for e in self.g]
        viol = [abs(v) if eq else max(v, 0.0) for v, eq in zip(vals, self.is_eq, strict=True)]
        viol += list(np.maximum(self.lo - x, 0.0)) + list(np.maximum(x - self.hi, 0.0))
        return float(max(viol, default=0.0))


def model(problem: HSProblem) -> Model:
    prog = lad.parse(problem.text)
    ir = prog.ir
    symbols = [v.symbols[0] for v in ir.inputs]
    (definition,) = ir.constraints
    lo, hi = np.full(problem.n, -np.inf), np.full(problem.n, np.inf)
    g, is_eq, general = [], [], []
    for side, line in zip(ir.subject_to, problem.constraints, strict=True):
        bound = _bound(side, symbols)
        if bound is not None:
            k, kind, value = bound
            if kind == "lo":
                lo[k] = max(lo[k], value)
            else:
                hi[k] = min(hi[k], value)
            continue
        g.append(side.g)
        is_eq.append(side.is_equality)
        general.append(line)
    text = HSProblem(problem.number, problem.n, problem.objective, tuple(general), (), 0).text
    return Model(problem, symbols, definition.expr, g, is_eq, lo, hi, text)


def _bound(side, symbols):
    """(k, "lo" | "hi", value) if the constraint is x_k >= c or x_k <= c."""
    if side.is_equality:
        return None
    for var, num, op in ((side.lhs, side.rhs, side.relation), (side.rhs, side.lhs, None)):
        if var in symbols and num.is_number:
            if op is None:  # c OP x_k: flip
                op = "<=" if side.relation == ">=" else ">="
            return symbols.index(var), ("lo" if op == ">=" else "hi"), float(num)
    return None


# --------------------------------------------------------------------------- solvers


def solve_lad(m: Model) -> Run:
    prog = lad.parse(m.general_text)
    names = [s.name for s in m.symbols]
    x0 = dict(zip(names, m.problem.x0, strict=True))
    bounds = {
        n: (None if np.isinf(lo) else lo, None if np.isinf(hi) else hi)
        for n, lo, hi in zip(names, m.lo, m.hi, strict=True)
        if np.isfinite(lo) or np.isfinite(hi)
    }
    options = {"bounds": bounds} if bounds else {}
    t0 = time.perf_counter()
    lad.minimize(prog, x0, options=options)  # compiles the program and its constraints
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = lad.minimize(prog, x0, options=options)
    elapsed = time.perf_counter() - t0
    x = np.array([res.x[n] for n in names])
    return _run(m, "lad", x, res.fun, res.nit, res.nfev, elapsed, str(res.status), first - elapsed)


def solve_ipopt(m: Model) -> Run:
    import casadi as ca

    X = ca.SX.sym("x", m.problem.n)
    table = {s: X[k] for k, s in enumerate(m.symbols)}
    f = to_casadi(m.f, table)
    G = ca.vertcat(*[to_casadi(e, table) for e in m.g]) if m.g else ca.SX(0, 1)
    lbg = [0.0 if eq else -np.inf for eq in m.is_eq]
    ubg = [0.0] * len(m.g)
    opts = {"ipopt.print_level": 0, "print_time": False, "ipopt.sb": "yes"}
    solver = ca.nlpsol("s", "ipopt", {"x": X, "f": f, "g": G}, opts)
    t0 = time.perf_counter()
    sol = solver(x0=list(m.problem.x0), lbx=list(m.lo), ubx=list(m.hi), lbg=lbg, ubg=ubg)
    elapsed = time.perf_counter() - t0
    stats = solver.stats()
    x = np.array(sol["x"]).ravel()
    return _run(
        m,
        "ipopt",
        x,
        float(sol["f"]),
        int(stats["iter_count"]),
        int(stats.get("n_call_nlp_f", 0)),
        elapsed,
        str(stats["return_status"]),
    )


def _scipy_functions(m: Model):
    s = m.symbols
    f = sp.lambdify(s, m.f, "numpy")
    grad = sp.lambdify(s, [sp.diff(m.f, v) for v in s], "numpy")
    hess = sp.lambdify(s, sp.hessian(m.f, s), "numpy")
    G = sp.Matrix(m.g)
    g = sp.lambdify(s, list(G), "numpy")
    J = sp.lambdify(s, G.jacobian(s), "numpy") if m.g else None
    v = sp.symbols(f"v0:{len(m.g)}")
    weighted = sum((vi * gi for vi, gi in zip(v, m.g, strict=True)), sp.S.Zero)
    H = sp.lambdify([*s, *v], sp.hessian(weighted, s), "numpy")
    return (
        lambda x: float(f(*x)),
        lambda x: np.asarray(grad(*x), dtype=float),
        lambda x: np.asarray(hess(*x), dtype=float),
        lambda x: np.asarray(g(*x), dtype=float),
        (lambda x: np.asarray(J(*x), dtype=float).reshape(len(m.g), -1)) if J else None,
        lambda x, w: np.asarray(H(*x, *w), dtype=float),
    )


def solve_scipy(m: Model, method: str) -> Run:
    f, grad, hess, g, J, H = _scipy_functions(m)
    eq = np.array(m.is_eq, dtype=bool)
    bounds = scipy.optimize.Bounds(m.lo, m.hi) if np.isfinite([*m.lo, *m.hi]).any() else None
    if method == "SLSQP":
        cons = []
        for kind, mask in (("eq", eq), ("ineq", ~eq)):
            if mask.any():  # SciPy's inequalities read c(x) ≥ 0: c = −g
                sign = 1.0 if kind == "eq" else -1.0
                cons.append(
                    {
                        "type": kind,
                        "fun": lambda x, k=mask, sg=sign: sg * g(x)[k],
                        "jac": lambda x, k=mask, sg=sign: sg * J(x)[k],
                    }
                )
        kwargs = {"constraints": cons, "options": {"maxiter": 1000}}
    else:
        cons = []
        if m.g:
            lb = np.where(eq, 0.0, -np.inf)
            cons.append(
                scipy.optimize.NonlinearConstraint(g, lb, np.zeros(len(m.g)), jac=J, hess=H)
            )
        kwargs = {"constraints": cons, "hess": hess, "options": {"maxiter": 3000}}
    x0 = np.array(m.problem.x0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = scipy.optimize.minimize(f, x0, jac=grad, method=method, bounds=bounds, **kwargs)
    elapsed = time.perf_counter() - t0
    name = "slsqp" if method == "SLSQP" else "trust-constr"
    return _run(m, name, res.x, f(res.x), int(res.nit), int(res.nfev), elapsed, str(res.status))


def _run(m, solver, x, fval, nit, nfev, elapsed, status, compile_time=0.0) -> Run:
    viol = m.violation(np.asarray(x, dtype=float))
    fstar = m.problem.fstar
    solved = bool(
        np.isfinite(fval) and viol <= FEAS_TOL and abs(fval - fstar) <= 1e-6 * (1 + abs(fstar))
    )
    return Run(
        m.problem.name, solver, solved, float(fval), viol, nit, nfev, elapsed, status, compile_time
    )


def to_casadi(expr: sp.Expr, table: dict):
    """A CasADi SX expression from a SymPy one (walking the tree, iteratively)."""
    import casadi as ca

    functions = {
        sp.sin: ca.sin,
        sp.cos: ca.cos,
        sp.tan: ca.tan,
        sp.exp: ca.exp,
        sp.log: ca.log,
        sp.asin: ca.asin,
        sp.acos: ca.acos,
        sp.atan: ca.atan,
        sp.tanh: ca.tanh,
        sp.Abs: ca.fabs,
    }
    done: dict = {}
    stack = [expr]
    while stack:
        node = stack[-1]
        if node in done:
            stack.pop()
            continue
        pending = [a for a in node.args if a not in done]
        if pending and not (node.is_Symbol or node.is_Number or node.is_NumberSymbol):
            stack.extend(pending)
            continue
        stack.pop()
        if node.is_Symbol:
            done[node] = table[node]
        elif node.is_Number or node.is_NumberSymbol:
            done[node] = ca.SX(float(node))
        elif node.is_Add:
            out = done[node.args[0]]
            for a in node.args[1:]:
                out = out + done[a]
            done[node] = out
        elif node.is_Mul:
            out = done[node.args[0]]
            for a in node.args[1:]:
                out = out * done[a]
            done[node] = out
        elif node.is_Pow:
            base, ex = node.args
            if ex.is_Integer:
                done[node] = done[base] ** int(ex)
            else:
                done[node] = done[base] ** done[ex]
        elif type(node) in functions:
            done[node] = functions[type(node)](done[node.args[0]])
        else:
            raise NotImplementedError(f"to_casadi: {type(node).__name__}")
    return done[expr]


# --------------------------------------------------------------------------- report


def run_all(problems) -> list[Run]:
    runs = []
    for p in problems:
        m = model(p)
        for solver in SOLVERS:
            if solver == "lad":
                r = solve_lad(m)
            elif solver == "ipopt":
                r = solve_ipopt(m)
            else:
                r = solve_scipy(m, "SLSQP" if solver == "slsqp" else "trust-constr")
            runs.append(r)
    return runs


def summary(runs: list[Run]) -> dict:
    by = {(r.problem, r.solver): r for r in runs}
    problems = sorted({r.problem for r in runs})
    solved = {s: sum(by[p, s].solved for p in problems) for s in SOLVERS}
    both = [p for p in problems if by[p, "lad"].solved and by[p, "ipopt"].solved]
    ratios = [by[p, "lad"].nit / max(by[p, "ipopt"].nit, 1) for p in both]
    missed = [p for p in problems if by[p, "ipopt"].solved and not by[p, "lad"].solved]
    return {
        "problems": len(problems),
        "solved": solved,
        "median_iteration_ratio_lad_over_ipopt": statistics.median(ratios) if ratios else None,
        "median_iterations": {
            s: statistics.median([by[p, s].nit for p in both]) if both else None
            for s in ("lad", "ipopt")
        },
        "solved_by_ipopt_not_lad": missed,
        "solved_by_lad_not_ipopt": [
            p for p in problems if by[p, "lad"].solved and not by[p, "ipopt"].solved
        ],
    }


def markdown(runs: list[Run]) -> str:
    by = {(r.problem, r.solver): r for r in runs}
    problems = sorted({r.problem for r in runs})
    s = summary(runs)
    head = (
        "| problem | f* | " + " | ".join(f"{name} ok | it | nfev | ms" for name in SOLVERS) + " |"
    )
    sep = "|" + "---|" * (2 + 4 * len(SOLVERS))
    lines = [
        "# Hock–Schittkowski problems: lagrangian_ad's interior point, IPOPT, SciPy",
        "",
        "Generated by `python -m benchmarks.hock_schittkowski` (see its docstring for the",
        "setup and the criterion: feasible to 1e-6 and |f − f*| ≤ 1e-6 (1 + |f*|)).",
        "Times are wall-clock milliseconds of one solve (lad: after a first solve that",
        "compiles; its compile time is not included).",
        "",
        f"- problems: {s['problems']}",
        "- solved: " + ", ".join(f"{k} {v}" for k, v in s["solved"].items()),
        f"- median iterations on the problems both solve: lad "
        f"{s['median_iterations']['lad']}, IPOPT {s['median_iterations']['ipopt']}; median "
        f"of the per-problem ratio lad/IPOPT "
        f"{_fmt(s['median_iteration_ratio_lad_over_ipopt'])}",
        f"- solved by IPOPT but not by lad: {', '.join(s['solved_by_ipopt_not_lad']) or 'none'}",
        f"- solved by lad but not by IPOPT: {', '.join(s['solved_by_lad_not_ipopt']) or 'none'}",
        "",
        head,
        sep,
    ]
    fstar = {p.name: p.fstar for p in PROBLEMS}
    for p in problems:
        cells = [p, f"{fstar[p]:.8g}"]
        for name in SOLVERS:
            r = by[p, name]
            cells += [
                "yes" if r.solved else "**no**",
                str(r.nit),
                str(r.nfev),
                f"{1000 * r.time:.1f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated HS numbers")
    parser.add_argument("--out", default=str(Path(__file__).with_name("HS.md")))
    parser.add_argument("--json", default=str(Path(__file__).with_name("hs_results.json")))
    args = parser.parse_args(argv)
    problems = PROBLEMS
    if args.only:
        wanted = {int(k) for k in args.only.split(",")}
        problems = [p for p in PROBLEMS if p.number in wanted]
    runs = run_all(problems)
    text = markdown(runs)
    print(text)
    if not args.only:
        Path(args.out).write_text(text)
        Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
