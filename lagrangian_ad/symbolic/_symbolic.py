"""The symbolic layer: the Lagrangian and its stationarity conditions, as SymPy objects.

With one multiplier λ_i per constraint c_i (c_i = z_i − f_i for an explicit one),

    L(x, z, λ) = z_N − Σ_i λ_i c_i(x, z)

and ∇L = 0 reads

    ∂L/∂λ_i = 0  ⇔  z_i = f_i(z_Pa(i))                           (the forward pass)
    ∂L/∂z_j = 0  ⇔  λ_j = [j = N] + Σ_{i ∈ children(j)} λ_i ∂f_i/∂z_j   (the adjoint pass)
    ∂L/∂x_k      =  Σ_{i ∈ children(k)} λ_i ∂f_i/∂x_k  (= ∂z_N/∂x_k)  (the gradient)

A program with array variables has one multiplier array per array constraint, the
inner product ⟨Λ_i, Z_i − F_i⟩ in L and matrix equations as conditions
(`_array_symbolic`); entry-wise programs are differentiated here, entry by entry.

Constraints that are not definitions (`Program.subject_to`), each written g_j ≤ 0 or
g_j = 0, enter with multipliers μ_j in the sign convention of a maximization of z_N:

    L(x, z, λ, μ) = z_N − Σ_i λ_i c_i(x, z) − Σ_j μ_j g_j(x, z),

so that at a constrained maximum ∇z_N = Σ_j μ_j ∇g_j (along the definitions) with
μ_j ≥ 0, g_j ≤ 0 and μ_j g_j = 0 for an inequality (complementarity). For a
minimization of z_N the same μ satisfy ∇z_N + Σ_j μ_j ∇g_j = 0: they are the
multipliers of L for the maximization of −z_N.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import sympy as sp

from ..core._ir import ProgramIR, adjoint_sign
from ._array_symbolic import MathLatexPrinter, MathStrPrinter, array_conditions, array_lagrangian

__all__ = ["Conditions", "conditions", "lagrangian", "program_latex"]


def lagrangian(ir: ProgramIR) -> sp.Expr:
    """L = z_N − Σ_i λ_i c_i − Σ_j μ_j g_j (⟨Λ_i, c_i⟩ for an array constraint)."""
    constrained = sp.Add(*[g.multiplier * g.g for g in ir.subject_to])
    if ir.has_arrays:
        return array_lagrangian(ir) - constrained
    return ir.output - sp.Add(*[c.multiplier * c.residual for c in ir.constraints]) - constrained


@dataclass(frozen=True)
class Conditions:
    """The stationarity conditions of a program's Lagrangian.

    Attributes
    ----------
    constraints : list of sympy.Eq
        ∂L/∂λ_i = 0 for every constraint: ``Eq(z_i, f_i)`` (``Eq(c_i, 0)`` if implicit).
    adjoint : list of sympy.Eq
        ∂L/∂z_j = 0 for every intermediate, solved for λ_j where the constraint is explicit.
    gradient : dict
        Input entry name -> ∂L/∂x_k, a SymPy expression in the multipliers (an input
        array variable's name -> a matrix expression of its shape).
    complementarity : list of sympy relations
        For each constraint of `Program.subject_to`, in order: ``g_j <= 0``,
        ``mu_j >= 0`` and ``Eq(mu_j*g_j, 0)`` for an inequality, ``Eq(g_j, 0)`` for an
        equality (g_j is written so that the constraint reads g_j ≤ 0 or g_j = 0).

    For an array program the equations are matrix equations, printed with Wᵀ and ∘.
    """

    constraints: list[sp.Eq]
    adjoint: list[sp.Eq]
    gradient: dict[str, sp.Expr]
    complementarity: list[sp.Basic] = field(default_factory=list)

    def _repr_latex_(self) -> str:
        latex = MathLatexPrinter().doprint
        rows = [r"&\text{forward } (\partial L/\partial \lambda_i = 0): && \\"]
        rows += [rf"&& {latex(e.lhs)} &= {latex(e.rhs)} \\" for e in self.constraints]
        rows.append(r"&\text{adjoint } (\partial L/\partial z_j = 0): && \\")
        rows += [rf"&& {latex(e.lhs)} &= {latex(e.rhs)} \\" for e in self.adjoint]
        rows.append(r"&\text{gradient } (\partial L/\partial x_k): && \\")
        rows += [
            rf"&& \frac{{\partial L}}{{\partial {latex(sp.Symbol(k))}}} &= {latex(v)} \\"
            for k, v in self.gradient.items()
        ]
        if self.complementarity:
            rows.append(r"&\text{constraints and complementarity:} && \\")
            rows += [rf"&& {sp.latex(e)} & \\" for e in self.complementarity]
        return "$$\\begin{aligned}\n" + "\n".join(rows) + "\n\\end{aligned}$$"

    def __str__(self) -> str:
        show = MathStrPrinter().doprint
        lines = ["forward (dL/dλ_i = 0):"]
        lines += [f"  {show(e.lhs)} = {show(e.rhs)}" for e in self.constraints]
        lines.append("adjoint (dL/dz_j = 0):")
        lines += [f"  {show(e.lhs)} = {show(e.rhs)}" for e in self.adjoint]
        lines.append("gradient (dL/dx_k):")
        lines += [f"  dL/d{k} = {show(v)}" for k, v in self.gradient.items()]
        if self.complementarity:
            lines.append("constraints and complementarity:")
            lines += [f"  {_relation_text(e)}" for e in self.complementarity]
        return "\n".join(lines)


def conditions(ir: ProgramIR) -> Conditions:
    """Differentiate the Lagrangian constraint by constraint (one pass over the program)."""
    if ir.has_arrays:
        return Conditions(*array_conditions(ir))
    forward = [
        sp.Eq(c.target, c.expr, evaluate=False)
        if c.target is not None
        else sp.Eq(c.expr, 0, evaluate=False)
        for c in ir.constraints
    ]
    # The part of ∂L/∂v that comes from the constraints other than v's own definition:
    # +λ_i ∂f_i/∂v for an explicit constraint, −λ_i ∂c_i/∂v for an implicit one.
    terms: dict[sp.Symbol, list[sp.Expr]] = defaultdict(list)
    for c in ir.constraints:
        for s, d in _partials(c.expr):
            terms[s].append(c.sign * c.multiplier * d)
    complementarity: list[sp.Basic] = []
    for side in ir.subject_to:  # L = … − μ_j g_j: −μ_j ∂g_j/∂v, like an implicit equation
        for s, d in _partials(side.g):
            terms[s].append(adjoint_sign(False) * side.multiplier * d)
        complementarity += side.complementarity
    own = {c.target: c for c in ir.constraints if c.target is not None}
    adjoint = []
    for var in ir.intermediates:
        for z in var.symbols:
            seed = sp.S.One if z == ir.output else sp.S.Zero
            c = own.get(z)
            rhs = seed + sp.Add(*terms[z])
            if c is not None:
                adjoint.append(sp.Eq(c.multiplier, rhs, evaluate=False))
            else:
                adjoint.append(sp.Eq(rhs, 0, evaluate=False))
    gradient = {s.name: sp.Add(*terms[s]) for v in ir.inputs for s in v.symbols}
    return Conditions(forward, adjoint, gradient, complementarity)


def _relation_text(rel: sp.Basic) -> str:
    if isinstance(rel, sp.Equality):
        return f"{rel.lhs} = {rel.rhs}"
    return str(rel)


def _partials(expr: sp.Expr) -> list[tuple[sp.Symbol, sp.Expr]]:
    """(s, ∂expr/∂s) for each free symbol s, in SymPy's sort order.

    A sum is differentiated term by term, each term for its own symbols only: SymPy's
    ``diff`` of a sum visits every term, so the partials of a sum of n inputs cost n²
    (minutes for n = 3,000); this costs the total size of the terms.
    """
    terms = expr.args if expr.is_Add else (expr,)
    by_symbol: dict[sp.Symbol, list[sp.Expr]] = defaultdict(list)
    for t in terms:
        for s in t.free_symbols:
            by_symbol[s].append(t)
    return [
        (s, sp.Add(*[sp.diff(t, s) for t in by_symbol[s]]))
        for s in sorted(by_symbol, key=sp.default_sort_key)
    ]


def program_latex(ir: ProgramIR) -> str:
    """The program's constraints and output as a LaTeX block."""
    rows = []
    for v in ir.inputs:
        shape = (
            "" if v.shape == () else r" \in \mathbb{R}^{" + r"\times".join(map(str, v.shape)) + "}"
        )
        rows.append(rf"&\text{{input}} && {sp.latex(sp.Symbol(v.name))}{shape} \\")
    for c in ir.constraints:
        lhs = sp.latex(c.target) if c.target is not None else sp.latex(c.expr)
        rhs = sp.latex(c.expr) if c.target is not None else "0"
        rows.append(rf"& && {lhs} = {rhs} \\")
    ops = {"<=": r"\le", ">=": r"\ge", "==": "="}
    for side in ir.subject_to:
        rel = rf"{sp.latex(side.lhs)} {ops[side.relation]} {sp.latex(side.rhs)}"
        rows.append(rf"&\text{{subject to}} && {rel} \quad ({side.label}) \\")
    rows.append(rf"&\text{{output}} && {sp.latex(ir.output)}")
    return "$$\\begin{aligned}\n" + "\n".join(rows) + "\n\\end{aligned}$$"
