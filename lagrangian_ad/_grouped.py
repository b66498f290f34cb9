"""The grouped engine: the groups of `_grouping.plan` evaluated, for cyclic programs.

Big programs are written entry by entry but are array programs underneath: the sixteen
constraints pre_i = Σ_j W1_ij x_j + b1_i of a dense layer share one form and read the
same variables in the same pattern. This engine groups such constraints — same form,
same target variable, each placeholder read from the same variable for every member, and
no member depending on another (they sit at the same depth of the graph) — and evaluates
a group with one NumPy call per operation of its form, over a trailing *member* axis.

A wide sum of products in a form (Σ_j W_ij h_j) is contracted as a matrix product: for
each term, the factor that is the same for every member (h_j) against the one that
varies (W_ij), so a dense layer runs at matrix-multiply speed in both passes (forward
``H @ Wᵀ``; multipliers ``μ @ W`` and, for a weight given without batch axes, ``μᵀ H``
summed over the batch in the same product).

Cyclic blocks made of explicit constraints z = f(z) are solved by inexact Newton: each
step δ = (I − J)⁻¹ (f(z) − z) comes from the iteration δ ← r + J δ on the groups'
Jacobian-vector products, which cost a matrix product and no transcendental function
(or, on request, by Anderson-accelerated fixed-point iteration). Their multipliers solve
λ = g + J_fᵀ λ by the same kind of iteration on the vector-Jacobian products. No
batch × n² Jacobian is formed. Inexact Newton has converged where the residual is within
tolerance and so is the Newton correction there, solved to a tenth of itself (the
forward-error test of `_blocks`; an inner iteration that converges also shows the map
contractive, so I − J regular, at the point); Anderson's point is certified by the same
inexact Newton. With "auto" each inner solve may take as many Jacobian-vector products
as cost one Newton step on the block (`_inner_budget`, a model of this engine's costs),
so a slow contraction is found out by its measured rate within the cost of a step. A
block the iteration does not solve or certify (no map, not contractive, too slow for
"auto") falls back to Newton's method in `_blocks.BlockSolver`, from the best point
reached, with that module's tests. Values are stored per variable as arrays of shape
(batch…, entries); the generated code is per form, compiled once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy as sp

from ._blocks import BlockReport, BlockSolver, SolveOptions, _anderson, _Factorized
from ._errors import ConvergenceError
from ._forms import Form, _differentiate, _print, _print_shared, _SparseDiff

__all__ = ["GroupedEngine"]

MIN_CONTRACT = 8  # a sum with at least this many products is contracted as a matmul


# --------------------------------------------------------------------------- form code


@dataclass(frozen=True)
class _FormCode:
    """A form rewritten for groups: its contracted sum replaced by the placeholder «s».

    ``args`` are the placeholder names the functions take (``p3``, ``c0``, ``s``);
    ``fwd(*args)`` is the form's value, ``vjp(l, t, *args)`` the terms λ·∂f/∂a for the
    names in ``wrt``; ``bilinear`` lists (coefficient, a, b) of the contracted products.
    """

    args: tuple[str, ...]
    wrt: tuple[str, ...]
    bilinear: tuple[tuple[float, str, str], ...]
    fwd: Callable
    vjp: Callable
    source: str


def _bilinear(term: sp.Expr) -> tuple[float, str, str] | None:
    """(coefficient, a, b) when ``term`` is r·a·b for placeholders a, b and a number r."""
    if not term.is_Mul:
        return None
    syms = [f for f in term.args if f.is_Symbol]
    nums = [f for f in term.args if f.is_Number]
    if len(syms) != 2 or len(nums) > 1 or len(syms) + len(nums) != len(term.args):
        return None
    a, b = (s.name[1:-1] for s in syms)
    if a.startswith("c") and b.startswith("c"):
        return None
    return (float(nums[0]) if nums else 1.0), a, b


def _derive_form_code(form: Form, explicit: bool, printer_factory, label: str) -> _FormCode:
    expr = form.expr
    widest, best = None, []
    for node in sp.preorder_traversal(expr):
        if node.is_Add and len(node.args) >= MIN_CONTRACT:
            found = [b for b in (_bilinear(a) for a in node.args) if b]
            if len(found) > len(best):
                widest, best = node, found
    bilinear: tuple = ()
    s = sp.Symbol("«s»", real=True)
    if widest is not None and len(best) >= MIN_CONTRACT:
        rest = [a for a in widest.args if _bilinear(a) is None]
        expr = expr.xreplace({widest: sp.Add(s, *rest)})
        bilinear = tuple(best)
    syms = sorted(
        (x for x in expr.free_symbols if x.name[1] in "pcs"),
        key=lambda x: (x.name[1], int(x.name[2:-1]) if x.name[2:-1] else 0),
    )
    args = tuple(x.name[1:-1] for x in syms)
    lam, t = sp.Symbol("«l»", real=True), sp.Symbol("«t»", real=True)
    names = {x: x.name[1:-1] for x in (*syms, lam, t)}
    printer = printer_factory(names)
    diff = _SparseDiff(expr)
    wrt, terms = [], []
    for x in syms:
        if x.name[1] == "c":
            continue
        d = _differentiate(diff, x, label, x)
        if d != 0:
            if explicit and not expr.is_Atom:
                d = d.xreplace({expr: t})
            wrt.append(x.name[1:-1])
            terms.append(lam * d)
    temps, codes = _print_shared(terms, printer, label)
    temps = tuple(line.replace("«", "").replace("»", "") for line in temps)
    codes = tuple(c.replace("«", "").replace("»", "") for c in codes)
    sig = ", ".join(args)
    lines = [f"def fwd({sig}):", f"    return {_print(printer, expr, label)}"]
    lines += [f"def vjp(l, t{', ' if sig else ''}{sig}):"]
    lines += [f"    {line}" for line in temps]
    lines += [f"    return ({''.join(c + ', ' for c in codes)})"]
    source = "\n".join(lines) + "\n"
    from ._codegen import _compile, _exec  # one compile path for all generated code

    ns = _exec(_compile(source, f"group form {label}"))
    return _FormCode(args, tuple(wrt), bilinear, ns["fwd"], ns["vjp"], source)


# --------------------------------------------------------------------------- groups
#
# Layout: every store holds one variable with its entries on the first axis and the
# batch axes after it, (entries, batch…): gathering entries copies whole rows, contiguous
# ranges are views, and a dense layer is one (M, K) @ (K, batch) product. Input stores
# have all the call's batch axes (size 1 where the input has none).


@dataclass
class _Operand:
    """Values of one placeholder (or contraction side) for every member of a group.

    ``store`` indexes the engine's stores (−1: the unknowns of the block being solved,
    None: constants ``const``). ``idx`` holds the entries read: shape (M,) — (1,) when
    every member reads the same entry — or (M, K) and (K,) for contraction sides;
    ``span`` is (start, stop) when they are one contiguous range, read as a view.
    """

    store: int | None
    idx: np.ndarray | None = None
    const: Any = None
    unique: bool = True
    span: tuple[int, int] | None = None

    def get(self, stores: list, Z: Any, nd: int) -> Any:
        if self.store is None:
            c = self.const
            return c if np.ndim(c) == 0 else c.reshape(c.shape + (1,) * nd)
        arr = Z if self.store < 0 else stores[self.store]
        if self.span is None:
            return arr[self.idx]
        part = arr[self.span[0] : self.span[1]]
        return part if self.idx.ndim == 1 else part.reshape(self.idx.shape + arr.shape[1:])


def _operand(store: int | None, values: np.ndarray) -> _Operand:
    if store is None:
        return _Operand(None, const=values)
    flat = values.ravel()
    span = None
    if len(flat) and np.array_equal(flat, np.arange(flat[0], flat[0] + len(flat))):
        span = (int(flat[0]), int(flat[0]) + len(flat))
    return _Operand(store, values, unique=len(np.unique(flat)) == len(flat), span=span)


@dataclass
class _Contraction:
    """Σ_k r_k a_k b_k over one pair of sources: ``vary`` (M, K) against ``inv`` (K,).

    When neither side is the same for every member both are (M, K) (``both``).
    """

    vary: _Operand
    inv: _Operand
    coef: np.ndarray | None
    both: bool

    def matrix(self, stores: list, Z: Any, nd: int) -> Any:
        """The varying side, coefficients applied."""
        A = self.vary.get(stores, Z, nd)
        if self.coef is not None:
            A = A * self.coef.reshape((1, -1) + (1,) * (np.ndim(A) - 2))
        return A

    def apply(self, A: Any, V: Any) -> Any:
        if self.both:
            return np.einsum("mk...,mk...->m...", A, V)
        A2, V = _matrix(A), np.asarray(V)
        if A2 is not None:  # (M, K) @ (K, batch): one matrix product
            return (A2 @ V.reshape(V.shape[0], -1)).reshape(A2.shape[:1] + V.shape[1:])
        if all(n == 1 for n in V.shape[1:]):  # Σ_k A[m, k, b] v_k: a product per member
            A = np.asarray(A)
            M, K = A.shape[:2]
            return (V.reshape(1, K) @ A.reshape(M, K, -1)).reshape((M, *A.shape[2:]))
        return np.einsum("mk...,k...->m...", A, V)


def _matrix(A: Any) -> np.ndarray | None:
    """A as an (M, K) matrix when it has no batch extent, else None."""
    A = np.asarray(A)
    return A.reshape(A.shape[:2]) if all(n == 1 for n in A.shape[2:]) else None


@dataclass
class _Group:
    members: tuple[int, ...]
    code: _FormCode
    operands: dict[str, _Operand]  # the placeholders of code.args except «s»
    contractions: list[_Contraction]
    out_store: int | None  # the target variable (None: implicit equations)
    out: _Operand | None  # the target entries
    rows: np.ndarray | None = None  # rows of the block, for groups in a cyclic block
    sign: float = 1.0  # +λ ∂f/∂p for explicit constraints, −λ ∂c/∂p for equations
    reads_z: bool = False
    whole: bool = False  # the members are every entry of the target, in order
    needed: bool = True  # some member is upstream of the output

    def evaluate(
        self,
        stores: list,
        nd: int,
        Z: Any = None,
        cache: dict | None = None,
        fixed: dict | None = None,
        low: bool = False,
    ) -> Any:
        """f for every member, shape (M, batch…); ``cache`` keeps what the adjoint reuses.

        ``fixed``: during one block solve, the parts that do not read the block's
        unknowns Z (gathers, contractions, the whole value) are computed once, kept there.
        ``low``: in single precision (Z float32; the kept parts rounded to float32).
        """
        memo = {} if fixed is None else fixed.setdefault((id(self), low), {})

        def once(key: Any, reads_z: bool, compute: Callable) -> Any:
            if reads_z:
                return compute()
            if key not in memo:
                memo[key] = _single(compute()) if low else compute()
            return memo[key]

        vals = {
            name: once(name, op.store == -1, lambda op=op: op.get(stores, Z, nd))
            for name, op in self.operands.items()
        }
        gathered, terms = [], []
        for k, c in enumerate(self.contractions):
            A = once(("A", k), c.vary.store == -1, lambda c=c: c.matrix(stores, Z, nd))
            V = once(("V", k), c.inv.store == -1, lambda c=c: c.inv.get(stores, Z, nd))
            reads_z = c.vary.store == -1 or c.inv.store == -1
            terms.append(once(("s", k), reads_z, lambda c=c, A=A, V=V: c.apply(A, V)))
            gathered.append((A, V))
        if terms:
            vals["s"] = _sum(terms)
        if cache is not None:
            cache["vals"], cache["gathered"] = vals, gathered
        return once("f", self.reads_z, lambda: self.code.fwd(*(vals[a] for a in self.code.args)))

    def backward(
        self,
        lam: Any,
        t: Any,
        accs: list,
        cache: dict,
        acc_z: Any = None,
        only_z: bool | None = None,
        partials: tuple | None = None,
    ) -> None:
        """Add sign·λ·∂f/∂p of every member to the accumulator of each variable p reads.

        ``only_z``: True for the unknowns of the block only, False for everything else,
        None for all. ``partials``: the ∂f/∂p of `partials`, when already computed.
        """
        vals = cache["vals"]
        if partials is None:
            terms = self.code.vjp(lam, t, *(vals[a] for a in self.code.args))
        else:
            terms = tuple(p * lam for p in partials)
        for name, term in zip(self.code.wrt, terms, strict=True):
            if self.sign != 1.0:
                term = -term
            if name == "s":
                for c, (A, V) in zip(self.contractions, cache["gathered"], strict=True):
                    _contraction_backward(c, A, V, np.asarray(term), accs, acc_z, only_z)
                continue
            op = self.operands[name]
            if _skip(op, only_z):
                continue
            if len(op.idx) == 1 and np.shape(term)[0] != 1:
                term = np.sum(term, axis=0, keepdims=True)
            _scatter(_acc(op, accs, acc_z), op, term)

    def partials(self, t: Any, cache: dict) -> tuple:
        """∂f/∂a of every member for each placeholder a of ``code.wrt`` (the vjp at λ = 1),
        at the point ``cache`` was filled at; ``t`` is f there."""
        vals = cache["vals"]
        return self.code.vjp(1.0, t, *(vals[a] for a in self.code.args))

    def tangent(self, Zdot: Any, cache: dict, partials: tuple, nd: int) -> Any:
        """The directional derivative of f along ż, the unknowns of the block (J ż for
        the group's members), or None when no placeholder reads them."""
        total = None
        for name, p in zip(self.code.wrt, partials, strict=True):
            if name == "s":
                sdot = None
                for c, (A, V) in zip(self.contractions, cache["gathered"], strict=True):
                    if c.inv.store == -1:
                        sdot = _plus(sdot, c.apply(A, c.inv.get(None, Zdot, nd)))
                    if c.vary.store == -1:
                        sdot = _plus(sdot, c.apply(c.matrix(None, Zdot, nd), V))
                if sdot is None:
                    continue
                term = p * sdot
            else:
                op = self.operands[name]
                if op.store != -1:
                    continue
                term = p * op.get(None, Zdot, nd)
            total = _plus(total, term)
        return total


def _plus(total: Any, term: Any) -> Any:
    return term if total is None else total + term


def _sum(parts) -> Any:
    total = None
    for p in parts:
        total = _plus(total, p)
    return total


def _contraction_backward(c: _Contraction, A, V, mu, accs, acc_z, only_z) -> None:
    if c.both:
        if not _skip(c.vary, only_z):
            _scatter(_acc(c.vary, accs, acc_z), c.vary, mu[:, None] * V)
        if not _skip(c.inv, only_z):
            _scatter(_acc(c.inv, accs, acc_z), c.inv, mu[:, None] * A)
        return
    if not _skip(c.inv, only_z):  # ∂/∂b_k = Σ_m μ_m r_k a_mk
        acc = _acc(c.inv, accs, acc_z)
        A2 = _matrix(A)
        if A2 is not None:
            d = (A2.T @ mu.reshape(mu.shape[0], -1)).reshape(A2.shape[1:2] + mu.shape[1:])
        elif all(n == 1 for n in acc.shape[1:]):  # b without batch axes: Σ_batch Σ_m μ a
            A = np.asarray(A)
            M, K = A.shape[:2]
            mu3 = np.broadcast_to(mu, (M, *A.shape[2:])).reshape(M, -1, 1)
            d = (A.reshape(M, K, -1) @ mu3).sum(axis=0).reshape((K,) + (1,) * (mu.ndim - 1))
        else:
            d = np.einsum("m...,mk...->k...", mu, A)
        _scatter(acc, c.inv, d)
    if not _skip(c.vary, only_z):  # ∂/∂a_mk = μ_m r_k b_k
        acc = _acc(c.vary, accs, acc_z)
        M, K = c.vary.idx.shape
        V = np.asarray(V)
        if all(n == 1 for n in acc.shape[1:]):  # a weight without batch axes: Σ_batch μ bᵀ
            Vb = np.broadcast_to(V, (K, *mu.shape[1:])).reshape(K, -1)
            d = (mu.reshape(M, -1) @ Vb.T).reshape((M, K) + (1,) * (mu.ndim - 1))
        else:
            d = mu[:, None] * V[None]
        if c.coef is not None:
            d = d * c.coef.reshape((1, -1) + (1,) * (d.ndim - 2))
        _scatter(acc, c.vary, d)


def _skip(op: _Operand, only_z: bool | None) -> bool:
    if op.store is None:
        return True
    return only_z is not None and (op.store < 0) != only_z


def _acc(op: _Operand, accs: list, acc_z: Any) -> Any:
    return acc_z if op.store < 0 else accs[op.store]


def _scatter(acc: np.ndarray, op: _Operand, d: Any) -> None:
    """acc[idx] += d, with d summed down to acc's batch axes."""
    d = _sum_to(np.asarray(d), acc.shape[1:], op.idx.ndim)
    if op.span is not None:
        a, b = op.span
        acc[a:b] += d.reshape((b - a, *d.shape[op.idx.ndim :]))
    elif op.unique:
        acc[op.idx] += d
    else:
        np.add.at(acc, op.idx, np.broadcast_to(d, op.idx.shape + acc.shape[1:]))


def _sum_to(d: np.ndarray, lead: tuple[int, ...], core: int) -> np.ndarray:
    """Sum the batch axes of ``d`` (after its ``core`` entry axes) where ``lead`` is 1."""
    axes = tuple(
        core + k
        for k, n in enumerate(lead)
        if n == 1 and core + k < d.ndim and d.shape[core + k] != 1
    )
    return d.sum(axis=axes, keepdims=True) if axes else d


# --------------------------------------------------------------------------- the engine


@dataclass
class _BlockPlan:
    solver: BlockSolver
    groups: list[_Group]
    ext: list[int]  # graph variables the block reads but does not solve, in solver order
    unknown_locs: list[tuple[int, int]]  # (store, entry) of each column
    has_map: bool
    constraints: tuple[int, ...]


@dataclass
class _Step:
    groups: list[_Group] = field(default_factory=list)
    block: _BlockPlan | None = None


class GroupedEngine:
    """Forward values, multipliers and gradient by groups; see the module docstring."""

    def __init__(self, ir, graph, em, solvers: tuple[BlockSolver, ...], steps: list):
        self.ir, self.graph = ir, graph
        self.n_inputs = len(ir.inputs)
        self.sizes = [v.size for v in (*ir.inputs, *ir.intermediates)]
        self.loc = em.loc
        self.output = self.loc[graph.output]
        self._codes: dict[tuple[int, bool], _FormCode] = {}
        self._em = em
        from ._codegen import _Printer

        self._printer = _Printer
        cyclic = {b: k for k, b in enumerate(graph.cyclic_blocks)}
        self.steps: list[_Step] = []
        for kind, what in steps:
            if kind == "groups":
                self.steps.append(_Step(groups=[self._group(m, {}) for m in what]))
            else:
                b, members = what
                self.steps.append(_Step(block=self._block_plan(b, members, solvers[cyclic[b]])))
        self.n_groups = sum(len(s.groups) for s in self.steps) + sum(
            len(s.block.groups) for s in self.steps if s.block
        )

    # ----------------------------------------------------------------- building

    def _form_code(self, e: int) -> _FormCode:
        form = self._em.forms[e]
        explicit = self.graph.targets[e] is not None
        key = (id(form), explicit)
        code = self._codes.get(key)
        if code is None:
            label = self.ir.constraints[e].label
            code = self._codes[key] = _derive_form_code(form, explicit, self._printer, label)
        return code

    def _group(self, members: tuple[int, ...], cols: dict[int, int]) -> _Group:
        graph, em = self.graph, self._em
        code = self._form_code(members[0])
        P = np.array([graph.parents[e] for e in members], dtype=np.intp).reshape(len(members), -1)
        C = np.array([[float(f) for f in em.floats[e]] for e in members], dtype=np.float64).reshape(
            len(members), -1
        )

        def column(name: str) -> tuple[int | None, np.ndarray]:
            k = int(name[1:])
            if name[0] == "c":
                return None, C[:, k]
            vars_ = P[:, k]
            store = -1 if int(vars_[0]) in cols else self.loc[int(vars_[0])][0]
            idx = np.array(
                [cols[v] if store < 0 else self.loc[v][1] for v in vars_.tolist()], dtype=np.intp
            )
            return store, idx

        def operand(name: str) -> _Operand:
            store, values = column(name)
            same = bool(np.all(values == values[0]))
            if store is None:
                return _Operand(None, const=float(values[0]) if same else values)
            return _operand(store, values[:1] if same else values)

        operands = {a: operand(a) for a in code.args if a != "s"}
        contractions = []
        if code.bilinear:
            classes: dict[tuple, list] = {}
            for coef, a, b in code.bilinear:
                (sa, va), (sb, vb) = column(a), column(b)
                inv_a, inv_b = bool(np.all(va == va[0])), bool(np.all(vb == vb[0]))
                if inv_b or not inv_a:
                    vary, inv, both = (sa, va), (sb, vb), not inv_b
                else:
                    vary, inv, both = (sb, vb), (sa, va), False
                classes.setdefault((vary[0], inv[0], both), []).append((coef, vary[1], inv[1]))
            for (s_vary, s_inv, both), items in classes.items():
                coefs = np.array([c for c, _, _ in items])
                Vm = np.stack([v for _, v, _ in items], axis=1)  # (M, K)
                Iv = np.stack([v for _, _, v in items], axis=1)
                Iv = Iv if both else Iv[0]  # (K,) when the same for every member
                contractions.append(
                    _Contraction(
                        _operand(s_vary, Vm),
                        _operand(s_inv, Iv),
                        None if np.all(coefs == 1.0) else coefs,
                        both,
                    )
                )
        t = graph.targets[members[0]]
        out_store, out = None, None
        if t is not None:
            targets = [graph.targets[e] for e in members]
            out_store = -1 if targets[0] in cols else self.loc[targets[0]][0]
            out = _operand(
                out_store,
                np.array([cols[v] if out_store < 0 else self.loc[v][1] for v in targets]),
            )
        group = _Group(
            members,
            code,
            operands,
            contractions,
            out_store,
            out,
            sign=1.0 if t is not None else -1.0,
        )
        group.needed = any(e in graph.needed for e in members)
        group.whole = out is not None and out_store >= 0 and out.span == (0, self.sizes[out_store])
        group.reads_z = any(op.store == -1 for op in operands.values()) or any(
            c.vary.store == -1 or c.inv.store == -1 for c in contractions
        )
        return group

    def _block_plan(self, b, member_lists: list, solver: BlockSolver) -> _BlockPlan:
        graph = self.graph
        cols = {v: j for j, v in enumerate(b.unknowns)}
        unknowns = frozenset(b.unknowns)
        row_of = {e: r for r, e in enumerate(b.constraints)}
        groups = []
        for members in member_lists:
            g = self._group(tuple(members), cols)
            g.rows = _operand(-1, np.array([row_of[e] for e in members], dtype=np.intp))
            groups.append(g)
        ext = sorted({v for e in b.constraints for v in graph.reads(e)} - unknowns)
        has_map = all(graph.targets[e] == graph.match[e] for e in b.constraints)
        return _BlockPlan(
            solver, groups, ext, [self.loc[v] for v in b.unknowns], has_map, b.constraints
        )

    # ----------------------------------------------------------------- running

    def run(
        self,
        inputs: list[np.ndarray],
        batch: tuple[int, ...],
        ctx: Any,
        adjoint: bool,
        report: bool = False,
    ):
        """Forward (and adjoint) pass.

        ``inputs``: each input variable's values, shape (entries, batch…) with as many
        batch axes as ``batch`` (size 1 where the input has none). Returns (stores, accs,
        blocks): every variable's values, shape (entries, batch…); ∂L/∂v accumulated for
        every variable (for an input, its gradient summed to its own batch axes); and
        per cyclic block its solution, multipliers and report.
        """
        nd = len(batch)
        stores: list = list(inputs)
        stores += [np.empty((n, *batch)) for n in self.sizes[self.n_inputs :]]
        tapes: list = []
        blocks: dict[int, dict] = {}
        for step in self.steps:
            if step.block is not None:
                blocks[step.block.solver.index] = self._solve_block(
                    step.block, stores, batch, ctx, report
                )
                continue
            tape = []
            for g in step.groups:
                cache: dict | None = {} if adjoint else None
                value = g.evaluate(stores, nd, cache=cache)
                store = stores[g.out_store]
                if g.whole and np.shape(value) == store.shape:
                    stores[g.out_store] = value  # the group is the whole variable: no copy
                else:
                    _put(store, g.out, value)
                tape.append(cache)
            tapes.append(tape)
        if not adjoint:
            return stores, None, blocks
        accs: list = [np.zeros(np.shape(a)) for a in inputs]
        accs += [np.zeros((n, *batch)) for n in self.sizes[self.n_inputs :]]
        store, entry = self.output
        accs[store][entry] = 1.0
        for step in reversed(self.steps):
            if step.block is not None:
                self._block_adjoint(step.block, stores, accs, batch, ctx, blocks)
                continue
            tape = tapes.pop()
            for g, cache in zip(reversed(step.groups), reversed(tape), strict=True):
                if not g.needed:
                    continue
                lam = g.out.get(accs, None, nd)
                g.backward(lam, g.out.get(stores, None, nd), accs, cache)
        return stores, accs, blocks

    # ----------------------------------------------------------------- cyclic blocks

    def _externals(self, plan: _BlockPlan, stores: list) -> tuple:
        return tuple(stores[s][j] for s, j in (self.loc[v] for v in plan.ext))

    def _solve_block(self, plan, stores, batch, ctx, report: bool) -> dict:
        opts = ctx.options
        solver = plan.solver
        nd = len(batch)
        inits = [opts.init.get(v, 0.0) for v in solver.variables]
        shape = np.broadcast_shapes(batch, *(np.shape(v) for v in inits))
        Z0 = np.empty((solver.n, *shape))
        for j, v in enumerate(inits):
            Z0[j] = v
        method, budget = opts.method, 2 * opts.maxiter
        if method == "auto" and plan.has_map:
            # Matrix-free while it pays: each inner solve may take as many Jacobian-vector
            # products as cost one of Newton's steps; one that needs more (a slow
            # contraction, by its measured rate) hands over to Newton from the best point.
            method, budget = "inexact-newton", min(budget, _inner_budget(plan, shape))
        elif method == "auto":  # implicit equations: no map to iterate
            method = "newton"
        info: dict = {"method": method, "constraints": plan.constraints}
        best = None  # the point where inexact Newton left off, if it failed
        Z = None
        if method in ("anderson", "inexact-newton") and plan.has_map:
            fixed: dict = {}
            it, inner = 0, 0
            if method == "anderson":

                def F(Z: np.ndarray) -> np.ndarray:
                    out = np.empty_like(Z)
                    for g in plan.groups:
                        _put(out, g.out, g.evaluate(stores, nd, Z, fixed=fixed))
                    return out

                Z0, it, res = _anderson(F, Z0, opts.tol, opts.maxiter)
                what = "Anderson-accelerated fixed-point iteration"
                why = "the map may not be contractive"
            if Z0 is not None:  # (Anderson's point is certified by inexact Newton too)
                Z, k, res, inner, lin, why, best = self._inexact_newton(
                    plan, stores, Z0, nd, opts, fixed, budget, single=method == "inexact-newton"
                )
                it += k
                info["lin"] = lin
                if method == "inexact-newton":
                    what = "Newton's method with iterative linear solves"
            if Z is not None:
                info["fixed"] = fixed
                cond = float("nan")
                if report:
                    J = solver._jacobian_matrix(
                        np.moveaxis(Z, 0, -1), self._externals(plan, stores)
                    )
                    fact = _Factorized(J, solver.dense, solver.label)
                    fact.check()
                    cond = fact.condition
                info["report"] = BlockReport(solver.names, it, res, cond, method, inner)
            elif opts.method == method and (method == "inexact-newton" or Z0 is None):
                raise ConvergenceError(
                    f"{what} did not converge in the block {solver.label}: {why} (max "
                    f"|f(z) − z| = {res:.3e} after {it} evaluations of the map, tol "
                    f"{opts.tol}): try method='newton'"
                )
        if Z is None:  # Newton (or plain fixed point) with the block's Jacobian
            init, found = opts.init, method == "anderson" and Z0 is not None
            if found:  # Anderson's point, where the inner iteration did not certify it
                best = Z0
            if best is not None:
                init = {v: best[j] for j, v in enumerate(solver.variables)}
            sub = ctx.__class__(
                SolveOptions(
                    "fixed-point" if method == "fixed-point" else "newton",
                    opts.tol,
                    opts.maxiter,
                    init,
                )
            )
            try:
                Zb = solver.solve(sub, self._externals(plan, stores))
            except ConvergenceError as err:
                if not found:
                    raise
                raise ConvergenceError(
                    f"{what} reached max |f(z) − z| = {res:.3e} in the block {solver.label}, "
                    f"but not a solution there: {why}, and from that point {err}"
                ) from None
            ctx.blocks[solver.index] = sub.blocks[solver.index]
            ctx.batches[solver.index] = sub.batches[solver.index]
            Z = np.moveaxis(Zb, -1, 0)
            info["method"] = "newton"
            info["report"] = sub.blocks[solver.index][1]
        for j, (s, e) in enumerate(plan.unknown_locs):
            stores[s][e] = Z[j]
        info["Z"] = Z
        return info

    def _linearize(
        self, plan: _BlockPlan, stores: list, Z: np.ndarray, nd: int, fixed: dict, low=False
    ):
        """f(Z) of the block's map and its linearization there: (group, cache, partials)
        for each group, what `_jvp` and `_vjp` apply J and Jᵀ with (in float32 if
        ``low``, Z then float32)."""
        G = np.empty_like(Z)
        lin = []
        for g in plan.groups:
            cache: dict = {}
            t = g.evaluate(stores, nd, Z, cache, fixed, low)
            _put(G, g.out, t)
            lin.append((g, cache, g.partials(t, cache)))
        return G, lin

    @staticmethod
    def _jvp(lin: list, D: np.ndarray, nd: int) -> np.ndarray:
        """J_f ż for the directions D (unknowns on axis 0)."""
        out = np.zeros_like(D)
        for g, cache, partials in lin:
            v = g.tangent(D, cache, partials, nd)
            if v is not None:
                _put(out, g.out, v)
        return out

    @staticmethod
    def _vjp(lin: list, lam: np.ndarray, nd: int, accs: list) -> np.ndarray:
        """J_fᵀ λ for the block's multipliers λ (rows on axis 0)."""
        out = np.zeros_like(lam)
        for g, cache, partials in lin:
            lam_g = g.rows.get(None, lam, nd)
            g.backward(lam_g, None, accs, cache, out, only_z=True, partials=partials)
        return out

    def _inexact_newton(self, plan, stores, Z, nd, opts, fixed, budget, single=True):
        """z = f(z) by Newton's method, each step δ = (I − J)⁻¹ (f(z) − z) found by the
        iteration δ ← r + J δ on the groups' Jacobian-vector products (no n × n matrix).

        A Jacobian-vector product costs a fraction of an evaluation of f (no
        transcendental functions, one matrix product per contraction), so this reaches
        the tolerance in a few evaluations where the plain iteration needs one per
        digit-and-a-half. Each inner solve stops at an accuracy that keeps Newton's
        quadratic rate without oversolving: min(res/10, res²), and tol/100 for the last.
        The inner iterations run in single precision (`_mixed_richardson`).
        A step that does not lower a sample's residual is halved for that sample (up to
        ten times). Converged where the residual is within tolerance and so is the
        Newton correction there (solved to a tenth of itself: a small residual alone
        may only mean that f − z flattens out, as on the way to infinity). Returns (Z,
        evaluations of f, residual, inner iterations, the linearization at Z for the
        multipliers, None, None), or Z = None, the reason and the last point accepted
        (the lowest residual so far; None before the first step) when that fails or an
        inner iteration does not converge within ``budget`` (not contractive, or not
        enough for the cost allowed). ``single=False`` skips
        the single-precision evaluations (a start already near the solution: Anderson's).
        """
        tol, maxiter = opts.tol, opts.maxiter
        n, inner = Z.shape[0], 0
        base = step = best = alpha = None  # last accepted point, its step and residuals
        best_low = False  # whether those residuals were evaluated in float32
        target = np.inf
        halved = "a step did not lower the residual after ten halvings"
        not_contractive = "the map is not contractive there (δ ← r + J δ does not converge)"
        for it in range(1, maxiter + 1):
            # While the residual expected here is above LOW_EVAL, f is evaluated in single
            # precision: its rounding (~1e-7) is far below what the step needs, and tanh
            # and the matrix products cost a fraction. The solution is always checked in
            # double.
            low = single and target > LOW_EVAL
            if low:
                G, lin = self._linearize(plan, stores, Z.astype(np.float32), nd, fixed, True)
            else:
                G, lin = self._linearize(plan, stores, Z, nd, fixed)
            R = G - Z
            per_sample = np.abs(R).reshape(n, -1).max(axis=0, initial=0.0)
            res = float(per_sample.max(initial=0.0))
            if low and not np.isfinite(res):  # beyond float32's range: in double, then
                single = False
                continue
            scale = np.maximum(1.0, np.abs(Z).reshape(n, -1).max(axis=0, initial=0.0))
            converged = not low and bool(np.all(per_sample <= tol * scale))  # (not NaN)
            if best is not None and not converged:
                # Backtracking, sample by sample: far from the solution a full Newton step
                # (or one solved loosely) can overshoot; halve it where the residual rose.
                # (a residual evaluated in float32 is known to its rounding only)
                slack = FLOOR_ULPS * EPS32 * scale if best_low else 0.0
                bad = ~(per_sample < best + slack)  # NaN counts as bad
                if np.any(bad):
                    if np.min(alpha[bad]) < 1 / 1024:
                        return None, it, res, inner, None, halved, base
                    alpha = np.where(bad, alpha / 2, alpha)
                    Z = base + alpha.reshape(Z.shape[1:]) * step
                    continue
            if not np.isfinite(res):
                return None, it, res, inner, None, "the residual is not finite", base
            # Inexact Newton's forcing: enough for the quadratic rate, no more; the step
            # expected to be the last (res² below tol) goes to tol/100, so the solution
            # comes out near rounding level rather than just inside the tolerance.
            if converged:
                target = 0.1 * res
            else:
                target = tol / 100 if res * res <= tol else min(0.1 * res, res * res)
            lin32 = _lowered(lin)
            step, k = _mixed_richardson(
                lambda D, lin=lin: self._jvp(lin, D, nd),
                lambda D, lin32=lin32: self._jvp(lin32, D, nd),
                R,
                target,
                budget,
                verify=False,  # the next Newton iteration checks the step
            )
            inner += k
            if step is None:
                return None, it, res, inner, None, not_contractive, base
            if converged and np.all(np.abs(step).reshape(n, -1).max(axis=0) <= tol * scale):
                # Z, whose residual was just checked, rather than Z + δ: the multipliers
                # reuse its linearization
                return Z, it, res, inner, lin, None, None
            base, best, alpha, best_low = Z, per_sample, np.ones_like(per_sample), low
            Z = Z + step
            del G, R, lin, lin32  # not kept alive through the next linearization
        return None, maxiter, res, inner, None, f"{maxiter} iterations were not enough", base

    def _block_adjoint(self, plan, stores, accs, batch, ctx, blocks) -> None:
        info = blocks[plan.solver.index]
        Z = info["Z"]
        nd = len(batch)
        seeds = np.empty_like(Z)
        for j, (s, e) in enumerate(plan.unknown_locs):
            seeds[j] = accs[s][e]
        fixed = info.get("fixed", {})
        lin = info.pop("lin", None)  # the forward iteration's, at the solution
        if lin is None:
            _, lin = self._linearize(plan, stores, Z, nd, fixed)
        lam = None
        if info["method"] != "newton":
            # λ = g + J_fᵀ λ by iteration, to 1/100 of the forward tolerance (relative to
            # λ's size): the gradient then matches a factorization's to rounding.
            scale = max(1.0, float(np.abs(seeds).max(initial=0.0)))
            lin32 = _lowered(lin)
            lam, _ = _mixed_richardson(
                lambda L: self._vjp(lin, L, nd, accs),
                lambda L: self._vjp(lin32, L, nd, accs),
                seeds,
                ctx.options.tol / 100 * scale,
                2 * ctx.options.maxiter,
            )
        if info["method"] == "newton":
            lam = plan.solver.adjoint(ctx, [seeds[j] for j in range(plan.solver.n)])
            lam = np.moveaxis(lam, -1, 0)
        elif lam is None:  # not contractive at the solution: factorize I − J there
            solver = plan.solver
            init = {v: Z[j] for j, v in enumerate(solver.variables)}
            inner = ctx.__class__(
                SolveOptions("newton", ctx.options.tol, ctx.options.maxiter, init)
            )
            solver.solve(inner, self._externals(plan, stores))
            lam = solver.adjoint(inner, [seeds[j] for j in range(solver.n)])
            lam = np.moveaxis(lam, -1, 0)
        info["lam"] = lam
        # Contributions of the block's constraints to the variables outside it.
        for g, cache, partials in lin:
            lam_g = g.rows.get(None, lam, nd)
            g.backward(lam_g, None, accs, cache, None, only_z=False, partials=partials)
            if g.out_store is not None and g.out_store >= 0:  # a target outside the block
                _scatter(accs[g.out_store], g.out, -lam_g)


def _single(x: Any) -> Any:
    """x rounded to float32 (a number becomes a Python float: a NumPy float64 scalar
    would turn float32 arrays back into float64)."""
    if np.ndim(x) == 0:
        return float(x)
    return np.asarray(x, dtype=np.float32)


def _lowered(lin: list) -> list:
    """The linearization in single precision: partials and the matrix sides that J ż and
    Jᵀ λ multiply by, rounded to float32 (the sides read from the unknowns come from
    the directions themselves)."""
    out = []
    for g, cache, partials in lin:
        gathered = [
            (
                _single(A) if c.inv.store == -1 else None,  # J ż = A ż, Jᵀ λ = Aᵀ λ
                _single(V) if c.vary.store == -1 else None,
            )
            for c, (A, V) in zip(g.contractions, cache["gathered"], strict=True)
        ]
        out.append((g, {"vals": {}, "gathered": gathered}, tuple(map(_single, partials))))
    return out


# What a step of Newton's method on a block costs here (seconds on the development
# machine, one thread): the generated code fills J with one NumPy operation per nonzero,
# and LAPACK factorizes it per sample; against one Jacobian-vector product of the groups.
JACOBIAN_ENTRY = 2e-6, 4e-8  # per nonzero: fixed, and per sample
LU_SAMPLE = 1.5e-6, 1.5e-10  # per sample: fixed, and per n³ (dense); SuperLU: per nonzero
SPLU_SAMPLE = 5e-5, 1e-7
JVP_COST = 7e-6, 3e-11  # per group, and per nonzero and sample


def _inner_budget(plan: _BlockPlan, batch: tuple[int, ...]) -> int:
    """How many Jacobian-vector products cost as much as one Newton step on the block,
    with the model of the constants above (the inner iterations of an inexact Newton
    step that need more are handed to Newton)."""
    samples, n, nnz = int(np.prod(batch)), plan.solver.n, len(plan.solver.rows)
    jacobian = nnz * (JACOBIAN_ENTRY[0] + JACOBIAN_ENTRY[1] * samples)
    if plan.solver.dense:
        lu = samples * (LU_SAMPLE[0] + LU_SAMPLE[1] * n**3)
    else:
        lu = samples * (SPLU_SAMPLE[0] + SPLU_SAMPLE[1] * nnz)
    jvp = JVP_COST[0] * len(plan.groups) + JVP_COST[1] * nnz * samples
    return int(np.ceil((jacobian + lu) / jvp))


LOW_GAIN = 1e-5  # a single-precision inner solve is asked for this much of its residual
LOW_EVAL = 1e-5  # inexact Newton evaluates f in single precision above this residual
FLOOR_ULPS = 4  # an iteration whose steps are this many ulps of its iterate has stalled
EPS32 = float(np.finfo(np.float32).eps)


def _mixed_richardson(
    apply: Callable, apply_low: Callable, rhs: np.ndarray, tol: float, maxiter: int, verify=True
):
    """`_richardson`'s x = rhs + A x by mixed-precision iterative refinement.

    Each round computes the residual r = rhs + A x − x in float64 and solves for the
    correction e = r + A e in float32 with A rounded to single precision
    (``apply_low``: half the memory traffic, a matrix product at twice the speed), to
    LOW_GAIN of r or as far as float32 resolves e (`_richardson` stops at its rounding
    floor), the last round to tol (tol/2 when the rounding of x + e adds to it). A
    round that does not halve the float64 residual — the rounding of A and of e limit a
    float32 round to a gain of about ε₃₂·cond(I − A) — hands over to rounds in float64,
    as do values outside float32's range; the refined x is kept, not recomputed.
    Returns (x, iterations) with max |rhs + A x − x| ≤ ``tol``, or (None, iterations)
    when that cannot be reached within ``maxiter`` iterations in all. ``verify=False``
    skips the last float64 residual when a round already meets ``tol`` (Newton's
    steps: the next iteration checks them).
    """
    x, r, total = None, rhs, 0
    size = float(np.max(np.abs(r), initial=0.0))
    low = True
    while np.isfinite(size):
        if size <= tol:
            return (rhs.copy() if x is None else x), total
        if total >= maxiter:
            break
        low = low and size <= 1e30
        # A round that is to end it aims at tol, or at tol/2 where the rounding of x + e
        # adds to the residual.
        last_goal = tol if x is None else tol / 2
        inner = max(last_goal, LOW_GAIN * size) if low else last_goal
        e, k, last = _richardson(
            apply_low if low else apply, r.astype(np.float32) if low else r, inner, maxiter - total
        )
        total += k
        if e is None:
            if not low:
                break
            low = False  # e.g. a rate too close to 1 for float32's rounding
            continue
        x = e.astype(np.float64) if x is None else x + e
        if inner == last_goal and last <= inner and not verify:
            return x, total
        r = rhs + apply(x) - x
        total += 1
        new = float(np.max(np.abs(r), initial=0.0))
        if new > tol and not new <= 0.5 * size:  # no gain from this round (NaN included)
            if not low:
                break
            low = False
        size = new
    return None, total


def _richardson(apply: Callable, rhs: np.ndarray, tol: float, maxiter: int):
    """x = rhs + apply(x) for a linear ``apply`` of spectral radius below 1, by the plain
    iteration x ← rhs + apply(x) from x = rhs.

    The step from an iterate x is its residual rhs + apply(x) − x; the iteration stops
    at the first step within ``tol`` in every entry — or within FLOOR_ULPS ulps of x,
    where it has reached its rounding floor in the working precision (x's dtype) and can
    gain nothing more — and returns the iterate that step reached, one contraction past
    the measured residual (its own is apply(step), which may exceed ``tol`` where
    ‖apply‖∞ > 1: `_mixed_richardson` checks it in float64). Returns (x, iterations,
    the size of that last step), or (None, iterations, …) when it cannot get there: a
    non-finite step, or a rate that will not reach ``tol`` within ``maxiter``.
    """
    x = rhs
    floor = FLOOR_ULPS * np.finfo(rhs.dtype).eps
    steps = []
    head = 0.0  # the largest step of the first half, max(steps[: k // 2])
    for k in range(1, maxiter + 1):
        new = rhs + apply(x)
        step = float(np.max(np.abs(new - x), initial=0.0))
        if step <= tol or step <= floor * float(np.max(np.abs(x), initial=0.0)):
            return new, k, step
        x = new
        if not np.isfinite(step):
            return None, k, step
        steps.append(step)
        if k % 2 == 0:
            head = max(head, steps[k // 2 - 1])
        if k >= 16:  # the rate against the largest step of the first half: steps may
            # grow at first (a non-normal A) or oscillate (complex eigenvalues)
            rate = (step / head) ** (1 / (k - k // 2))
            if rate >= 1 or k + np.log(tol / step) / np.log(rate) > maxiter:
                return None, k, step
    return None, maxiter, np.inf


def _put(arr: np.ndarray, op: _Operand, value: Any) -> None:
    if op.span is not None:
        arr[op.span[0] : op.span[1]] = value
    else:
        arr[op.idx] = value
