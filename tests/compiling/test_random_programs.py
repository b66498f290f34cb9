"""Hypothesis-generated random DAG programs through check_grads.

Programs with 1–5 inputs and up to 60 intermediates; each intermediate applies a unary
or binary operation (with random constants) to earlier variables chosen at random, so
variables fan out to several children. check_grads compares the multipliers' gradient,
the jvp, the hvp and the Hessian with central differences (modes fwd and rev, order 2),
the gradient with SymPy's derivative of the inlined expression, and every multiplier
with the derivative of the output with respect to that variable.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from hypothesis import assume, given
from hypothesis import strategies as st

import lagrangian_ad as lad
from lagrangian_ad.testing import check_grads

UNARY = [
    lambda a, c: sp.sin(a),
    lambda a, c: sp.cos(c * a),
    lambda a, c: sp.tanh(a + c),
    lambda a, c: sp.exp(-(a**2)),
    lambda a, c: sp.log(1 + a**2),
    lambda a, c: sp.sqrt(c**2 + a**2),
    lambda a, c: a**2,
    lambda a, c: c * a,
    lambda a, c: 1 / (1 + a**2),
    lambda a, c: sp.Abs(a) + c,
    lambda a, c: sp.atan(a),
]
BINARY = [
    lambda a, b, c: a + b,
    lambda a, b, c: a - c * b,
    lambda a, b, c: a * b,
    lambda a, b, c: a / (1 + b**2),
    lambda a, b, c: sp.sin(a) * sp.cos(b) + c,
    lambda a, b, c: sp.Max(a, b),
]


@st.composite
def programs(draw):
    n_in = draw(st.integers(1, 5))
    n_nodes = draw(st.integers(1, 60))
    prog = lad.Program()
    pool = [prog.input(f"x{k}") for k in range(n_in)]
    constant = st.floats(-2, 2, allow_nan=False).map(lambda v: round(v, 3))
    for k in range(n_nodes):
        c = draw(constant)
        if draw(st.booleans()):
            a = pool[draw(st.integers(0, len(pool) - 1))]
            expr = draw(st.sampled_from(UNARY))(a, c)
        else:
            a = pool[draw(st.integers(0, len(pool) - 1))]
            b = pool[draw(st.integers(0, len(pool) - 1))]
            expr = draw(st.sampled_from(BINARY))(a, b, c)
        pool.append(prog.define(f"z{k}", expr))
    # The output sums a few of the last variables, so many nodes reach it.
    tail = pool[-min(3, len(pool)) :]
    prog.define("out", sp.Add(*tail))
    batch = draw(st.sampled_from([(), (3,)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    inputs = {f"x{k}": rng.uniform(-1.5, 1.5, size=batch) for k in range(n_in)}
    return prog, inputs


@given(programs())
def test_random_dag_programs(case):
    prog, inputs = case
    sol = prog.solve(inputs)
    values = np.concatenate([np.ravel(v) for v in sol.values.values()])
    assume(np.all(np.isfinite(values)) and np.max(np.abs(values)) < 1e6)
    # Max and Abs have kinks; keep samples away from them so differences are honest.
    for z in prog.ir.constraints:
        if z.expr.has(sp.Max, sp.Abs):
            args = [a for a in z.expr.atoms(sp.Max, sp.Abs)]
            for node in args:
                gap = _kink_gap(node, sol, prog)
                assume(gap > 1e-3)
    check_grads(prog, inputs, modes=("fwd", "rev"), order=2, rtol=1e-6, symbolic_rtol=1e-9)


def _kink_gap(node, sol, prog):
    """Distance of the arguments of Max/Abs from their kink at this solution."""
    env = {}
    for var in (*prog.ir.inputs, *prog.ir.intermediates):
        values = np.asarray(sol.values[var.name])
        flat = values.reshape((*np.shape(sol.value), var.size))
        for k, s in enumerate(var.symbols):
            env[s] = flat[..., k]
    syms = sorted(node.free_symbols, key=lambda s: s.name)
    if isinstance(node, sp.Abs):
        diff = node.args[0]
    else:
        diff = node.args[0] - node.args[1]
    f = sp.lambdify(syms, diff, modules="numpy")
    return float(np.min(np.abs(f(*[env[s] for s in syms]))))
