"""Numbers at the edges (issue 11): valid programs that crashed, removable singularities,
zero powers, non-finite inputs and results, special functions, wide products.

Every expected value is computed another way: by hand, with mpmath at 30 digits, with
SciPy, or by SymPy's derivative of the flat expression.
"""

from __future__ import annotations

import linecache
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

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
    with pytest.warns(lad.NonFiniteWarning, match="constraint 'y'"):
        value, grad = fn.value_and_grad({"x": 0.0})
    with pytest.warns(lad.NonFiniteWarning, match="constraint 'y'"):
        sol = fn.solve({"x": 0.0})
    assert (value, grad["x"]) == (np.inf, -np.inf) == (sol.value, sol.grad["x"])
    # and OverflowError: (1e200)**2 overflows a Python float, and is inf in NumPy
    fn = lad.parse("input x\ny = x**2\n").compile()
    with pytest.warns(lad.NonFiniteWarning, match="constraint 'y'"):
        sol = fn.solve({"x": 1e200})
    assert (sol.value, sol.grad["x"]) == (np.inf, 2e200)


@pytest.mark.parametrize(
    ("text", "gradient"),
    [("input x\ny = x + pi**100000\n", 1.0), ("input x\ny = x * 10**308 * 10\n", np.inf)],
)
def test_constants_beyond_the_double_range(text, gradient):
    # OverflowError before (a Python float raised to 100000, a Python int past 10**308).
    # pi**100000 and 10**309 are inf in double precision, as mpmath says: so is y, which
    # a NonFiniteWarning reports; the gradient of x + c is 1 whatever c.
    assert float(mpmath.pi**100000) == float(mpmath.mpf(10) ** 309) == np.inf
    fn = lad.parse(text).compile()
    for x in (2.0, np.array([2.0, 3.0])):
        with pytest.warns(lad.NonFiniteWarning, match="the value of constraint 'y'"):
            value, grad = fn.value_and_grad({"x": x})
        assert np.all(value == np.inf) and np.all(grad["x"] == gradient)


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


# --------------------------------------------------------------------------- 1: zero powers


def _all_passes(fn, at: dict, direction: dict):
    """Value, gradient, jvp, hvp and Hessian at one sample and at a batch of two."""
    out = {"value_and_grad": fn.value_and_grad(at), "jvp": fn.jvp(at, direction)[1]}
    out["hvp"], out["hessian"] = fn.hvp(at, direction), fn.hessian(at)
    two = {k: np.array([v, v]) for k, v in at.items()}
    value, grad = fn.value_and_grad(two)
    out["batch"] = (value[0], {k: g[0] for k, g in grad.items()})
    return out


def test_x_to_the_power_zero_at_zero():
    # x**0.0 is 1 everywhere: derivative 0 (autograd asserts it), not 0·0**(−1) = NaN.
    fn = lad.parse("input x\ny = x**0.0\n").compile()
    out = _all_passes(fn, {"x": 0.0}, {"x": 1.0})
    assert out["value_and_grad"] == (1.0, {"x": 0.0}) == out["batch"]
    assert out["jvp"] == 0.0 and out["hvp"] == {"x": 0.0} and out["hessian"]["x"]["x"] == 0.0


def test_zero_to_a_positive_power():
    # 0.0**y = 0 for every y > 0: all its y-derivatives are 0, not log(0)·0 = NaN.
    fn = lad.parse("input y\nz = 0.0**y\n").compile()
    out = _all_passes(fn, {"y": 2.0}, {"y": 1.0})
    assert out["value_and_grad"] == (0.0, {"y": 0.0}) == out["batch"]
    assert out["jvp"] == 0.0 and out["hvp"] == {"y": 0.0} and out["hessian"]["y"]["y"] == 0.0


def test_x_to_the_y_at_zero_and_elsewhere():
    # At (0, 2): ∂/∂x = y x^(y−1) = 0, ∂/∂y = x^y log x → 0, ∂²/∂x² = y(y−1)x^(y−2) = 2,
    # ∂²/∂x∂y = x^(y−1)(1 + y log x) → 0, ∂²/∂y² = x^y log²x → 0 (limits x → 0+).
    fn = lad.parse("input x\ninput y\nz = x**y\n").compile()
    out = _all_passes(fn, {"x": 0.0, "y": 2.0}, {"x": 1.0, "y": 1.0})
    assert out["value_and_grad"] == (0.0, {"x": 0.0, "y": 0.0}) == out["batch"]
    H = out["hessian"]
    assert (H["x"]["x"], H["x"]["y"], H["y"]["x"], H["y"]["y"]) == (2.0, 0.0, 0.0, 0.0)
    assert out["hvp"] == {"x": 2.0, "y": 0.0} and out["jvp"] == 0.0
    # elsewhere, SymPy's derivatives of x**y
    x, y = sp.symbols("x y", positive=True)
    at = {"x": 1.5, "y": 2.5}
    out = _all_passes(fn, at, {"x": 1.0, "y": 0.0})
    ref = {s: float(sp.diff(x**y, s).subs({x: 1.5, y: 2.5})) for s in (x, y)}
    assert out["value_and_grad"][1] == pytest.approx({"x": ref[x], "y": ref[y]}, rel=1e-14)
    hxy = float(sp.diff(x**y, x, y).subs({x: 1.5, y: 2.5}))
    assert out["hessian"]["x"]["y"] == pytest.approx(hxy, rel=1e-14)


# --------------------------------------------------------------------------- D, 2: sinc


def _mp_sinc(x):
    return mpmath.sin(x) / x if x != 0 else mpmath.mpf(1)


@pytest.mark.parametrize("x0", [0.0, 1e-9, -1e-4, 0.3, -0.999, 1.0, 3.0, 4.4934, -250.0])
def test_sinc_in_every_pass(x0):
    # sinc′(0) = 0 (was NaN: the Piecewise dropped), sinc″(0) = −1/3 (was 0 near 0: the
    # closed form cancels); mpmath differentiates sin(x)/x at 30 digits.
    fn = lad.parse("input x\ny = sinc(x)\n").compile()
    d1 = _mp_diff(_mp_sinc, x0, 1) if x0 else 0.0
    d2 = _mp_diff(_mp_sinc, x0, 2) if x0 else -1 / 3
    out = _all_passes(fn, {"x": x0}, {"x": 1.0})
    value, grad = out["value_and_grad"]
    assert value == pytest.approx(float(_mp_sinc(mpmath.mpf(x0))), rel=1e-15)
    for g in (grad["x"], out["batch"][1]["x"], out["jvp"]):
        assert g == pytest.approx(d1, rel=1e-13, abs=1e-16)
    for h in (out["hessian"]["x"]["x"], out["hvp"]["x"]):
        assert h == pytest.approx(d2, rel=1e-13, abs=1e-16)


def test_hessian_of_sinc_of_pi_x_near_zero():
    # The case: d²/dx² sinc(πx) at 1e-9 was returned as 0; it is −π²/3.
    fn = lad.parse("input x\ny = sinc(pi*x)\n").compile()
    exact = _mp_diff(lambda x: _mp_sinc(mpmath.pi * x), 1e-9, 2)
    assert exact == pytest.approx(-(float(mpmath.pi) ** 2) / 3, rel=1e-15)
    assert fn.hessian({"x": 1e-9})["x"]["x"] == pytest.approx(exact, rel=1e-14)
    assert fn.hessian({"x": np.array([1e-9, 0.0])})["x"]["x"] == pytest.approx(
        np.diag([exact, -(float(mpmath.pi) ** 2) / 3]), rel=1e-14
    )


# --------------------------------------------------------------------------- 4: functions


# text, the same function for mpmath (of x, at 30 digits), and a point
_SPECIAL = [
    ("gamma(x)", mpmath.gamma, 1.7),
    ("gamma(x)", mpmath.gamma, -2.5),
    ("loggamma(x)", mpmath.loggamma, 3.2),
    ("digamma(x)", lambda x: mpmath.psi(0, x), 0.8),
    ("polygamma(2, x)", lambda x: mpmath.psi(2, x), 1.9),
    ("beta(x, 2.5)", lambda x: mpmath.beta(x, 2.5), 0.7),
    ("beta(1.5, x)", lambda x: mpmath.beta(1.5, x), 2.2),
    ("erfinv(x)", mpmath.erfinv, 0.6),
    ("erfcinv(x)", lambda x: mpmath.erfinv(1 - x), 0.3),
    ("besselj(2, x)", lambda x: mpmath.besselj(2, x), 3.1),
    ("bessely(0.5, x)", lambda x: mpmath.bessely(0.5, x), 1.4),
    ("besseli(1, x)", lambda x: mpmath.besseli(1, x), 0.9),
    ("besselk(0, x)", lambda x: mpmath.besselk(0, x), 2.6),
]


@pytest.mark.parametrize(("text", "reference", "x0"), _SPECIAL, ids=[s[0] for s in _SPECIAL])
def test_special_functions_through_scipy(text, reference, x0):
    # They were rejected ("Unsupported by _Printer: polygamma", the derivative's name).
    fn = lad.parse(f"input x\ny = {text}\n").compile()
    value, grad = fn.value_and_grad({"x": x0})
    assert value == pytest.approx(float(reference(mpmath.mpf(x0))), rel=1e-12)
    assert grad["x"] == pytest.approx(_mp_diff(reference, x0, 1), rel=1e-11)
    assert fn.hessian({"x": x0})["x"]["x"] == pytest.approx(_mp_diff(reference, x0, 2), rel=1e-10)
    batch = fn.value_and_grad({"x": np.full(3, x0)})
    np.testing.assert_allclose(batch[0], value, rtol=1e-15)
    np.testing.assert_allclose(batch[1]["x"], grad["x"], rtol=1e-14)  # per sample


def test_floor_ceil_and_mod_follow_autograd():
    # floor and ceil are flat almost everywhere (derivative 0); mod(a, b) = a − b·floor(a/b)
    # has partials 1 and −floor(a/b), as autograd's rules for numpy.mod say.
    fn = lad.parse("input a\ninput b\ny = floor(a)*b + ceil(a*b) + mod(a, b)\n").compile()
    for a, b in [(2.7, 0.8), (-1.3, 0.5), (5.0, -1.5)]:
        value, grad = fn.value_and_grad({"a": a, "b": b})
        assert value == pytest.approx(np.floor(a) * b + np.ceil(a * b) + np.mod(a, b), rel=1e-15)
        assert grad == pytest.approx({"a": 1.0, "b": np.floor(a) - np.floor(a / b)}, rel=1e-15)
        H = fn.hessian({"a": a, "b": b})
        assert [H[p][q] for p in "ab" for q in "ab"] == [0.0, 0.0, 0.0, 0.0]


def test_max_and_min_share_the_derivative_between_ties():
    # Tied arguments share the derivative equally (autograd's and JAX's convention for
    # max); away from ties the derivative goes to the extremum alone.
    fn = lad.parse("input x\ninput y\ninput z\nm = max(x, y, z) + 2*min(x, y, z)\n").compile()
    cases = [
        ((1.0, 3.0, 2.0), {"x": 2.0, "y": 1.0, "z": 0.0}),
        ((3.0, 3.0, 2.0), {"x": 0.5, "y": 0.5, "z": 2.0}),
        ((1.0, 1.0, 1.0), {"x": 1.0, "y": 1.0, "z": 1.0}),
    ]
    for (x, y, z), expected in cases:
        at = {"x": x, "y": y, "z": z}
        assert fn.value_and_grad(at) == (max(x, y, z) + 2 * min(x, y, z), expected)
        batch = fn.value_and_grad({k: np.array([v, v]) for k, v in at.items()})[1]
        assert {k: g.tolist() for k, g in batch.items()} == {k: [v, v] for k, v in expected.items()}


def test_max_of_many_arguments_compiles_quickly():
    # SymPy's Max compared every pair of arguments inside differentiation: 49 s for 25.
    n = 32
    names = [f"x{k}" for k in range(n)]
    text = "".join(f"input {v}\n" for v in names) + f"y = max({', '.join(names)})\n"
    prog = lad.parse(text)
    start = time.perf_counter()
    fn = prog.compile()
    assert time.perf_counter() - start < 10.0
    at = {v: float(k % 7) for k, v in enumerate(names)}  # the value 6 four times
    value, grad = fn.value_and_grad(at)
    assert value == 6.0 and grad == {v: (0.25 if at[v] == 6 else 0.0) for v in names}


# --------------------------------------------------------------------------- 5: wide products


def test_a_wide_product_compiles_in_linear_time_and_is_right_at_its_zeros():
    # (x+1)(x+2)⋯(x+500): 88 s to compile, quadratic in the factors. Here its cousin
    # Π_k (x + k/100), whose values stay within double range: its derivative is
    # Σ_k Π_{j≠k} (x + j/100), right at a zero factor too (no division), by mpmath.
    n = 500
    factors = "*".join(f"(x+{k / 100!r})" for k in range(1, n + 1))
    prog = lad.parse(f"input x\ny = {factors}\n")
    start = time.perf_counter()
    fn = prog.compile()
    assert time.perf_counter() - start < 15.0

    def product(x):
        return mpmath.fprod(x + mpmath.mpf(k / 100) for k in range(1, n + 1))

    for x0 in (-0.9995, -1.0, -1.37):  # -1.0: a factor is exactly 0
        value, grad = fn.value_and_grad({"x": x0})
        exact = product(mpmath.mpf(x0))
        assert value == pytest.approx(float(exact), rel=1e-11, abs=1e-300)
        assert grad["x"] == pytest.approx(_mp_diff(product, x0), rel=1e-11)


def test_compiling_leaves_nothing_in_linecache_and_tracebacks_stay_readable():
    # Every compile registered its sources in linecache.cache, never freed (+26 MB per
    # 1,000 programs). Now the generated code's own namespace gives its source.
    before = set(linecache.cache)
    for k in range(20):
        fn = lad.parse(f"input x\nh = tanh(0.5*h + x)\ny = h*x**{k + 2}\n").compile()
        fn.value_and_grad({"x": 0.5})
        fn.hvp({"x": 0.5}, {"x": 1.0})
        fn.jvp({"x": 0.5}, {"x": 1.0})
    assert set(linecache.cache) == before
    fn = lad.parse("input x\ny = sin(x)*x\n").compile()
    try:
        fn._code.numpy.forward(None, "not a number")
    except TypeError as err:
        text = "".join(traceback.format_exception(err))
    assert "y = x*numpy.sin(x)" in text  # the generated line, in the traceback


# --------------------------------------------------------------------------- 3: non-finite


@pytest.mark.parametrize("method", ["value", "value_and_grad", "solve", "hessian"])
def test_non_finite_inputs_are_refused_unless_asked(method):
    fn = lad.parse("input x\ninput W[2]\ny = x**2*W[0] + W[1]**3\n").compile()
    call = getattr(fn, method)
    with pytest.raises(lad.ProgramError, match=r"input 'x' holds nan.*check_finite=False"):
        call({"x": float("nan"), "W": [1.0, 2.0]})
    with pytest.raises(lad.ProgramError, match=r"input 'W' holds inf at index \(1, 0\)"):
        call({"x": 1.0, "W": [[1.0, 2.0], [np.inf, 0.0]]})
    with pytest.warns(lad.NonFiniteWarning, match=r"input 'x' is nan \(check_finite=False\)"):
        call({"x": float("nan"), "W": [1.0, 2.0]}, check_finite=False)


def test_the_warning_names_the_first_constraint_in_evaluation_order():
    # a = exp(1000x) overflows at x = 1; b = sin(a) and y are NaN after it: a is named.
    fn = lad.parse("input x\na = exp(1000*x)\nb = sin(a)\ny = b + log(x)\n").compile()
    for x in (1.0, np.array([0.001, 1.0, 2.0])):
        with pytest.warns(lad.NonFiniteWarning) as caught:
            fn.value_and_grad({"x": x})
        (warning,) = caught
        message = str(warning.message)
        assert "the value of constraint 'a' (a = exp(1000*x)) is inf" in message
        assert np.ndim(x) == 0 or "in 2 of 3 samples" in message
    with pytest.warns(lad.NonFiniteWarning, match="constraint 'a'"):
        assert np.isnan(fn.value({"x": 1.0}))


def test_the_warning_names_a_multiplier_or_a_partial():
    # z = x² − 1 and y = sqrt(z) at x = 1: every value is finite (y = 0) but
    # λ_z = 1/(2 sqrt z) = inf. And sqrt(x) at 0: λ_y = 1, but ∂y/∂x is inf.
    fn = lad.parse("input x\nz = x**2 - 1\ny = sqrt(z)\n").compile()
    with pytest.warns(lad.NonFiniteWarning, match="the multiplier of constraint 'z'.* is inf"):
        assert fn.value_and_grad({"x": 1.0}) == (0.0, {"x": np.inf})
    fn = lad.parse("input x\ny = sqrt(x)\n").compile()
    with pytest.warns(lad.NonFiniteWarning, match="input 'x' is inf.*constraint 'y'"):
        fn.value_and_grad({"x": 0.0})


def test_finite_results_through_infinite_intermediates_warn_of_nothing():
    # acot(x) = atan(1/x) at 0 is atan(inf) = π/2, its derivative −1/(1 + x²) = −1: no
    # NumPy RuntimeWarning, no NonFiniteWarning.
    fn = lad.parse("input x\ny = acot(x)\n").compile()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x in (0.0, np.array([0.0, 1.0])):
            value, _ = fn.value_and_grad({"x": x})
            assert np.all(np.atleast_1d(value)[:1] == np.pi / 2)


def test_the_command_line_exits_1_on_a_non_finite_result():
    proc = subprocess.run(
        [sys.executable, "-m", "lagrangian_ad", "grad", "log(x)", "--at", "x=-1"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lagrangian-ad: error: ") and "log(x)) is nan" in line


# --------------------------------------------------------------------------- 8: API inputs


def test_inputs_that_are_not_numbers():
    fn = lad.parse("input x\ny = x**2\n").compile()
    with pytest.raises(lad.ProgramError, match="input 'x': expected real numbers, got None"):
        fn.value({"x": None})  # was NaN, silently
    masked = np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0])
    with pytest.raises(lad.ProgramError, match="input 'x': a masked array with 1 masked"):
        fn.value_and_grad({"x": masked})  # the mask was ignored
    unmasked = np.ma.masked_array([1.0, 2.0], mask=[0, 0])
    assert fn.value({"x": unmasked}).tolist() == [1.0, 4.0]
    with pytest.raises(lad.ProgramError, match="tangent 'x'"):
        fn.jvp({"x": 1.0}, {"x": None})


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"maxiter": "x"}, "maxiter must be a positive integer, not 'x'"),
        ({"maxiter": 0}, "maxiter must be a positive integer"),
        ({"maxiter": 2.5}, "maxiter must be a positive integer"),
        ({"tol": "x"}, "tol must be a positive number, not 'x'"),
        ({"tol": -1.0}, "tol must be a positive number"),
        ({"init": {"h": np.ones(4)}}, r"init 'h': its batch shape \(4,\) does not broadcast"),
        ({"init": [1.0]}, "init must be a dict"),
    ],
)
def test_solve_options_are_checked(options, match):
    fn = lad.parse("input x\nh = tanh(0.5*h + x)\n").compile()
    with pytest.raises(lad.ProgramError, match=match):
        fn.solve({"x": np.ones(3)}, **options)


def test_the_values_of_a_solution_are_not_the_callers_arrays():
    fn = lad.parse("input x\ny = x**2\n").compile()
    x = np.array([1.0, 2.0])
    sol = fn.solve({"x": x})
    x[0] = 5.0
    assert sol.values["x"].tolist() == [1.0, 2.0] and sol.values["y"].tolist() == [1.0, 4.0]
