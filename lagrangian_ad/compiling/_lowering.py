"""Lowering: the constraints of a program to small graphs of array operations.

Every variable is a *unit*: an array variable, or one scalar (a scalar variable, or one
entry of an entry-wise array). Each constraint ``Z = F(…)`` is lowered once to a list of
`Node` s in evaluation order:

    read     a unit's value                  matmul   A @ B
    const    a number                        T        transpose
    ew       an elementwise form f(p0, …)    sum      sum of all entries (a scalar)
             (scalars broadcast)             entry    A[i, j] (a scalar)
    gather   entries of A at given positions, as an array (entry-wise programs
             lowered by groups, `_grouping`)

Elementwise forms are derived by SymPy once per form, on scalar placeholders, by the
form machinery of `_forms`. Both readers of the lowered program walk these nodes with
the same per-operation rules: the array engine (`_array_engine`, rules printed as NumPy
code) and the symbolic layer (`_array_symbolic`, the same rules as SymPy matrix
expressions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement

from ..core._arrays import ArraySum, Elementwise, is_array
from ..core._errors import ProgramError
from ..core._ir import ProgramIR, adjoint_sign
from ._forms import FormTable, form_key

__all__ = ["Lowering", "Node", "Step", "Unit", "build_units", "chain"]


class Node:
    """One array operation of a constraint (see the module docstring)."""

    __slots__ = ("args", "data", "name", "op", "shape")

    def __init__(self, op: str, args: tuple[Node, ...], shape: tuple[int, int], data: Any = None):
        self.op, self.args, self.shape, self.data = op, args, shape, data
        self.name: str | None = None


@dataclass
class Unit:
    """A variable of the generated code: an array variable or one scalar."""

    index: int
    key: sp.Basic  # the MatrixSymbol or Symbol
    label: str  # as the user knows it: "h", "x", "W[0,1]"
    name: str  # its identifier in the generated code
    shape: tuple[int, int]
    kind: str  # "input" or "intermediate"


@dataclass
class Step:
    """One constraint: its unit, its nodes in evaluation order, its root."""

    label: str
    unit: Unit  # the unit it defines; for an implicit equation, its matched unknown
    nodes: list[Node]
    root: Node
    reads: set[int]  # indices of the units it reads
    implicit: bool = False  # an equation c = 0 (its root is c), not z = F

    @property
    def sign(self) -> str:
        """How λ enters the vector-Jacobian products of the root: L = … − λ (z − F) gives
        +λ ∂F, L = … − λ c gives −λ ∂c."""
        return "" if adjoint_sign(not self.implicit) > 0 else "-"


class Lowering:
    """SymPy expressions of one program to nodes; forms derived once per form."""

    def __init__(self, units: dict[sp.Basic, Unit], forms: FormTable):
        self.units = units
        self.forms = forms

    def constraint(self, label: str, unit: Unit, expr: sp.Basic, implicit: bool = False) -> Step:
        self.begin(label)
        return self.finish(unit, self.lower(expr), implicit)

    def begin(self, label: str) -> None:
        """Start the nodes of a constraint (`lower`, `node`, `elementwise` add to them)."""
        self.label = label
        self.nodes: list[Node] = []
        self.memo: dict[sp.Basic, Node] = {}

    def finish(self, unit: Unit, root: Node, implicit: bool = False) -> Step:
        """The constraint begun last, with value ``root``, as the step defining ``unit``."""
        label = self.label
        live: set[int] = set()  # nodes merged into a parent's form are dropped
        stack = [root]
        while stack:
            n = stack.pop()
            if id(n) not in live:
                live.add(id(n))
                stack.extend(n.args)
        self.nodes = [n for n in self.nodes if id(n) in live]
        if root.shape != unit.shape:
            raise ProgramError(
                f"constraint {label!r}: its value has shape {root.shape}, its variable {unit.shape}"
            )
        reads = {n.data.index for n in self.nodes if n.op == "read"}
        return Step(label, unit, self.nodes, root, reads, implicit)

    def node(self, op: str, args: tuple[Node, ...], shape: tuple[int, int], data: Any = None):
        n = Node(op, args, shape, data)
        self.nodes.append(n)
        return n

    def lower(self, e: sp.Basic) -> Node:
        done = self.memo.get(e)
        if done is None:
            done = self.memo[e] = self._lower(e)
        return done

    def _lower(self, e: sp.Basic) -> Node:
        unit = self.units.get(e)
        if unit is not None:
            return self.node("read", (), unit.shape, unit)
        if isinstance(e, sp.MatrixSymbol):
            raise ProgramError(f"constraint {self.label!r}: {e} is not a variable of this program")
        if isinstance(e, Elementwise):
            return self.elementwise(e.function.expr, e.function.variables, e.operands)
        if isinstance(e, sp.MatAdd):
            dummies = [sp.Dummy() for _ in e.args]
            return self.elementwise(sp.Add(*dummies), dummies, e.args)
        if isinstance(e, sp.MatMul):
            return self.product(e)
        if isinstance(e, sp.Transpose):
            a = self.lower(e.arg)
            return self.node("T", (a,), (a.shape[1], a.shape[0]))
        if isinstance(e, sp.HadamardProduct):
            dummies = [sp.Dummy() for _ in e.args]
            return self.elementwise(sp.Mul(*dummies), dummies, e.args)
        if isinstance(e, sp.MatrixBase):
            return self.matrix_constant(e)
        if isinstance(e, ArraySum):
            a = self.lower(e.array)
            return self.node("sum", (a,), (1, 1))
        if isinstance(e, MatrixElement):
            a = self.lower(e.parent)
            return self.node("entry", (a,), (1, 1), (int(e.i), int(e.j)))
        if is_array(e):
            raise ProgramError(
                f"constraint {self.label!r}: {type(e).__name__} ({e}) is not an array "
                "operation lagrangian_ad supports (matmul, +, -, multiples, .T, the "
                "elementwise functions, lad.sum and entries)"
            )
        if isinstance(e, sp.Expr):
            return self.scalar(e)
        raise ProgramError(f"constraint {self.label!r}: cannot use {e} ({type(e).__name__})")

    def product(self, e: sp.MatMul) -> Node:
        scalars = [a for a in e.args if not isinstance(a, (sp.MatrixExpr, sp.MatrixBase))]
        matrices = [self.lower(a) for a in e.args if isinstance(a, (sp.MatrixExpr, sp.MatrixBase))]
        product = chain(matrices, self)
        if not scalars:
            return product
        factor, d = sp.Mul(*scalars), sp.Dummy()
        if factor.is_Number:
            return self.elementwise(factor * d, [d], [product])
        f = sp.Dummy()
        return self.elementwise(f * d, [f, d], [factor, product])

    def matrix_constant(self, e: sp.MatrixBase) -> Node:
        try:
            value = np.array(e.tolist(), dtype=np.float64)
        except TypeError:
            raise ProgramError(
                f"constraint {self.label!r}: an explicit Matrix of symbols inside an array "
                "expression; declare the array with array=True, or write its entries out"
            ) from None
        return self.node("const", (), tuple(value.shape), value)

    def scalar(self, e: sp.Expr) -> Node:
        """A scalar expression: its array parts (sums, entries, scalar units) become the
        operands of one elementwise form."""
        operands: dict[sp.Basic, sp.Dummy] = {}
        stack = [e]
        while stack:  # the array parts, not descending into them
            node = stack.pop()
            if node in self.units or isinstance(node, (ArraySum, MatrixElement)):
                if node not in operands:
                    operands[node] = sp.Dummy()
            elif node.is_Symbol:
                raise ProgramError(
                    f"constraint {self.label!r}: {node} is not a variable of this program"
                )
            else:
                stack.extend(node.args)
        template = e.xreplace(operands)
        if not operands:
            return self.node("const", (), (1, 1), float(sp.Float(template)))
        if template in operands.values():  # the expression is one array part
            return self.lower(next(iter(operands)))
        return self.elementwise(template, list(operands.values()), list(operands))

    def elementwise(self, template: sp.Expr, variables: Any, operands: Any) -> Node:
        """An ew node of ``template`` (in ``variables``) over the lowered ``operands``;
        operands that are themselves ew nodes of the same shape are merged in."""
        nodes = [o if isinstance(o, Node) else self.lower(o) for o in operands]
        shapes = {n.shape for n in nodes} - {(1, 1)}
        if len(shapes) > 1:
            raise ProgramError(
                f"constraint {self.label!r}: an elementwise operation on shapes "
                f"{sorted(shapes)} (arrays must have one shape; scalars broadcast)"
            )
        shape = shapes.pop() if shapes else (1, 1)
        # flatten: a child ew of the output's shape is substituted into this template
        subs: dict[sp.Basic, sp.Expr] = {}
        flat: list[Node] = []
        slot: dict[int, sp.Symbol] = {}  # id(node) -> its placeholder

        def placeholder(n: Node, v: sp.Symbol | None = None) -> sp.Symbol:
            if id(n) not in slot:  # the variable itself where it is free to serve
                slot[id(n)] = v if v is not None and v not in taken else sp.Dummy()
                taken.add(slot[id(n)])
                flat.append(n)
            return slot[id(n)]

        taken: set[sp.Symbol] = set()
        for v, n in zip(variables, nodes, strict=True):
            if n.op == "ew" and n.shape == shape and n.data[2] is not None:
                child_template, child_vars = n.data[2]
                inner = {cv: placeholder(cn) for cv, cn in zip(child_vars, n.args, strict=True)}
                subs[v] = child_template.xreplace(inner)
            elif n.op == "const" and n.shape == (1, 1):
                subs[v] = sp.Float(n.data)
            else:
                subs[v] = placeholder(n, v)
        changed = {v: t for v, t in subs.items() if t is not v}
        body = template.xreplace(changed) if changed else template
        if not flat:
            return self.node("const", (), (1, 1), float(sp.Float(body)))
        ps = [slot[id(n)] for n in flat]
        key, floats = form_key(body, {p: k for k, p in enumerate(ps)})
        form = self.forms.get(key, body, tuple(ps), floats, _OUT, self.label)
        return self.node("ew", tuple(flat), shape, (form, floats, (body, ps)))


_OUT = sp.Symbol("«out»", real=True)


def chain(matrices: list[Node], low: Lowering) -> Node:
    """The product of matrices in the cheapest order (matrix-chain DP on flops)."""
    n = len(matrices)
    if n == 1:
        return matrices[0]
    dims = [matrices[0].shape[0], *(m.shape[1] for m in matrices)]
    cost = [[0.0] * n for _ in range(n)]
    split = [[0] * n for _ in range(n)]
    for length in range(2, n + 1):
        for i in range(n - length + 1):
            j = i + length - 1
            cost[i][j] = math.inf
            for k in range(i, j):
                c = cost[i][k] + cost[k + 1][j] + dims[i] * dims[k + 1] * dims[j + 1]
                if c < cost[i][j]:
                    cost[i][j], split[i][j] = c, k

    def build(i: int, j: int) -> Node:
        if i == j:
            return matrices[i]
        k = split[i][j]
        a, b = build(i, k), build(k + 1, j)
        return low.node("matmul", (a, b), (a.shape[0], b.shape[1]))

    return build(0, n - 1)


def build_units(ir: ProgramIR, name: Any = str) -> list[Unit]:
    """The units of a program, inputs first, each variable's in C order; ``name(label)``
    gives a unit's identifier (the engine's makes them unique and valid)."""
    units: list[Unit] = []
    for var in (*ir.inputs, *ir.intermediates):
        keys = (
            [(var.matrix, var.name)]
            if var.matrix is not None
            else [(s, s.name) for s in var.symbols]
        )
        for key, label in keys:
            shape = tuple(int(d) for d in key.shape) if var.matrix is not None else (1, 1)
            units.append(Unit(len(units), key, label, name(label), shape, var.kind))
    return units
