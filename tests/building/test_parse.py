"""Tests of the text format: parsing, printing back, errors with line and column, and
hostile input (nothing of the text is ever executed)."""

from __future__ import annotations

import builtins
import math
import time
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import lagrangian_ad as lad
from lagrangian_ad.building._parse import FUNCTIONS, MAX_DEPTH, parse_expression
from lagrangian_ad.using._demo import blog_program

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.lad"))

x, y, z = sp.symbols("x y z", real=True)


def _expr(text: str, names: str = "x y z") -> sp.Expr:
    """The expression of ``y0 = text`` in a program with scalar inputs ``names``."""
    decls = "\n".join(f"input {n}" for n in names.split())
    prog = lad.parse(f"{decls}\ny0 = {text}\n")
    (c,) = prog.ir.constraints
    return c.expr


def _program_eq(p: lad.Program, q: lad.Program) -> None:
    """Same inputs, intermediates, constraints (as SymPy objects) and output."""
    a, b = p.ir, q.ir
    assert [(v.name, v.shape) for v in a.inputs] == [(v.name, v.shape) for v in b.inputs]
    assert [(v.name, v.shape) for v in a.intermediates] == [
        (v.name, v.shape) for v in b.intermediates
    ]
    assert [(c.label, c.target, c.expr) for c in a.constraints] == [
        (c.label, c.target, c.expr) for c in b.constraints
    ]
    assert a.output == b.output


# ------------------------------------------------------------------- programs built in Python


_blog = blog_program


def _arrays() -> lad.Program:
    prog = lad.Program()
    x = prog.input("x")
    W = prog.input("W", shape=(2, 3))
    s = prog.input("s", shape=(3,))
    a = prog.define("a", sp.exp(x) * 1.5e-7 + sp.Abs(x - 1) + sp.E + sp.pi + W[0, 2] ** 2)
    v = prog.define("v", W * sp.Matrix([a, s[1], x]))
    m = prog.define("m", sp.Matrix([[v[0], x / 3], [sp.Rational(2, 7) * v[1], -2.5e20 * x]]))
    prog.define("out", m[0, 0] * m[1, 1] + m[0, 1] ** 3 - m[1, 0] + x ** sp.Rational(1, 3))
    return prog


def _every_function() -> lad.Program:
    prog = lad.Program()
    x = prog.input("x")
    y = prog.input("y")
    terms = [
        sp.exp(x),
        sp.log(x),
        sp.log(x, 2),
        sp.sqrt(x),
        sp.cbrt(x),
        sp.sin(x),
        sp.cos(x),
        sp.tan(x),
        sp.cot(x),
        sp.sec(x),
        sp.csc(x),
        sp.asin(x / 2),
        sp.acos(x / 2),
        sp.atan(x),
        sp.acot(x),
        sp.atan2(y, x),
        sp.sinh(x),
        sp.cosh(x),
        sp.tanh(x),
        sp.coth(x),
        sp.asinh(x),
        sp.acosh(x + 1),
        sp.atanh(x / 2),
        sp.Abs(y - x),
        sp.sign(y - x),
        sp.Heaviside(y - x),
        sp.erf(x),
        sp.erfc(x),
        sp.sinc(x),
        sp.Max(x, y),
        sp.Min(x, y, 1),
        x**-2,
        1 / (x + y),
        0.5 * x,
        1e-300 * y,
    ]
    for k, t in enumerate(terms):
        prog.define(f"t{k}", t)
    prog.define("total", sp.Add(*prog.intermediates["t0"].symbols))
    return prog


def _cyclic() -> lad.Program:
    prog = lad.Program()
    x = prog.input("x")
    h = prog.var("h")
    prog.define(h, sp.tanh(0.5 * h + x))
    g = prog.var("g", shape=(2,))
    prog.define(g, sp.Matrix([sp.cos(g[1]) * x, sp.sin(g[0]) / 2]))
    prog.define("out", h + g[0])
    return prog


def _implicit() -> lad.Program:
    prog = lad.Program()
    x = prog.input("x")
    u = prog.var("u")
    w = prog.var("w")
    prog.equation(u**3 + u, x)
    prog.equation(sp.exp(w) + w, u)
    prog.define("y", u**2 + w)
    prog.output("y")
    return prog


BUILT = {
    "blog": _blog,
    "arrays": _arrays,
    "every_function": _every_function,
    "cyclic": _cyclic,
    "implicit": _implicit,
}


@pytest.mark.parametrize("name", sorted(BUILT))
def test_round_trip_of_programs_built_in_python(name):
    prog = BUILT[name]()
    text = str(prog)
    again = lad.parse(text)
    assert str(again) == text
    _program_eq(again, prog)


@pytest.mark.parametrize(
    ("name", "inputs"),
    [
        ("blog", {"x": np.array([0.1, 0.5, -1.0])}),
        ("arrays", {"x": 0.7, "W": np.arange(6.0).reshape(2, 3) / 7, "s": [0.1, 0.2, 0.3]}),
        ("every_function", {"x": 0.6, "y": 0.9}),
    ],
)
def test_round_trip_gives_the_same_solution(name, inputs):
    prog = BUILT[name]()
    want = prog.solve(inputs)
    got = lad.parse(str(prog)).solve(inputs)
    np.testing.assert_allclose(got.value, want.value, rtol=1e-14)
    for k in want.grad:
        np.testing.assert_allclose(got.grad[k], want.grad[k], rtol=1e-14)
    for k in want.multipliers:
        np.testing.assert_allclose(got.multipliers[k], want.multipliers[k], rtol=1e-14)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_files_parse_and_print_back(path):
    prog = lad.load(path)
    text = str(prog)
    assert str(lad.parse(text)) == text
    _program_eq(lad.parse(text), prog)


def test_blog_file_is_the_blog_program():
    prog = lad.load(EXAMPLES / "blog.lad")
    _program_eq(prog, _blog())
    x0 = 0.5
    sol = prog.solve({"x": x0})
    a = math.exp(x0)
    c = a + a * a
    lam_c = math.exp(c) + math.cos(c)
    assert sol.multipliers["c"] == pytest.approx(lam_c, rel=1e-12)
    assert sol.multipliers["a"] == pytest.approx(lam_c * (1 + 2 * a), rel=1e-12)
    assert sol.grad["x"] == pytest.approx(lam_c * (1 + 2 * a) * a, rel=1e-12)


def test_example_files_have_their_structure():
    fixed = lad.load(EXAMPLES / "fixed_point.lad").ir
    (c,) = fixed.constraints
    h, xs = sp.Symbol("h", real=True), sp.Symbol("x", real=True)
    assert c.target == h and c.expr == sp.tanh(0.5 * h + xs)

    implicit = lad.load(EXAMPLES / "implicit.lad").ir
    u = sp.Symbol("u", real=True)
    residuals = [c.residual for c in implicit.constraints if c.target is None]
    assert residuals == [u**3 + u - xs]
    assert str(implicit.output) == "y"

    net = lad.load(EXAMPLES / "network.lad").ir
    assert {v.name: v.shape for v in net.inputs} == {
        "x": (3,),
        "W": (2, 3),
        "b": (2,),
        "v": (2,),
        "t": (),
    }
    assert str(net.output) == "loss"


# --------------------------------------------------------------------------- expressions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-x**2", -(x**2)),
        ("-2**2", sp.Integer(-4)),
        ("2**3**2", sp.Integer(512)),
        ("2**-1", sp.Rational(1, 2)),
        ("2**-x*3", 3 * 2 ** (-x)),
        ("x**-y**2", x ** (-(y**2))),
        ("x/y/z", x / y / z),
        ("x - y - z", x - y - z),
        ("x - (y - z)", x - y + z),
        ("(x + y)*z", (x + y) * z),
        ("x + y*z**2", x + y * z**2),
        ("1/3*x", x / 3),
        ("2*-x", -2 * x),
        ("+x", x),
        ("--x", x),
        ("1e-3*x", sp.Float(1e-3) * x),
        ("(1.5e-07)*x", sp.Float(1.5e-7) * x),
        ("1.5E+20*x", sp.Float(1.5e20) * x),
        (".5*x + 5.*y", sp.Float(0.5) * x + sp.Float(5.0) * y),
        ("E**x", sp.exp(x)),
        ("pi/2 + E", sp.pi / 2 + sp.E),
        ("log(x, 2)", sp.log(x) / sp.log(2)),
        ("abs(x) + Abs(y)", sp.Abs(x) + sp.Abs(y)),
        ("max(x, y, z) - Min(x, 1)", sp.Max(x, y, z) - sp.Min(x, 1)),
        ("max(2, 3)", sp.Integer(3)),
        ("atan2(y, x)", sp.atan2(y, x)),
        ("sqrt(x)*cbrt(y)", sp.sqrt(x) * sp.cbrt(y)),
        ("exp( x )  *\tsin(y)", sp.exp(x) * sp.sin(y)),
        ("007*x", 7 * x),
        ("-(x + y)*z", sp.Mul(-1, x + y, z)),  # the sign of a product, as SymPy prints it
        ("-1/(3*(x + 3))", sp.Rational(-1, 3) / (x + 3)),  # a denominator the printer made
        ("-(x + y)", -x - y),
    ],
)
def test_expressions_follow_python_precedence(text, expected):
    assert _expr(text) == expected


@pytest.mark.parametrize(
    ("name", "function", "arity"),
    [
        ("exp", sp.exp, 1),
        ("log", sp.log, 1),
        ("sqrt", sp.sqrt, 1),
        ("sin", sp.sin, 1),
        ("cos", sp.cos, 1),
        ("tan", sp.tan, 1),
        ("tanh", sp.tanh, 1),
        ("sinh", sp.sinh, 1),
        ("cosh", sp.cosh, 1),
        ("asin", sp.asin, 1),
        ("acos", sp.acos, 1),
        ("atan", sp.atan, 1),
        ("atan2", sp.atan2, 2),
        ("abs", sp.Abs, 1),
        ("sign", sp.sign, 1),
        ("max", sp.Max, 2),
        ("min", sp.Min, 2),
        ("erf", sp.erf, 1),
        ("asinh", sp.asinh, 1),
        ("acosh", sp.acosh, 1),
        ("atanh", sp.atanh, 1),
    ],
)
def test_functions_map_to_sympy(name, function, arity):
    args = [x, y][:arity]
    assert name in FUNCTIONS
    assert _expr(f"{name}({', '.join(map(str, args))})") == function(*args)


def test_every_registered_function_prints_and_parses_back():
    for name, spec in FUNCTIONS.items():
        args = ", ".join(["x", "y", "z"][: max(spec.min_args, 1)])
        prog = lad.parse(f"input x\ninput y\ninput z\nf = {name}({args}) + x\n")
        assert str(lad.parse(str(prog))) == str(prog), name


def test_statements_comments_and_whitespace():
    text = (
        "\ufeff# a comment line\r\n"
        "input x, W[2,3]   # two inputs\r\n"
        "\r\n"
        "var v[2], u\n"
        "\tb = a*v[1] + u  # uses a, v and u before their lines\n"
        "v[1] = W[1, 2] * x\n"
        "v[0] = W[0,0]\n"
        "a = exp(x)\n"
        "u**3 + u = x\n"
        "output b\n"
    )
    prog = lad.parse(text)
    ir = prog.ir
    assert [(v.name, v.shape) for v in ir.inputs] == [("x", ()), ("W", (2, 3))]
    assert [v.name for v in ir.intermediates] == ["b", "v", "a", "u"]
    W12 = sp.Symbol("W[1,2]", real=True)
    v0, v1 = sp.Symbol("v[0]", real=True), sp.Symbol("v[1]", real=True)
    by_target = {c.target: c.expr for c in ir.constraints}
    assert by_target[v1] == W12 * x
    assert by_target[v0] == sp.Symbol("W[0,0]", real=True)
    assert str(ir.output) == "b"


def test_output_defaults_to_the_last_definition_and_takes_entries():
    assert str(lad.parse("input x\na = x\nb = 2*a\n").ir.output) == "b"
    prog = lad.parse("input x\nvar v[2]\nv[0] = x\nv[1] = x**2\noutput v[1]\n")
    assert str(prog.ir.output) == "v[1]"
    sol = prog.solve({"x": 3.0})
    assert sol.value == 9.0 and sol.grad["x"] == 6.0


def test_statement_words_are_also_names():
    prog = lad.parse("input input\noutput = input**2\nvar = output + 1\noutput output\n")
    assert str(prog.ir.output) == "output"
    assert str(lad.parse(str(prog))) == str(prog)


def test_parse_expression_lists_names_in_order_of_appearance():
    expr, names = parse_expression("exp(y) * sin(x) + y + b - b")
    assert [s.name for s in names] == ["y", "x", "b"]
    assert expr == sp.exp(y) * sp.sin(x) + y


def test_parse_accepts_bytes_and_load_reads_files(tmp_path):
    text = "input x\ny = exp(x)\n"
    assert str(lad.parse(text.encode())) == str(lad.parse(text))
    path = tmp_path / "p.lad"
    path.write_text(text)
    assert str(lad.load(path)) == str(lad.load(str(path))) == str(lad.parse(text))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("input x\ny = foo(x)\n", 2, 5, "unknown function 'foo'"),
        ("input x\ny = q + x\n", 2, 5, "undefined name 'q'"),
        ("input x\ny = x +\n", 2, 8, "incomplete"),
        ("input x\ny = (x + 1\n", 2, 11, "expected ')'"),
        ("input x\ny = x + 1)\n", 2, 10, "unmatched ')'"),
        ("input x\ny = 2x\n", 2, 6, "expected an operator"),
        ("input x\ny = x^2\n", 2, 6, "'^'"),
        ("input x\ny = x // 2\n", 2, 7, "'//'"),
        ("input x\n\n  y = x == 2\n", 3, 9, "'=='"),
        ("input x\ny = x = 2\n", 2, 7, "more than one '='"),
        ("input x\ny = 1/0\n", 2, 6, "division by zero"),
        ("input x\ny = x*0**-1\n", 2, 8, "division by zero"),
        ("input x\ny = log(0)*x\n", 2, 5, "infinite or undefined"),
        ("input x\ny = sqrt(-1)\n", 2, 5, "not a real number"),
        ("input x\ny = 10**10**10\n", 2, 7, "out of the range"),
        ("input x\ny = x*1e999\n", 2, 7, "out of the range"),
        ("input x\ny = x*" + "9" * 400 + "\n", 2, 7, "digits"),
        ("input x\ny = exp(x, 2)\n", 2, 5, "takes 1 argument"),
        ("input x\ny = atan2(x)\n", 2, 5, "takes 2 argument"),
        ("input x\ny = exp\n", 2, 5, "is a function"),
        ("input x\ny = pi(x)\n", 2, 5, "constant, not a function"),
        ("input x\ny = x[0]\n", 2, 6, "cannot be indexed"),
        ("input W[2,3]\ny = W[2,0]\n", 2, 6, "out of range"),
        ("input W[2,3]\ny = W[0]\n", 2, 6, "out of range"),
        ("input W[2,3]\ny = W[0][1]\n", 2, 9, "one pair of brackets"),
        ("input W[2,3]\ny = W[i,0]\n", 2, 7, "non-negative integer"),
        ("input W[2,3]\ny = W[-1,0]\n", 2, 7, "non-negative integer"),
        # W used whole is the whole array (docs/design.md, "Array programs"): y is an array
        ("input W[2,3]\ny = W + 1\n", 2, 1, "'y' is an array of shape (2, 3)"),
        ("input x\ny = x\ny = 2*x\n", 3, 1, "defined twice (first on line 2)"),
        ("input x\ninput x\ny = x\n", 2, 7, "declared twice"),
        ("input x\nx = 3\n", 2, 1, "is an input"),
        ("input x\nlambda_y = x\n", 2, 1, "reserved for the multipliers"),
        ("input x\nexp = x\n", 2, 1, "name of a function"),
        ("input x\nvar u\ny = x\n", 2, 5, "never defined"),
        ("input x\nvar v[2]\nv[0] = x\n", 2, 5, "v[1]"),
        ("input x\nvar v[2]\nv[0]**3 = x\ny = v[0]\n", 2, 5, "entries v[1] of 'v'"),
        ("input x\nv[0] = x\n", 2, 1, "not declared as an array"),
        ("input x\nvar v[2]\nv = x\n", 3, 1, "array of shape [2]"),
        ("input x\ny = x\noutput x\n", 3, 8, "input"),
        ("input x\ny = x\noutput z\n", 3, 8, "undefined name 'z'"),
        ("input x\ny = x\noutput y\noutput y\n", 4, 1, "second output"),
        ("input x\nvar v[2]\nv[0] = x\nv[1] = x\n", 4, 1, "v"),  # array as default output
        ("input x\n", 1, 1, "defines no intermediate"),
        ("input x\ny x\n", 2, 1, "expected a statement"),
        ("input\n", 1, 6, "expected a name after 'input'"),
        ("input x\noutput\n", 2, 7, "expected a name after 'output'"),
        ("input x\nvar 3\n", 2, 5, "expected a name after 'var'"),
        ("input W[2,3,4]\ny = 1\n", 1, 7, "not supported"),
        ("input W[0]\ny = 1\n", 1, 7, "not supported"),
        ("input W[100000,100000]\ny = 1\n", 1, 7, "entries"),
        ("input x\n1 = 1\n", 2, 1, "involves no variable"),
        ("input x\ny = f(x=1)\n", 2, 8, "'=' inside parentheses"),
        ("input x\ny = exp(x)[0]\n", 2, 11, "expected an operator"),
        ("input x\ny = x # fine\nz = é\n", 3, 5, "in a name"),
        ("input x\ny = x\u00a0+ 1\n", 2, 6, "unexpected character"),
    ],
)
def test_errors_give_line_and_column(text, line, column, words):
    with pytest.raises(lad.ParseError) as info:
        lad.parse(text)
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)
    message = str(err)
    assert words in message
    assert message.startswith(f"line {line}, column {column}: ")
    shown = message.splitlines()
    source_line = text.split("\n")[line - 1]
    if len(shown) >= 3 and source_line.strip() and len(source_line) <= 100:
        # the offending line, then a caret under the column
        assert shown[1] == "    " + source_line.replace("\u00a0", "?")
        assert shown[2] == "    " + " " * (column - 1) + "^"


def test_errors_are_value_errors_of_the_package():
    with pytest.raises(ValueError):
        lad.parse("input x\ny = ?\n")
    assert issubclass(lad.ParseError, lad.LagrangianADError)


def test_unknown_function_lists_the_known_ones():
    with pytest.raises(lad.ParseError) as info:
        lad.parse("input x\ny = expp(x)\n")
    hint = str(info.value).splitlines()[-1]
    assert hint.startswith("hint: did you mean exp")
    assert all(name in hint for name in FUNCTIONS)


def test_undefined_name_says_where_names_come_from():
    with pytest.raises(lad.ParseError) as info:
        lad.parse("input alpha\ny = alpah + 1\n")
    hint = str(info.value).splitlines()[-1]
    assert "did you mean alpha" in hint
    assert "`input alpah`" in hint and "`var alpah`" in hint and "`alpah = …`" in hint


def test_load_names_the_file(tmp_path):
    path = tmp_path / "bad.lad"
    path.write_text("input x\ny = x +* 2\n")
    with pytest.raises(lad.ParseError) as info:
        lad.load(path)
    assert str(info.value).startswith(f"{path}, line 2, column 8: ")


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        lad.load(tmp_path / "nope.lad")


# --------------------------------------------------------------------------- hostile input

HOSTILE = [
    "input x\ny = __import__('os').system('touch PWNED')\n",
    "input x\ny = __import__(x)\n",
    "input x\ny = x.__class__\n",
    "input x\ny = x.real\n",
    "input x\ny = (lambda: 1)()\n",
    "input x\ny = lambda\n",
    "input x\ny = [x for x in range(9)]\n",
    "input x\ny = {x: 1}\n",
    "input x\ny = 'x'\n",
    "input x\ny = exec('1')\n",
    "input x\ny = eval('x')\n",
    "input x\ny = sympify('x')\n",
    "input x\ny = Symbol('x')\n",
    "input x\ny = x if x else 1\n",
    "input x\ny = not x\n",
    "input x\ny = x and 1\n",
    "import os\n",
    "input x\ny = x; import os\n",
    "input x\na = x\ny = a[0]\n",
    "input x\ny = exp(x)[0]\n",
    "input x\ny = 10**10**10\n",
    "input x\ny = 9**9**9**9\n",
    "input x\ny = 2**(10**300)\n",
    "input x\ny = (1/3)**(-10**8)\n",
    "input x\ny = sqrt(2)**10**10\n",
    "input x\ny = 1.0000001**10**12\n",
    "input x\ny = 0.5**-1e300\n",
    "input x\ny = " + "(" * 1000 + "x" + ")" * 1000 + "\n",
    "input x\ny = " + "-" * 5000 + "x\n",
    "input x\ny = " + "exp(" * 500 + "x" + ")" * 500 + "\n",
    "input x\ny = " + "x**" * 500 + "x\n",
    "input x\ny = " + "abs(" * 300 + "x" + ")" * 300 + "\n",
    "input x\ny = " + "max(x, " * 300 + "x" + ")" * 300 + "\n",
    "input x\ny = x" + "+x" * 20000 + "\n",
    "input x\ny = x\0\n",
    "\0\0\0",
    "input W[99999999,99999999]\ny = 1\n",
    "input x\ny = x @ x\n",
    "input x\ny = x % 2\n",
    "input x\ny = `x`\n",
    "input x\ny = x\\\n",
]


@pytest.fixture
def no_evaluation(monkeypatch):
    """Make eval, exec and SymPy's text parsers fail loudly while parsing."""
    calls = []

    def forbidden(name):
        def fail(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called while parsing")

        return fail

    for name in ("eval", "exec"):
        monkeypatch.setattr(builtins, name, forbidden(name))
    import sympy.parsing.sympy_parser as sympy_parser

    monkeypatch.setattr(sympy_parser, "parse_expr", forbidden("parse_expr"))
    return calls


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_is_rejected_without_executing_anything(
    text, no_evaluation, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(lad.ParseError) as info:
        lad.parse(text)
    assert time.perf_counter() - start < 5
    assert info.value.line is not None and info.value.column is not None
    assert not no_evaluation
    assert not (tmp_path / "PWNED").exists()


def test_example_files_parse_without_evaluating(no_evaluation):
    for path in EXAMPLE_FILES:
        lad.load(path)
    assert not no_evaluation


def test_non_utf8_bytes_and_nul_bytes_in_files(tmp_path):
    bad = tmp_path / "latin1.lad"
    bad.write_bytes(b"input x\ny = x + caf\xe9\n")
    with pytest.raises(lad.ParseError) as info:
        lad.load(bad)
    assert (info.value.line, info.value.column) == (2, 12)
    assert "not UTF-8" in str(info.value)

    binary = tmp_path / "binary.lad"
    binary.write_bytes(b"input x\n\x00\x01\x02")
    with pytest.raises(lad.ParseError) as info:
        lad.load(binary)
    assert (info.value.line, info.value.column) == (2, 1)
    assert "NUL" in str(info.value)


def test_size_limits(tmp_path):
    from lagrangian_ad.building import _parse

    with pytest.raises(lad.ParseError, match="too large"):
        lad.parse(b"#" * (_parse.MAX_FILE_BYTES + 1))
    big = tmp_path / "big.lad"
    big.write_bytes(b"#" * (_parse.MAX_FILE_BYTES + 10))
    with pytest.raises(lad.ParseError, match="too large"):
        lad.load(big)
    with pytest.raises(lad.ParseError, match="line too long") as info:
        lad.parse("input x\ny = x" + " " * _parse.MAX_LINE_CHARS + "\n")
    assert info.value.line == 2


def test_depth_limit_is_generous_enough_for_real_expressions():
    depth = MAX_DEPTH // 2 - 2
    text = "exp(" * depth + "x" + ")" * depth
    expected = x
    for _ in range(depth):
        expected = sp.exp(expected)
    assert _expr(text) == expected


_THRICE = sp.Mul(3, x + 3, evaluate=False)  # as printed: a number times a sum, kept

# Functions of a sum whose terms are all negative: SymPy rewrites sin(-x - 1) as
# -sin(x + 1), which never ended under distribute(False) (a RecursionError, reported as
# "nested too deeply" with no line). Each parses to what SymPy builds by default.
_NEGATIVE_SUMS = [
    ("sin(-x - 1)", sp.sin(-x - 1)),
    ("tanh(-0.5*x - 1)", sp.tanh(-0.5 * x - 1)),
    ("cos(-x - 1)", sp.cos(-x - 1)),
    ("tan(-x - 1)", sp.tan(-x - 1)),
    ("sinh(-x - y)", sp.sinh(-x - y)),
    ("atan(-2*x - 1)", sp.atan(-2 * x - 1)),
    ("abs(-x - 1)", sp.Abs(-x - 1)),
    ("sin(pi*x - x - 1)", sp.sin(sp.pi * x - x - 1)),
    ("x**(-(x + 1))*sin(-(y + 1))", x ** (-x - 1) * sp.sin(-y - 1)),
    ("3*(x + 3)*sin(-3*(x + 3))", -_THRICE * sp.sin(_THRICE)),
]


@pytest.mark.parametrize(("text", "expected"), _NEGATIVE_SUMS, ids=[t for t, _ in _NEGATIVE_SUMS])
def test_functions_of_negative_sums(text, expected):
    assert _expr(text) == expected
    prog = lad.parse(f"input x\ninput y\nf = {text}\n")
    again = lad.parse(str(prog))
    _program_eq(again, prog)
    at = {"x": 0.3, "y": -0.7}
    grad = prog.solve(at).grad
    for s in (x, y):
        want = float(sp.diff(expected, s).subs({x: at["x"], y: at["y"]}))
        assert grad[s.name] == pytest.approx(want, rel=1e-13, abs=1e-15)


def test_printed_towers_of_powers_parse_back():
    # x**x**…**x prints with a parenthesis per level, x**(x**(…)): that doubled the
    # text's nesting past the parser's limit. The limit counts levels of the expression.
    for n in (21, MAX_DEPTH):
        prog = lad.parse("input x\nq = x" + "**x" * n + "\n")
        assert str(prog).count("(") == n - 1
        _program_eq(lad.parse(str(prog)), prog)
        assert prog.solve({"x": 1.0}).grad["x"] == pytest.approx(1.0, rel=1e-13)
    with pytest.raises(lad.ParseError, match=f"more than {MAX_DEPTH} levels") as info:
        lad.parse("input x\nq = x" + "**x" * (MAX_DEPTH + 1) + "\n")
    assert (info.value.line, info.value.column) == (2, 6)


def test_a_sum_of_three_thousand_terms_on_one_line():
    # The generated x0 + x1 + … was one left-deep chain: a RecursionError in Python's
    # compiler. Printed back it stays within the line limit.
    n = 3000
    text = "".join(f"input x{k}\n" for k in range(n)) + "y = " + "+".join(f"x{k}" for k in range(n))
    prog = lad.parse(text + "\n")
    _program_eq(lad.parse(str(prog)), prog)
    at = {f"x{k}": float(k) for k in range(n)}
    value, grad = prog.compile().value_and_grad(at)
    assert value == n * (n - 1) / 2 and set(grad.values()) == {1.0}
    negated = lad.parse("input x\ny = " + "-".join(f"{k}*x" for k in range(1, n)) + "\n")
    assert negated.solve({"x": 1.0}).grad["x"] == 1 - (n * (n - 1) // 2 - 1)


# --------------------------------------------------------------------------- fuzzing

_SAMPLE = "\n".join(p.read_text() for p in EXAMPLE_FILES) + str(_arrays()) + str(_implicit())
_ALPHABET = sorted(set(_SAMPLE) | set("0123456789.eE+-*/()[],=#^%'\"@:;{}!\\\t\0\r") | {"é", "λ"})
_TOKENS = [
    "input ",
    "var ",
    "output ",
    "x",
    "W[0,1]",
    "W[2,3]",
    "v[1]",
    "=",
    " = ",
    "\n",
    "(",
    ")",
    "**",
    "*",
    "/",
    "+",
    "-",
    "exp(",
    "max(",
    "log(",
    "1e308",
    "10",
    "0",
    "0.5",
    "(1.5e-07)",
    "E",
    "pi",
    ",",
    "[",
    "]",
    "#",
    "__import__",
    ".",
    "lambda",
    "abs(",
    "h",
    "u**3",
]


def _parse_or_parse_error(text: str | bytes) -> None:
    """Either a valid program that prints and parses back, or a ParseError."""
    try:
        prog = lad.parse(text)
    except lad.ParseError as err:
        assert err.line is not None and err.column is not None
        return
    printed = str(prog)
    assert str(lad.parse(printed)) == printed


@settings(max_examples=150)
@given(st.text(alphabet=_ALPHABET, max_size=200))
def test_fuzz_random_text(text):
    _parse_or_parse_error(text)


@settings(max_examples=150)
@given(st.lists(st.sampled_from(_TOKENS), max_size=40))
def test_fuzz_random_token_soup(tokens):
    _parse_or_parse_error("input x\ninput W[2,3]\n" + "".join(tokens))


@settings(max_examples=150)
@given(
    st.sampled_from([p.read_text() for p in EXAMPLE_FILES] + [str(_arrays()), str(_implicit())]),
    st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "replace", "token"]),
            st.floats(0, 1, exclude_max=True),
            st.sampled_from(_ALPHABET),
            st.sampled_from(_TOKENS),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_fuzz_mutated_programs(text, edits):
    for kind, where, ch, token in edits:
        k = int(where * (len(text) + 1))
        if kind == "insert":
            text = text[:k] + ch + text[k:]
        elif kind == "delete":
            text = text[:k] + text[k + 1 :]
        elif kind == "replace":
            text = text[:k] + ch + text[k + 1 :]
        else:
            text = text[:k] + token + text[k:]
    _parse_or_parse_error(text)


@settings(max_examples=60)
@given(st.binary(max_size=120))
def test_fuzz_random_bytes(data):
    _parse_or_parse_error(b"input x\n" + data)


# Random programs built in Python (a random expression tree per line) print and parse back.

_LEAVES = st.sampled_from(
    [x, y, sp.Integer(2), sp.Rational(1, 3), sp.Float(0.25), sp.Float(-3.5), sp.pi, sp.E]
)
_UNARY = [sp.exp, sp.sin, sp.cos, sp.tanh, sp.log, sp.sqrt, sp.Abs, sp.atan, sp.erf]


def _max(pair):
    try:
        return sp.Max(*pair)
    except (TypeError, ValueError):  # SymPy cannot order complex constants
        return pair[0] + pair[1]


def _grow(children):
    return st.one_of(
        st.tuples(st.sampled_from(_UNARY), children).map(lambda t: t[0](t[1])),
        st.tuples(children, children).map(lambda t: t[0] + t[1]),
        st.tuples(children, children).map(lambda t: t[0] * t[1]),
        st.tuples(children, children).map(lambda t: t[0] - 2 * t[1]),
        st.tuples(children, children).map(lambda t: -t[0] / (t[1] + 3)),
        st.tuples(children, st.sampled_from([-1.5e-7, 2.5e20, -0.5, sp.Rational(-2, 7)])).map(
            lambda t: t[1] * t[0]
        ),
        st.tuples(children, st.sampled_from([2, 3, -1, sp.Rational(1, 2)])).map(
            lambda t: t[0] ** t[1]
        ),
        st.tuples(children, children).map(_max),
    )


_EXPRS = st.recursive(_LEAVES, _grow, max_leaves=8).filter(
    lambda e: e.free_symbols and not e.has(sp.zoo, sp.nan, sp.I, sp.oo, -sp.oo)
)


@settings(max_examples=60)
@given(st.lists(_EXPRS, min_size=1, max_size=4))
def test_random_programs_print_and_parse_back(exprs):
    prog = lad.Program()
    ours = {"x": prog.input("x"), "y": prog.input("y")}
    previous = []
    for k, e in enumerate(exprs):
        e = e.xreplace({s: ours[s.name] for s in e.free_symbols})
        if previous:  # chain the lines: each may use the one before
            e = e + previous[-1]
        previous.append(prog.define(f"z{k}", e))
    text = str(prog)
    again = lad.parse(text)
    assert str(again) == text
    _program_eq(again, prog)
