"""Building programs: shapes, names, and every ProgramError with its message."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad
from lagrangian_ad import ProgramError


def test_input_shapes_and_entry_names():
    prog = lad.Program()
    x = prog.input("x")
    v = prog.input("v", shape=(3,))
    W = prog.input("W", shape=(2, 3))
    assert isinstance(x, sp.Symbol) and x.name == "x"
    assert isinstance(v, sp.Matrix) and v.shape == (3, 1)
    assert [s.name for s in v] == ["v[0]", "v[1]", "v[2]"]
    assert W.shape == (2, 3) and W[0, 1].name == "W[0,1]"
    assert prog.inputs["v"].shape == (3,)
    assert prog.inputs["W"].shape == (2, 3)


def test_define_array_shapes():
    prog = lad.Program()
    W = prog.input("W", shape=(2, 3))
    x = prog.input("x", shape=(3,))
    h = prog.define("h", W * x)
    assert h.shape == (2, 1) and prog.intermediates["h"].shape == (2,)
    M = prog.define("M", sp.Matrix([[h[0], h[1]], [h[1], h[0]]]))
    assert prog.intermediates["M"].shape == (2, 2) and M[1, 0].name == "M[1,0]"
    r = prog.define("r", sp.Matrix([[h[0], h[1]]]))
    assert prog.intermediates["r"].shape == (1, 2) and r.shape == (1, 2)


def test_declared_variable_defined_later():
    prog = lad.Program()
    x = prog.input("x")
    a = prog.var("a")
    b = prog.define("b", 2 * a)
    assert prog.define(a, x**2) == a
    prog.output(b)
    sol = prog.solve({"x": 3.0})
    assert sol.value == pytest.approx(18.0)  # b = 2 x²
    assert sol.grad["x"] == pytest.approx(12.0)


def test_output_defaults_to_last_defined():
    prog = lad.Program()
    x = prog.input("x")
    prog.define("a", x + 1)
    prog.define("b", x * 3)
    assert prog.ir.output.name == "b"
    prog.output("a")
    assert prog.ir.output.name == "a"


def test_symbols_matched_by_name():
    """A plain sympy.Symbol('x') from user code stands for the program's real x."""
    prog = lad.Program()
    prog.input("x")
    y = prog.define("y", sp.Symbol("x") ** 2)
    assert prog.solve({"x": 3.0}).grad["x"] == pytest.approx(6.0)
    assert y.name == "y"


def test_multiplier_symbols():
    prog = lad.Program()
    x = prog.input("x")
    prog.define("v", sp.Matrix([x, 2 * x]))
    prog.define("a", sp.exp(x))
    assert prog.multiplier("a") == sp.Symbol("lambda_a", real=True)
    lam_v = prog.multiplier("v")
    assert lam_v.shape == (2, 1) and lam_v[1].name == "lambda_v[1]"
    assert prog.multiplier("v[0]").name == "lambda_v[0]"
    assert sp.latex(prog.multiplier("a")) == r"\lambda_{a}"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p, x: p.define("a", x + sp.Symbol("y")), "constraint 'a': y is not a variable"),
        (lambda p, x: (p.define("a", x), p.define("a", 2 * x)), "'a' is defined twice"),
        (lambda p, x: p.input("x"), "'x' is declared twice"),
        (lambda p, x: p.define("x", 1 + x), "'x' is an input"),
        (lambda p, x: p.define("a", "exp(x)"), "got the string 'exp(x)'"),
        (lambda p, x: p.define("a", sp.Function("g")(x)), "unknown function g"),
        (lambda p, x: p.define("a", sp.I * x), "not real-valued"),
        (lambda p, x: p.define("a", sp.Derivative(x**2, x)), "unevaluated Derivative"),
        (lambda p, x: p.define("a", np.ones(2)), "NumPy array"),
        (lambda p, x: p.define("a", x > 1), "not a scalar expression"),
        (lambda p, x: p.input("lambda_q"), "reserved for the multipliers"),
        (lambda p, x: p.input("2x"), "invalid variable name '2x'"),
        (lambda p, x: p.input("for"), "invalid variable name 'for'"),
        (lambda p, x: p.input("W", shape=(2, 0)), "shape (2, 0) not supported"),
        (lambda p, x: p.input("W", shape=(2, 2, 2)), "not supported"),
        (lambda p, x: p.output("nope"), "no variable named 'nope'"),
        (lambda p, x: p.output(x), "x is an input"),
        (lambda p, x: p.output(x + 1), "define the expression as an intermediate first"),
        (lambda p, x: (p.define("v", sp.Matrix([x, x])), p.output("v")), "must be a scalar"),
        (lambda p, x: (p.var("h", shape=(2,)), p.define("h", x)), "declared with shape (2,)"),
        (lambda p, x: p.define(sp.Symbol("zz"), x), "zz was not declared"),
        (lambda p, x: p.multiplier("x"), "'x' is an input"),
    ],
)
def test_building_errors_name_the_culprit(build, message):
    prog = lad.Program()
    x = prog.input("x")
    with pytest.raises(ProgramError, match=_escape(message)):
        build(prog, x)
        prog.ir  # noqa: B018  (freezing validates)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p, x: p.var("h"), "intermediate h declared with var\\(\\) but never defined"),
        (lambda p, x: None, "no intermediates"),
        (lambda p, x: p.define("v", sp.Matrix([x, x])), "last intermediate 'v' is an array"),
    ],
)
def test_freezing_errors(build, message):
    prog = lad.Program()
    x = prog.input("x")
    build(prog, x)
    with pytest.raises(ProgramError, match=message):
        prog.solve({"x": 1.0})


def test_errors_are_value_errors_and_package_errors():
    assert issubclass(ProgramError, ValueError)
    assert issubclass(ProgramError, lad.LagrangianADError)
    assert issubclass(lad.ParseError, lad.LagrangianADError)
    assert issubclass(lad.ConvergenceError, RuntimeError)
    assert issubclass(lad.SingularSystemError, lad.LagrangianADError)


def test_program_change_invalidates_compiled():
    prog = lad.Program()
    x = prog.input("x")
    prog.define("a", x**2)
    first = prog.compile()
    assert prog.compile() is first
    prog.define("b", x**3)
    assert prog.compile() is not first
    assert prog.solve({"x": 2.0}).grad["x"] == pytest.approx(12.0)


def test_str_prints_the_text_format():
    prog = lad.Program()
    x = prog.input("x")
    W = prog.input("W", shape=(2, 2))
    prog.define("h", sp.Matrix([sp.tanh(W[0, 0] * x), W[1, 1] * x]))
    h = prog.intermediates["h"].as_sympy()
    prog.define("f", h[0] + 0.25 * sp.Abs(h[1]))
    text = str(prog)
    assert text.splitlines() == [
        "input x",
        "input W[2,2]",
        "var h[2]",
        "h[0] = tanh(W[0,0]*x)",
        "h[1] = W[1,1]*x",
        "f = h[0] + 0.25*abs(h[1])",
        "output f",
    ]


def _escape(message: str) -> str:
    return re.escape(message)
