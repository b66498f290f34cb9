"""Forward mode: jvp against the gradient dotted with the tangent, and against differences."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad
from lagrangian_ad import ProgramError
from lagrangian_ad.using._demo import blog_program


def _mixed_program():
    """A DAG, a cyclic block and an implicit equation, with a shared weight vector."""
    prog = lad.Program()
    x = prog.input("x")
    w = prog.input("w", shape=(2,))
    a = prog.define("a", sp.sin(x) * w[0])
    h = prog.var("h")
    prog.define(h, sp.tanh(0.5 * h + a))
    u = prog.var("u")
    prog.equation(u**3 + u, h * w[1])
    prog.define("out", u**2 + a * h)
    return prog


def test_blog_jvp_is_the_derivative():
    fn = blog_program().compile()
    for x0 in (-0.5, 0.5):
        value, d = fn.jvp({"x": x0}, {"x": 1.0})
        v2, g = fn.value_and_grad({"x": x0})
        assert value == v2 and d == pytest.approx(g["x"], rel=1e-14)
        _, d3 = fn.jvp({"x": x0}, {"x": -2.5})
        assert d3 == pytest.approx(-2.5 * g["x"], rel=1e-14)


@pytest.mark.parametrize("batched", [False, True])
def test_jvp_matches_gradient_and_differences(batched):
    fn = _mixed_program().compile()
    rng = np.random.default_rng(8)
    xs = rng.uniform(-1, 1, 4) if batched else 0.3
    w = np.array([0.8, -1.3])
    inputs = {"x": xs, "w": w}
    tx = rng.standard_normal(np.shape(xs))
    tw = rng.standard_normal(2)
    value, d = fn.jvp(inputs, {"x": tx, "w": tw})
    # per sample: x is per sample, w shared; the batch sum of d is grad · tangent
    _, g = fn.value_and_grad(inputs)
    assert np.sum(d) == pytest.approx(np.sum(g["x"] * tx) + g["w"] @ tw, rel=1e-12)
    # and each sample's d against a central difference of that sample's output
    h = 1e-6
    up = fn.value({"x": xs + h * tx, "w": w + h * tw})
    down = fn.value({"x": xs - h * tx, "w": w - h * tw})
    np.testing.assert_allclose(d, (up - down) / (2 * h), rtol=1e-7)
    np.testing.assert_allclose(value, fn.value(inputs), rtol=1e-15)


def test_missing_tangents_are_zero_and_errors():
    fn = _mixed_program().compile()
    inputs = {"x": 0.2, "w": np.array([0.8, -1.3])}
    _, only_x = fn.jvp(inputs, {"x": 1.0})
    _, g = fn.value_and_grad(inputs)
    assert only_x == pytest.approx(g["x"], rel=1e-13)
    _, none = fn.jvp(inputs, {})
    assert none == 0.0
    with pytest.raises(ProgramError, match="unknown input 'q'"):
        fn.jvp(inputs, {"q": 1.0})
    with pytest.raises(ProgramError, match="tangent 'w': shape \\(3,\\) does not broadcast"):
        fn.jvp(inputs, {"w": np.ones(3)})


@pytest.mark.parametrize("n", [2, 3, 5])
def test_jvp_through_a_coupled_cyclic_block_of_entries(n):
    """h = tanh(0.3 W h + x) entry by entry, on the per-scalar code (one sample; too
    small to lower): every row of the block's tangent system J ż = rhs has its own
    temporaries. They once shared names, so each row read the last row's partials (a
    wrong jvp, hvp and Hessian for any block of two or more coupled unknowns)."""
    rng = np.random.default_rng(n)
    prog = lad.Program()
    x, W = prog.input("x", (n,)), prog.input("W", (n, n))
    h = prog.var("h", (n,))
    prog.define(h, (0.3 * W * h + x).applyfunc(sp.tanh))
    prog.define("y", sum(hi**2 for hi in h))
    fn = prog.compile()
    assert fn.engine == "entries"
    inputs = {"x": rng.normal(size=n), "W": rng.normal(size=(n, n)) / n}
    tangents = {"x": rng.normal(size=n), "W": rng.normal(size=(n, n))}
    _, d = fn.jvp(inputs, tangents)
    _, g = fn.value_and_grad(inputs)
    assert d == pytest.approx(sum(np.sum(g[k] * tangents[k]) for k in g), rel=1e-10)
    eps = 1e-6
    plus = fn.value({k: inputs[k] + eps * tangents[k] for k in inputs})
    minus = fn.value({k: inputs[k] - eps * tangents[k] for k in inputs})
    assert d == pytest.approx((plus - minus) / (2 * eps), rel=1e-7)
    hv = fn.hvp(inputs, tangents)  # the tangents feed the second-order adjoint too
    gp = fn.value_and_grad({k: inputs[k] + eps * tangents[k] for k in inputs})[1]
    gm = fn.value_and_grad({k: inputs[k] - eps * tangents[k] for k in inputs})[1]
    for k in g:
        np.testing.assert_allclose(hv[k], (gp[k] - gm[k]) / (2 * eps), rtol=1e-6, atol=1e-8)
