"""Compiled programs pickle by their generated source (`_pickling`): the program that comes
back gives the same numbers as the one pickled, for every engine, and is built once per
process for the same bytes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad
from benchmarks import problems


def _blog():
    prog = lad.Program()
    x = prog.input("x")
    a = prog.define("a", sp.exp(x))
    prog.define("f", sp.exp(a + a**2) + sp.sin(a + a**2))
    return prog, {"x": np.linspace(-1, 0.5, 4)}


def _cyclic():
    prog = lad.Program()
    x = prog.input("x")
    h = prog.var("h")
    prog.define(h, sp.tanh(0.5 * h + x))
    u = prog.var("u")
    prog.equation(u**3 + u, h)
    prog.define("y", u**2)
    return prog, {"x": np.linspace(-1, 1, 5)}


def _problem(make, **sizes):
    def build():
        problem = make(**sizes)
        return problem.program(), dict(problem.inputs(6))

    return build


CASES = {
    "entries": _blog,
    "cyclic": _cyclic,
    "grouped": _problem(problems.mlp),
    "grouped cyclic": _problem(problems.equilibrium, n=12, d=4),
    "arrays": _problem(problems.mlp784, n_in=6, hidden=5, classes=3),
    "arrays cyclic": _problem(problems.deq, n=8, d=3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_pickled_program_gives_the_same_numbers(case):
    prog, inputs = CASES[case]()
    fn = prog.compile()
    expected = fn.solve(inputs)
    fn.hvp(inputs, {name: np.ones(np.shape(v)) for name, v in inputs.items()})  # made lazily
    blob = pickle.dumps(fn)
    again = pickle.loads(blob)
    assert type(again) is type(fn) and again.engine == fn.engine
    assert again.source == fn.source
    got = again.solve(inputs)
    np.testing.assert_allclose(got.value, expected.value, rtol=1e-13, atol=1e-14)
    for name in expected.grad:
        np.testing.assert_allclose(got.grad[name], expected.grad[name], rtol=1e-12, atol=1e-13)
    for name in expected.multipliers:
        np.testing.assert_allclose(
            got.multipliers[name], expected.multipliers[name], rtol=1e-12, atol=1e-13
        )
    vectors = {name: np.full(np.shape(v), 0.5) for name, v in inputs.items()}
    hv, hv0 = again.hvp(inputs, vectors), fn.hvp(inputs, vectors)
    for name in hv0:
        np.testing.assert_allclose(hv[name], hv0[name], rtol=1e-11, atol=1e-12)


def test_the_same_bytes_build_one_program_per_process():
    prog, _ = _cyclic()
    blob = pickle.dumps(prog.compile())
    first = pickle.loads(blob)
    assert pickle.loads(blob) is first


def test_the_numba_backend_makes_its_kernels_again_where_it_lands():
    pytest.importorskip("numba")
    prog, inputs = _blog()
    fn = prog.compile(backend="numba")
    again = pickle.loads(pickle.dumps(fn))
    assert again.backend == "numba" and again._fused is not None
    v, g = again.value_and_grad(inputs)
    v0, g0 = fn.value_and_grad(inputs)
    np.testing.assert_allclose(v, v0, rtol=1e-13)
    np.testing.assert_allclose(g["x"], g0["x"], rtol=1e-13)
