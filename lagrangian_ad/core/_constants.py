"""Constant subexpressions: their values, computed without meeting astronomical numbers.

A constant (an expression without symbols, such as ``atanh(1/2)`` or ``pi**100000``) is
evaluated node by node, bottom-up, with SymPy's evalf: exact where SymPy is exact, else
to `DIGITS` significant digits (more for large arguments, so that
``cos(99999999999999999999)`` is the cosine of that integer). A value beyond
10**±`RANGE` is already ±inf or 0 in double precision: it is clamped there, so no
evaluation ever meets an astronomically large argument (``0.5**cosh(10**7)`` keeps
mpmath busy for minutes at full precision; clamped, ``cosh(10**7)`` is oo and the power
is 0). A constant that is not real, or that cannot be evaluated (``erfinv(2)``), is a
`ConstantError`; the parser reports it at its column, the compiler for its constraint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy as sp

__all__ = ["RANGE", "ConstantError", "bottom_up", "constant_value", "is_clamped"]

DIGITS = 30
RANGE = 400
_HUGE = sp.Integer(10) ** RANGE
_NON_REAL = (sp.I, sp.zoo)


class ConstantError(ValueError):
    """A constant that is not real or cannot be evaluated (the message says which).

    Internal: the parser and the compiler re-raise it as their own package error.
    """


def bottom_up(
    expr: sp.Basic,
    combine: Callable[[sp.Basic, list], Any],
    memo: dict[sp.Basic, Any] | None = None,
) -> Any:
    """``combine(node, [results of its arguments])`` for each distinct subtree of ``expr``,
    arguments first; the result at ``expr``. Iterative (any depth), and each shared
    subtree is combined once; ``memo`` (node -> result) may be kept across calls, and
    may be seeded: a seeded node is taken as it is, its arguments never visited."""
    memo = {} if memo is None else memo
    stack: list[tuple[sp.Basic, bool]] = [(expr, False)]
    while stack:
        node, ready = stack.pop()
        if node in memo:
            continue
        if ready or not node.args:
            memo[node] = combine(node, [memo[a] for a in node.args])
        else:
            stack.append((node, True))
            stack.extend((a, False) for a in node.args if a not in memo)
    return memo[expr]


def constant_value(expr: sp.Basic, memo: dict[sp.Basic, Any] | None = None) -> sp.Basic:
    """The value of a constant expression (a SymPy number; ±oo or 0.0 where clamped).

    Bottom-up, each node from its arguments' values; ``memo`` keeps the values of
    subtrees across calls. Raises `ConstantError` for a constant that is not real or
    cannot be evaluated.
    """
    if not isinstance(expr, sp.Expr):
        return expr

    def evaluate(node: sp.Basic, args: list) -> sp.Basic:
        if not node.args:
            if node in _NON_REAL:
                raise ConstantError(f"the constant {node} is not real")
            return node
        try:
            v = node.func(*args)
            if not v.is_Number:
                v = v.evalf(DIGITS)
                if v.is_Number and abs(v) > 10**DIGITS and abs(v) < _HUGE:
                    digits = DIGITS + len(str(int(abs(v))))  # cos(10**20 + …): all of it
                    v = node.func(*args).evalf(digits)
        except (ValueError, TypeError, ArithmeticError) as err:  # mpmath: erfinv(2)
            raise ConstantError(f"cannot evaluate the constant {node} ({err})") from None
        if not v.is_Number:
            if v.is_real is False or v.has(*_NON_REAL):
                raise ConstantError(f"the constant {node} is not real ({v})")
            raise ConstantError(f"cannot evaluate the constant {node}")
        if v.is_finite and abs(v) > _HUGE:
            return sp.oo if v > 0 else -sp.oo
        if v.is_finite and v != 0 and abs(v) < 1 / _HUGE:
            return sp.Float(0.0)
        return v

    return bottom_up(expr, evaluate, memo)


def is_clamped(value: sp.Basic) -> bool:
    """Whether a value of `constant_value` lies beyond 10**±`RANGE` (it is ±oo)."""
    return value in (sp.oo, -sp.oo)
