"""The frozen program: variables, constraints and the output, as the layers below read it.

`ProgramIR` is the validated snapshot a `Program` (the builder) freezes; compiling,
solving, printing and the symbolic layer read only this module, so none of them
imports the builder (no import cycle: the builder calls down into them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp

from ._arrays import ArrayMultiplier, MatrixVariable
from ._errors import ProgramError

__all__ = ["Constraint", "ProgramIR", "SideConstraint", "Variable"]

MULTIPLIER_PREFIX = "lambda_"
SIDE_MULTIPLIER_PREFIX = "mu_"
RELATIONS = ("<=", ">=", "==")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Variable:
    """A named variable: a scalar, an array of scalar entries in C order, or an array
    variable (one `MatrixVariable` for the whole array).

    Attributes
    ----------
    name : str
    kind : {"input", "intermediate"}
    shape : tuple of int
        ``()`` for a scalar.
    symbols : tuple of sympy.Symbol
        The scalar entries, flattened in C order (none for an array variable).
    matrix : MatrixVariable or None
        The array variable itself (n×1 for shape (n,)), if declared with ``array=True``.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    symbols: tuple[sp.Symbol, ...]
    matrix: MatrixVariable | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=int)) if self.matrix is not None else len(self.symbols)

    def as_sympy(self) -> sp.Symbol | sp.Matrix | MatrixVariable:
        """The Symbol of a scalar, a Matrix of Symbols (n×1 for shape (n,)), or the
        MatrixVariable of an array variable."""
        if self.matrix is not None:
            return self.matrix
        return _as_sympy(self.shape, self.symbols)


def adjoint_sign(explicit: bool) -> int:
    """The ± convention of every pass, stated once: the sign with which a constraint's
    multiplier weighs the derivatives of its expression. L = … − λ (z − f) gives +λ ∂f
    for an explicit constraint; L = … − λ c gives −λ ∂c for an implicit equation."""
    return 1 if explicit else -1


@dataclass(frozen=True)
class Constraint:
    """One scalar constraint and its multiplier.

    Explicit constraints ``z_i = f_i(…)`` have ``target = z_i`` and ``expr = f_i``; their
    residual is ``z_i − f_i``. An implicit equation has ``target = None`` and ``expr`` is
    its residual ``c(z)`` itself.
    """

    label: str
    target: sp.Symbol | MatrixVariable | None
    expr: sp.Expr | sp.MatrixExpr

    @property
    def multiplier(self) -> sp.Symbol | sp.MatrixSymbol:
        """λ of this constraint (made on demand: the numeric path never needs it); a
        MatrixSymbol Λ of the target's shape for an array constraint."""
        if isinstance(self.target, sp.MatrixSymbol):
            return ArrayMultiplier(MULTIPLIER_PREFIX + self.label, *self.target.shape)
        return sp.Symbol(MULTIPLIER_PREFIX + self.label, real=True)

    @property
    def size(self) -> int:
        """How many scalar residuals: the entries of an array constraint's target, else 1."""
        shaped = self.target if self.target is not None else self.expr
        return int(np.prod(shaped.shape)) if isinstance(shaped, sp.MatrixExpr) else 1

    @property
    def residual(self) -> sp.Expr:
        return self.expr if self.target is None else self.target - self.expr

    @property
    def sign(self) -> int:
        """+1 or −1: how λ weighs the derivatives of ``expr`` (`adjoint_sign`)."""
        return adjoint_sign(self.target is not None)


@dataclass(frozen=True)
class SideConstraint:
    """A constraint that is not a definition: ``lhs <= rhs``, ``lhs >= rhs`` or
    ``lhs == rhs`` over inputs and intermediates (`Program.subject_to`).

    Its function g is written so that the constraint reads g ≤ 0 (an inequality) or
    g = 0 (an equality): g = lhs − rhs for ``<=`` and ``==``, g = rhs − lhs for ``>=``.
    Its multiplier μ is ≥ 0 for an inequality.
    """

    label: str
    relation: str  # one of RELATIONS
    lhs: sp.Expr
    rhs: sp.Expr

    @property
    def is_equality(self) -> bool:
        return self.relation == "=="

    @property
    def g(self) -> sp.Expr:
        """g with the constraint g ≤ 0 (inequality) or g = 0 (equality)."""
        return self.rhs - self.lhs if self.relation == ">=" else self.lhs - self.rhs

    @property
    def multiplier(self) -> sp.Symbol:
        """μ of this constraint, the Symbol ``mu_<label>`` (μ ≥ 0 for an inequality)."""
        return sp.Symbol(SIDE_MULTIPLIER_PREFIX + self.label, real=True)

    @property
    def complementarity(self) -> list[sp.Basic]:
        """Its conditions at a KKT point: ``Eq(g, 0)`` for an equality; ``g <= 0``,
        ``mu >= 0`` and ``Eq(mu*g, 0)`` for an inequality."""
        g, mu = self.g, self.multiplier
        if self.is_equality:
            return [sp.Eq(g, 0, evaluate=False)]
        return [
            sp.Le(g, 0, evaluate=False),
            sp.Ge(mu, 0, evaluate=False),
            sp.Eq(mu * g, 0, evaluate=False),
        ]

    @property
    def free_symbols(self) -> set:
        return self.lhs.free_symbols | self.rhs.free_symbols


@dataclass(frozen=True)
class ProgramIR:
    """The frozen program: what compiling, solving and printing work from.

    ``subject_to`` holds the constraints that are not definitions (`SideConstraint`):
    the forward pass and the gradient ignore them; the constrained optimizers and the
    symbolic Lagrangian include them.
    """

    inputs: tuple[Variable, ...]
    intermediates: tuple[Variable, ...]
    constraints: tuple[Constraint, ...]
    output: sp.Symbol
    subject_to: tuple[SideConstraint, ...] = ()

    @property
    def has_arrays(self) -> bool:
        """Whether any variable is an array variable (``array=True``)."""
        return any(v.matrix is not None for v in (*self.inputs, *self.intermediates))

    def validate(self) -> None:
        """Check the invariants the builder guarantees; raise `ProgramError` if broken."""
        seen: dict[sp.Basic, str] = {}
        for var in (*self.inputs, *self.intermediates):
            if var.size != int(np.prod(var.shape, dtype=int)):
                raise ProgramError(
                    f"variable {var.name!r}: {var.size} entries for shape {var.shape}"
                )
            for s in var.symbols if var.matrix is None else (var.matrix,):
                if s in seen:
                    raise ProgramError(f"symbol {s} belongs to both {seen[s]!r} and {var.name!r}")
                seen[s] = var.name
        defined: set[sp.Symbol] = set()
        for c in self.constraints:
            if c.target is not None:
                if c.target in defined:
                    raise ProgramError(f"variable {c.target} is defined twice")
                defined.add(c.target)
            unknown = [s for s in c.expr.free_symbols if s not in seen]
            if unknown:
                raise ProgramError(f"constraint {c.label!r} uses undefined {_names(unknown)}")
        has_equations = any(c.target is None for c in self.constraints)
        used = set().union(*(c.expr.free_symbols for c in self.constraints))
        undefined = [
            s
            for v in self.intermediates
            for s in (v.symbols if v.matrix is None else (v.matrix,))
            if s not in defined and (not has_equations or s not in used)
        ]
        if undefined:
            raise ProgramError(f"intermediate {_names(undefined)} declared but never defined")
        if self.output not in {s for v in self.intermediates for s in v.symbols}:
            raise ProgramError(f"the output {self.output} is not an intermediate")
        labels = {c.label for c in self.constraints}
        for side in self.subject_to:
            if side.relation not in RELATIONS:
                raise ProgramError(f"constraint {side.label!r}: unknown relation {side.relation}")
            if side.label in labels:
                raise ProgramError(f"constraint name {side.label!r} is used twice")
            labels.add(side.label)
            unknown = [s for s in side.free_symbols if s not in seen]
            if unknown:
                raise ProgramError(f"constraint {side.label!r} uses undefined {_names(unknown)}")


# --------------------------------------------------------------------------- helpers


def _as_sympy(shape: tuple[int, ...], symbols: tuple[sp.Symbol, ...]) -> sp.Symbol | sp.Matrix:
    if shape == ():
        return symbols[0]
    rows, cols = (shape[0], 1) if len(shape) == 1 else shape
    return sp.Matrix(rows, cols, list(symbols))


def _names(items: Iterable[Any]) -> str:
    return ", ".join(sorted(str(i) for i in items))
