"""The engine is a public choice, and the engines agree.

The array engine runs entry-wise programs too (every scalar a 1×1 array, implicit
equations matched to their unknowns): on random programs, cyclic ones and implicit
equations, its values, gradients, multipliers, tangents and Hessian-
vector products equal the entry-wise engine's, two independent code generators.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from test_random_programs import programs

import lagrangian_ad as lad


def _assert_same(a, b, rtol=1e-12, atol=1e-13):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k], rtol, atol)
        return
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@settings(max_examples=25, deadline=None)
@given(programs(), st.integers(0, 2**31))
def test_array_engine_equals_entry_wise_engine_on_random_programs(case, seed):
    prog, inputs = case
    entries = prog.compile(engine="entries")
    arrays = prog.compile(engine="arrays")
    assert arrays.engine == "arrays" and entries.engine in ("entries", "lowered")
    rng = np.random.default_rng(seed)
    with np.errstate(all="ignore"):
        want, got = entries.solve(inputs), arrays.solve(inputs)
    if not (
        np.all(np.isfinite(want.value)) and all(np.all(np.isfinite(g)) for g in want.grad.values())
    ):
        return  # a program that leaves the domain somewhere: nothing to compare
    _assert_same(got.value, want.value)
    _assert_same(got.grad, want.grad, rtol=1e-10, atol=1e-12)
    _assert_same(got.multipliers, want.multipliers, rtol=1e-10, atol=1e-12)
    direction = {name: rng.normal(size=np.shape(a)) for name, a in inputs.items()}
    _assert_same(arrays.jvp(inputs, direction)[1], entries.jvp(inputs, direction)[1], 1e-10, 1e-12)
    _assert_same(arrays.hvp(inputs, direction), entries.hvp(inputs, direction), 1e-8, 1e-10)


def test_cyclic_entry_wise_program_on_both_engines():
    prog = lad.Program()
    x = prog.input("x")
    W = prog.input("W", (2, 2))
    h = prog.var("h", (2,))
    prog.define(h, (W * h + sp.Matrix([x, 2 * x])).applyfunc(sp.tanh))
    prog.define("y", h[0] ** 2 + sp.sin(h[1]))
    inputs = {"x": np.array([0.3, -0.2]), "W": np.array([[0.5, -0.3], [0.2, 0.4]])}
    want = prog.compile(engine="entries").solve(inputs)
    got = prog.compile(engine="arrays").solve(inputs)
    _assert_same(got.value, want.value)
    _assert_same(got.grad, want.grad, rtol=1e-10)
    _assert_same(got.values["h"], want.values["h"])
    (report,) = got.blocks
    assert report.residual <= 1e-12


def test_implicit_equations_on_both_engines():
    # the README's program: a fixed point, then an implicit equation, then a coupled pair
    prog = lad.Program()
    x = prog.input("x")
    h = prog.var("h")
    prog.define(h, sp.tanh(0.5 * h + x))
    u, v = prog.var("u"), prog.var("v")
    prog.equation(u**3 + u, h)
    prog.equation(v + sp.sin(v) * u, 2 * x, name="pair")
    prog.define("y", u**2 + v * h)
    inputs = {"x": np.array([0.1, 0.7, -0.4])}
    entries, arrays = prog.compile(engine="entries"), prog.compile(engine="arrays")
    want, got = entries.solve(inputs), arrays.solve(inputs)
    _assert_same(got.value, want.value)
    _assert_same(got.grad, want.grad, rtol=1e-10)
    _assert_same(got.multipliers, want.multipliers, rtol=1e-10)
    assert set(got.multipliers) == {"h", "y", "eq1", "pair"}
    assert got.kkt["max_dL_dz"] < 1e-12 and got.kkt["max_dL_dlambda"] < 1e-12
    d = {"x": np.array([1.0, -2.0, 0.5])}
    _assert_same(arrays.jvp(inputs, d)[1], entries.jvp(inputs, d)[1], rtol=1e-10)
    _assert_same(arrays.hvp(inputs, d), entries.hvp(inputs, d), rtol=1e-8)


def test_unmatched_equations_are_named():
    prog = lad.Program()
    x = prog.input("x")
    u, v = prog.var("u"), prog.var("v")
    prog.equation(u + x, 1, name="first")
    prog.equation(u * x, 2, name="second")  # v appears in no equation
    prog.define("y", u + v)
    with pytest.raises(lad.ProgramError, match=r"second.*v|v.*second"):
        prog.compile(engine="arrays")


def test_engine_choice_errors():
    prog = lad.Program()
    x = prog.input("x", (2,), array=True)
    prog.define("y", lad.sum(lad.exp(x)))
    assert prog.compile().engine == "arrays"
    with pytest.raises(lad.ProgramError, match="only the array engine"):
        prog.compile(engine="entries")
    with pytest.raises(lad.ProgramError, match="unknown engine 'fast'"):
        prog.compile(engine="fast")


@pytest.mark.parametrize("engine", ["entries", "arrays"])
def test_gradients_for_some_inputs_on_either_engine(engine):
    prog = lad.Program()
    x, w = prog.input("x"), prog.input("w", (2,))
    prog.define("y", sp.exp(w[0] * x) + w[1] * x**2)
    fn = prog.compile(engine=engine)
    inputs = {"x": np.array([0.2, 0.4]), "w": np.array([1.5, -0.5])}
    _, full = fn.value_and_grad(inputs)
    _, part = fn.value_and_grad(inputs, wrt=["w"])
    assert list(part) == ["w"]
    _assert_same(part["w"], full["w"])
    with pytest.raises(lad.ProgramError, match="unknown input 'q'"):
        fn.value_and_grad(inputs, wrt=["q"])


@pytest.mark.parametrize("engine", ["entries", "arrays"])
def test_multipliers_of_intermediates_shared_by_all_samples_are_per_sample(engine):
    """z0 = 1 and t = 2 w z0 are the same for every sample; their multipliers are not:
    by hand λ_t = x0 and λ_z0 = 1 + 2 w λ_t, per sample, and ∂Σout/∂w = Σ 2 z0 x0."""
    prog = lad.Program()
    x0, w = prog.input("x0"), prog.input("w")
    z0 = prog.define("z0", 1)
    t = prog.define("t", 2 * w * z0)
    prog.define("out", x0 * t + z0)
    xs = np.array([1.0, 2.0, 3.0])
    sol = prog.compile(engine=engine).solve({"x0": xs, "w": 0.5})
    np.testing.assert_array_equal(sol.multipliers["t"], xs)
    np.testing.assert_array_equal(sol.multipliers["z0"], 1 + xs)
    assert sol.grad["w"] == pytest.approx(2 * xs.sum())
    assert sol.kkt["max_dL_dz"] == 0.0
