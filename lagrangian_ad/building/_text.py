"""The program text format: printing a program back to the lines of a ``.lad`` file.

One statement a line::

    input x
    input W[2,3]
    a = exp(x)
    h = tanh(0.5*h + a)
    output h

Array intermediates are printed entry by entry (``v[0] = …``) after a declaration
``var v[2]``; the unknowns of implicit equations are declared with ``var u`` and each
equation is printed as ``residual = 0``; constraints that are not definitions
(`Program.subject_to`) as ``subject to NAME: lhs <= rhs`` (or ``>=``, ``==``), after the
output; so parsing the text gives the same program back.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.str import StrPrinter

from ..core._ir import ProgramIR

__all__ = ["MAX_LINE_CHARS", "expr_to_text", "format_program"]

MAX_LINE_CHARS = 20_000
"""Longest line accepted by the parser, in characters; printed lines that would be longer
are printed without spaces (no space is needed between tokens of the format)."""


class _TextPrinter(StrPrinter):
    """SymPy's str printer with exact floats and the text format's function names."""

    def _print_Float(self, expr: sp.Float) -> str:
        text = repr(float(expr))
        return text if "e" not in text else f"({text})"

    def _print_Abs(self, expr: sp.Abs) -> str:
        return f"abs({self._print(expr.args[0])})"

    def _print_Exp1(self, expr: sp.Expr) -> str:
        return "E"


_PRINTER = _TextPrinter({"order": "none"})


def expr_to_text(expr: sp.Expr) -> str:
    """An expression in the text format's syntax."""
    return _PRINTER.doprint(expr)


def _shape_suffix(shape: tuple[int, ...]) -> str:
    return "" if shape == () else "[" + ",".join(map(str, shape)) + "]"


def format_program(ir: ProgramIR) -> str:
    """The text of ``ir`` in the ``.lad`` format."""
    lines = [f"input {v.name}{_shape_suffix(v.shape)}" for v in ir.inputs]
    defined = {c.target for c in ir.constraints}
    lines += [
        f"var {v.name}{_shape_suffix(v.shape)}"
        for v in ir.intermediates
        if v.shape or v.symbols[0] not in defined  # arrays, and unknowns of equations
    ]
    for c in ir.constraints:
        if c.target is None:
            line = f"{expr_to_text(c.expr)} = 0"
        else:
            line = f"{c.target} = {expr_to_text(c.expr)}"
        lines.append(line if len(line) <= MAX_LINE_CHARS else line.replace(" ", ""))
    lines.append(f"output {ir.output}")
    for side in ir.subject_to:
        lhs, rhs = expr_to_text(side.lhs), expr_to_text(side.rhs)
        line = f"subject to {side.label}: {lhs} {side.relation} {rhs}"
        if len(line) > MAX_LINE_CHARS:
            line = f"subject to {side.label}: {lhs.replace(' ', '')}{side.relation}" + rhs.replace(
                " ", ""
            )
        lines.append(line)
    return "\n".join(lines) + "\n"
