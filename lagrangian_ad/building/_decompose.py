"""Decomposing a flat SymPy expression into a program of elementary constraints.

Every operation node of the expression tree (exp, sin, +, *, ** …) becomes one
intermediate z_k = op(args), where each argument is an input, a constant, or an earlier
intermediate. Structurally equal subtrees are one node in SymPy, so a shared
subexpression becomes one variable, computed once: the blog's flat

    f = exp(exp(x) + exp(2x)) + sin(exp(x) + exp(2x))

becomes a = exp(x), t = 2x, b = exp(t), c = a + b, d = exp(c), e = sin(c), f = d + e.
The walk is iterative (post-order with an explicit stack), so depth is no limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sympy as sp

from ..core._errors import ProgramError
from ._program import Program

__all__ = ["decompose"]


def decompose(expr: Any, inputs: Iterable[sp.Symbol | str], *, prefix: str = "z") -> Program:
    """One constraint per elementary operation of ``expr``; the output is ``expr``.

    Parameters
    ----------
    expr : sympy.Expr
        A scalar expression in the ``inputs``.
    inputs : iterable of sympy.Symbol or str
        The program's scalar inputs, in order.
    prefix : str
        Intermediates are named ``prefix1``, ``prefix2``, … (skipping taken names).

    Examples
    --------
    >>> import sympy as sp, lagrangian_ad as lad
    >>> x = sp.Symbol("x")
    >>> prog = lad.decompose(sp.exp(x) * sp.sin(x), inputs=[x])
    >>> print(prog)
    input x
    z1 = exp(x)
    z2 = sin(x)
    z3 = z1*z2
    output z3
    <BLANKLINE>
    """
    if isinstance(expr, str):
        raise ProgramError("decompose: pass a SymPy expression; text is read only by lad.parse")
    try:
        expr = sp.sympify(expr, strict=True)
    except (sp.SympifyError, TypeError) as err:
        raise ProgramError(f"decompose: cannot use {expr!r} as an expression") from err
    if not isinstance(expr, sp.Expr):
        raise ProgramError(f"decompose: {expr} is not a scalar expression")

    prog = Program()
    ours: dict[str, sp.Symbol] = {}
    for s in inputs:
        name = s if isinstance(s, str) else getattr(s, "name", None)
        if name is None:
            raise ProgramError(f"decompose: inputs must be Symbols or names, got {s!r}")
        ours[name] = prog.input(name)

    names = (f"{prefix}{k}" for k in range(1, 1 << 62) if f"{prefix}{k}" not in ours)
    memo: dict[sp.Basic, sp.Basic] = {}  # node -> the variable or constant standing for it
    constant: set[sp.Basic] = set()
    stack: list[tuple[sp.Basic, bool]] = [(expr, False)]
    while stack:
        node, ready = stack.pop()
        if node in memo:
            continue
        if not node.args:  # inputs stand for themselves, as do numbers
            if isinstance(node, sp.Symbol):
                if node.name not in ours:
                    raise ProgramError(f"decompose: {node.name} is not among the inputs")
                memo[node] = ours[node.name]
            else:
                memo[node] = node
                constant.add(node)
            continue
        if not ready:
            stack.append((node, True))
            stack.extend((a, False) for a in reversed(node.args) if a not in memo)
            continue
        args = [memo[a] for a in node.args]
        rebuilt = node.func(*args)
        if all(a in constant for a in node.args) or not isinstance(node, sp.Expr):
            # Constants stay inline; conditions of a Piecewise are structure, not values.
            memo[node] = rebuilt
            if all(a in constant for a in node.args):
                constant.add(node)
        else:
            memo[node] = prog.define(next(names), rebuilt)
    result = memo[expr]
    if expr in constant or result in ours.values():
        result = prog.define(next(names), result)  # the output must be an intermediate
    prog.output(result)
    return prog
