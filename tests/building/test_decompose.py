"""decompose(): flat expressions to programs of elementary constraints."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad
from lagrangian_ad import ProgramError
from lagrangian_ad.testing import check_grads, inline_output

x, y = sp.symbols("x y")


def test_blog_flat_expression_becomes_its_chain():
    flat = sp.exp(sp.exp(x) + sp.exp(x) ** 2) + sp.sin(sp.exp(x) + sp.exp(x) ** 2)
    prog = lad.decompose(flat, [x])
    exprs = [c.expr for c in prog.ir.constraints]
    # the shared subexpression exp(x) + exp(2x) is one variable c, read by exp(c) and sin(c)
    (shared,) = [e.args[0] for e in exprs if e.func == sp.sin]
    assert shared in [e.args[0] for e in exprs if e.func == sp.exp]
    (shared_def,) = [c.expr for c in prog.ir.constraints if c.target == shared]
    assert shared_def.func == sp.Add and len(shared_def.args) == 2
    assert len(exprs) == 7  # exp(x), 2x, exp(2x), +, exp, sin, +
    # and it computes f and df/dx
    flat_real = flat.xreplace({x: sp.Symbol("x", real=True)})
    assert sp.simplify(inline_output(prog.ir) - flat_real) == 0
    sol = prog.solve({"x": 0.3})
    assert sol.grad["x"] == pytest.approx(float(sp.diff(flat, x).subs(x, 0.3)), rel=1e-13)


@pytest.mark.parametrize(
    "expr",
    [
        sp.exp(x) * sp.sin(x),
        x**y + sp.log(1 + x**2) * y,
        sp.sqrt(x**2 + y**2) - sp.atan(y / x),
        sp.Piecewise((x**2, x > 0), (-x, True)) + y,
        (x - y) ** 3 / (1 + sp.cos(x * y) ** 2),
        sp.tanh(sp.tanh(sp.tanh(x + y))),
        sp.pi * x + sp.sqrt(2) * y,
    ],
)
def test_decompose_gradients(expr):
    prog = lad.decompose(expr, [x, y])
    assert (
        sp.simplify(
            inline_output(prog.ir)
            - expr.xreplace({x: sp.Symbol("x", real=True), y: sp.Symbol("y", real=True)})
        )
        == 0
    )
    check_grads(prog, {"x": np.array([0.7, 1.3]), "y": np.array([0.4, -0.9])})


def test_constants_stay_inline_and_input_alone_gets_a_constraint():
    prog = lad.decompose(sp.sqrt(2) * sp.pi * x, [x])
    assert len(prog.ir.constraints) == 1
    prog = lad.decompose(x, [x])
    assert prog.solve({"x": 3.0}).grad["x"] == 1.0


def test_deep_expression_is_iterative():
    """A flat expression nested deeper than Python's recursion limit still decomposes."""
    depth = 3000
    e = x
    for _ in range(depth):
        e = sp.sin(e, evaluate=False)  # evaluating would make SymPy itself recurse
    assert depth > sys.getrecursionlimit()
    prog = lad.decompose(e, [x])
    assert len(prog.ir.constraints) == depth
    sol = prog.solve({"x": 0.5})
    # d/dx sin^n(x) = Π cos(z_k): recomputed by a plain loop
    z, g = 0.5, 1.0
    for _ in range(depth):
        g *= np.cos(z)
        z = np.sin(z)
    assert sol.value == pytest.approx(z, rel=1e-12)
    assert sol.grad["x"] == pytest.approx(g, rel=1e-10)


@pytest.mark.parametrize(
    ("expr", "inputs", "message"),
    [
        (x + y, [x], "y is not among the inputs"),
        ("x + 1", [x], "text is read only by lad.parse"),
        (x > 1, [x], "not a scalar expression"),
        (x, [3], "inputs must be Symbols or names"),
    ],
)
def test_decompose_errors(expr, inputs, message):
    with pytest.raises(ProgramError, match=message):
        lad.decompose(expr, inputs)
