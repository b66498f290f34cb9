"""Hostile programs: small texts and expressions that once hung, exploded or crashed.

Each either works within a time bound (a SIGALRM alarm, not a speed assertion) or is a
`ParseError` at its line and column / a `ProgramError` naming its constraint. Issue 11,
items B, 5 and 6, and a fuzz of such texts that keeps it so.
"""

from __future__ import annotations

import math
import warnings

import mpmath
import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lagrangian_ad as lad
from lagrangian_ad.building._program import MAX_EXPRESSION_DEPTH
from lagrangian_ad.testing import check_grads

x = sp.Symbol("x", real=True)


def _parse_error_at(text: str, column: int, words: str, time_limit) -> lad.ParseError:
    with time_limit(5), pytest.raises(lad.ParseError) as info:
        lad.parse(f"input x\ny = {text}\n")
    err = info.value
    assert (err.line, err.column) == (2, column + 4), str(err)
    assert words in str(err)
    return err


# --------------------------------------------------------------------------- 5: constants

# Constants whose exact value SymPy computed at full precision, inside abs() or a
# comparison: 0.5**cosh(10**7) ran for minutes. Each has an argument beyond 10**400,
# where double precision has only ±inf (and then no sin or power of it is computable).
# text, column of the operation, the argument named
_BEYOND = [
    ("abs(x + 0.5**cosh(10000000))", 12, "cosh(10000000)"),
    ("atan2(0.6**cosh(10000000), 8)*x", 10, "cosh(10000000)"),
    ("x + 2**cosh(10000000)", 6, "cosh(10000000)"),
    ("x*exp(cosh(10000000))", 3, "cosh(10000000)"),
    ("x + sin(exp(exp(100)))", 5, "exp(exp(100))"),
    ("x*cos(pi**100000)", 3, "pi**100000"),
]


@pytest.mark.parametrize(("text", "column", "argument"), _BEYOND, ids=[t for t, *_ in _BEYOND])
def test_functions_of_constants_beyond_the_double_range(text, column, argument, time_limit):
    assert float(mpmath.cosh(10_000_000)) == float(mpmath.exp(mpmath.exp(100))) == math.inf
    err = _parse_error_at(text, column, "beyond the range of float64", time_limit)
    assert argument in str(err)


def _at_60_digits(f) -> float:
    with mpmath.workdps(60):
        return float(f())


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("x + exp(exp(100))", math.inf),
        ("x + pi**100000", math.inf),
        ("abs(x + pi**100000)", math.inf),
        ("max(x, exp(exp(100)))", math.inf),
        ("abs(x + exp(-exp(100)))", 0.5),
        ("x + sin(exp(100))", 0.5 + _at_60_digits(lambda: mpmath.sin(mpmath.exp(100)))),
    ],
)
def test_constants_at_the_edge_of_the_range_parse_and_compile(text, value, time_limit):
    # exp(exp(100)) and pi**100000 are inf in double precision (mpmath agrees), their
    # arguments are not: they are kept, and give inf with a warning, quickly.
    with time_limit(5):
        fn = lad.parse(f"input x\ny = {text}\n").compile()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lad.NonFiniteWarning)
            got, grad = fn.value_and_grad({"x": 0.5})
    assert got == pytest.approx(value, rel=1e-15)
    assert grad["x"] in (0.0, 1.0)


# text, column, the same constant in mpmath (complex)
_NOT_REAL = [
    ("atanh(12)*x", 1, lambda: mpmath.atanh(12)),
    ("x + acos(2)", 5, lambda: mpmath.acos(2)),
    ("asin(-3)*x", 1, lambda: mpmath.asin(-3)),
    ("x*(-8)**(1/3)", 7, lambda: mpmath.power(-8, mpmath.mpf(1) / 3)),
    ("x + besselk(1, -1)", 5, lambda: mpmath.besselk(1, -1)),
    ("x + log(-2)", 5, lambda: mpmath.log(-2)),
    ("x + acosh(0.5)", 5, lambda: mpmath.acosh(0.5)),
]


@pytest.mark.parametrize(("text", "column", "reference"), _NOT_REAL, ids=[t for t, *_ in _NOT_REAL])
def test_non_real_constants_are_parse_errors_at_their_column(text, column, reference, time_limit):
    # atanh(12), acos(2), (-8)**(1/3) gave NaN silently; log(-2) was already refused.
    assert abs(_at_60_digits(lambda: mpmath.im(reference()))) > 0.1
    _parse_error_at(text, column, "real", time_limit)


def test_constants_outside_a_function_domain(time_limit):
    # erfinv(2) raised mpmath's own ValueError, from parse and from compile.
    with pytest.raises(ValueError, match="defined only for"):
        mpmath.erfinv(2)
    _parse_error_at("x + erfinv(2)", 5, "cannot evaluate the constant erfinv(2)", time_limit)
    prog = lad.Program()
    xs = prog.input("x")
    prog.define("y", xs + sp.erfinv(2))
    with time_limit(5), pytest.raises(lad.ProgramError, match="constraint 'y': cannot evaluate"):
        prog.compile()


def test_parse_of_something_that_is_not_text():
    with pytest.raises(lad.ParseError, match="str or bytes, not int"):
        lad.parse(12)


# --------------------------------------------------------------------------- 5: sizes


def _sum_of_sines(n: int) -> tuple[sp.Expr, list[sp.Symbol]]:
    xs = list(sp.symbols(f"x0:{n}", real=True))
    return sp.Add(*[sp.sin(s) for s in xs]), xs


def _check_sum_of_sines(n: int, time_limit, seconds: float) -> None:
    expr, xs = _sum_of_sines(n)
    at = {s.name: 0.001 * k for k, s in enumerate(xs)}
    with time_limit(seconds):
        prog = lad.decompose(expr, inputs=xs)
        value, grad = prog.compile().value_and_grad(at)
    assert len(prog.ir.constraints) == n + 1
    k = np.arange(n) * 0.001
    assert value == pytest.approx(np.sin(k).sum(), rel=1e-13)
    np.testing.assert_allclose([grad[s.name] for s in xs], np.cos(k), rtol=1e-15)


def test_decompose_of_a_wide_sum(time_limit):
    # The wide constraint z = z1 + … + z3000 was one chain of 3,000 additions: a
    # RecursionError from Python's compiler (at 30,000 terms, 9.6 GB and then a
    # ProgramError with an empty reason).
    _check_sum_of_sines(3000, time_limit, 30)


@pytest.mark.slow
def test_decompose_of_a_sum_of_thirty_thousand_terms(time_limit):
    _check_sum_of_sines(30_000, time_limit, 120)


# --------------------------------------------------------------------------- 6: depth


def test_define_refuses_expressions_too_deep_for_sympy_and_decompose_takes_them():
    # sin nested 1,200 times: a raw RecursionError from SymPy (in free_symbols) before.
    expr = x
    for _ in range(1200):
        expr = sp.sin(expr, evaluate=False)
    prog = lad.Program()
    prog.input("x")
    with pytest.raises(lad.ProgramError, match="nested 1200 levels deep") as info:
        prog.define("y", expr)
    assert "lad.decompose" in str(info.value) and f"at most {MAX_EXPRESSION_DEPTH}" in str(info)
    sol = lad.decompose(expr, inputs=[x]).solve({"x": 0.5})
    value, slope = 0.5, 1.0
    for _ in range(1200):  # the chain rule by hand: d sin(u) = cos(u) du
        value, slope = math.sin(value), slope * math.cos(value)
    assert sol.value == pytest.approx(value, rel=1e-13)
    assert sol.grad["x"] == pytest.approx(slope, rel=1e-12)


def test_define_takes_expressions_up_to_the_depth_limit():
    deepest = x
    for _ in range(MAX_EXPRESSION_DEPTH):
        deepest = sp.sin(deepest, evaluate=False)
    prog = lad.Program()
    prog.input("x")
    with pytest.raises(lad.ProgramError, match=f"nested {MAX_EXPRESSION_DEPTH + 1} levels"):
        prog.define("y", sp.sin(deepest, evaluate=False))
    prog.define("y", deepest)
    check_grads(prog, {"x": 0.3})


# --------------------------------------------------------------------------- fuzz

_CONSTANTS = st.sampled_from(
    [
        "0",
        "1",
        "-1",
        "2",
        "0.5",
        "1e308",
        "1e-300",
        "10**308",
        "10**10**10",
        "2**1023",
        "pi",
        "E",
        "pi**100000",
        "exp(exp(100))",
        "exp(-exp(100))",
        "cosh(10000000)",
        "0.5**cosh(10000000)",
        "atanh(12)",
        "acos(2)",
        "asin(-1.5)",
        "(-8)**(1/3)",
        "log(-2)",
        "log(0)",
        "sqrt(-1)",
        "erfinv(2)",
        "gamma(-1)",
        "1/0",
        "99999999999999999999",
        "9" * 300,
    ]
)
_UNARY = st.sampled_from(["sin", "cos", "tan", "tanh", "exp", "log", "abs", "sqrt", "atan", "-"])
_BINARY = st.sampled_from(["+", "-", "*", "/", "**"])


def _grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(_UNARY, inner).map(lambda t: f"-({t[1]})" if t[0] == "-" else f"{t[0]}({t[1]})"),
        st.tuples(inner, _BINARY, inner).map(lambda t: f"({t[0]}){t[1]}({t[2]})"),
        st.tuples(inner, _BINARY, inner).map(lambda t: f"{t[0]}{t[1]}{t[2]}"),
        st.tuples(st.sampled_from(["max", "min", "atan2"]), inner, inner).map(
            lambda t: f"{t[0]}({t[1]}, {t[2]})"
        ),
    )


_PIECES = st.recursive(st.one_of(st.just("x"), st.just("y"), _CONSTANTS), _grow, max_leaves=6)

# Shapes that are hostile by size: deep nesting, towers, long sums and products.
_SHAPES = st.one_of(
    st.tuples(_UNARY, st.integers(1, 200), _PIECES).map(
        lambda t: (f"{t[0]}(" if t[0] != "-" else "-(") * t[1] + t[2] + ")" * t[1]
    ),
    st.tuples(st.integers(1, 150), _PIECES).map(lambda t: "(" * t[0] + t[1] + ")" * t[0]),
    st.tuples(st.integers(1, 60), _PIECES).map(lambda t: "**".join([f"({t[1]})"] * t[0])),
    st.tuples(st.integers(1, 60), st.sampled_from(["x", "2", "y", "0.5"])).map(
        lambda t: "**".join([t[1]] * t[0])
    ),
    st.tuples(st.integers(1, 1000), _BINARY.filter(lambda b: b != "**"), _PIECES).map(
        lambda t: t[1].join([f"({t[2]})"] * t[0])[:15_000]
    ),
    st.tuples(st.integers(1, 200), _PIECES).map(
        lambda t: "*".join(f"(x + {k})" for k in range(t[0])) + f"*({t[1]})"
    ),
)


def _parses_and_compiles_or_says_where(text: str, time_limit) -> None:
    """Within the time bound, either a program that compiles and runs, or a ParseError
    at a line and column, or a ProgramError that names the constraint."""
    with time_limit(5):
        try:
            prog = lad.parse(f"input x\ninput y\nz = {text}\n")
        except lad.ParseError as err:
            assert err.line == 3 and err.column is not None, str(err)
            assert 1 <= err.column <= len(text) + 5, str(err)
            return
        try:
            fn = prog.compile()
        except lad.ProgramError as err:
            assert "constraint 'z'" in str(err), str(err)
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lad.NonFiniteWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            fn.value_and_grad({"x": 0.25, "y": 1.5})
        assert str(lad.parse(str(prog))) == str(prog)


# time_limit is a factory without state: sharing it between examples is safe
_FUZZ = {"suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}


@settings(max_examples=250, **_FUZZ)
@given(_PIECES)
def test_fuzz_small_hostile_expressions(time_limit, text):
    _parses_and_compiles_or_says_where(text, time_limit)


@settings(max_examples=80, **_FUZZ)
@given(_SHAPES)
def test_fuzz_hostile_shapes(time_limit, text):
    _parses_and_compiles_or_says_where(text, time_limit)


def test_a_power_of_a_function_of_a_huge_number_round_trips(time_limit):
    """cos(10**308)*cos(10**308) is printed cos(10**308)**2: the power's size bound reads
    the numbers SymPy multiplies out, not those inside a function (found by the fuzzer)."""
    with time_limit(5):
        prog = lad.parse("input x\nz = x*cos(10**308)*cos(10**308)\n")
        again = lad.parse(str(prog))
    assert "**2" in str(prog) and str(again) == str(prog)
    with mpmath.workdps(400):  # cos of a 309-digit integer needs all of its digits
        exact = 0.5 * float(mpmath.cos(mpmath.mpf(10) ** 308) ** 2)
    assert again.compile().value({"x": 0.5}) == pytest.approx(exact, rel=1e-12)
