"""Second order: Hessians against SymPy's hessian of the flat expression and differences."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad
from lagrangian_ad.using._demo import blog_program

x, y, w = sp.symbols("x y w")


@pytest.mark.parametrize(
    "expr",
    [
        sp.exp(sp.exp(x) + sp.exp(x) ** 2) + sp.sin(sp.exp(x) + sp.exp(x) ** 2) + 0 * y,
        x**y + sp.log(1 + x**2) * y,
        sp.tanh(x * y) * sp.sin(x) + sp.sqrt(1 + y**2),
        (x - y) ** 3 / (1 + sp.cos(x * y) ** 2),
        sp.atan2(y, x) + x * y**2,
    ],
)
def test_hessian_matches_sympy_of_the_flat_expression(expr):
    prog = lad.decompose(expr, [x, y])
    point = {"x": 0.7, "y": 1.3}
    H = prog.compile().hessian(point)
    exact = sp.hessian(expr, (x, y)).subs({x: 0.7, y: 1.3}).evalf(30)
    names = ["x", "y"]
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert H[a][b] == pytest.approx(float(exact[i, j]), rel=1e-11, abs=1e-12)


def test_batched_hessian_is_block_diagonal_over_samples():
    fn = blog_program().compile()
    xs = np.array([-0.5, 0.1, 0.4])
    H = fn.hessian({"x": xs})["x"]["x"]
    assert H.shape == (3, 3)
    t = sp.Symbol("t")
    flat = sp.exp(sp.exp(t) + sp.exp(t) ** 2) + sp.sin(sp.exp(t) + sp.exp(t) ** 2)
    second = [float(sp.diff(flat, t, 2).subs(t, v).evalf(30)) for v in xs]
    np.testing.assert_allclose(H, np.diag(second), rtol=1e-12, atol=1e-9)


def _gradient_difference(fn, inputs, name, h=1e-5):
    """Central differences of the gradient along every entry of one input."""
    base = np.asarray(inputs[name], dtype=float)
    cols = []
    for k in range(base.size):
        step = np.zeros(base.size)
        step[k] = h
        up = fn.value_and_grad({**inputs, name: base + step.reshape(base.shape)})[1]
        down = fn.value_and_grad({**inputs, name: base - step.reshape(base.shape)})[1]
        cols.append({n: (np.asarray(up[n]) - np.asarray(down[n])) / (2 * h) for n in up})
    return cols


def test_hessian_of_an_mlp_with_shared_weights_against_differences():
    prog = lad.Program()
    xin = prog.input("x", shape=(2,))
    W = prog.input("W", shape=(3, 2))
    v = prog.input("v", shape=(3,))
    h = prog.define("h", (W * xin).applyfunc(sp.tanh))
    prog.define("loss", ((v.T * h)[0, 0] - 0.5) ** 2)
    fn = prog.compile()
    rng = np.random.default_rng(9)
    inputs = {
        "x": rng.standard_normal((4, 2)),
        "W": rng.standard_normal((3, 2)),
        "v": rng.standard_normal(3),
    }
    H = fn.hessian(inputs)
    assert H["W"]["v"].shape == (3, 2, 3) and H["x"]["W"].shape == (4, 2, 3, 2)
    for k, col in enumerate(_gradient_difference(fn, inputs, "W")):
        i, j = np.unravel_index(k, (3, 2))
        for name in ("x", "W", "v"):
            np.testing.assert_allclose(H[name]["W"][..., i, j], col[name], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(H["W"]["v"], np.moveaxis(H["v"]["W"], 0, -1), rtol=1e-13)


def test_hessian_of_a_cyclic_program_against_differences():
    prog = lad.Program()
    a = prog.input("a", shape=(2,))
    hh = prog.var("h", shape=(2,))
    prog.define(hh, sp.Matrix([sp.tanh(0.4 * hh[1] + a[0]), sp.sin(0.3 * hh[0]) + a[1] * a[0]]))
    u = prog.var("u")
    prog.equation(u**3 + u, hh[0] + hh[1])
    prog.define("out", u**2 + hh[0] * a[1])
    fn = prog.compile()
    inputs = {"a": np.array([0.3, -0.8])}
    H = fn.hessian(inputs)["a"]["a"]
    cols = _gradient_difference(fn, inputs, "a")
    numeric = np.stack([c["a"] for c in cols], axis=-1)
    np.testing.assert_allclose(H, numeric, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(H, H.T, rtol=1e-12)
