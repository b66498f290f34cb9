"""Reading programs from text: the ``.lad`` format, parsed without ever evaluating Python.

One statement a line; ``#`` starts a comment::

    input x              # a scalar input
    input W[2,3]         # an array input; W[0,0] … W[1,2] are its entries
    var v[2]             # declare an array intermediate (or an unknown: var u)
    v[0] = W[0,0]*x      # define an entry
    v[1] = W[1,2]*x
    a = exp(x)           # an intermediate z_i = f_i(z_Pa(i)); names may be used before
    h = tanh(0.5*h + a)  #   their line, so cycles are allowed
    u**3 + u = x         # an implicit equation c(z) = lhs − rhs = 0 (left side not a name)
    output h             # the output z_N (default: the last intermediate defined)
    subject to a + h <= 2          # a constraint that is not a definition (named g1)
    subject to cap: x**2 >= 0.1    # a named one; relations <=, >= and ==

This is the format `str(program)` prints (`lagrangian_ad.building._text`), so
``parse(str(prog))`` gives the same program back — for programs whose names are ASCII
identifiers other than the function names of `FUNCTIONS` and the constants ``E`` and
``pi`` (the text format reserves those).

The parser is our own: a tokenizer and a Pratt (precedence-climbing) expression parser
that builds SymPy expressions from a whitelist — numbers, declared names, the constants
``E`` and ``pi``, ``+ - * / **``, parentheses and the functions of `FUNCTIONS`. Nothing
of the text is ever given to ``eval``, ``exec``, ``sympify`` or ``parse_expr``. Limits
on the size of the text, the nesting depth, the size of numbers and of arrays make every
hostile input a `ParseError` (with line and column) instead of a hang or a
``RecursionError``.
"""

from __future__ import annotations

import difflib
import itertools
import keyword
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy as sp

from ..core import _arrays as arrays
from ..core._arrays import _add, _matmul, _times, is_array
from ..core._constants import RANGE, ConstantError, constant_value, is_clamped
from ..core._errors import ParseError, ProgramError
from ..core._progress import Progress
from ._program import Program
from ._text import MAX_LINE_CHARS

__all__ = [
    "ARRAY_FUNCTIONS",
    "CONSTANTS",
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_LINE_CHARS",
    "load",
    "parse",
    "parse_expression",
]

MAX_FILE_BYTES = 5_000_000
"""Largest program text accepted, in bytes (UTF-8)."""
MAX_DEPTH = 40
"""Deepest expression accepted, in levels of operations of the expression built (a
function, a power, a product or a sum is one level over its arguments; ``x**x**x`` has
two). The depth of the SymPy tree, not of the text, so the text `str` prints of any
accepted program, whatever parentheses it adds, is accepted again."""
MAX_NESTING = 3 * MAX_DEPTH
"""Deepest nesting of the text accepted (parentheses, calls, signs and operands): a guard
of the parser's own recursion, generous enough for anything printed within `MAX_DEPTH`."""
MAX_NUMBER_DIGITS = 310
"""Numbers must stay within the range of float64: at most about 10**308 (or 10**-308)."""
MAX_ARGS = 32
"""Most arguments of one function call (``max`` and ``min`` take several)."""
MAX_ARRAY_ENTRIES = 100_000
"""Most entries of one array variable."""
MAX_TOTAL_ENTRIES = 200_000
"""Most scalar entries over all declared variables of one program."""

_STATEMENT_WORDS = ("input", "var", "output")
_MULTIPLIER_PREFIX = "lambda_"  # reserved by Program for the multipliers


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Function:
    """A function of the text format: its SymPy function and how many arguments it takes."""

    build: Callable[..., sp.Expr]
    min_args: int = 1
    max_args: int = 1


def _lattice(op: Any) -> Callable[..., sp.Expr]:
    # Max/Min evaluated by SymPy compare every pair of arguments through the assumptions
    # system (seconds for a few dozen); unevaluated they keep their canonical argument
    # order, which is all printing and parsing back need.
    def build(*args: sp.Expr) -> sp.Expr:
        return op(*args, evaluate=all(a.is_Number for a in args))

    return build


FUNCTIONS: dict[str, _Function] = {
    "exp": _Function(sp.exp),
    "log": _Function(sp.log, 1, 2),  # log(x) is the natural log; log(x, b) = log(x)/log(b)
    "sqrt": _Function(sp.sqrt),
    "cbrt": _Function(sp.cbrt),
    "sin": _Function(sp.sin),
    "cos": _Function(sp.cos),
    "tan": _Function(sp.tan),
    "cot": _Function(sp.cot),
    "sec": _Function(sp.sec),
    "csc": _Function(sp.csc),
    "asin": _Function(sp.asin),
    "acos": _Function(sp.acos),
    "atan": _Function(sp.atan),
    "acot": _Function(sp.acot),
    "atan2": _Function(sp.atan2, 2, 2),
    "sinh": _Function(sp.sinh),
    "cosh": _Function(sp.cosh),
    "tanh": _Function(sp.tanh),
    "coth": _Function(sp.coth),
    "asinh": _Function(sp.asinh),
    "acosh": _Function(sp.acosh),
    "atanh": _Function(sp.atanh),
    "abs": _Function(sp.Abs),
    "Abs": _Function(sp.Abs),
    "sign": _Function(sp.sign),
    "Heaviside": _Function(sp.Heaviside),
    "erf": _Function(sp.erf),
    "erfc": _Function(sp.erfc),
    "sinc": _Function(sp.sinc),
    "gamma": _Function(sp.gamma),
    "loggamma": _Function(sp.loggamma),  # log|Γ(x)| (scipy's gammaln)
    "digamma": _Function(sp.digamma),
    "polygamma": _Function(sp.polygamma, 2, 2),  # polygamma(n, x), n = 0, 1, 2, …
    "beta": _Function(sp.beta, 2, 2),
    "erfinv": _Function(sp.erfinv),
    "erfcinv": _Function(sp.erfcinv),
    "besselj": _Function(sp.besselj, 2, 2),  # besselj(nu, x), and so on
    "bessely": _Function(sp.bessely, 2, 2),
    "besseli": _Function(sp.besseli, 2, 2),
    "besselk": _Function(sp.besselk, 2, 2),
    "floor": _Function(sp.floor),  # derivative 0 (almost everywhere)
    "ceil": _Function(sp.ceiling),
    "ceiling": _Function(sp.ceiling),
    "mod": _Function(sp.Mod, 2, 2),  # mod(a, b) = a − b·floor(a/b): partials 1, −floor(a/b)
    "Mod": _Function(sp.Mod, 2, 2),
    "max": _Function(_lattice(sp.Max), 1, MAX_ARGS),
    "Max": _Function(_lattice(sp.Max), 1, MAX_ARGS),
    "min": _Function(_lattice(sp.Min), 1, MAX_ARGS),
    "Min": _Function(_lattice(sp.Min), 1, MAX_ARGS),
}
"""The functions a program text may call, by name (``Abs``, ``Max``, ``Min``, ``ceiling``,
``Mod`` are the spellings SymPy prints; ``abs``, ``max``, ``min``, ``ceil``, ``mod`` the
usual ones)."""


def _whole_array(name: str, build: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def checked(a: Any) -> Any:
        if not is_array(a):
            raise ProgramError(
                f"{name}({a}): the argument is a scalar; {name} takes an array, such as an "
                "input W used whole (not its entries W[i,j])"
            )
        return build(a)

    return checked


ARRAY_FUNCTIONS: dict[str, _Function] = {
    "sum": _Function(_whole_array("sum", arrays.sum)),
    "transpose": _Function(_whole_array("transpose", lambda a: a.T)),
}
"""The functions of whole arrays: ``sum(A)``, the scalar sum of the entries of A, and
``transpose(A)``, the same as ``A'``. Every function of `FUNCTIONS` applies elementwise to
arrays (scalars broadcast); these names stay usable as variable names."""

CONSTANTS: dict[str, sp.Expr] = {"E": sp.E, "pi": sp.pi}
"""The named constants of the text format."""

_KNOWN_FUNCTIONS = ", ".join(sorted(FUNCTIONS, key=str.lower))


# --------------------------------------------------------------------------- source and errors


class _Source:
    """The lines of a text, for error messages with the line and a caret under the spot."""

    def __init__(self, lines: list[str], filename: str | None):
        self.lines = lines
        self.filename = filename

    def error(self, message: str, line: int, column: int, hint: str | None = None) -> ParseError:
        where = f"{self.filename}, " if self.filename else ""
        parts = [f"{where}line {line}, column {column}: {message}"]
        if 1 <= line <= len(self.lines):
            text, col = _excerpt(self.lines[line - 1], column)
            text = "".join(ch if ch.isprintable() or ch == "\t" else "?" for ch in text)
            pad = "".join(ch if ch == "\t" else " " for ch in text[: col - 1])
            parts += [f"    {text}", f"    {pad}^"]
        if hint:
            parts.append(f"hint: {hint}")
        return ParseError("\n".join(parts), line, column)


def _excerpt(text: str, column: int, width: int = 100) -> tuple[str, int]:
    """At most ``width`` characters of a line around ``column``, and the column in them."""
    if len(text) <= width:
        return text, column
    start = max(0, min(column - 1 - width // 2, len(text) - width))
    piece = text[start : start + width]
    col = column - start
    if start > 0:
        piece, col = "…" + piece, col + 1
    if start + width < len(text):
        piece += "…"
    return piece, col


def _decode(data: bytes, filename: str | None) -> str:
    """UTF-8 text of ``data``; a `ParseError` at the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        start = err.start
        line = data.count(b"\n", 0, start) + 1
        line_start = data.rfind(b"\n", 0, start) + 1
        column = len(data[line_start:start].decode("utf-8", errors="replace")) + 1
        where = f"{filename}, " if filename else ""
        raise ParseError(
            f"{where}line {line}, column {column}: the text is not UTF-8 "
            f"(byte 0x{data[start]:02x}); is this a program file?",
            line,
            column,
        ) from None


def _split_lines(text: str, filename: str | None) -> _Source:
    """Check the size and the characters of ``text`` and split it into lines."""
    if len(text) > MAX_FILE_BYTES:
        raise ParseError(
            f"{filename + ', ' if filename else ''}line 1, column 1: the text is too large "
            f"({len(text)} characters; at most {MAX_FILE_BYTES})",
            1,
            1,
        )
    if text.startswith("\ufeff"):  # a UTF-8 byte order mark
        text = text[1:]
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    source = _Source(lines, filename)
    for number, line in enumerate(lines, start=1):
        if len(line) > MAX_LINE_CHARS:
            raise source.error(
                f"line too long ({len(line)} characters; at most {MAX_LINE_CHARS})",
                number,
                MAX_LINE_CHARS + 1,
                "define parts of the expression as intermediates on lines of their own",
            )
        nul = line.find("\0")
        if nul >= 0:
            raise source.error(
                "the text contains a NUL character; is this a binary file?", number, nul + 1
            )
    return source


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class _Token:
    kind: str  # "num", "name", "op" or "end"
    text: str
    column: int  # 1-based


_OP_HINTS = {
    "^": "powers are written x**2",
    "//": "there is no integer division; use /",
    "%": "there is no remainder operator",
    "==": "a statement has one =: `name = expression` or an equation `lhs = rhs`",
    ".": "there are no attributes or methods: only numbers, names, operators and functions",
    '"': "there are no strings in the program language",
    ":": "there are no lambdas, slices or blocks: one statement a line",
    ";": "one statement a line",
    "{": "there are no sets or dicts; arrays are declared with `input W[2,3]` or `var v[2]`",
}
_DIGITS = "0123456789"
_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_NAME_CHARS = _NAME_START + _DIGITS


def _tokenize(text: str, line: int, source: _Source) -> list[_Token]:
    """The tokens of one line (its comment already removed), ending with an "end" token."""
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t":
            i += 1
            continue
        start = i
        if ch in _DIGITS or (ch == "." and i + 1 < n and text[i + 1] in _DIGITS):
            while i < n and text[i] in _DIGITS:
                i += 1
            if i < n and text[i] == ".":
                i += 1
                while i < n and text[i] in _DIGITS:
                    i += 1
            if i < n and text[i] in "eE":
                j = i + 1
                if j < n and text[j] in "+-":
                    j += 1
                if j < n and text[j] in _DIGITS:
                    i = j
                    while i < n and text[i] in _DIGITS:
                        i += 1
            tokens.append(_Token("num", text[start:i], start + 1))
        elif ch in _NAME_START:
            while i < n and text[i] in _NAME_CHARS:
                i += 1
            tokens.append(_Token("name", text[start:i], start + 1))
        else:
            two = text[i : i + 2]
            if two in _OP_HINTS:
                raise source.error(f"unexpected {two!r}", line, i + 1, _OP_HINTS[two])
            if two == "**":
                tokens.append(_Token("op", "**", start + 1))
                i += 2
            elif ch in "+-*/()[],=@'":  # @ matrix product, ' transpose (arrays)
                tokens.append(_Token("op", ch, start + 1))
                i += 1
            elif ch.isalpha():
                raise source.error(
                    f"unexpected character {ch!r} in a name",
                    line,
                    i + 1,
                    "names are ASCII letters, digits and _, starting with a letter or _",
                )
            else:
                raise source.error(f"unexpected character {ch!r}", line, i + 1, _OP_HINTS.get(ch))
    tokens.append(_Token("end", "", n + 1))
    return tokens


# --------------------------------------------------------------------------- expressions

# Binding powers of the Pratt parser (Python's precedence): + - < * / < unary - < **.
_BP_ADD, _BP_MUL, _BP_UNARY, _BP_POW = 10, 20, 30, 40
_PRODUCT_OPS = ("*", "/", "@")  # one binding power, left to right, as in Python

# resolve(name, indices or None, token) -> the SymPy expression a name stands for.
_Resolver = Callable[[str, "tuple[int, ...] | None", _Token, "_Token | None"], sp.Expr]


class _ExprParser:
    """Pratt parser of one expression over a token list, building SymPy directly."""

    def __init__(self, tokens: list[_Token], line: int, source: _Source, resolve: _Resolver):
        self.tokens = tokens
        self.pos = 0
        self.line = line
        self.source = source
        self.resolve = resolve
        self.depth = 0  # of the text: the parser's own recursion
        self.levels: dict[sp.Basic, int] = {}  # depth of each SymPy tree built
        self.values: dict[sp.Basic, Any] = {}  # value of each constant subtree

    # ---------------------------------------------------------------- helpers

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def advance(self) -> _Token:
        tok = self.tokens[self.pos]
        if tok.kind != "end":
            self.pos += 1
        return tok

    def error(self, message: str, tok: _Token, hint: str | None = None) -> ParseError:
        return self.source.error(message, self.line, tok.column, hint)

    def expect(self, text: str, what: str) -> _Token:
        tok = self.peek()
        if tok.kind == "op" and tok.text == text:
            return self.advance()
        raise self.error(f"expected {text!r} {what}, found {_describe(tok)}", tok)

    def parse(self) -> sp.Expr:
        """The whole token list as one expression (it must end at the "end" token).

        A product keeps its factors: SymPy would distribute a number over a sum
        (3*(x + 3) -> 3*x + 9), but the printer writes ``-1/(3*(x + 3))`` for
        ``Mul(-1/3, 1/(x + 3))``, and only the undistributed product gives that back
        (see `_product`). A negation ``-(y - z)`` is distributed, as in Python.
        """
        try:
            expr = self.expression(0)
        except RecursionError:  # a safety net: MAX_DEPTH should make this unreachable
            raise self.error(
                "expression nested too deeply",
                self.tokens[0],
                "define inner parts as intermediates on lines of their own",
            ) from None
        tok = self.peek()
        if tok.kind != "end":
            raise self._unexpected(tok)
        return expr

    def _unexpected(self, tok: _Token) -> ParseError:
        if tok.kind in ("name", "num") or tok.text in ("(", "["):
            prev = self.tokens[self.pos - 1] if self.pos else None
            hint = None
            if prev is not None and prev.kind == "num" and tok.kind == "name":
                hint = f"write {prev.text}*{tok.text} for a product"
            elif keyword.iskeyword(tok.text) or (prev is not None and keyword.iskeyword(prev.text)):
                hint = "the program language has no Python keywords or statements"
            else:
                hint = "put an operator (+ - * / **) between two operands"
            return self.error(f"expected an operator, found {_describe(tok)}", tok, hint)
        if tok.text == ")":
            return self.error("unmatched ')'", tok)
        if tok.text == "=":
            return self.error("unexpected '='", tok, "a statement has one =")
        return self.error(f"unexpected {_describe(tok)}", tok)

    # ---------------------------------------------------------------- grammar

    def expression(self, min_bp: int) -> sp.Expr:
        """An expression whose operators all bind more tightly than ``min_bp``."""
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise self.error(
                    f"expression nested too deeply (more than {MAX_NESTING} levels of "
                    "parentheses, calls and operators)",
                    self.peek(),
                    "define inner parts as intermediates on lines of their own",
                )
            tok = self.peek()
            if tok.kind == "op" and tok.text in ("+", "-"):
                # A sign applies to the whole product that follows, as SymPy prints it:
                # -(x + y)*z is Mul(-1, x + y, z), not (-x - y)*z.
                self.advance()
                left = self.expression(_BP_UNARY)
                factors = [sp.S.NegativeOne, left] if tok.text == "-" else [left]
            else:
                left = self.postfix(self.prefix())
                tok = self.peek()
                if tok.text == "**" and tok.kind == "op" and _BP_POW > min_bp:
                    self.advance()
                    exponent = self.expression(_BP_POW - 1)  # right-associative
                    left = self.power(left, exponent, tok)
                factors = [left]
            while (
                (tok := self.peek()).kind == "op" and tok.text in _PRODUCT_OPS and _BP_MUL > min_bp
            ):
                self.advance()
                right = self.expression(_BP_MUL)
                if tok.text == "/" and right.is_zero and right.is_Number:
                    raise self.error("division by zero", tok)
                if tok.text == "@" or is_array(right) or any(map(is_array, factors)):
                    factors = [self.array_product(factors, tok, right)]
                    continue
                if tok.text == "/":
                    right = self.power(right, sp.S.NegativeOne, tok)
                factors.append(right)
            if len(factors) == 2 and factors[0] is sp.S.NegativeOne:
                left = self.shallow(_negate(left), tok)
            elif len(factors) > 1:
                left = self.shallow(self.number_checked(_product(factors), tok), tok)
            else:
                left = factors[0]  # after an array product
            terms, term_ops = [left], []
            while (tok := self.peek()).kind == "op" and tok.text in ("+", "-") and _BP_ADD > min_bp:
                self.advance()
                right = self.expression(_BP_ADD)
                if tok.text == "-":
                    right = _negate(right) if is_array(right) else self.shallow(_negate(right), tok)
                terms.append(right)
                term_ops.append(tok)
            if len(terms) == 1:
                return left
            if any(map(is_array, terms)):
                return self.array_sum(terms, term_ops)
            return self.shallow(self.number_checked(sp.Add(*terms), tok), tok)
        finally:
            self.depth -= 1

    def prefix(self) -> sp.Expr:
        tok = self.advance()
        if tok.kind == "num":
            return self.number(tok)
        if tok.kind == "name":
            nxt = self.peek()
            if nxt.kind == "op" and nxt.text == "(":
                return self.call(tok)
            indices = self.indices() if nxt.kind == "op" and nxt.text == "[" else None
            return self.name(tok, indices, nxt if indices is not None else None)
        if tok.kind == "op" and tok.text == "(":
            inner = self.expression(0)
            self.expect(")", "to close the '(' of column " + str(tok.column))
            return inner
        if tok.kind == "end":
            raise self.error("the expression is incomplete", tok, "an operand is missing here")
        hint = "there are no strings; A' transposes an array A" if tok.text == "'" else None
        raise self.error(f"expected a number, a name or '(', found {_describe(tok)}", tok, hint)

    def number(self, tok: _Token) -> sp.Expr:
        text = tok.text
        if any(c in text for c in ".eE"):
            value = float(text)
            if not math.isfinite(value) or (value != 0 and abs(value) < 1e-308):
                raise self.error(
                    f"the number {text} is out of the range of float64",
                    tok,
                    "numbers must lie between about 1e-308 and 1e308",
                )
            return sp.Float(value)
        if len(text.lstrip("0")) > MAX_NUMBER_DIGITS - 1:
            raise self.error(
                f"the integer {text[:20]}… has {len(text)} digits; at most {MAX_NUMBER_DIGITS - 1}",
                tok,
            )
        return sp.Integer(int(text.lstrip("0") or "0"))

    def indices(self) -> tuple[int, ...]:
        """``[i]`` or ``[i, j]`` after a name."""
        index, self.pos = _indices(self.tokens, self.pos, self.line, self.source)
        return index

    def name(self, tok: _Token, indices: tuple[int, ...] | None, bracket: _Token | None):
        name = tok.text
        if name in FUNCTIONS:
            raise self.error(f"{name!r} is a function; call it with arguments, e.g. {name}(x)", tok)
        if name in CONSTANTS:
            if indices is not None:
                raise self.error(f"the constant {name!r} cannot be indexed", bracket or tok)
            return CONSTANTS[name]
        if keyword.iskeyword(name):
            raise self.error(
                f"{name!r} is a Python keyword; the program language has no statements, "
                "lambdas or comprehensions",
                tok,
            )
        return self.resolve(name, indices, tok, bracket)

    def call(self, tok: _Token) -> sp.Expr:
        name = tok.text
        func = FUNCTIONS.get(name) or ARRAY_FUNCTIONS.get(name)
        if func is None:
            if name in CONSTANTS:
                raise self.error(f"{name!r} is a constant, not a function", tok)
            close = difflib.get_close_matches(name, list(FUNCTIONS), n=3)
            maybe = f"did you mean {', '.join(close)}? " if close else ""
            raise self.error(
                f"unknown function {name!r}", tok, f"{maybe}known functions: {_KNOWN_FUNCTIONS}"
            )
        self.advance()  # "("
        args: list[sp.Expr] = []
        if not (self.peek().kind == "op" and self.peek().text == ")"):
            while True:
                nxt = self.peek()
                if nxt.kind == "name" and self.tokens[self.pos + 1].text == "=":
                    raise self.error("keyword arguments are not supported", nxt)
                args.append(self.expression(0))
                if len(args) > MAX_ARGS:
                    raise self.error(f"more than {MAX_ARGS} arguments", self.peek())
                sep = self.peek()
                if sep.kind == "op" and sep.text == ",":
                    self.advance()
                    continue
                break
        self.expect(")", f"to close the call of {name}()")
        if not func.min_args <= len(args) <= func.max_args:
            want = (
                str(func.min_args)
                if func.min_args == func.max_args
                else f"{func.min_args} to {func.max_args}"
            )
            raise self.error(f"{name}() takes {want} argument(s), got {len(args)}", tok)
        if name in ARRAY_FUNCTIONS or any(map(is_array, args)):
            return self.on_arrays(tok, lambda: _array_call(name, func, args))
        numeric = all(a.is_number for a in args)
        if numeric:
            self.check_arguments(args, tok, f"{name}(…)")
        try:
            result = func.build(*args)
        except (TypeError, ValueError, ArithmeticError) as err:
            raise self.error(f"cannot apply {name} here: {err}", tok) from None
        if numeric:
            self.check_real(result, tok, f"{name}(…)")
        return self.shallow(result, tok)

    def power(self, base: sp.Expr, exponent: sp.Expr, tok: _Token) -> sp.Expr:
        """``base**exponent``, refusing numbers too large to compute or to represent."""
        if is_array(base) or is_array(exponent):
            return self.on_arrays(tok, lambda: arrays.apply(lambda p, q: p**q, base, exponent))
        numeric = base.is_number and exponent.is_number
        if numeric and exponent.is_Number:
            # |log10 of the result| is at most |exponent| times the largest |log10| of a
            # number SymPy multiplies out in the base; estimate it before SymPy computes
            # anything. Numbers inside functions stay there (cos(10**308)**2 is at most 1).
            size = max((_log10_size(a) for a in _exposed_numbers(base)), default=0.0)
            if size > 0:
                log_magnitude = _log10_abs(exponent) + math.log10(size)
                if log_magnitude > math.log10(MAX_NUMBER_DIGITS):
                    digits = 10**log_magnitude if log_magnitude < 300 else math.inf
                    raise self.error(
                        f"the power is out of the range of float64 (its size is about "
                        f"10**±{_rough(digits)})",
                        tok,
                    )
            if base.is_zero and exponent.is_negative:
                raise self.error("division by zero (0 to a negative power)", tok)
        if numeric:
            self.check_arguments((base, exponent), tok, "the power")
        result = base**exponent
        if numeric:
            self.check_real(result, tok, "the power")
        return self.shallow(result, tok)

    def shallow(self, expr: sp.Expr, tok: _Token) -> sp.Expr:
        """``expr``, if its tree is at most `MAX_DEPTH` levels deep (else a `ParseError`).

        Depths are remembered for every subtree seen, so each construction costs about
        its number of arguments (SymPy's flattening reuses the subtrees built before).
        """
        levels = self.levels
        stack = [expr]
        while stack:  # iterative post-order over the subtrees not seen yet
            node = stack[-1]
            if node in levels:
                stack.pop()
                continue
            todo = [a for a in node.args if a not in levels]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            levels[node] = 1 + max((levels[a] for a in node.args), default=-1)
        if levels[expr] > MAX_DEPTH:
            raise self.error(
                f"expression nested too deeply (more than {MAX_DEPTH} levels of operations)",
                tok,
                "define inner parts as intermediates on lines of their own",
            )
        return expr

    def value(self, expr: sp.Expr, tok: _Token) -> sp.Basic:
        """The value of a constant (see `constant_value`); a `ParseError` if it has none."""
        try:
            return constant_value(expr, self.values)
        except ConstantError as err:
            raise self.error(str(err), tok) from None

    def check_arguments(self, args: Any, tok: _Token, what: str) -> None:
        """Refuse a constant function or power of a constant beyond the range of float64:
        SymPy would evaluate it at full precision (``0.5**cosh(10**7)``: minutes)."""
        for a in args:
            if is_clamped(self.value(a, tok)):
                raise self.error(
                    f"{what} cannot be computed: its argument {_short(a)} is beyond the "
                    f"range of float64 (more than 10**{RANGE} in size)",
                    tok,
                    "numbers must lie between about 1e-308 and 1e308",
                )

    # ---------------------------------------------------------------- arrays

    def postfix(self, operand: Any) -> Any:
        """``A'``: the transpose of an array (any number of primes)."""
        while (tok := self.peek()).kind == "op" and tok.text == "'":
            self.advance()
            if not is_array(operand):
                raise self.error(
                    f"transpose of the scalar {operand}",
                    tok,
                    "' (or transpose()) applies to arrays: an input used whole, as W, not W[i,j]",
                )
            operand = operand.T
        return operand

    def on_arrays(self, tok: _Token, build: Callable[[], Any]) -> Any:
        """``build()``, its `ProgramError` (a shape mismatch, …) a `ParseError` at ``tok``."""
        try:
            return build()
        except ProgramError as err:
            raise self.error(str(err), tok) from None

    def array_product(self, factors: list[Any], tok: _Token, right: Any) -> Any:
        """``factors[0]*factors[1]*… op right`` where an operand is an array: ``@`` is the
        matrix product, ``*`` and ``/`` are elementwise (scalars broadcast)."""

        def build() -> Any:
            left = factors[0]
            for f in factors[1:]:  # a sign, as in -A @ B
                left = _elementwise_times(left, f)
            if tok.text == "@":
                return _matmul(left, right)
            if tok.text == "/":
                return arrays.apply(lambda p, q: p / q, left, right)
            return _elementwise_times(left, right)

        return self.on_arrays(tok, build)

    def array_sum(self, terms: list[Any], ops: list[_Token]) -> Any:
        """``terms[0] + terms[1] + …`` where a term is an array (scalars broadcast)."""
        total = terms[0]
        for term, tok in zip(terms[1:], ops, strict=True):
            total = self.on_arrays(tok, lambda a=total, b=term: _add(a, b, 1))
        return total

    def check_real(self, value: sp.Expr, tok: _Token, what: str) -> None:
        if value.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            raise self.error(f"{what} is infinite or undefined ({_short(value)})", tok)
        if value.has(sp.I):
            raise self.error(f"{what} is not a real number ({_short(value)})", tok)
        self.value(value, tok)  # not real (atanh(12)), or no value at all (erfinv(2))
        self.number_checked(value, tok)

    def number_checked(self, value: sp.Expr, tok: _Token) -> sp.Expr:
        if value.is_Number and _log10_size(value) > MAX_NUMBER_DIGITS:
            raise self.error(
                f"a number is out of the range of float64 (about 10**{_rough(_log10_size(value))})",
                tok,
            )
        return value


def _product(factors: list[sp.Expr]) -> sp.Expr:
    """The product of ``factors``, a number not distributed over a sum: ``3*(x + 3)``.

    SymPy distributes a number over a lone sum (``3*(x + 3)`` → ``3*x + 9``), and the
    printer writes such unevaluated products (``-1/(3*(x + 3))`` is ``Mul(-1/3, 1/(x +
    3))``), so only the undistributed one reads back the same. That one case is built
    unevaluated; SymPy's ``distribute(False)`` context is not used, because functions
    built under it may never finish (``sin(-x - 1)`` becomes ``-sin(-(-x - 1))``, and
    the undistributed ``-(-x - 1)`` extracts a minus sign again, without end). A
    negation ``-(x + 1)`` is distributed, as in Python.
    """
    numbers = [f for f in factors if f.is_Number]
    rest = [f for f in factors if not f.is_Number]
    if numbers and len(rest) == 1 and rest[0].is_Add:
        coeff = sp.Mul(*numbers)
        if coeff.is_zero or coeff is sp.S.One or coeff.is_finite is False:
            return sp.Mul(coeff, rest[0])
        if coeff is sp.S.NegativeOne:
            return _negate(rest[0])
        return sp.Mul(coeff, rest[0], evaluate=False)
    return sp.Mul(*factors)


def _elementwise_times(a: Any, b: Any) -> Any:
    """``a*b`` of the text format: elementwise when an operand is an array (a number
    times an array stays a numeric multiple, printed ``2*W``)."""
    if not (is_array(a) or is_array(b)):
        return a * b
    if getattr(a, "is_Number", False) or getattr(b, "is_Number", False):
        return _times(a, b)
    return arrays.mul(a, b)


def _array_call(name: str, func: _Function, args: list[Any]) -> Any:
    """A call with an array argument: a function of `ARRAY_FUNCTIONS`, or a function of
    `FUNCTIONS` applied elementwise."""
    if name in ARRAY_FUNCTIONS:
        return func.build(*args)
    return arrays.apply(func.build, *args)


def _negate(expr: sp.Expr) -> sp.Expr:
    """``-expr``, distributed over a sum as Python and SymPy do."""
    return -expr


def _exposed_numbers(expr: sp.Expr) -> list[sp.Number]:
    """The numbers of ``expr`` outside function arguments: those a power of ``expr``
    computes exactly ((2*x)**n is 2**n * x**n; cos(2)**n keeps cos(2))."""
    found, stack = [], [expr]
    while stack:
        node = stack.pop()
        if node.is_Number:
            found.append(node)
        elif node.is_Add or node.is_Mul or node.is_Pow:
            stack.extend(node.args)
    return found


def _log10_size(n: sp.Number) -> float:
    """|log10| of the largest magnitude in a number (its numerator or denominator)."""
    if n.is_Rational:
        return max(_log10_int(int(n.p)), _log10_int(int(n.q)))
    try:
        value = abs(float(n))
    except (OverflowError, TypeError):
        return math.inf
    if value == 0.0:
        return 0.0
    return abs(math.log10(value)) if math.isfinite(value) else math.inf


def _log10_abs(n: sp.Number) -> float:
    """log10 |n| (−inf for 0), without overflowing for huge integers."""
    if n.is_Rational:
        p, q = abs(int(n.p)), int(n.q)
        return -math.inf if p == 0 else _log10_int(p) - _log10_int(q)
    try:
        value = abs(float(n))
    except (OverflowError, TypeError):
        return math.inf
    return -math.inf if value == 0.0 else math.log10(value)


def _log10_int(n: int) -> float:
    n = abs(n)
    if n == 0:
        return 0.0
    if n.bit_length() < 1000:
        return math.log10(n)
    return n.bit_length() * math.log10(2)


def _short(expr: sp.Basic, width: int = 60) -> str:
    text = str(expr)
    return text if len(text) <= width else text[: width - 1] + "…"


def _rough(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.3g}"


def _describe(tok: _Token) -> str:
    if tok.kind == "end":
        return "the end of the line"
    if tok.kind == "num":
        return f"the number {tok.text}"
    if tok.kind == "name":
        return f"the name {tok.text!r}"
    return repr(tok.text)


def _name_hint(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    maybe = f"did you mean {', '.join(close)}? " if close else ""
    return f"{maybe}names come from `input {name}`, `var {name}` or a definition line `{name} = …`"


# --------------------------------------------------------------------------- statements


@dataclass
class _Declaration:
    kind: str  # "input" or "var"
    name: str
    shape: tuple[int, ...]
    line: int
    column: int


@dataclass
class _Definition:
    name: str
    index: tuple[int, ...] | None
    rhs: list[_Token]
    line: int
    column: int
    expr: sp.Expr | None = None


@dataclass
class _Equation:
    lhs: list[_Token]
    rhs: list[_Token]
    line: int
    column: int
    exprs: tuple[sp.Expr, sp.Expr] | None = None


@dataclass
class _Relation:
    name: str | None
    relation: str  # "<=", ">=" or "=="
    lhs: list[_Token]
    rhs: list[_Token]
    line: int
    column: int


@dataclass
class _Statements:
    declarations: list[_Declaration] = field(default_factory=list)
    definitions: list[_Definition] = field(default_factory=list)
    equations: list[_Equation] = field(default_factory=list)
    relations: list[_Relation] = field(default_factory=list)
    output: tuple[str, tuple[int, ...] | None, int, int] | None = None


def _statements(source: _Source) -> _Statements:
    """Tokenize every line and sort its statement into declarations, definitions, …"""
    out = _Statements()
    for number, raw in enumerate(source.lines, start=1):
        text = raw.split("#", 1)[0]
        if _SUBJECT_TO.match(text):
            out.relations.append(_relation(text, number, source))
            continue
        tokens = _tokenize(text, number, source)
        first = tokens[0]
        if first.kind == "end":
            continue
        second = tokens[1]
        if first.kind == "name" and first.text in _STATEMENT_WORDS and second.kind == "name":
            if first.text == "output":
                name, index, end = _target(tokens, 1, number, source)
                if tokens[end].kind != "end":
                    raise source.error(
                        f"expected the end of the line after the output, found "
                        f"{_describe(tokens[end])}",
                        number,
                        tokens[end].column,
                        "there is one output: a scalar variable or one entry",
                    )
                if out.output is not None:
                    raise source.error(
                        f"a second output (the first is on line {out.output[2]})",
                        number,
                        first.column,
                        "a program has one scalar output",
                    )
                out.output = (name, index, number, second.column)
            else:
                out.declarations.extend(_declarations(tokens, first.text, number, source))
            continue
        if (
            first.kind == "name"
            and first.text in _STATEMENT_WORDS
            and not any(t.text == "=" for t in tokens)
        ):
            what = (
                "an input"
                if first.text == "input"
                else ("a variable" if first.text == "var" else "the output")
            )
            raise source.error(
                f"expected a name after {first.text!r}",
                number,
                second.column,
                f"write `{first.text} NAME` to declare {what}",
            )
        _assignment(tokens, number, source, out)
    return out


_SUBJECT_TO = re.compile(r"\s*subject\s+to\b")
_CONSTRAINT_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*:")
_RELATION_OP = re.compile(r"<=|>=|==|<|>|=")


def _relation(text: str, line: int, source: _Source) -> _Relation:
    """``subject to [NAME:] lhs OP rhs`` with OP one of <=, >=, ==.

    The two sides are tokenized from the line with everything else blanked out, so
    their columns are those of the line.
    """
    start = _SUBJECT_TO.match(text).end()
    column = len(text) - len(text.lstrip()) + 1
    name = None
    named = _CONSTRAINT_NAME.match(text, start)
    if named:
        name = named.group(1)
        if keyword.iskeyword(name) or name in FUNCTIONS or name in CONSTANTS:
            raise source.error(
                f"{name!r} cannot name a constraint", line, named.start(1) + 1, "choose another"
            )
        start = named.end()
    ops = list(_RELATION_OP.finditer(text, start))
    if not ops:
        raise source.error(
            "expected a relation after 'subject to'",
            line,
            start + 1,
            "write `subject to lhs <= rhs` (or >=, ==), optionally named: `subject to g: …`",
        )
    op = ops[0]
    if op.group() in ("<", ">"):
        raise source.error(
            f"strict inequality {op.group()!r}",
            line,
            op.start() + 1,
            f"write {op.group()}= : an interior-point method works on the closure of the "
            "feasible set, where < and <= are the same constraint",
        )
    if op.group() == "=":
        raise source.error(
            "'=' in a constraint", line, op.start() + 1, "an equality constraint is written =="
        )
    if len(ops) > 1:
        raise source.error(
            f"a second relation {ops[1].group()!r} in one constraint",
            line,
            ops[1].start() + 1,
            "write one relation a line: `subject to a <= b` and `subject to b <= c`",
        )
    blank = " " * len(text)
    lhs_text = blank[:start] + text[start : op.start()]
    rhs_text = blank[: op.end()] + text[op.end() :]
    lhs, rhs = _tokenize(lhs_text, line, source), _tokenize(rhs_text, line, source)
    for side, at, where in ((lhs, start, "left"), (rhs, op.end(), "right")):
        if side[0].kind == "end":
            raise source.error(f"nothing on the {where} of {op.group()!r}", line, at + 1)
    return _Relation(name, op.group(), lhs, rhs, line, column)


def _indices(
    tokens: list[_Token], pos: int, line: int, source: _Source
) -> tuple[tuple[int, ...], int]:
    """The index ``[i]`` or ``[i, j]`` at ``tokens[pos]`` (non-negative integer literals)
    and the position after it."""
    pos += 1  # "["
    out = []
    while True:
        tok = tokens[pos]
        if tok.kind != "num" or not tok.text.isdigit():
            raise source.error(
                f"an index must be a non-negative integer, found {_describe(tok)}",
                line,
                tok.column,
                "entries are written with integer numbers, e.g. W[0,2]",
            )
        if len(tok.text) > 9:
            raise source.error(f"index {tok.text} is too large", line, tok.column)
        out.append(int(tok.text))
        sep = tokens[pos + 1]
        pos += 2
        if sep.kind == "op" and sep.text == "]":
            break
        if not (sep.kind == "op" and sep.text == ","):
            raise source.error(
                f"expected ',' or ']' in an index, found {_describe(sep)}", line, sep.column
            )
    nxt = tokens[pos]
    if nxt.kind == "op" and nxt.text == "[":
        raise source.error(
            "an entry has one pair of brackets", line, nxt.column, "write W[0,2], not W[0][2]"
        )
    return tuple(out), pos


def _target(
    tokens: list[_Token], pos: int, line: int, source: _Source
) -> tuple[str, tuple[int, ...] | None, int]:
    """A name or an entry ``name[i,j]`` at ``tokens[pos]``; returns it and the next position."""
    name = tokens[pos].text
    pos += 1
    if not (tokens[pos].kind == "op" and tokens[pos].text == "["):
        return name, None, pos
    index, pos = _indices(tokens, pos, line, source)
    return name, index, pos


def _declarations(
    tokens: list[_Token], word: str, line: int, source: _Source
) -> Iterator[_Declaration]:
    """``input x``, ``input W[2,3]``, ``var u, v[2]`` …"""
    kind = "input" if word == "input" else "var"
    pos = 1
    while True:
        tok = tokens[pos]
        if tok.kind != "name":
            raise source.error(
                f"expected a name to declare, found {_describe(tok)}", line, tok.column
            )
        name, shape, pos = _target(tokens, pos, line, source)
        if shape is not None and (len(shape) > 2 or 0 in shape):
            raise source.error(
                f"shape [{','.join(map(str, shape))}] of {name!r} is not supported",
                line,
                tok.column,
                "arrays have one or two positive sizes, e.g. v[3] or W[2,3]",
            )
        size = math.prod(shape or ())
        if size > MAX_ARRAY_ENTRIES:
            raise source.error(
                f"array {name!r} has {size} entries; at most {MAX_ARRAY_ENTRIES}",
                line,
                tok.column,
            )
        yield _Declaration(kind, name, shape or (), line, tok.column)
        sep = tokens[pos]
        if sep.kind == "end":
            return
        if not (sep.kind == "op" and sep.text == ","):
            raise source.error(
                f"expected ',' or the end of the line, found {_describe(sep)}",
                line,
                sep.column,
                f"declare one name, or several separated by commas: `{word} x, y`",
            )
        pos += 1


def _assignment(tokens: list[_Token], line: int, source: _Source, out: _Statements) -> None:
    """``name = expr``, ``name[i] = expr`` (definitions) or ``lhs = rhs`` (an equation)."""
    depth, equals = 0, []
    for k, tok in enumerate(tokens):
        if tok.kind != "op":
            continue
        if tok.text in ("(", "["):
            depth += 1
        elif tok.text in (")", "]"):
            depth -= 1
        elif tok.text == "=":
            if depth > 0:
                raise source.error(
                    "'=' inside parentheses",
                    line,
                    tok.column,
                    "keyword arguments are not supported",
                )
            equals.append(k)
    if not equals:
        raise source.error(
            "expected a statement: `name = expression`, an equation `lhs = rhs`, "
            "`input NAME`, `var NAME` or `output NAME`",
            line,
            tokens[0].column,
        )
    if len(equals) > 1:
        raise source.error(
            "more than one '=' in a statement",
            line,
            tokens[equals[1]].column,
            "one statement a line: `name = expression` or `lhs = rhs`",
        )
    k = equals[0]
    lhs, rhs = [*tokens[:k], _Token("end", "", tokens[k].column)], tokens[k + 1 :]
    if lhs[0].kind == "end":
        raise source.error("nothing on the left of '='", line, tokens[k].column)
    if rhs[0].kind == "end":
        raise source.error("nothing on the right of '='", line, rhs[0].column)
    if lhs[0].kind == "name" and not keyword.iskeyword(lhs[0].text):
        name, index, end = _simple_target(lhs, line, source)
        if end is not None:
            out.definitions.append(_Definition(name, index, rhs, line, lhs[0].column))
            return
    out.equations.append(_Equation(lhs, rhs, line, lhs[0].column))


def _simple_target(
    lhs: list[_Token], line: int, source: _Source
) -> tuple[str, tuple[int, ...] | None, int | None]:
    """The left side as a definition target, or ``end=None`` if it is an expression."""
    if lhs[1].kind == "end":
        return lhs[0].text, None, 1
    if lhs[1].kind == "op" and lhs[1].text == "[":
        close = next((k for k, t in enumerate(lhs) if t.text == "]"), None)
        if (
            close is not None
            and lhs[close + 1].kind == "end"
            and all(t.kind == "num" or t.text == "," for t in lhs[2:close])
        ):
            name, index, end = _target(lhs, 0, line, source)
            return name, index, end
    return lhs[0].text, None, None


# --------------------------------------------------------------------------- programs


@dataclass
class _Var:
    """A declared variable of the program being built, with where it was declared."""

    kind: str  # "input" or "intermediate"
    shape: tuple[int, ...]
    symbols: tuple[sp.Symbol, ...]
    line: int
    column: int
    explicit: bool  # declared by an input/var line (not only by a definition)
    array: bool = False  # an array variable (used whole): symbols is its MatrixVariable


def parse(text: str | bytes, *, filename: str | None = None, progress: Any = None) -> Program:
    """Read a program from its text (the ``.lad`` format).

    Parameters
    ----------
    text : str or bytes
        The program, one statement a line (bytes must be UTF-8).
    filename : str, optional
        Named in error messages.
    progress : None, bool or callable
        Progress of long files, as for `Program.compile`: a bar after two seconds (None:
        only on a terminal or in Jupyter), or ``report(stage, done, total, elapsed)``.
        The returned program keeps this setting for later `Program.define` calls.

    Returns
    -------
    Program

    Raises
    ------
    ParseError
        With ``line`` and ``column`` set; the message shows the line and a caret under
        the spot, and a hint where one helps. (Also, with no line, for a ``text`` that
        is neither str nor bytes.)

    Examples
    --------
    >>> import lagrangian_ad as lad
    >>> prog = lad.parse('''
    ... input x
    ... a = exp(x)
    ... b = a * sin(x)
    ... ''')
    >>> float(prog.solve({"x": 0.0}).grad["x"])
    1.0
    """
    if isinstance(text, (bytes, bytearray)):
        if len(text) > MAX_FILE_BYTES:
            raise ParseError(
                f"{filename + ', ' if filename else ''}line 1, column 1: the text is too "
                f"large ({len(text)} bytes; at most {MAX_FILE_BYTES})",
                1,
                1,
            )
        text = _decode(bytes(text), filename)
    if not isinstance(text, str):
        raise ParseError(
            f"parse() takes the program text as str or bytes, not {type(text).__name__}; "
            "use lad.load(path) to read a file"
        )
    source = _split_lines(text, filename)
    try:
        return _build(source, progress)
    except RecursionError:  # a safety net: MAX_DEPTH should make this unreachable
        raise ParseError(
            f"{filename + ', ' if filename else ''}the program is nested too deeply"
        ) from None


def load(path: str | os.PathLike[str], *, progress: Any = None) -> Program:
    """Read a program file (``.lad``); see `parse`.

    Raises
    ------
    OSError
        If the file cannot be read.
    ParseError
        If its text is not a valid program (also: not UTF-8, NUL bytes, too large).
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    return parse(data, filename=str(path), progress=progress)


def _build(source: _Source, progress: Any = None) -> Program:
    report = Progress(progress)
    st = _statements(source)
    whole = _arrays_used_whole(st)
    shapes = _shapes_of_array_definitions(source, st, whole) if whole else {}
    prog = Program(progress=False)  # this function reports the build
    table: dict[str, _Var] = {}
    total = 0

    def program_call(line: int, column: int, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ProgramError as err:
            raise source.error(str(err), line, column) from None

    def declare(
        kind: str,
        name: str,
        shape: tuple[int, ...],
        line: int,
        col: int,
        explicit: bool,
        array: bool = False,
    ):
        nonlocal total
        if name in FUNCTIONS or name in CONSTANTS:
            what = "function" if name in FUNCTIONS else "constant"
            raise source.error(
                f"{name!r} is the name of a {what}",
                line,
                col,
                "choose another name for the variable",
            )
        total += math.prod(shape)
        if total > MAX_TOTAL_ENTRIES:
            raise source.error(
                f"the program declares more than {MAX_TOTAL_ENTRIES} scalar entries",
                line,
                col,
            )
        builder = prog.input if kind == "input" else prog.var
        made = program_call(line, col, lambda: builder(name, shape, array=array))
        symbols = (made,) if shape == () or array else tuple(made)
        table[name] = _Var(kind, shape, symbols, line, col, explicit, array)

    # Declarations, then the scalar intermediates named only by a definition line.
    for d in st.declarations:
        if d.name in table:
            first = table[d.name]
            raise source.error(
                f"{d.name!r} is declared twice (first on line {first.line})", d.line, d.column
            )
        declare(
            "input" if d.kind == "input" else "intermediate",
            d.name,
            d.shape,
            d.line,
            d.column,
            True,
            d.name in whole,
        )
    defined: dict[tuple[str, tuple[int, ...] | None], _Definition] = {}
    for df in st.definitions:
        var = table.get(df.name)
        if var is None:
            if df.index is not None:
                raise source.error(
                    f"{df.name!r} is not declared as an array",
                    df.line,
                    df.column,
                    f"declare it first, e.g. `var {df.name}[{','.join('N' * len(df.index))}]`",
                )
            shape = shapes.get(df.name, ())
            declare("intermediate", df.name, shape, df.line, df.column, False, shape != ())
            var = table[df.name]
        _check_target(df, var, source)
        key = (df.name, df.index)
        if key in defined:
            target = df.name + ("" if df.index is None else _index_text(df.index))
            raise source.error(
                f"{target!r} is defined twice (first on line {defined[key].line})",
                df.line,
                df.column,
                "each intermediate has one definition; use another name",
            )
        defined[key] = df

    names_known = sorted(table)

    def resolve(name: str, indices: tuple[int, ...] | None, tok: _Token, bracket: Any):
        var = table.get(name)
        if var is None:
            raise source.error(
                f"undefined name {name!r}", line_of[0], tok.column, _name_hint(name, names_known)
            )
        if var.array:
            return _array_entry(var, name, indices, source, line_of[0], bracket)
        if indices is None:
            if var.shape != ():
                example = name + _index_text((0,) * len(var.shape))
                raise source.error(
                    f"{name!r} is an array of shape {_shape_text(var.shape)}; use one entry",
                    line_of[0],
                    tok.column,
                    f"for example {example}",
                )
            return var.symbols[0]
        return var.symbols[
            _flat_index(name, var.shape, indices, source, line_of[0], bracket.column)
        ]

    line_of = [0]  # the line being parsed, for resolve()

    def expression(tokens: list[_Token], line: int) -> sp.Expr:
        line_of[0] = line
        expr = _ExprParser(tokens, line, source, resolve).parse()
        _check_numbers(expr, source, line, tokens[0].column)
        return expr

    n_statements = len(st.definitions) + len(st.equations) + len(st.relations)
    for k, df in enumerate(st.definitions):
        report("reading expressions", k, n_statements)
        df.expr = expression(df.rhs, df.line)
        if whole:
            _check_definition_shape(df, table[df.name], source)
    for k, eq in enumerate(st.equations, start=len(st.definitions)):
        report("reading expressions", k, n_statements)
        eq.exprs = (expression(eq.lhs, eq.line), expression(eq.rhs, eq.line))
        if any(map(is_array, eq.exprs)):
            raise source.error(
                "an equation between arrays; an implicit equation is scalar",
                eq.line,
                eq.column,
                "state an array unknown by a definition that uses it, as in h = tanh(W @ h + b)",
            )

    relations = []
    for rel in st.relations:
        lhs, rhs = expression(rel.lhs, rel.line), expression(rel.rhs, rel.line)
        if is_array(lhs) or is_array(rhs):
            raise source.error(
                "a constraint between arrays; a constraint is scalar",
                rel.line,
                rel.lhs[0].column,
                "constrain an entry, or sum(A)",
            )
        relations.append((rel, _RELATION_BUILDERS[rel.relation](lhs, rhs, evaluate=False)))

    # Every declared intermediate must be defined (all its entries) or be an unknown.
    in_equations: set[sp.Symbol] = set()
    for eq in st.equations:
        for e in eq.exprs or ():
            in_equations |= e.free_symbols
    for name, var in table.items():
        if var.kind != "intermediate":
            continue
        entries = (
            [(name, idx) for idx in np.ndindex(*var.shape)]
            if var.shape and not var.array
            else [(name, None)]
        )
        have = [key in defined for key in entries]
        if var.shape and any(have) and not all(have):
            missing = [
                name + _index_text(k[1]) for k, h in zip(entries, have, strict=True) if not h
            ]
            raise source.error(
                f"array {name!r} has entries that are never defined: {', '.join(missing[:5])}"
                + (" …" if len(missing) > 5 else ""),
                var.line,
                var.column,
                "define every entry of an array, each on its own line",
            )
        absent = [str(s) for s in var.symbols if s not in in_equations]
        if not any(have) and len(absent) == len(var.symbols):
            raise source.error(
                f"{name!r} is declared but never defined and appears in no equation",
                var.line,
                var.column,
                f"define it with a line `{name} = …`, or use it in an equation",
            )
        if not any(have) and absent:
            raise source.error(
                f"entries {', '.join(absent[:5])}{' …' if len(absent) > 5 else ''} of "
                f"{name!r} are never defined and appear in no equation",
                var.line,
                var.column,
                "an array of unknowns needs every entry in some equation",
            )

    # Define in the order of the first definition line of each variable.
    order: dict[str, list[_Definition]] = {}
    for df in st.definitions:
        order.setdefault(df.name, []).append(df)
    for k, (name, dfs) in enumerate(order.items()):
        report("defining", k, len(order))
        var = table[name]
        first = dfs[0]
        if var.shape == () or var.array:
            expr: Any = first.expr
        else:
            by_index = {df.index: df.expr for df in dfs}
            flat = [by_index[idx] for idx in np.ndindex(*var.shape)]
            rows, cols = (var.shape[0], 1) if len(var.shape) == 1 else var.shape
            expr = sp.Matrix(rows, cols, flat)
        program_call(first.line, first.column, lambda n=name, e=expr: prog.define(n, e))
    for eq in st.equations:
        lhs, rhs = eq.exprs or (sp.S.Zero, sp.S.Zero)
        program_call(eq.line, eq.column, lambda a=lhs, b=rhs: prog.equation(a, b))

    for rel, relation in relations:
        program_call(
            rel.line,
            rel.column,
            lambda r=relation, n=rel.name: prog.subject_to(r, name=n),
        )

    if st.output is not None:
        name, index, line, col = st.output
        var = table.get(name)
        if var is None:
            raise source.error(
                f"output: undefined name {name!r}", line, col, _name_hint(name, names_known)
            )
        if index is not None:
            _flat_index(name, var.shape, index, source, line, col)
            target = name + _index_text(index)
        else:
            target = name
        program_call(line, col, lambda: prog.output(target))
    if not st.definitions:
        last = max((d.line for d in st.declarations), default=1)
        raise source.error(
            "the program defines no intermediate",
            last,
            1,
            "add a definition such as `y = exp(x)` (the output is the last one defined)",
        )
    last_line = max(df.line for df in st.definitions)
    program_call(last_line, 1, lambda: prog.ir)  # validate the whole program
    report.done(f"{n_statements:,} statements", verb="read")
    prog.progress = progress
    return prog


_RELATION_BUILDERS = {"<=": sp.Le, ">=": sp.Ge, "==": sp.Eq}


def _check_target(df: _Definition, var: _Var, source: _Source) -> None:
    if var.kind == "input":
        raise source.error(
            f"{df.name!r} is an input (line {var.line}); inputs are given, not defined",
            df.line,
            df.column,
            "to state an implicit equation, put an expression on the left, "
            f"e.g. `{df.name} - (…) = 0`",
        )
    if var.array:
        if df.index is not None:
            raise source.error(
                f"{df.name!r} is an array used whole (as {df.name}, not its entries); "
                "define it whole",
                df.line,
                df.column,
                f"for example `{df.name} = tanh(W @ x + b)`",
            )
        return
    if df.index is None and var.shape != ():
        raise source.error(
            f"{df.name!r} is an array of shape {_shape_text(var.shape)}; define its entries",
            df.line,
            df.column,
            f"for example `{df.name}{_index_text((0,) * len(var.shape))} = …`",
        )
    if df.index is not None:
        if var.shape == ():
            raise source.error(
                f"{df.name!r} is a scalar; it has no entries",
                df.line,
                df.column,
                f"declare it as an array with `var {df.name}[N]`",
            )
        _flat_index(df.name, var.shape, df.index, source, df.line, df.column)


def _flat_index(
    name: str,
    shape: tuple[int, ...],
    index: tuple[int, ...],
    source: _Source,
    line: int,
    column: int,
) -> int:
    """The C-order position of ``name[index]``; a `ParseError` if it is out of range."""
    if shape == ():
        raise source.error(f"{name!r} is a scalar; it cannot be indexed", line, column)
    if len(index) != len(shape) or any(i >= n for i, n in zip(index, shape, strict=False)):
        raise source.error(
            f"{name}{_index_text(index)} is out of range: {name!r} has shape {_shape_text(shape)}",
            line,
            column,
            "indices start at 0; a 2-D array takes two, as in W[0,2]",
        )
    return int(np.ravel_multi_index(index, shape))


def _check_numbers(expr: sp.Expr, source: _Source, line: int, column: int) -> None:
    for atom in expr.atoms(sp.Number):
        if _log10_size(atom) > MAX_NUMBER_DIGITS:
            raise source.error(
                f"a number is out of the range of float64 (about 10**{_rough(_log10_size(atom))})",
                line,
                column,
            )


def _index_text(index: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, index)) + "]"


def _shape_text(shape: tuple[int, ...]) -> str:
    return _index_text(shape)


# --------------------------------------------------------------------------- array programs


def _arrays_used_whole(st: _Statements) -> set[str]:
    """The declared arrays that are used whole: named without an index anywhere in an
    expression (``W``, ``W'``, ``W @ x``) or defined whole (``h = …``).

    These become array variables (one `MatrixVariable`); an array whose entries alone are
    used stays entry-wise, as before.
    """
    shaped = {d.name for d in st.declarations if d.shape}
    whole = {df.name for df in st.definitions if df.index is None and df.name in shaped}
    sides = [df.rhs for df in st.definitions]
    sides += [side for eq in st.equations for side in (eq.lhs, eq.rhs)]
    for tokens in sides:
        for tok, nxt in itertools.pairwise(tokens):
            if tok.kind == "name" and tok.text in shaped and nxt.text not in ("[", "("):
                whole.add(tok.text)
    return whole


def _shapes_of_array_definitions(
    source: _Source, st: _Statements, whole: set[str]
) -> dict[str, tuple[int, ...]]:
    """The shapes of the undeclared intermediates whose definition is an array.

    A definition ``h = tanh(W @ x + b)`` declares ``h`` with the shape of its expression.
    The definitions are read in the order of their dependencies (Kahn's algorithm), on
    stand-ins of the declared variables, so a name may be used before its line. A name
    used in a cycle before its shape is known is taken as a scalar; if its definition is
    an array after all, it must be declared (``var h[4]``): a `ParseError` says so.
    """
    declared = {d.name: d for d in st.declarations}
    stand_in: dict[str, Any] = {}
    for d in st.declarations:
        if d.name in whole:
            rows, cols = (d.shape[0], 1) if len(d.shape) == 1 else d.shape
            stand_in[d.name] = arrays.MatrixVariable(d.name, rows, cols)
    pending: dict[str, _Definition] = {}
    for df in st.definitions:
        if df.index is None and df.name not in declared:
            pending.setdefault(df.name, df)
    needs = {
        name: {t.text for t in df.rhs if t.kind == "name" and t.text in pending}
        for name, df in pending.items()
    }
    users: dict[str, list[str]] = {name: [] for name in pending}
    for name, deps in needs.items():
        for dep in deps:
            users[dep].append(name)

    def resolve(name: str, indices: Any, tok: _Token, bracket: Any) -> Any:
        var = stand_in.get(name)
        if isinstance(var, arrays.MatrixVariable):
            if indices is None:
                return var
            if len(indices) in (1, 2) and all(
                i < n for i, n in zip(indices, (*var.shape, 1), strict=False)
            ):
                return var[indices[0], indices[1] if len(indices) == 2 else 0]
        return sp.Symbol(name, real=True)  # errors are reported when the program is built

    shapes: dict[str, tuple[int, ...]] = {}
    ready = [name for name in pending if not needs[name]]
    while ready:
        name = ready.pop()
        df = pending.pop(name)
        expr = _ExprParser(df.rhs, df.line, source, resolve).parse()
        if is_array(expr):
            shapes[name] = _text_shape(expr)
            stand_in[name] = expr_symbol = arrays.MatrixVariable(name, *expr.shape)
            del expr_symbol
        for user in users[name]:
            needs[user].discard(name)
            if not needs[user] and user in pending:
                ready.append(user)
    for df in pending.values():  # in cycles: scalars unless declared
        expr = _ExprParser(df.rhs, df.line, source, resolve).parse()
        if is_array(expr):
            shape = _text_shape(expr)
            raise source.error(
                f"{df.name!r} is used before its definition (in a cycle) and its definition "
                f"is an array of shape {_shape_text(shape)}",
                df.line,
                df.column,
                f"declare it first: `var {df.name}{_shape_text(shape)}`",
            )
    return shapes


def _text_shape(expr: Any) -> tuple[int, ...]:
    """The shape of an array expression as the text format writes it: n×1 is ``[n]``."""
    rows, cols = (int(d) for d in expr.shape)
    return (rows,) if cols == 1 else (rows, cols)


def _array_entry(
    var: _Var, name: str, indices: tuple[int, ...] | None, source: _Source, line: int, bracket: Any
) -> Any:
    """An array variable used whole (``W``), or one of its entries ``W[i,j]``."""
    matrix = var.symbols[0]
    if indices is None:
        return matrix
    _flat_index(name, var.shape, indices, source, line, bracket.column)
    return matrix[indices[0], indices[1] if len(indices) == 2 else 0]


def _check_definition_shape(df: _Definition, var: _Var, source: _Source) -> None:
    """In an array program: an array target has an array definition, a scalar a scalar."""
    target = df.name + ("" if df.index is None else _index_text(df.index))
    if var.array and not is_array(df.expr):
        raise source.error(
            f"{df.name!r} is an array of shape {_shape_text(var.shape)}, but its definition "
            f"{df.expr} is a scalar",
            df.line,
            df.column,
            "an array is defined by an array expression, e.g. `h = tanh(W @ x + b)`",
        )
    if not var.array and is_array(df.expr):
        raise source.error(
            f"{target!r} is a scalar, but its definition is an array of shape "
            f"{_shape_text(_text_shape(df.expr))}",
            df.line,
            df.column,
            "a scalar from an array: sum(A), or an entry A[i,j]",
        )


# --------------------------------------------------------------------------- one expression


def parse_expression(text: str) -> tuple[sp.Expr, list[sp.Symbol]]:
    """Parse one expression; its free names become real Symbols.

    Parameters
    ----------
    text : str
        An expression such as ``"exp(x)*sin(y)"`` (one line, no ``=``).

    Returns
    -------
    expr : sympy.Expr
    names : list of sympy.Symbol
        The names used, in the order of their first appearance (a name may cancel
        out of ``expr``, as in ``x - x``, and still be listed).

    Examples
    --------
    >>> from lagrangian_ad.building._parse import parse_expression
    >>> parse_expression("exp(y) * sin(x)")
    (exp(y)*sin(x), [y, x])
    """
    if "\n" in text or "\r" in text:
        raise ParseError("line 1, column 1: an expression is one line", 1, 1)
    source = _split_lines(text, None)
    tokens = _tokenize(source.lines[0], 1, source)
    symbols: dict[str, sp.Symbol] = {}

    def resolve(name: str, indices: tuple[int, ...] | None, tok: _Token, bracket: Any):
        if indices is not None:
            raise source.error(
                f"{name}{_index_text(indices)}: an expression has scalar names only",
                1,
                bracket.column,
                "write a program file with `input W[2,3]` to use arrays",
            )
        if name.startswith(_MULTIPLIER_PREFIX):
            raise source.error(
                f"names starting with {_MULTIPLIER_PREFIX!r} are reserved for the multipliers",
                1,
                tok.column,
            )
        if name not in symbols:
            symbols[name] = sp.Symbol(name, real=True)
        return symbols[name]

    if tokens[0].kind == "end":
        raise source.error("the expression is empty", 1, 1)
    try:
        expr = _ExprParser(tokens, 1, source, resolve).parse()
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps this unreachable
        raise ParseError("line 1: the expression is nested too deeply", 1, 1) from None
    _check_numbers(expr, source, 1, 1)
    return expr, list(symbols.values())
