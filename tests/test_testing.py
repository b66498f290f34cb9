"""check_grads passes right gradients and catches wrong ones, with both numbers shown."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad
from lagrangian_ad.testing import check_grads


def _program():
    prog = lad.Program()
    x = prog.input("x")
    w = prog.input("w", shape=(2,))
    a = prog.define("a", sp.exp(x) * w[0])
    prog.define("f", sp.sin(a) + w[1] * x)
    return prog


def _sabotage(fn, scale_grad=1.0, scale_lam=1.0):
    """Wrap the generated adjoint so it returns slightly wrong numbers."""

    def wrong(adjoint):
        def run(*args):
            lam, grad = adjoint(*args)
            return [scale_lam * v for v in lam], [scale_grad * g for g in grad]

        return run

    code = fn._code
    fn._code = dataclasses.replace(
        code,
        numpy=dataclasses.replace(code.numpy, adjoint=wrong(code.numpy.adjoint)),
        scalar=dataclasses.replace(code.scalar, adjoint=wrong(code.scalar.adjoint)),
    )
    return fn


def test_passes_on_right_gradients():
    check_grads(_program(), {"x": np.array([0.1, 0.5]), "w": np.array([[1.0, 2.0], [0.3, -1.0]])})


def test_catches_wrong_gradient_by_finite_differences():
    fn = _sabotage(_program().compile(), scale_grad=1 + 1e-4)
    with pytest.raises(AssertionError) as info:
        check_grads(fn, {"x": 0.3, "w": np.array([1.0, 2.0])}, symbolic=False)
    message = str(info.value)
    assert "multipliers (analytic)" in message and "central differences" in message


def test_catches_wrong_gradient_symbolically():
    fn = _sabotage(_program().compile(), scale_grad=1 + 1e-8)
    with pytest.raises(AssertionError, match="flat symbolic"):
        check_grads(fn, {"x": 0.3, "w": np.array([1.0, 2.0])}, rtol=1e-5)


def test_catches_wrong_multiplier():
    fn = _sabotage(_program().compile(), scale_lam=1.001)
    with pytest.raises(AssertionError, match="multiplier of a"):
        check_grads(fn, {"x": 0.3, "w": np.array([1.0, 2.0])})
