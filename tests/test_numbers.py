"""Numbers at the edges (issue 11): valid programs that crashed, removable singularities,
zero powers, non-finite inputs and results, special functions, wide products.

Every expected value is computed another way: by hand, with mpmath at 30 digits, with
SciPy, or by SymPy's derivative of the flat expression.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad

mpmath.mp.dps = 30


def _mp_diff(f, x: float, n: int = 1) -> float:
    """The n-th derivative of f at x by mpmath (30 digits)."""
    return float(mpmath.diff(f, mpmath.mpf(x), n))


# --------------------------------------------------------------------------- C: crashes


def test_block_functions_are_named_after_their_own_block():
    # The loop that added temporaries reused the block index: KeyError 'block0_map'.
    fn = lad.parse("input x\nz0 = 5 ** atan2(19*z0, x)\n").compile()
    sol = fn.solve({"x": 1.0}, init={"z0": 1.0})

    def g(z, x):
        return mpmath.power(5, mpmath.atan2(19 * z, x))

    z = mpmath.findroot(lambda z: z - g(z, 1), mpmath.mpf(sol.value))
    g_z = mpmath.diff(lambda t: g(t, 1), z)
    g_x = mpmath.diff(lambda t: g(z, t), mpmath.mpf(1))
    assert sol.value == pytest.approx(float(z), rel=1e-13)
    assert sol.grad["x"] == pytest.approx(float(g_x / (1 - g_z)), rel=1e-10)


@pytest.mark.parametrize(
    ("text", "a", "b"),
    [
        ("input tangents\ninput x\ny = tangents**3 * x\n", "tangents", "x"),
        ("input x\ninput t\nsecond_adjoint = x**3\ny = second_adjoint * t\n", "x", "t"),
        ("input hvp\ninput forward\nkkt = hvp**3\nadjoint = kkt * forward\n", "hvp", "forward"),
        (
            "input jvp\ninput hessian\nblock0_map = jvp**3\nz = hessian * block0_map\n",
            "jvp",
            "hessian",
        ),
    ],
)
def test_user_names_never_collide_with_generated_names(text, a, b):
    # An input named `tangents` or an intermediate named `second_adjoint` shadowed the
    # generated function of that name (hvp: TypeError). Here f = a³·b, by hand.
    fn = lad.parse(text).compile()
    va, vb = 1.5, -0.5
    at = {a: va, b: vb}
    value, grad = fn.value_and_grad(at)
    assert value == pytest.approx(va**3 * vb, rel=1e-15)
    assert grad == pytest.approx({a: 3 * va**2 * vb, b: va**3}, rel=1e-15)
    hess = {a: {a: 6 * va * vb, b: 3 * va**2}, b: {a: 3 * va**2, b: 0.0}}
    H = fn.hessian(at)
    for p in (a, b):
        assert H[p] == pytest.approx(hess[p], rel=1e-14)
    assert fn.hvp(at, {a: 1.0}) == pytest.approx({a: hess[a][a], b: hess[b][a]}, rel=1e-14)
    assert fn.jvp(at, {b: 1.0})[1] == pytest.approx(va**3, rel=1e-15)
    assert fn.solve(at).kkt["max_dL_dlambda"] == 0.0


def test_a_constant_intermediate_is_a_float_where_it_is_divided_by():
    # z = 0 was the Python integer 0, so acot(z) = atan(1/z) raised ZeroDivisionError on
    # both paths. SymPy's (and mpmath's) acot(0) is π/2.
    fn = lad.parse("input x\nz = 0\ny = acot(z) + x\n").compile()
    expected = 0.25 + float(mpmath.acot(0))
    assert fn.value_and_grad({"x": 0.25}) == (pytest.approx(expected, rel=1e-15), {"x": 1.0})
    sol = fn.solve({"x": np.array([0.25, 0.25])})
    np.testing.assert_allclose(sol.value, expected, rtol=1e-15)
    assert sol.values["z"].tolist() == [0.0, 0.0] and sol.grad["x"].tolist() == [1.0, 1.0]


def test_constants_are_evaluated_exactly_before_they_reach_numpy():
    # cos of a 20-digit integer sent a Python int to numpy.cos (TypeError in a batch);
    # float64(99999999999999999999) is 1e20, whose cosine is another number entirely.
    fn = lad.parse("input x\ny = x*cos(99999999999999999999)\n").compile()
    c = float(mpmath.cos(mpmath.mpf(99999999999999999999)))
    assert abs(c - np.cos(1e20)) > 0.1
    value, grad = fn.value_and_grad({"x": np.array([1.0, 2.0, -3.0])})
    np.testing.assert_allclose(value, [c, 2 * c, -3 * c], rtol=1e-15)
    assert grad["x"] == pytest.approx(np.full(3, c), rel=1e-15)
    assert fn.value({"x": 2.0}) == pytest.approx(2 * c, rel=1e-15)


def test_sign_of_a_function_that_numpy_computes_on_one_sample():
    # numpy.sinc returns a NumPy scalar on the float path: sign() subtracted NumPy booleans.
    fn = lad.parse("input x\ny = sign(sinc(x))\n").compile()
    for x in (1.0, 4.0, -4.0):
        assert fn.value_and_grad({"x": x}) == (float(np.sign(np.sin(x) / x)), {"x": 0.0})


def test_an_empty_batch_gives_empty_results():
    # The KKT certificate took the max of an empty batch (ValueError); the Hessian's
    # contraction reshaped an empty array with -1.
    fn = lad.parse("input x\ninput W[2]\ny = x**2*W[0] + sin(W[1])\n").compile()
    at = {"x": np.zeros(0), "W": np.ones((0, 2))}
    sol = fn.solve(at)
    assert sol.value.shape == (0,) and sol.values["y"].shape == (0,)
    assert sol.grad["x"].shape == (0,) and sol.grad["W"].shape == (0, 2)
    assert sol.kkt == {"max_dL_dlambda": 0.0, "max_dL_dz": 0.0}
    shared = fn.value_and_grad({"x": np.zeros(0), "W": np.ones(2)})[1]["W"]
    assert shared.tolist() == [0.0, 0.0]  # the gradient of an empty sum
    H = fn.hessian(at)
    assert H["x"]["W"].shape == (0, 0, 2) and H["W"]["W"].shape == (0, 2, 0, 2)


def test_solve_on_one_sample_agrees_with_value_and_grad_at_a_pole():
    # The KKT certificate ran on Python floats: 1/0 raised ZeroDivisionError in solve
    # while value_and_grad returned the IEEE results, 1/0 = inf and -1/0**2 = -inf.
    fn = lad.parse("input x\ny = 1/x\n").compile()
    value, grad = fn.value_and_grad({"x": 0.0})
    sol = fn.solve({"x": 0.0})
    assert (value, grad["x"]) == (np.inf, -np.inf) == (sol.value, sol.grad["x"])


def test_integers_beyond_the_double_range_and_underflowing_constants():
    # A 30,103-digit integer broke the form key (str() of it exceeds Python's digit
    # limit); exp(-exp(100)) underflows to 0 in double precision, as mpmath confirms.
    prog = lad.Program()
    x = prog.input("x")
    y = prog.define("y", x * sp.Pow(2, 10**5, evaluate=False) / sp.Integer(3) ** 70000)
    prog.define("z", y + x * sp.exp(-sp.exp(100)) + 1)
    ratio = mpmath.power(2, 10**5) / mpmath.power(3, 70000)
    assert float(ratio) == 0.0 and float(mpmath.exp(-mpmath.exp(100))) == 0.0
    assert prog.compile().value_and_grad({"x": 0.5}) == (1.0, {"x": 0.0})
