"""Solving acyclic programs: known answers, batching, shapes, inputs, and the hot path."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad
from lagrangian_ad import ProgramError
from lagrangian_ad.testing import check_grads
from lagrangian_ad.using._demo import blog_program


def _blog_by_hand(x: float) -> dict[str, float]:
    """The blog's values and multipliers, derived by hand (docs/design.md)."""
    a = math.exp(x)
    b = a * a
    c = a + b
    lam_c = math.exp(c) + math.cos(c)
    return {
        "a": a,
        "b": b,
        "c": c,
        "d": math.exp(c),
        "e": math.sin(c),
        "f": math.exp(c) + math.sin(c),
        "lam_a": lam_c * (1 + 2 * a),
        "lam_b": lam_c,
        "lam_c": lam_c,
        "lam_d": 1.0,
        "lam_e": 1.0,
        "lam_f": 1.0,
        "grad": lam_c * (1 + 2 * a) * math.exp(x),
    }


@pytest.mark.parametrize("x0", [-2.0, -0.3, 0.0, 0.5, 1.1])
def test_blog_values_multipliers_gradient(x0):
    sol = blog_program().solve({"x": x0})
    hand = _blog_by_hand(x0)
    for name in "abcdef":
        assert sol.values[name] == pytest.approx(hand[name], rel=1e-13)
        assert sol.multipliers[name] == pytest.approx(hand["lam_" + name], rel=1e-13)
    assert sol.value == pytest.approx(hand["f"], rel=1e-13)
    assert sol.grad["x"] == pytest.approx(hand["grad"], rel=1e-13)
    # and against SymPy's derivative of the flat f, evaluated to 30 digits
    x = sp.Symbol("x")
    flat = sp.exp(sp.exp(x) + sp.exp(x) ** 2) + sp.sin(sp.exp(x) + sp.exp(x) ** 2)
    exact = float(sp.diff(flat, x).subs(x, sp.Float(x0, 30)).evalf(30))
    assert abs(sol.grad["x"] - exact) <= 1e-12 * abs(exact)


def test_blog_batched_matches_samples():
    fn = blog_program().compile()
    xs = np.linspace(-1.0, 0.6, 9)
    sol = fn.solve({"x": xs})
    assert sol.value.shape == (9,) and sol.grad["x"].shape == (9,)
    assert sol.multipliers["a"].shape == (9,)
    # each sample's output depends only on its own x, so the gradient of the batch sum
    # is the per-sample derivative
    for k, x0 in enumerate(xs):
        hand = _blog_by_hand(x0)
        assert sol.grad["x"][k] == pytest.approx(hand["grad"], rel=1e-13)
        assert sol.multipliers["a"][k] == pytest.approx(hand["lam_a"], rel=1e-13)
    check_grads(fn, {"x": xs})


def test_value_and_grad_agree_with_solve():
    fn = blog_program().compile()
    v, g = fn.value_and_grad({"x": 0.25})
    sol = fn.solve({"x": 0.25})
    assert v == sol.value and g == sol.grad
    assert fn.value({"x": 0.25}) == sol.value
    assert isinstance(sol.value, float) and isinstance(sol.grad["x"], float)


def _mlp_program():
    """loss = Σ_batch (w2·tanh(W1 x + b1) + b2 − t)², weights shared over the batch."""
    prog = lad.Program()
    x = prog.input("x", shape=(3,))
    t = prog.input("t")
    W1 = prog.input("W1", shape=(4, 3))
    b1 = prog.input("b1", shape=(4,))
    w2 = prog.input("w2", shape=(4,))
    b2 = prog.input("b2")
    h = prog.define("h", (W1 * x + b1).applyfunc(sp.tanh))
    y = prog.define("y", (w2.T * h)[0, 0] + b2)
    prog.define("loss", (y - t) ** 2)
    return prog


def _mlp_by_hand(X, T, W1, b1, w2, b2):
    """Hand-written NumPy backprop of the summed loss."""
    pre = X @ W1.T + b1  # (B, 4)
    h = np.tanh(pre)
    y = h @ w2 + b2  # (B,)
    r = y - T
    dy = 2 * r
    dh = dy[:, None] * w2[None, :]
    dpre = dh * (1 - h**2)
    return {
        "loss": r**2,
        "W1": dpre.T @ X,
        "b1": dpre.sum(0),
        "w2": h.T @ dy,
        "b2": dy.sum(),
        "x": dpre @ W1,
        "t": -dy,
        "h": h,
        "lam_h": dh,
    }


def test_mlp_with_shared_weights_and_batched_data():
    rng = np.random.default_rng(1)
    X, T = rng.standard_normal((50, 3)), rng.standard_normal(50)
    params = {
        "W1": rng.standard_normal((4, 3)),
        "b1": rng.standard_normal(4),
        "w2": rng.standard_normal(4),
        "b2": 0.3,
    }
    sol = _mlp_program().solve({"x": X, "t": T, **params})
    hand = _mlp_by_hand(X, T, **params)
    np.testing.assert_allclose(sol.value, hand["loss"], rtol=1e-12)
    for name in ("W1", "b1", "w2", "x", "t"):
        assert sol.grad[name].shape == np.shape(hand[name])
        np.testing.assert_allclose(sol.grad[name], hand[name], rtol=1e-11, atol=1e-13)
    assert isinstance(sol.grad["b2"], float)
    assert sol.grad["b2"] == pytest.approx(hand["b2"], rel=1e-12)
    np.testing.assert_allclose(sol.values["h"], hand["h"], rtol=1e-13)
    np.testing.assert_allclose(sol.multipliers["h"], hand["lam_h"], rtol=1e-11, atol=1e-13)


def test_mlp_check_grads_two_batch_axes():
    rng = np.random.default_rng(2)
    inputs = {
        "x": rng.standard_normal((2, 5, 3)),
        "t": rng.standard_normal((5,)),
        "W1": rng.standard_normal((4, 3)),
        "b1": rng.standard_normal((1, 4)),
        "w2": rng.standard_normal(4),
        "b2": np.array(0.1),
    }
    prog = _mlp_program()
    sol = prog.solve(inputs)
    assert sol.value.shape == (2, 5)
    for name, arr in inputs.items():
        assert np.shape(sol.grad[name]) == np.shape(arr), name
    check_grads(prog, inputs)


def test_broadcast_semantics_sum_down_to_given_shape():
    """A size-1 batch axis on an input gets the gradient summed over that axis."""
    prog = lad.Program()
    a = prog.input("a")
    b = prog.input("b")
    prog.define("f", a * b)
    A = np.array([[1.0], [2.0]])  # (2, 1)
    B = np.array([3.0, 4.0, 5.0])  # (3,)
    sol = prog.solve({"a": A, "b": B})
    assert sol.value.shape == (2, 3)
    np.testing.assert_allclose(sol.grad["a"], np.full((2, 1), B.sum()))
    np.testing.assert_allclose(sol.grad["b"], np.full(3, A.sum()))


def test_constants_unused_inputs_and_unused_intermediates():
    prog = lad.Program()
    x = prog.input("x")
    y = prog.input("y", shape=(2,))
    prog.define("unused", sp.exp(y[0]))
    prog.define("c", sp.Integer(3))
    prog.define("f", 2 * x + 1)
    sol = prog.solve({"x": np.arange(4.0), "y": np.ones((4, 2))})
    np.testing.assert_allclose(sol.grad["x"], np.full(4, 2.0))
    np.testing.assert_allclose(sol.grad["y"], np.zeros((4, 2)))
    np.testing.assert_allclose(sol.values["c"], np.full(4, 3.0))
    np.testing.assert_allclose(sol.multipliers["unused"], np.zeros(4))
    np.testing.assert_allclose(sol.multipliers["f"], np.ones(4))
    np.testing.assert_allclose(sol.values["unused"], np.full(4, math.e))


def test_same_form_different_constants():
    """Constraints sharing a tree but not their floats, or their pattern of equal floats."""
    prog = lad.Program()
    x = prog.input("x")
    y = prog.input("y")
    a = prog.define("a", 0.5 * x + 0.5 * y)
    b = prog.define("b", 0.5 * x + 0.7 * y)
    c = prog.define("c", 0.25**a + 1.5e-7 * b - 0.1 * x ** (-1.5))
    prog.define("f", a * b + c)
    sol = prog.solve({"x": 0.3, "y": -1.2})
    av, bv = 0.5 * 0.3 + 0.5 * -1.2, 0.5 * 0.3 + 0.7 * -1.2
    dc_dx = math.log(0.25) * 0.25**av * 0.5 + 1.5e-7 * 0.5 + 0.15 * 0.3 ** (-2.5)
    assert sol.grad["x"] == pytest.approx(0.5 * bv + 0.5 * av + dc_dx, rel=1e-13)
    check_grads(prog, {"x": np.array([0.3, 0.9]), "y": np.array([-1.2, 0.4])})


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": 1.0}, "missing input 'W'"),
        ({"x": 1.0, "W": np.ones((2, 3)), "z": 1.0}, "unknown input 'z'"),
        ({"x": 1.0, "W": np.ones((2, 3)), "a": 1.0}, "'a': it is an intermediate"),
        ({"x": 1.0, "W": np.ones((3, 2))}, "input 'W': expected an array of trailing shape (2, 3)"),
        ({"x": 1.0, "W": np.ones(3)}, "input 'W': expected an array of trailing shape (2, 3)"),
        ({"x": np.ones(4), "W": np.ones((5, 2, 3))}, "do not broadcast (x: (4,), W: (5,))"),
        ({"x": "one", "W": np.ones((2, 3))}, "input 'x': expected real numbers"),
        ({"x": 1j, "W": np.ones((2, 3))}, "input 'x': expected real numbers"),
        ({3: 1.0, "W": np.ones((2, 3))}, "input key 3"),
    ],
)
def test_input_errors(inputs, message):
    prog = lad.Program()
    x = prog.input("x")
    W = prog.input("W", shape=(2, 3))
    prog.define("a", x * W[0, 0])
    fn = prog.compile()
    with pytest.raises(ProgramError, match=re.escape(message)):
        fn.solve(inputs)


def test_input_keys_by_symbol_and_matrix():
    prog = lad.Program()
    x = prog.input("x")
    W = prog.input("W", shape=(2,))
    prog.define("f", x * W[0] + W[1])
    sol = prog.solve({x: 2.0, sp.ImmutableMatrix(W): [3.0, 4.0]})
    assert sol.value == 10.0
    np.testing.assert_allclose(sol.grad["W"], [2.0, 1.0])


def test_inputs_given_twice():
    prog = lad.Program()
    x = prog.input("x")
    prog.define("f", 2 * x)
    with pytest.raises(ProgramError, match="given twice"):
        prog.solve({"x": 1.0, x: 2.0})


def test_no_sympy_on_the_numeric_path():
    """After compile(), solving calls no function defined in the sympy package."""
    fn = _mlp_program().compile()
    rng = np.random.default_rng(0)
    inputs = {
        "x": rng.standard_normal((7, 3)),
        "t": rng.standard_normal(7),
        "W1": rng.standard_normal((4, 3)),
        "b1": np.zeros(4),
        "w2": np.ones(4),
        "b2": 0.0,
    }
    fn.solve(inputs)  # warm up
    calls = []

    def profile(frame, event, arg):
        if event == "call" and "sympy" in frame.f_code.co_filename:
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        fn.solve(inputs)
        fn.value_and_grad(inputs)
        fn.value(inputs)
    finally:
        sys.setprofile(None)
    assert calls == []


def test_generated_source_is_inspectable():
    fn = blog_program().compile()
    assert fn.forward_source.splitlines()[1].strip() == "a = numpy.exp(x)"
    adjoint = fn.adjoint_source
    # the adjoint runs the program backwards: f's line first, a's last
    assert adjoint.index("# f = d + e") < adjoint.index("# a = numpy.exp(x)")
    assert "grad_x" in adjoint


@pytest.mark.parametrize("n", [20_000, pytest.param(100_000, marks=pytest.mark.slow)])
def test_long_chain_iterative(n):
    """A 20,000-constraint chain compiles and solves (no recursion anywhere).

    z_0 = x, z_k = 0.5 z_{k−1} + x·c with c alternating; checked against the closed forms
    z_n = x·S and dz_n/dx = S with S computed by the same recurrence in NumPy. The
    100,000-constraint run is marked slow: ``python -m pytest -m slow``.
    """
    prog = lad.Program()
    x = prog.input("x")
    z = x
    for k in range(n):
        z = prog.define(f"z{k}", 0.5 * z + (0.25 if k % 2 else 0.75) * x)
    sol = prog.solve({"x": 2.0})
    s = 1.0
    for k in range(n):
        s = 0.5 * s + (0.25 if k % 2 else 0.75)
    assert sol.value == pytest.approx(2.0 * s, rel=1e-12)
    assert sol.grad["x"] == pytest.approx(s, rel=1e-12)
    assert sol.multipliers["z0"] == pytest.approx(0.5 ** (n - 1), rel=1e-12, abs=1e-300)


def test_scalar_fast_path_matches_numpy_path():
    """One sample runs over Python floats with math; a batch of one runs on NumPy.

    math and NumPy may round a function differently in the last bit, so the two agree to
    rounding (amplified a little by cancellation in the sums), not bit for bit.
    """
    fn = _mlp_program().compile()
    rng = np.random.default_rng(4)
    inputs = {
        "x": rng.standard_normal(3),
        "t": 0.2,
        "W1": rng.standard_normal((4, 3)),
        "b1": rng.standard_normal(4),
        "w2": rng.standard_normal(4),
        "b2": -0.1,
    }
    one = fn.solve(inputs)
    batched = fn.solve({**inputs, "x": inputs["x"][None]})
    assert one.value == pytest.approx(batched.value[0], rel=1e-15, abs=1e-300)
    for name in inputs:
        expect = np.reshape(batched.grad[name], np.shape(one.grad[name]))
        np.testing.assert_allclose(one.grad[name], expect, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(one.multipliers["h"], batched.multipliers["h"][0], rtol=1e-14)


@pytest.mark.parametrize(
    ("expr", "x0"),
    [
        (lambda x: sp.log(x), -1.0),  # math.log raises, NumPy gives nan
        (lambda x: sp.sqrt(x), -4.0),
        (lambda x: sp.exp(x), 1000.0),  # overflow: inf
        (lambda x: 1 / x, 0.0),  # division by zero: inf
        (lambda x: x ** sp.Rational(1, 3), -8.0),  # negative base, fractional power: nan
        (lambda x: x**0.7, -2.0),
    ],
)
def test_scalar_fast_path_falls_back_to_ieee_results(expr, x0):
    prog = lad.Program()
    x = prog.input("x")
    prog.define("y", expr(x))
    fn = prog.compile()
    with np.errstate(all="ignore"):
        one = fn.value_and_grad({"x": x0})
        batched = fn.value_and_grad({"x": np.array([x0])})
    np.testing.assert_array_equal(one[0], batched[0][0])
    np.testing.assert_array_equal(one[1]["x"], batched[1]["x"][0])
    assert isinstance(one[0], float) and not isinstance(one[0], complex)
