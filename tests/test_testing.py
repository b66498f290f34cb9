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


EVERY = {"modes": ("fwd", "rev"), "order": 2}


def test_passes_on_right_gradients():
    inputs = {"x": np.array([0.1, 0.5]), "w": np.array([[1.0, 2.0], [0.3, -1.0]])}
    check_grads(_program(), inputs)
    check_grads(_program(), inputs, **EVERY)


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


def test_wrong_multipliers_also_spoil_the_hvp():
    """The second-order adjoint reads λ: order 2 sees wrong multipliers without SymPy."""
    fn = _sabotage(_program().compile(), scale_lam=1.001)
    with pytest.raises(AssertionError, match="rev, order 2: hvp"):
        check_grads(fn, {"x": 0.3, "w": np.array([1.0, 2.0])}, symbolic=False, **EVERY)


def _scaled(method, factor):
    """A bound method whose results (a number, an array, or dicts of them) are scaled."""

    def scale(result):
        if isinstance(result, dict):
            return {k: scale(v) for k, v in result.items()}
        if isinstance(result, tuple):
            return (result[0], scale(result[1]))  # jvp: (value, derivative)
        return factor * np.asarray(result)

    return lambda *args, **kwargs: scale(method(*args, **kwargs))


# Each derivative method of CompiledProgram, the check that must catch it, and the
# (modes, order) under which that check is not run, so a wrong result goes unseen.
WRONG = [
    ("jvp", "fwd, order 1: jvp", (("rev",), 2)),
    ("hvp", "rev, order 2: hvp", (("fwd", "rev"), 1)),
    ("hessian", "fwd, order 2:", (("rev",), 2)),
]


@pytest.mark.parametrize(("method", "message", "blind"), WRONG, ids=[w[0] for w in WRONG])
def test_each_mode_and_order_catches_its_own_method(method, message, blind):
    inputs = {"x": np.array([0.1, 0.5]), "w": np.array([[1.0, 2.0], [0.3, -1.0]])}
    fn = _program().compile()
    setattr(fn, method, _scaled(getattr(fn, method), 1 + 1e-4))
    with pytest.raises(AssertionError, match=message) as info:
        check_grads(fn, inputs, **EVERY)
    assert "central differences" in str(info.value)
    modes, order = blind
    check_grads(fn, inputs, modes=modes, order=order)  # that check not asked for: passes


def test_cyclic_program_to_second_order():
    """jvp, hvp and the Hessian through a fixed point, with the solving options passed."""
    prog = lad.parse("input x\ninput y\nh = tanh(0.5*h + x*y)\nout = h**2 + x*h\n")
    check_grads(prog, {"x": np.array([0.3, -0.7]), "y": 1.5}, options={"tol": 1e-13}, **EVERY)


def test_bad_modes_and_order_are_program_errors():
    with pytest.raises(lad.ProgramError, match="modes must be among"):
        check_grads(_program(), {"x": 0.3, "w": np.ones(2)}, modes=("backward",))
    with pytest.raises(lad.ProgramError, match="order must be 1 or 2"):
        check_grads(_program(), {"x": 0.3, "w": np.ones(2)}, order=3)
