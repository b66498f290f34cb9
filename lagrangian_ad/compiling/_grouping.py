"""Lowering by groups: an entry-wise program to array constraints, run by the array engine.

Big programs are written entry by entry but are array programs underneath: the sixteen
constraints pre_i = Σ_j W1_ij x_j + b1_i of a dense layer share one form and read the
same variables in the same pattern. This pass groups such constraints — same form, same
target variable, each placeholder read from the same variable for every member, and no
member depending on another (they sit at the same depth of the graph; in a cyclic block,
the block's constraints by the same key) — and lowers each group to one array constraint
of the array engine (`_array_engine`) that defines the group's *unit*, an M × 1 array of
its members' targets (of their matched unknowns, for implicit equations):

    gather   the entries each placeholder reads, for every member (its vector-Jacobian
             product is a scatter-add, its Jacobian-vector product the same gather)
    matmul   a wide sum of products Σ_k a_mk b_k in the form, contracted: the side
             that varies by member (W_ik) against the one that does not (h_k), so a
             dense layer runs at matrix-multiply speed in every pass
    ew       the rest of the form, elementwise over the members (scalars broadcast)

A group is split until each placeholder reads, for all its members, entries of one unit
(the gathers then read one array each); in a cyclic block that is a partition
refinement, since the block's groups read each other. The array engine then runs the
lowered program as it runs any array program: one walk per pass over the constraints,
cyclic blocks (cycles among the groups' units) by its block solvers. Entries of the
program's variables map to (unit, position) at the boundary.

`GroupedProgram` is the compiled entry-wise program: per-scalar code (`CompiledProgram`)
for one sample, where Python floats are fastest, and the lowered program for batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import sympy as sp

from ..solving._values import Solution, _shaped, _user_array
from ._array_engine import ArrayProgram, _Krylov, _Namer, _rt
from ._codegen import _Printer
from ._compiled import CompiledProgram
from ._forms import Form, FormTable
from ._inexact import InexactNewton
from ._lowering import Lowering, Node, Step, Unit

__all__ = ["GroupedProgram", "plan", "worth_grouping"]

MIN_CONTRACT = 8  # a sum with at least this many products is contracted as a matmul


# --------------------------------------------------------------------------- grouping


def plan(graph, em) -> list[tuple[str, Any]]:
    """The grouping, without any symbolic work: steps in order, each
    ("groups", [member tuples]) for explicit constraints at one depth, or
    ("block", (block, its member tuples)) for a cyclic block."""
    loc = em.loc
    n_in = graph.n_inputs
    depth_of_var = [0] * len(graph.symbols)
    steps: list[tuple[int, int, str, Any]] = []
    keyed: dict[tuple, list[int]] = {}
    for b in graph.blocks:
        unknowns = frozenset(b.unknowns)
        d = 1 + max(
            (
                depth_of_var[v]
                for e in b.constraints
                for v in graph.reads(e)
                if v >= n_in and v not in unknowns
            ),
            default=0,
        )
        for v in b.unknowns:
            depth_of_var[v] = d
        if b.explicit:
            (e,) = b.constraints
            keyed.setdefault((d, *_key(graph, em, loc, e, frozenset())), []).append(e)
        else:
            inner: dict[tuple, list[int]] = {}
            for e in b.constraints:
                inner.setdefault(_key(graph, em, loc, e, unknowns), []).append(e)
            steps.append((d, 1, "block", (b, [tuple(m) for m in inner.values()])))
    by_depth: dict[int, list] = {}
    for key, members in keyed.items():
        by_depth.setdefault(key[0], []).append(tuple(members))
    steps += [(d, 0, "groups", groups) for d, groups in by_depth.items()]
    steps.sort(key=lambda s: (s[0], s[1]))
    return [(kind, what) for _, _, kind, what in steps]


def _key(graph, em, loc, e: int, unknowns: frozenset) -> tuple:
    t = graph.targets[e]
    sources = tuple(-1 if p in unknowns else loc[p][0] for p in graph.parents[e])
    target = None if t is None else (-1 if t in unknowns else loc[t][0])
    return target, id(em.forms[e]), sources


def worth_grouping(steps: list, n_constraints: int) -> bool:
    """Whether grouping pays: big programs whose groups average at least 4 members."""
    n_groups = sum(len(what) if kind == "groups" else len(what[1]) for kind, what in steps)
    return n_constraints >= 16 and 4 * n_groups <= n_constraints


def _split_by(members: tuple[int, ...] | list[int], key: Callable) -> list[tuple[int, ...]]:
    """``members`` split by ``key``, in order of first appearance."""
    parts: dict[Any, list[int]] = {}
    for e in members:
        parts.setdefault(key(e), []).append(e)
    return [tuple(p) for p in parts.values()]


def _units_of_groups(graph, em, steps: list, n_inputs: int) -> tuple[list, dict, dict]:
    """The groups, each split until every placeholder reads one unit for all members:
    (groups in order, unit of each graph variable, its position there). Units number
    the input variables first, then the groups; the output's constraint is a group of
    its own (its unit is the output)."""
    unit: dict[int, int] = {}
    pos: dict[int, int] = {}
    for v in range(graph.n_inputs):
        unit[v], pos[v] = em.loc[v]
    groups: list[tuple[int, ...]] = []
    out = graph.output

    def assign(members: tuple[int, ...]) -> None:
        if len(members) > 1 and out in (graph.match[e] for e in members):
            rest = tuple(e for e in members if graph.match[e] != out)
            assign(tuple(e for e in members if graph.match[e] == out))
            members = rest
        uid = n_inputs + len(groups)
        groups.append(members)
        for m, e in enumerate(members):
            unit[graph.match[e]], pos[graph.match[e]] = uid, m

    for kind, what in steps:
        if kind == "groups":
            for members in what:
                for part in _split_by(members, lambda e: tuple(unit[p] for p in graph.parents[e])):
                    assign(part)
            continue
        block, lists = what
        owner = {graph.match[e]: e for e in block.constraints}
        while True:  # partition refinement: the block's groups read each other
            cls = {e: k for k, ms in enumerate(lists) for e in ms}

            def source(p: int, cls=cls, owner=owner) -> tuple[str, int]:
                return ("c", cls[owner[p]]) if p in owner else ("u", unit[p])

            finer = [
                part
                for ms in lists
                for part in _split_by(ms, lambda e: tuple(source(p) for p in graph.parents[e]))
            ]
            if len(finer) == len(lists):
                break
            lists = finer
        for ms in lists:
            assign(tuple(ms))
    return groups, unit, pos


# --------------------------------------------------------------------------- forms

_S = sp.Symbol("«s»", real=True)


def _product(term: sp.Expr) -> tuple[float, str, str | None] | None:
    """(coefficient, a, b) when ``term`` is r·a·b for placeholders a, b and a number r,
    (r, a, None) when it is r·a for a placeholder a of a variable; else None."""
    if term.is_Symbol:
        return (1.0, term.name[1:-1], None) if term.name[1] == "p" else None
    if not term.is_Mul:
        return None
    syms = [f for f in term.args if f.is_Symbol]
    nums = [f for f in term.args if f.is_Number]
    if not 1 <= len(syms) <= 2 or len(nums) > 1 or len(syms) + len(nums) != len(term.args):
        return None
    names = [s.name[1:-1] for s in syms]
    if all(n.startswith("c") for n in names):
        return None
    return (float(nums[0]) if nums else 1.0), names[0], (names[1] if len(names) == 2 else None)


def _contracted(form: Form) -> tuple[sp.Expr, tuple[tuple[float, str, str | None], ...]]:
    """The form with its widest sum of at least MIN_CONTRACT products r·a·b (or terms
    r·a) replaced by «s», and those products; the form itself and () when it has none."""
    widest, best = None, []
    for node in sp.preorder_traversal(form.expr):
        if node.is_Add and len(node.args) >= MIN_CONTRACT:
            found = [b for b in (_product(a) for a in node.args) if b]
            if len(found) > len(best):
                widest, best = node, found
    if widest is None or len(best) < MIN_CONTRACT:
        return form.expr, ()
    rest = [a for a in widest.args if _product(a) is None]
    return form.expr.xreplace({widest: sp.Add(_S, *rest)}), tuple(best)


# --------------------------------------------------------------------------- lowering


class _GroupLowering:
    """The groups of one program as `Step` s of array nodes."""

    def __init__(self, graph, em, units: list[Unit], unit: dict, pos: dict, constants: dict):
        self.graph, self.em = graph, em
        self.units, self.unit, self.pos = units, unit, pos
        self.constants = constants
        self.low = Lowering({}, FormTable(_Printer))
        self._contracted: dict[int, tuple] = {}

    def constant(self, values: np.ndarray) -> str:
        """The name of a new array among the generated code's constants."""
        name = f"_k{len(self.constants)}"
        self.constants[name] = values
        return name

    def step(self, members: tuple[int, ...], target: Unit, label: str) -> Step:
        graph, em, low = self.graph, self.em, self.low
        M = len(members)
        form = em.forms[members[0]]
        key = id(form)
        if key not in self._contracted:
            self._contracted[key] = _contracted(form)
        expr, bilinear = self._contracted[key]
        P = np.array([graph.parents[e] for e in members], dtype=np.intp).reshape(M, -1)
        C = np.array([[float(f) for f in em.floats[e]] for e in members]).reshape(M, -1)
        self.reads: dict[int, Node] = {}
        low.begin(label)

        def column(name: str) -> tuple[int | None, np.ndarray]:
            k = int(name[1:])
            if name[0] == "c":
                return None, C[:, k]
            return self.unit[int(P[0, k])], np.array([self.pos[int(v)] for v in P[:, k]])

        variables, operands = [], []
        subs: dict[sp.Symbol, sp.Expr] = {}
        for x in sorted(expr.free_symbols - {_S}, key=lambda s: s.name):
            uid, values = column(x.name[1:-1])
            if np.all(values == values[0]):
                if uid is None:
                    subs[x] = sp.Float(float(values[0]))
                    continue
                values = values[:1]
            variables.append(x)
            operands.append(self.side(uid, values, (len(values), 1)))
        sums = []
        for k, (coef, node) in enumerate(self.contractions(bilinear, column, M)):
            s = sp.Dummy(f"s{k}")
            variables.append(s)
            operands.append(node)
            sums.append(s if coef == 1.0 else coef * s)
        template = expr.xreplace({**subs, _S: sp.Add(*sums)}) if sums else expr.xreplace(subs)
        if M > 1 and all(n.shape == (1, 1) for n in operands):  # the same for every member
            one = sp.Dummy("one")
            variables.append(one)
            operands.append(self.side(None, np.ones(M), (M, 1)))
            template = template * one
        root = low.elementwise(template, variables, operands)
        implicit = graph.targets[members[0]] is None
        return low.finish(target, root, implicit)

    def side(self, uid: int | None, values: np.ndarray, shape: tuple[int, int]) -> Node:
        """Node of the entries ``values`` of unit ``uid`` (None: the numbers themselves)
        as an array of ``shape``: the unit itself, or a gather."""
        low = self.low
        if uid is None:
            return low.node("const", (), shape, self.constant(np.reshape(values, shape)))
        u = self.units[uid]
        read = self.reads.get(uid)
        if read is None:
            read = self.reads[uid] = low.node("read", (), u.shape, u)
        flat = np.asarray(values, dtype=np.intp).ravel()
        size = u.shape[0] * u.shape[1]
        in_order = len(flat) and np.array_equal(flat, np.arange(flat[0], flat[0] + len(flat)))
        if in_order and len(flat) == size:
            if shape == u.shape:
                return read
            ix = "None"
        elif in_order:
            ix = f"slice({int(flat[0])}, {int(flat[0]) + len(flat)})"
        else:
            ix = self.constant(flat)
        unique = len(np.unique(flat)) == len(flat)
        return low.node("gather", (read,), shape, (ix, unique, shape))

    def contractions(self, bilinear, column: Callable, M: int) -> list[tuple[float, Node]]:
        """(coefficient, M × 1 node) of each sum Σ_k r_k a_mk b_k: the products grouped
        by the units of their two sides, the side the same for every member against the
        one that varies (a matmul), or both varying (their product summed by row)."""
        classes: dict[tuple, list] = {}
        for coef, a, b in bilinear:
            (ua, va) = column(a)
            (ub, vb) = (None, np.ones(M)) if b is None else column(b)  # r·a = r·a·1
            inv_a, inv_b = bool(np.all(va == va[0])), bool(np.all(vb == vb[0]))
            if inv_a and inv_b and (-1 if ub is None else ub) < (-1 if ua is None else ua):
                (ua, va), (ub, vb) = (ub, vb), (ua, va)  # one orientation for all terms
            if inv_b or not inv_a:
                vary, inv, both = (ua, va), (ub, vb), not inv_b
            else:
                vary, inv, both = (ub, vb), (ua, va), False
            classes.setdefault((vary[0], inv[0], both), []).append((coef, vary[1], inv[1]))
        out = []
        low = self.low
        for (u_vary, u_inv, both), items in classes.items():
            if not both:  # the shared side in the order of its entries (a view, if all)
                items.sort(key=lambda item: item[2][0])
            K = len(items)
            coefs = np.array([c for c, _, _ in items])
            varying = np.stack([v for _, v, _ in items], axis=1)  # (M, K)
            same = np.stack([v for _, _, v in items], axis=1)
            r = float(coefs[0]) if np.all(coefs == coefs[0]) else None
            if r is not None:
                coefs = np.ones(K)
            if both:
                if u_vary is None:
                    varying = varying * coefs
                elif u_inv is None:
                    same = same * coefs
                A, B = self.side(u_vary, varying, (M, K)), self.side(u_inv, same, (M, K))
                x, y = sp.Dummy("a"), sp.Dummy("b")
                if r is None and u_vary is not None and u_inv is not None:
                    c = sp.Dummy("c")
                    tiled = np.broadcast_to(coefs, (M, K))
                    prod = low.elementwise(
                        x * y * c, [x, y, c], [A, B, self.side(None, tiled, (M, K))]
                    )
                else:
                    prod = low.elementwise(x * y, [x, y], [A, B])
                ones = self.side(None, np.ones(K), (K, 1))
                out.append((r or 1.0, low.node("matmul", (prod, ones), (M, 1))))
                continue
            if u_vary is None:
                varying = varying * coefs
                coefs = np.ones(K)
            A = self.side(u_vary, varying, (M, K))
            if u_inv is None:
                V = self.side(None, same[0] * coefs, (K, 1))
            else:
                V = self.side(u_inv, same[0], (K, 1))
                if not np.all(coefs == 1.0):
                    c, v = sp.Dummy("c"), sp.Dummy("v")
                    V = low.elementwise(c * v, [c, v], [self.side(None, coefs, (K, 1)), V])
            out.append((r or 1.0, low.node("matmul", (A, V), (M, 1))))
        return out


class LoweredProgram(ArrayProgram):
    """An entry-wise program lowered by groups (see the module docstring), for the
    array engine; its calls take the checked inputs of `GroupedProgram`."""

    def __init__(self, ir, graph, em, steps: list):
        self.ir = ir
        self._inputs = {v.name: v for v in ir.inputs}
        self._intermediates = {v.name: v for v in ir.intermediates}
        n_in = len(ir.inputs)
        groups, unit, pos = _units_of_groups(graph, em, steps, n_in)
        namer = _Namer()
        units = [
            Unit(k, sp.Symbol(v.name), v.name, namer.take(v.name), (v.size, 1), "input")
            for k, v in enumerate(ir.inputs)
        ]
        for members in groups:
            label = graph.symbols[graph.match[members[0]]].name
            key, shape = sp.Symbol(label), (len(members), 1)
            units.append(Unit(len(units), key, label, namer.take(label), shape, "intermediate"))
        self._units, self._by_key = units, {}
        self._constants: dict[str, np.ndarray] = {}
        lowering = _GroupLowering(graph, em, units, unit, pos, self._constants)
        lowered = [
            lowering.step(members, units[n_in + k], ir.constraints[members[0]].label)
            for k, members in enumerate(groups)
        ]
        self._compile_steps(lowered, units[unit[graph.output]], lowering.low.forms)
        for k, solver in self._solvers.items():  # large blocks: inexact Newton first
            if isinstance(solver, _Krylov):
                self._solvers[k] = InexactNewton(solver.code, solver.variables[0])
        self._place = [(unit[v], pos[v]) for v in range(len(graph.symbols))]
        self._output_place = self._place[graph.output]
        self._n_inputs = graph.n_inputs
        self._groups = groups
        # the unknowns of the blocks: the flat index of each unit's first entry, and
        # the names of the variables each block solves for (its report's)
        start: dict[int, int] = {}
        self._block_names: dict[int, tuple[str, ...]] = {}
        for b in (item for item in self._order if not isinstance(item, Step)):
            solver = self._solvers[b.index]
            for u, a in zip(b.units, solver.code.offsets[:-1], strict=True):
                start[u.index] = solver.variables[0] + a
            self._block_names[b.index] = tuple(
                str(graph.symbols[graph.match[e]])
                for st in b.steps
                for e in groups[st.unit.index - n_in]
            )
        self._start = start

    def set_cyclic_vars(self, cyclic_vars: dict[str, list[int]]) -> None:
        """``init`` names the same variables as the per-scalar code (graph indices there;
        here the blocks' flat indices, and an unused key for an entry outside them)."""
        self._cyclic_vars = {}
        for name, indices in cyclic_vars.items():
            flat = []
            for v in indices:
                uid, p = self._place[v]
                flat.append(self._start[uid] + p if uid in self._start else -1 - v)
            self._cyclic_vars[name] = flat

    @property
    def n_groups(self) -> int:
        """How many array constraints the program was lowered to."""
        return len(self._groups)

    # ----------------------------------------------------------------- boundary

    def _inputs_internal(self, arrays: dict) -> list[np.ndarray]:
        out = []
        for name, var in self._inputs.items():
            arr = np.asarray(arrays[name], dtype=np.float64)
            lead = arr.shape[: arr.ndim - len(var.shape)]
            out.append(arr.reshape((*lead, var.size, 1)))
        return out

    def _output_value(self, values: tuple, batch: tuple):
        uid, p = self._output_place
        return _shaped(np.asarray(values[uid])[..., p, 0], batch)

    def _grads(self, lam: tuple, arrays: dict, leads: dict, batch: tuple, wrt=None) -> dict:
        out = {}
        for k, (name, var) in enumerate(self._inputs.items()):
            if wrt is not None and name not in wrt:
                continue
            internal = (*leads[name], var.size, 1)
            g = lam[k]
            g = np.zeros(internal) if g is None else _rt.sum_to(g, internal)
            out[name] = _user_array(np.reshape(g, np.shape(arrays[name])))
        return out

    # ----------------------------------------------------------------- calls

    def batch_value(self, arrays: dict, leads: dict, batch: tuple, options: dict):
        values, _, _ = self._forward(arrays, batch, options)
        return self._output_value(values, batch)

    def batch_value_and_grad(self, arrays: dict, leads: dict, batch: tuple, options: dict):
        value, grad, *_ = self._passes(arrays, leads, batch, options, None, False)
        return value, grad

    def batch_solve(self, arrays: dict, leads: dict, batch: tuple, options: dict):
        """(value, grad, z of every intermediate in graph order, λ of every constraint,
        block reports), each per sample."""
        value, grad, values, _, ctx, lam, _ = self._passes(
            arrays, leads, batch, options, None, True
        )

        def entry(store: tuple, uid: int, p: int) -> np.ndarray:
            v = store[uid]
            if v is None:
                return np.zeros(batch)
            return np.broadcast_to(np.asarray(v)[..., p, 0], batch)

        z = [entry(values, *self._place[v]) for v in range(self._n_inputs, len(self._place))]
        lams: list = [None] * len(self.ir.constraints)
        first = len(self._inputs)
        for k, members in enumerate(self._groups):
            for m, e in enumerate(members):
                lams[e] = entry(lam, first + k, m)
        reports = []
        for k in sorted(ctx.reports):
            report = dataclasses.replace(ctx.reports[k], variables=self._block_names[k])
            solver = self._solvers[k]
            if isinstance(solver, InexactNewton) and math.isnan(report.condition):
                report = dataclasses.replace(report, condition=solver.condition(ctx))
            reports.append(report)
        return value, grad, z, lams, tuple(reports)


class GroupedProgram(CompiledProgram):
    """An entry-wise program compiled: per-scalar code for one sample, and, for batches
    of programs with repeated structure, the program lowered by groups on the array
    engine (`LoweredProgram`)."""

    def _lower_groups(self) -> Any:
        steps = plan(self.graph, self._code.emitter)
        if not worth_grouping(steps, len(self.ir.constraints)):
            return None
        lowered = LoweredProgram(self.ir, self.graph, self._code.emitter, steps)
        lowered.set_cyclic_vars(self._cyclic_vars)
        return lowered

    @property
    def engine(self) -> str:
        """Which engine runs this program: "entries" (per-scalar code) or "lowered"
        (per-scalar code for one sample; for batches the array engine, on the program
        lowered to one array constraint per group of constraints of one form)."""
        return "lowered" if self._lowered is not None else "entries"

    @property
    def source(self) -> str:
        """All generated source: the per-scalar code, then the lowered program's."""
        if self._lowered is None:
            return super().source
        lowered = f"# batches: the program lowered by groups (array engine)\n{self._lowered.source}"
        return f"{super().source}\n{lowered}"

    def __repr__(self) -> str:
        text = super().__repr__()
        if self._lowered is None:
            return text
        return f"{text[:-1]}, lowered to {self._lowered.n_groups} array constraints for batches>"

    def _batched(self, batch: tuple[int, ...]) -> bool:
        """Whether the lowered program runs this call: batches, and one sample of a
        cyclic program (whose per-scalar Newton steps cost a Python loop over the
        Jacobian's entries: a second for 200 unknowns, where the lowered block takes
        milliseconds)."""
        return self._lowered is not None and (batch != () or self._has_cycles)

    def hvp(self, inputs, vectors, check_finite: bool = True, **options: Any) -> dict:
        """`CompiledProgram.hvp`; where `_batched`, on the lowered program (forward over
        reverse: the tangent of its adjoint pass, `ArrayProgram.hvp`)."""
        if self._lowered is not None and self._batched(self._check(inputs, check_finite)[2]):
            return self._lowered.hvp(inputs, vectors, check_finite, **options)
        return super().hvp(inputs, vectors, check_finite, **options)

    def hessian(self, inputs, check_finite: bool = True, **options: Any) -> dict:
        """`CompiledProgram.hessian`; for a cyclic program on the lowered program (one
        `hvp` there per input entry: the per-scalar second order of a cyclic block of
        sums of products disagrees with differences of gradients)."""
        if self._lowered is not None and self._has_cycles:
            return self._lowered.hessian(inputs, check_finite, **options)
        return super().hessian(inputs, check_finite, **options)

    def _value(self, arrays, leads, batch, options):
        if self._fused is None and self._batched(batch):
            return self._lowered.batch_value(arrays, leads, batch, options)
        return super()._value(arrays, leads, batch, options)

    def _value_and_grad(self, arrays, leads, batch, options):
        if self._fused is None and self._batched(batch):
            return self._lowered.batch_value_and_grad(arrays, leads, batch, options)
        return super()._value_and_grad(arrays, leads, batch, options)

    def _solve(self, arrays, leads, batch, options) -> Solution:
        if not self._batched(batch):
            return super()._solve(arrays, leads, batch, options)
        _, grad, z, lam, reports = self._lowered.batch_solve(arrays, leads, batch, options)
        entries = self._entries(arrays, leads, batch)
        return self._solution(entries, arrays, batch, z, lam, grad, reports)
