"""Graph analysis of a program, done once per compile.

Variables are numbered: the scalar inputs, then the target of each explicit constraint in
constraint order, then the unknowns of implicit equations. Every constraint is *matched*
to the unknown it determines. An explicit constraint z_i = f_i determines its own target;
implicit equations are matched to the remaining unknowns by a maximum bipartite matching
(SciPy's csgraph). When that natural matching is incomplete, every constraint is matched
afresh over all unknowns; when even that fails, the system is structurally singular.

Constraint e depends on constraint e' when e's residual reads the unknown matched to e'.
The strongly connected components of that graph are the blocks (block triangular form):
a single explicit constraint that does not read its own target is evaluated directly
(back-substitution); every other block — a cycle, an implicit equation — is solved as a
system. Blocks come in topological order (Kahn's algorithm on the condensation, iterative,
ties broken by definition order so generated code reads like the program).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sps
from scipy.sparse.csgraph import connected_components, maximum_bipartite_matching

from ..core._errors import ProgramError
from ..core._ir import ProgramIR

__all__ = ["Block", "Graph", "analyse"]


@dataclass(frozen=True)
class Block:
    """Constraints solved together, and the unknowns (variable indices) they determine.

    ``explicit`` blocks are one constraint z = f(…) evaluated directly; the others are
    systems c(z) = 0 solved by Newton's method (or fixed-point iteration).
    """

    constraints: tuple[int, ...]
    unknowns: tuple[int, ...]
    explicit: bool

    @property
    def cyclic(self) -> bool:
        return not self.explicit


@dataclass(frozen=True)
class Graph:
    """Dependency structure of a program.

    Attributes
    ----------
    n_inputs : int
    symbols : tuple of sympy.Symbol
        Every scalar variable: inputs, explicit targets, unknowns of equations.
    parents : tuple of tuple of int
        For each constraint, the variables its expression reads, ascending.
    targets : tuple of (int or None)
        For each constraint, its target variable (None for an implicit equation).
    match : tuple of int
        For each constraint, the unknown it determines.
    blocks : tuple of Block
        In topological order: a block only reads inputs and earlier blocks' unknowns.
    needed : frozenset of int
        Constraints the output depends on (the only ones with nonzero multipliers).
    output : int
        The output's variable index.
    """

    n_inputs: int
    symbols: tuple
    parents: tuple[tuple[int, ...], ...]
    targets: tuple[int | None, ...]
    match: tuple[int, ...]
    blocks: tuple[Block, ...]
    needed: frozenset[int]
    output: int

    @property
    def cyclic_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.cyclic]

    def reads(self, i: int) -> tuple[int, ...]:
        """Variables in constraint i's residual: its parents, and its target."""
        return _reads(self.parents, self.targets, i)


def _reads(parents, targets, i: int) -> tuple[int, ...]:
    t = targets[i]
    return parents[i] if t is None or t in parents[i] else (*parents[i], t)


def analyse(ir: ProgramIR) -> Graph:
    """Matching, strongly connected blocks in topological order, the output's ancestors."""
    input_symbols = [s for v in ir.inputs for s in v.symbols]
    explicit_targets = [c.target for c in ir.constraints if c.target is not None]
    defined = set(explicit_targets)
    implicit_unknowns = [s for v in ir.intermediates for s in v.symbols if s not in defined]
    symbols = (*input_symbols, *explicit_targets, *implicit_unknowns)
    index = {s: k for k, s in enumerate(symbols)}
    n_in = len(input_symbols)

    parents = tuple(tuple(sorted(index[s] for s in c.expr.free_symbols)) for c in ir.constraints)
    targets = tuple(None if c.target is None else index[c.target] for c in ir.constraints)
    match = _match(ir, parents, targets, n_in, len(symbols), symbols)
    matched_by = {v: e for e, v in enumerate(match)}

    def reads(i: int) -> tuple[int, ...]:
        return _reads(parents, targets, i)

    # Constraint-to-constraint edges e' -> e when e reads the unknown matched to e'.
    n_c = len(ir.constraints)
    rows, cols = [], []
    for e in range(n_c):
        for v in reads(e):
            if v >= n_in:
                rows.append(matched_by[v])
                cols.append(e)
    adj = sps.csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_c, n_c))
    n_blocks, label = connected_components(adj, directed=True, connection="strong")

    members: list[list[int]] = [[] for _ in range(n_blocks)]
    for e, b in enumerate(label):
        members[b].append(e)

    def explicit(m: list[int]) -> bool:
        (e,) = m if len(m) == 1 else (None,)
        return e is not None and targets[e] == match[e] and match[e] not in parents[e]

    # Kahn's algorithm on the condensation; the heap keeps definition order among ties.
    successors: list[set[int]] = [set() for _ in range(n_blocks)]
    indegree = [0] * n_blocks
    for j, i in zip(rows, cols, strict=True):
        bj, bi = label[j], label[i]
        if bj != bi and bi not in successors[bj]:
            successors[bj].add(bi)
            indegree[bi] += 1
    heap = [(members[b][0], b) for b in range(n_blocks) if indegree[b] == 0]
    heapq.heapify(heap)
    blocks = []
    while heap:
        _, b = heapq.heappop(heap)
        m = members[b]
        blocks.append(Block(tuple(m), tuple(match[e] for e in m), explicit(m)))
        for s in successors[b]:
            indegree[s] -= 1
            if indegree[s] == 0:
                heapq.heappush(heap, (members[s][0], s))
    if len(blocks) != n_blocks:  # the condensation of a graph is acyclic: cannot happen
        raise RuntimeError("internal error: block order is incomplete")

    output = index[ir.output]
    needed = _ancestors(matched_by[output], reads, matched_by, n_in)
    return Graph(n_in, symbols, parents, targets, match, tuple(blocks), needed, output)


def _match(ir, parents, targets, n_in, n_sym, symbols) -> tuple[int, ...]:
    """The unknown each constraint determines; ProgramError if none can be found."""
    n_c = len(ir.constraints)
    n_unknowns = n_sym - n_in
    implicit = [e for e in range(n_c) if targets[e] is None]
    n_explicit = n_c - len(implicit)
    if n_c != n_unknowns:
        unknowns = ", ".join(str(s) for s in symbols[n_in + n_explicit :])
        raise ProgramError(
            f"{len(implicit)} implicit equation(s) for {n_unknowns - n_explicit} unknown(s) "
            f"({unknowns or 'none'}): each unknown declared with var() and never defined "
            "needs exactly one equation"
        )
    match: list[int] = [t if t is not None else -1 for t in targets]
    if implicit:
        # Natural matching: implicit equations to the unknowns nobody defines.
        first = n_in + n_explicit
        found = _bipartite(
            [[v - first for v in parents[e] if v >= first] for e in implicit], n_sym - first
        )
        if all(v >= 0 for v in found):
            for e, v in zip(implicit, found, strict=True):
                match[e] = first + v
            return tuple(match)
        # Otherwise match every constraint afresh over all unknowns.
        reads = [
            [
                v - n_in
                for v in {*parents[e], *([targets[e]] if targets[e] is not None else [])}
                if v >= n_in
            ]
            for e in range(n_c)
        ]
        found = _bipartite(reads, n_unknowns)
        if any(v < 0 for v in found):
            bad_eqs = [ir.constraints[e].label for e in range(n_c) if found[e] < 0]
            got = {v for v in found if v >= 0}
            bad_vars = [str(symbols[n_in + v]) for v in range(n_unknowns) if v not in got]
            raise ProgramError(
                "the system is structurally singular: no one-to-one matching of equations "
                f"to unknowns; unmatched equations {', '.join(bad_eqs)}; unmatched unknowns "
                f"{', '.join(bad_vars)} (an unknown in no equation, or a block with more "
                "unknowns than equations)"
            )
        match = [n_in + v for v in found]
    return tuple(match)


def _bipartite(rows: list[list[int]], n_cols: int) -> list[int]:
    """Maximum bipartite matching: for each row, its column, or −1."""
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([c for r in rows for c in r], dtype=np.int32)
    graph = sps.csr_matrix(
        (np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(len(rows), n_cols)
    )
    return [int(c) for c in maximum_bipartite_matching(graph, perm_type="column")]


def _ancestors(start: int, reads, matched_by: dict[int, int], n_in: int) -> frozenset[int]:
    """Constraints reachable backwards from constraint ``start`` (iterative DFS)."""
    seen: set[int] = set()
    stack = [start]
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.add(e)
        stack.extend(matched_by[v] for v in reads(e) if v >= n_in and matched_by[v] not in seen)
    return frozenset(seen)
