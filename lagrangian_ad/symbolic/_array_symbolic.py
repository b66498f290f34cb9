"""The symbolic layer of array programs: ⟨Λ, Z − F⟩ and the conditions as matrix equations.

An array constraint Z = F(…) has one multiplier array Λ of Z's shape, and enters the
Lagrangian through the Frobenius inner product ⟨Λ, Z − F⟩ = Σ_ij Λ_ij (Z − F)_ij
(`Inner`, printed unexpanded):

    L = z_N − Σ_i ⟨Λ_i, Z_i − F_i⟩        (a scalar constraint keeps λ_i (z_i − f_i))

Its stationarity conditions are matrix equations. ∂L/∂Λ_i = 0 is the constraint
itself; ∂L/∂Z_j = 0 is the adjoint equation, a sum of vector-Jacobian products

    Λ_j = [j = N] + Σ_{i ∈ children(j)} (∂F_i/∂Z_j)ᵀ Λ_i

and ∂L/∂X_k for an input is its gradient, the same sum. For h = tanh(W x + b):
Λ_x = Wᵀ (Λ_h ∘ (1 − h∘h)), ∂L/∂W = (Λ_h ∘ (1 − h∘h)) xᵀ.

The products are not found by differentiating L with SymPy's matrix calculus (which
knows neither the elementwise forms of `lagrangian_ad` nor, in SymPy 1.14, the
derivative of an entry: ``diff(X[0, 0], X)`` is 0). Each constraint is lowered as the
array engine lowers it (`_lowering`) and the nodes are walked in reverse with one rule
per operation, the same rules the engine prints as NumPy code, here as SymPy matrix
expressions: g Bᵀ and Aᵀ g for A B, gᵀ for a transpose, g 𝟙 for a sum, g E_(i,j) (the
matrix unit) for an entry, and g ∘ ∂f/∂p for an elementwise form, whose partial is the
one `_forms` derived once per form on scalar placeholders (with f replaced by its
target: 1 − h∘h, not 1 − tanh(W x + b)∘tanh(W x + b)). Nothing is expanded into entries:
printing a 784-256 layer's conditions is as fast as printing the program.
"""

from __future__ import annotations

from typing import Any

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

from ..compiling import _rules as rules
from ..compiling._codegen import _Printer
from ..compiling._forms import FormTable
from ..compiling._lowering import Lowering, Node, Unit, build_units
from ..core._arrays import ArrayMatAdd, ArrayMatMul, ArraySum, ArrayTranspose, Elementwise
from ..core._ir import ProgramIR, adjoint_sign

__all__ = [
    "Inner",
    "MathLatexPrinter",
    "MathStrPrinter",
    "MatrixUnit",
    "array_conditions",
    "array_lagrangian",
]


# --------------------------------------------------------------------------- objects


class Inner(sp.Expr):
    """The Frobenius inner product ⟨A, B⟩ = Σ_ij A_ij B_ij = tr(Aᵀ B), a scalar.

    A genuine SymPy expression, kept unexpanded: ``free_symbols``, ``subs`` and
    ``xreplace`` work on it, `as_explicit` writes it as the sum over the entries (for
    small shapes), and its derivative in a scalar symbol is that of the sum. It is an
    `Expr` of its own rather than ``sp.Trace(A.T * B)`` so that it prints as ⟨A, B⟩
    and stays a scalar that adds to the scalar terms of the Lagrangian.
    """

    is_commutative = True
    is_real = True

    def __new__(cls, a: sp.MatrixExpr, b: sp.MatrixExpr):
        return sp.Expr.__new__(cls, a, b)

    def as_explicit(self) -> sp.Expr:
        """Σ_ij A_ij B_ij in the entries of A and B."""
        a, b = (m.as_explicit() for m in self.args)
        return sp.Add(*[p * q for p, q in zip(a, b, strict=True)])

    def _eval_derivative(self, s: sp.Symbol) -> sp.Expr:
        return self.as_explicit().diff(s)

    def _sympystr(self, printer: Any) -> str:
        return f"⟨{printer._print(self.args[0])}, {_difference(printer, self.args[1], ' - ')}⟩"

    def _latex(self, printer: Any) -> str:
        a, b = printer._print(self.args[0]), _difference(printer, self.args[1], " - ")
        return rf"\left\langle {a}, {b} \right\rangle"


def _difference(printer: Any, e: sp.Basic, minus: str) -> str:
    """``Z - F`` for the residual ``Z + (-1) F`` (SymPy would print ``-F + Z``)."""
    if isinstance(e, sp.MatAdd) and len(e.args) == 2:
        z, neg = e.args
        if isinstance(neg, sp.MatMul) and neg.args[0] == -1:
            f = ArrayMatMul(*neg.args[1:]) if len(neg.args) > 2 else neg.args[1]
            return printer._print(z) + minus + printer.parenthesize(f, PRECEDENCE["Add"] + 1)
    return printer._print(e)


class MatrixUnit(sp.MatrixExpr):
    """E_(i,j): the rows × cols matrix with a 1 at entry (i, j), zeros elsewhere."""

    def __new__(cls, rows: int, cols: int, i: int, j: int):
        return sp.Basic.__new__(cls, *map(sp.Integer, (rows, cols, i, j)))

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.args[0]), int(self.args[1])

    def _entry(self, i: Any, j: Any, **kwargs: Any) -> sp.Expr:
        return sp.KroneckerDelta(i, self.args[2]) * sp.KroneckerDelta(j, self.args[3])

    def _sympystr(self, printer: Any) -> str:
        return f"E({self.args[2]},{self.args[3]})"

    def _latex(self, printer: Any) -> str:
        return rf"E_{{({self.args[2]},{self.args[3]})}}"


# --------------------------------------------------------------------------- printing


def _is_array_valued(e: sp.Basic) -> bool:
    return any(getattr(s, "is_array_operand", False) for s in e.free_symbols)


class _HadamardBody:
    """Prints the scalar template of an elementwise form with its array operands: a
    product of arrays as A ∘ B, an integer power as h ∘ h."""

    circ = " ∘ "

    def _print_Mul(self, expr: sp.Mul) -> str:
        arrays = [f for f in expr.args if _is_array_valued(f)]
        if len(arrays) < 2:
            return super()._print_Mul(expr)
        scalars = sp.Mul(*[f for f in expr.args if not _is_array_valued(f)])
        body = self.circ.join(self.parenthesize(f, PRECEDENCE["Mul"]) for f in arrays)
        if scalars == 1:
            return body
        if scalars == -1:
            return "-" + body
        return self.parenthesize(scalars, PRECEDENCE["Mul"]) + self._scalar_times + body

    def _print_Pow(self, expr: sp.Pow, *args: Any, **kwargs: Any) -> str:
        base, n = expr.args
        if _is_array_valued(base) and n in (2, 3):
            return self.circ.join([self.parenthesize(base, PRECEDENCE["Mul"])] * int(n))
        return super()._print_Pow(expr, *args, **kwargs)


class _StrBody(_HadamardBody, StrPrinter):
    _scalar_times = "*"


class _LatexBody(_HadamardBody, LatexPrinter):
    circ = r" \circ "
    _scalar_times = " "


class MathStrPrinter(StrPrinter):
    """The str printer of the conditions: Wᵀ, A ∘ B, 𝟙 for the matrix of ones."""

    body_printer = _StrBody

    def _print_Transpose(self, expr: sp.Transpose) -> str:
        return self.parenthesize(expr.arg, PRECEDENCE["Pow"]) + "ᵀ"

    def _print_HadamardProduct(self, expr: sp.HadamardProduct) -> str:
        return " ∘ ".join(_factor(self, a) for a in expr.args)

    def _print_OneMatrix(self, expr: sp.OneMatrix) -> str:
        return "𝟙"

    def _print_ZeroMatrix(self, expr: sp.ZeroMatrix) -> str:
        return "0"


class MathLatexPrinter(LatexPrinter):
    """The LaTeX printer of the conditions (Hadamard products as ∘ inside forms too)."""

    body_printer = _LatexBody

    def _print_HadamardProduct(self, expr: sp.HadamardProduct) -> str:
        return r" \circ ".join(_factor(self, a) for a in expr.args)

    def _print_Transpose(self, expr: sp.Transpose) -> str:
        if isinstance(expr.arg, sp.MatrixSymbol):
            return rf"{self._print(expr.arg)}^{{T}}"
        return rf"\left({self._print(expr.arg)}\right)^{{T}}"


def _factor(printer: Any, e: sp.Basic) -> str:
    """A factor of a Hadamard product, in parentheses if it is a sum (also a sum inside
    an elementwise form: 1 − h∘h)."""
    text = printer._print(e)
    is_sum = isinstance(e, (sp.MatAdd, sp.Add)) or (
        isinstance(e, Elementwise) and e.function.expr.is_Add
    )
    if not is_sum:
        return printer.parenthesize(e, PRECEDENCE["Mul"])
    return rf"\left({text}\right)" if isinstance(printer, LatexPrinter) else f"({text})"


# --------------------------------------------------------------------------- Lagrangian


def array_lagrangian(ir: ProgramIR) -> sp.Expr:
    """L = z_N − Σ_i ⟨Λ_i, Z_i − F_i⟩ (λ_i (z_i − f_i) for a scalar constraint)."""
    terms = [
        Inner(c.multiplier, c.residual)
        if isinstance(c.target, sp.MatrixSymbol)
        else c.multiplier * c.residual
        for c in ir.constraints
    ]
    return ir.output - sp.Add(*terms)


# --------------------------------------------------------------------------- conditions


def array_conditions(
    ir: ProgramIR,
) -> tuple[list[sp.Eq], list[sp.Eq], dict[str, sp.Basic], list[sp.Basic]]:
    """(forward, adjoint, gradient, complementarity) of an array program, as `Conditions`
    holds them; the constraints of `subject_to` enter ∂L/∂v with −μ_j ∂g_j/∂v."""
    units = build_units(ir)
    by_key = {u.key: u for u in units}
    low = Lowering(by_key, FormTable(_Printer))
    parts: dict[int, list[sp.Basic]] = {}  # unit index -> contributions to ∂L/∂unit
    forward = []
    for c in ir.constraints:
        if c.target is not None:
            step = low.constraint(c.label, by_key[c.target], c.expr)
            _backward(step.nodes, step.root, c.sign * c.multiplier, c.target, parts)
            forward.append(sp.Eq(c.target, c.expr, evaluate=False))
        else:  # L = … − λ c: the root's adjoint is −λ, its value c itself
            scalar = Unit(-1, None, c.label, c.label, (1, 1), "equation")
            step = low.constraint(c.label, scalar, c.expr, implicit=True)
            _backward(step.nodes, step.root, c.sign * c.multiplier, None, parts)
            forward.append(sp.Eq(c.expr, 0, evaluate=False))
    complementarity = []
    for side in ir.subject_to:  # L = … − μ_j g_j: lowered and walked like an equation
        scalar = Unit(-1, None, side.label, side.label, (1, 1), "equation")
        step = low.constraint(side.label, scalar, side.g, implicit=True)
        _backward(step.nodes, step.root, adjoint_sign(False) * side.multiplier, None, parts)
        complementarity += side.complementarity
    own = {c.target: c for c in ir.constraints if c.target is not None}
    adjoint = []
    for u in units:
        if u.kind != "intermediate":
            continue
        seed = [sp.S.One] if u.key == ir.output else []
        rhs = _total(seed + parts.get(u.index, []), u)
        c = own.get(u.key)
        if c is not None:
            adjoint.append(sp.Eq(c.multiplier, rhs, evaluate=False))
        else:
            adjoint.append(sp.Eq(rhs, 0, evaluate=False))
    gradient = {u.label: _total(parts.get(u.index, []), u) for u in units if u.kind == "input"}
    return forward, adjoint, gradient, complementarity


def _total(terms: list[sp.Basic], u: Unit) -> sp.Basic:
    if not isinstance(u.key, sp.MatrixSymbol):
        return sp.Add(*terms)
    if not terms:
        return sp.ZeroMatrix(*u.shape)
    return terms[0] if len(terms) == 1 else ArrayMatAdd(*terms)


def _backward(
    nodes: list[Node],
    root: Node,
    weight: sp.Basic,
    target: sp.Basic | None,
    parts: dict[int, list[sp.Basic]],
) -> None:
    """The vector-Jacobian products of one constraint with adjoint ``weight`` at its
    root, node by node in reverse, added to ``parts`` of the units it reads."""
    values: dict[int, sp.Basic] = {}
    for n in nodes:  # evaluation order: operands first
        values[id(n)] = _value(n, [values[id(a)] for a in n.args])
    adjoint: dict[int, list[sp.Basic]] = {id(root): [weight]}
    for n in reversed(nodes):
        got = adjoint.pop(id(n), None)
        if not got or n.op == "const":
            continue
        g = _sum(got, values[id(n)])
        if n.op == "read":
            parts.setdefault(n.data.index, []).extend(g.args if isinstance(g, sp.MatAdd) else (g,))
            continue
        # at the root the form's «t» is the constraint's target (its value where L is
        # stationary): 1 − h∘h for tanh, as the engine computes it
        out = target if n is root and target is not None else values[id(n)]
        operands = [values[id(a)] for a in n.args]
        for k, contribution in _vjp(n, g, operands, out):
            if n.args[k].op != "const":
                adjoint.setdefault(id(n.args[k]), []).append(contribution)


def _is_matrix(e: sp.Basic) -> bool:
    return isinstance(e, (sp.MatrixExpr, sp.MatrixBase))


def _sum(terms: list[sp.Basic], like: sp.Basic) -> sp.Basic:
    if len(terms) == 1:
        return terms[0]
    return ArrayMatAdd(*terms) if _is_matrix(like) else sp.Add(*terms)


def _value(n: Node, a: list[sp.Basic]) -> sp.Basic:
    """The SymPy expression of node ``n`` from those of its operands ``a``."""
    if n.op == "read":
        return n.data.key
    if n.op == "const":
        return sp.ImmutableMatrix(n.data) if hasattr(n.data, "shape") else sp.Float(n.data)
    if n.op == "ew":
        body, ps = n.data[2]
        if any(_is_matrix(x) for x in a):
            return Elementwise(sp.Lambda(tuple(ps), body), *a)
        return body.xreplace(dict(zip(ps, a, strict=True)))
    return rules.value(_SYMPY, n.op, n.data, a)


def _transpose(e: sp.Basic) -> sp.Basic:
    return e.arg if isinstance(e, sp.Transpose) else ArrayTranspose(e)


def _vjp(n: Node, g: sp.Basic, a: list[sp.Basic], out: sp.Basic) -> list[tuple[int, sp.Basic]]:
    """(operand position, contribution of ``g`` to that operand's adjoint): the form's
    partials for an elementwise node, the table of `_rules` for the others."""
    if n.op == "ew":
        form, floats = n.data[0], n.data[1]
        result = []
        for k, d in form.partials:
            local = _instantiate(d, a, floats, out)
            if _is_matrix(out):
                gd = _hadamard(g, local)
                result.append((k, gd if _is_matrix(a[k]) else ArraySum(gd)))
            else:
                result.append((k, g * local))
        return result
    return rules.vjp(_SYMPY, n.op, n.data, g, a)


class _SympyAlgebra:
    """The algebra of `_rules` as SymPy matrix expressions (no batch: ``fit`` is the
    identity), printed the way the conditions read: g Bᵀ, Aᵀ g, g 𝟙, g E_ij."""

    matmul = staticmethod(ArrayMatMul)
    T = staticmethod(_transpose)
    total = staticmethod(ArraySum)
    entry = staticmethod(MatrixElement)

    @staticmethod
    def spread(g: sp.Basic, like: sp.Basic) -> sp.Basic:
        return ArrayMatMul(g, sp.OneMatrix(*like.shape))

    @staticmethod
    def place(g: sp.Basic, like: sp.Basic, i: int, j: int) -> sp.Basic:
        return ArrayMatMul(g, MatrixUnit(*like.shape, i, j))

    @staticmethod
    def fit(c: sp.Basic, like: sp.Basic) -> sp.Basic:
        return c

    @staticmethod
    def add(a: sp.Basic, b: sp.Basic) -> sp.Basic:
        return ArrayMatAdd(a, b) if _is_matrix(a) else a + b


_SYMPY = _SympyAlgebra()


def _instantiate(d: sp.Expr, a: list[sp.Basic], floats: tuple, out: sp.Basic) -> sp.Basic:
    """A form's partial ∂f/∂p_k (in «p_j», «c_j», «t») with the node's operands and
    output in place: a scalar expression, or an `Elementwise` over the array ones."""
    subs: dict[sp.Basic, sp.Basic] = {}
    variables, operands = [], []
    for s in sorted(d.free_symbols, key=lambda s: s.name):
        name = s.name.strip("«»")
        if name == "t":
            e = out
        elif name.startswith("c"):
            e = floats[int(name[1:])]
        else:
            e = a[int(name[1:])]
        if _is_matrix(e):
            v = sp.Dummy(name, real=True)
            subs[s] = v
            variables.append(v)
            operands.append(e)
        else:
            subs[s] = e
    body = d.xreplace(subs)
    if not operands:
        return body
    if len(operands) == 1 and body == variables[0]:  # ∂f/∂p = p itself: the operand
        return operands[0]
    return Elementwise(sp.Lambda(tuple(variables), body), *operands)


def _scale(s: sp.Expr, m: sp.MatrixExpr) -> sp.MatrixExpr:
    """s m, printed −s m rather than (−s) m."""
    if s == 1:
        return m
    if s.could_extract_minus_sign():
        return ArrayMatMul(sp.S.NegativeOne, m) if s == -1 else ArrayMatMul(-1, -s, m)
    return ArrayMatMul(s, m)


def _hadamard(g: sp.MatrixExpr, d: sp.Basic) -> sp.MatrixExpr:
    """g ∘ d for a partial d (a broadcast scalar or an array), without trivial factors."""
    if not _is_matrix(d):
        return _scale(d, g)
    if isinstance(g, sp.MatMul) and isinstance(g.args[-1], sp.OneMatrix):  # (s 𝟙) ∘ d = s d
        return _scale(sp.Mul(*g.args[:-1]), d)
    return sp.HadamardProduct(g, d)
