"""Graph analysis of a program, done once per compile.

Variables are numbered: the scalar inputs first, then the target of each constraint in
constraint order. Constraint i depends on constraint j when z_j appears in f_i. The
strongly connected components of that dependency graph (SciPy's csgraph) are the blocks:
a singleton without a self-loop is solved by back-substitution, any other block is
cyclic. Blocks come in topological order (Kahn's algorithm on the condensation,
iterative, ties broken by definition order so generated code reads like the program).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sps
from scipy.sparse.csgraph import connected_components

from ._program import ProgramIR

__all__ = ["Block", "Graph", "analyse"]


@dataclass(frozen=True)
class Block:
    """Constraints solved together: one, or a strongly connected (cyclic) set."""

    constraints: tuple[int, ...]
    cyclic: bool


@dataclass(frozen=True)
class Graph:
    """Dependency structure of a program.

    Attributes
    ----------
    symbols : tuple of sympy.Symbol
        Every scalar variable: inputs, then constraint targets.
    parents : tuple of tuple of int
        For each constraint, the indices (into ``symbols``) of the variables it reads,
        ascending.
    blocks : tuple of Block
        In topological order: a block only reads inputs and earlier blocks' variables.
    needed : frozenset of int
        Constraints the output depends on (the only ones with nonzero multipliers).
    """

    n_inputs: int
    symbols: tuple
    parents: tuple[tuple[int, ...], ...]
    blocks: tuple[Block, ...]
    needed: frozenset[int]

    @property
    def cyclic_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.cyclic]


def analyse(ir: ProgramIR) -> Graph:
    """Parents, strongly connected blocks in topological order, and the output's ancestors."""
    input_symbols = [s for v in ir.inputs for s in v.symbols]
    targets = [c.target for c in ir.constraints]
    symbols = (*input_symbols, *targets)
    index = {s: k for k, s in enumerate(symbols)}
    n_in, n_c = len(input_symbols), len(ir.constraints)

    parents = tuple(tuple(sorted(index[s] for s in c.expr.free_symbols)) for c in ir.constraints)
    # Constraint-to-constraint edges j -> i when f_i reads z_j.
    rows, cols = [], []
    for i, ps in enumerate(parents):
        for p in ps:
            if p >= n_in:
                rows.append(p - n_in)
                cols.append(i)
    adj = sps.csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_c, n_c))
    n_blocks, label = connected_components(adj, directed=True, connection="strong")

    members: list[list[int]] = [[] for _ in range(n_blocks)]
    for i, b in enumerate(label):
        members[b].append(i)
    self_loop = {i for i, ps in enumerate(parents) if (n_in + i) in ps}
    cyclic = [len(m) > 1 or m[0] in self_loop for m in members]

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
        blocks.append(Block(tuple(members[b]), cyclic[b]))
        for s in successors[b]:
            indegree[s] -= 1
            if indegree[s] == 0:
                heapq.heappush(heap, (members[s][0], s))
    if len(blocks) != n_blocks:  # the condensation of a graph is acyclic: cannot happen
        raise RuntimeError("internal error: block order is incomplete")

    needed = _ancestors(n_in + targets.index(ir.output), parents, n_in)
    return Graph(n_in, symbols, parents, tuple(blocks), needed)


def _ancestors(start: int, parents: tuple[tuple[int, ...], ...], n_in: int) -> frozenset[int]:
    """Constraints reachable backwards from variable ``start`` (iterative DFS)."""
    seen: set[int] = set()
    stack = [start - n_in]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(p - n_in for p in parents[i] if p >= n_in and (p - n_in) not in seen)
    return frozenset(seen)
