"""Second order without the dense Hessian: Hessian-vector products and a sparse Hessian.

The objective is the batch sum Σ z_N. At the stationary point of
L = z_N − Σ_e λ_e r_e(z) the Hessian with respect to the inputs is the reduced Hessian
H = Zᵀ (∇²L) Z, with Z = dz/dx. Its product with one direction v needs neither Z nor
∇²L as matrices (the second-order adjoint method):

1. forward, the tangent-linear program: ż = Z v, from (I − J) ż = (∂f/∂x) v;
2. backward, its adjoint: differentiating the adjoint equations ∂L/∂z = 0 along ż gives
   (I − J)ᵀ μ = w with w = (∇²L) ż (μ = λ̇, the output's seed is 0), solved exactly like
   the multipliers: back-substitution, and the transposed factorization of each cyclic
   block's forward solve;
3. at the inputs, H v = w_x + (∂f/∂x)ᵀ μ.

So one product costs one forward and two reverse sweeps on top of the solve: a small
multiple of a gradient, whatever the number of inputs.

The sparse Hessian needs one product per colour of its columns. The structure comes from
the program: the entries z depends on (deps, propagated in block order; every unknown of
a cyclic block depends on all its block's outside reads) and the pairs (p_a, p_b) with a
nonzero ∂²f_e/∂p_a∂p_b; H_kl can be nonzero only if k ∈ deps(p_a) and l ∈ deps(p_b) for
such a pair. The columns are star coloured (a proper colouring with no two-coloured
path on four vertices; greedy, largest degree first): then each nonzero H_ij is alone of
its colour in row i or in row j, so it is read off H Σ_{k ∈ colour} e_k for one of the
two colours, as in Coleman and Moré's symmetric direct method. An arrowhead Hessian
(shared parameters, per-sample data) needs about as many products as parameters plus one
sample's entries, whatever the batch.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sps

from ..core._errors import ProgramError
from ._codegen import hvp_functions

# The compiled program these functions serve (either engine). Not imported, not even for
# type checking: `_compiled` imports this module, and the layers import one way only.
CompiledProgram = Any

__all__ = ["SparseHessian", "colored_hessian", "hvp", "hvp_source", "sparse_hessian"]

Array = Any  # float or numpy.ndarray


@dataclass(frozen=True)
class _SecondOrder:
    """What a program needs for second order, built once on first use."""

    numpy: Any  # the generated hvp on arrays
    scalar: Any  # the same source on Python floats
    source: str


_CACHE: weakref.WeakKeyDictionary[CompiledProgram, _SecondOrder] = weakref.WeakKeyDictionary()
_PATTERNS: weakref.WeakKeyDictionary[CompiledProgram, tuple] = weakref.WeakKeyDictionary()


def _second_order(fn: CompiledProgram) -> _SecondOrder:
    cached = _CACHE.get(fn)
    if cached is None:
        em = fn._code.emitter
        numpy_hvp, scalar_hvp, source = hvp_functions(em)
        cached = _CACHE[fn] = _SecondOrder(numpy_hvp, scalar_hvp, source)
    return cached


def _pattern(fn: CompiledProgram) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of one sample's Hessian over the scalar inputs, found on first use."""
    cached = _PATTERNS.get(fn)
    if cached is None:
        cached = _PATTERNS[fn] = _input_pattern(fn._code.emitter)
    return cached


def hvp_source(fn: CompiledProgram) -> str:
    """Python source of the generated Hessian-vector product (tangents, second adjoint)."""
    return _second_order(fn).source


# --------------------------------------------------------------------------- products


def hvp(
    fn: CompiledProgram,
    inputs: Mapping[Any, Any],
    vectors: Mapping[Any, Any],
    check_finite: bool = True,
    **options: Any,
) -> dict[str, Array]:
    """Hessian-vector product H·v of the batch sum of z_N, with the structure of ``grad``.

    The second-order adjoint method: the tangents ż = Z v along the one direction v
    (forward mode), then the reverse pass of that tangent program,
    (I − J)ᵀ μ = (∇²L) ż, and H v = (∇²L ż)_x + (∂f/∂x)ᵀ μ. Cyclic blocks reuse the
    factorization of their forward solve. No Hessian is formed: one product costs a
    small multiple of `value_and_grad`. The code is generated on the first call.

    Parameters
    ----------
    inputs : dict
        Inputs as for `value_and_grad` (names or Symbols as keys, batched or not).
    vectors : dict
        The direction v: input name (or Symbol) -> array that broadcasts to the array
        given for that input. Inputs missing from ``vectors`` have direction 0.
    check_finite : bool
        Whether an input or a vector holding NaN or inf is a `ProgramError` (default);
        a non-finite product is reported by a `NonFiniteWarning` either way.
    **options
        Solving options of cyclic blocks (``init``, ``method``, ``tol``, ``maxiter``).

    Returns
    -------
    dict
        ``Hv[name]``, with exactly the shape of the array given for ``name`` (like
        ``grad``): the Hessian is that of Σ_batch z_N over the given arrays, so a
        parameter given without batch axes gets the product summed over the batch.

    Raises
    ------
    ProgramError
        An unknown key in ``vectors``, or a vector that does not broadcast to its input.

    Examples
    --------
    >>> import sympy as sp, lagrangian_ad as lad
    >>> x, y = sp.symbols("x y")
    >>> fn = lad.decompose(x**2 * y, [x, y]).compile()
    >>> fn.hvp({"x": 1.0, "y": 3.0}, {"x": 1.0})   # H = [[2y, 2x], [2x, 0]]
    {'x': 6.0, 'y': 2.0}
    """
    entries, arrays, leads, batch = fn._prepare(inputs, check_finite)
    direction = _direction(fn, vectors, arrays, leads, batch, check_finite)
    (product,) = _products(fn, entries, batch, options, [direction])
    out = fn._grads(product, arrays, leads, batch)
    if not all(np.isfinite(v).all() for v in out.values()):
        result = "the Hessian-vector product is"
        fn._warn_non_finite(arrays, leads, batch, options, True, result, stacklevel=4)
    return out


def _direction(
    fn: CompiledProgram, vectors: Mapping[Any, Any], arrays, leads, batch, check_finite=False
) -> list:
    """The direction, one entry per scalar input (like the entries of `_prepare`)."""
    given = fn._named(vectors, "vectors", "vector")
    out: list = []
    for name, var in fn._inputs.items():
        if name not in given:
            out.extend([0.0] * var.size)
            continue
        shape = np.shape(arrays[name])
        try:
            arr = np.asarray(given[name])
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"dtype {arr.dtype}")
            arr = arr.astype(np.float64, copy=False)
            if check_finite and not np.isfinite(arr).all():
                raise fn._not_finite(f"vector {name!r}", arr)
            v = np.broadcast_to(arr, shape)
        except (TypeError, ValueError) as err:
            bad = "does not broadcast to" if isinstance(err, ValueError) else "is not real for"
            raise ProgramError(
                f"vector {name!r}: shape {np.shape(given[name])} {bad} the shape {shape} of "
                f"the array given for input {name!r}"
                + ("" if isinstance(err, ValueError) else f" ({err})")
            ) from None
        if batch == ():
            out.extend(v.ravel().tolist())
        else:
            flat = v.reshape((*leads[name], var.size))
            out.extend(flat[..., k] for k in range(var.size))
    return out


def _products(
    fn: CompiledProgram, entries: list, batch: tuple, options: dict, directions: list[list]
) -> list[list]:
    """Forward solve and multipliers once, then H v per sample for each direction."""
    second = _second_order(fn)

    def passes(code, ctx, entries):
        z = code.forward(ctx, *entries)
        lam, _ = code.adjoint(ctx, *entries, *z)
        product = second.scalar if code is fn._code.scalar else second.numpy
        return [product(ctx, *entries, *z, *lam, *d) for d in directions]

    return fn._on_floats_or_numpy(entries, batch == (), options, passes)


# --------------------------------------------------------------------------- sparse


class SparseHessian(tuple):
    """``(matrix, labels)``: unpacks as ``H, labels = fn.sparse_hessian(inputs)``.

    Attributes
    ----------
    matrix : scipy.sparse.csr_array
        The Hessian of Σ_batch z_N over the flattened entries of the given arrays, with
        the program's structural nonzeros (an entry may still be 0.0 numerically).
    labels : list of (str, tuple)
        For each row and column: the input's name and the index into its array.
    colors : numpy.ndarray
        The colour of each column (−1 for a column that is structurally zero); the
        columns of one colour were recovered from one Hessian-vector product.
    n_hvp : int
        The number of Hessian-vector products made: the number of colours.
    """

    colors: np.ndarray

    def __new__(cls, matrix: sps.csr_array, labels: list, colors: np.ndarray) -> SparseHessian:
        self = super().__new__(cls, (matrix, labels))
        self.colors = colors
        return self

    @property
    def matrix(self) -> sps.csr_array:
        return self[0]

    @property
    def labels(self) -> list[tuple[str, tuple[int, ...]]]:
        return self[1]

    @property
    def n_hvp(self) -> int:
        return int(self.colors.max(initial=-1)) + 1

    def __repr__(self) -> str:
        n = self.matrix.shape[0]
        return f"SparseHessian(<{n}×{n}, {self.matrix.nnz} stored>, n_hvp={self.n_hvp})"


def sparse_hessian(
    fn: CompiledProgram, inputs: Mapping[Any, Any], check_finite: bool = True, **options: Any
) -> SparseHessian:
    """Hessian of the batch sum of z_N as a sparse matrix, one product per column colour.

    The structure comes from the program (which input entries meet in a constraint with a
    nonzero second partial); its columns are star coloured, so that each entry is read
    off the product with the sum of one colour's unit vectors (symmetry lets an entry
    come from its row's colour or its column's), and each colour costs one
    Hessian-vector product, as in `hvp`. The forward solve and the multipliers are
    computed once. For a banded or block-diagonal Hessian, or shared parameters with
    per-sample data, the number of products stays small whatever the input size.

    Parameters
    ----------
    inputs : dict
        Inputs as for `value_and_grad`, batched or not.
    check_finite : bool
        Whether an input holding NaN or inf is a `ProgramError` (default); a non-finite
        Hessian is reported by a `NonFiniteWarning` either way.
    **options
        Solving options of cyclic blocks (``init``, ``method``, ``tol``, ``maxiter``).

    Returns
    -------
    SparseHessian
        Unpacks as ``(matrix, labels)``: a ``scipy.sparse.csr_array`` over the flattened
        entries of the given arrays (inputs in declaration order, each array in C order),
        and for each row a label ``(name, index)`` with ``index`` the tuple index into
        the array given for ``name``. ``.n_hvp`` is the number of products made and
        ``.colors`` the colour of each column.

    Examples
    --------
    >>> import numpy as np, sympy as sp, lagrangian_ad as lad
    >>> prog = lad.Program()
    >>> x = prog.input("x", shape=(4,))
    >>> _ = prog.define("s", sum(sp.sin(x[i] * x[i + 1]) for i in range(3)))
    >>> H, labels = result = prog.compile().sparse_hessian({"x": np.ones(4)})
    >>> H.nnz, result.n_hvp, labels[1]
    (10, 3, ('x', (1,)))
    """
    entries, arrays, leads, batch = fn._prepare(inputs, check_finite)

    def products(all_vectors: list[dict]) -> list[dict]:
        directions = [_direction(fn, v, arrays, leads, batch) for v in all_vectors]
        found = _products(fn, entries, batch, options, directions)
        return [fn._grads(product, arrays, leads, batch) for product in found]

    result = colored_hessian(fn, _pattern(fn), arrays, leads, batch, products)
    if not np.isfinite(result.matrix.data).all():
        fn._warn_non_finite(arrays, leads, batch, options, True, "the Hessian is", stacklevel=4)
    return result


def colored_hessian(
    fn: CompiledProgram,
    pattern: tuple[np.ndarray, np.ndarray],
    arrays: dict,
    leads: dict,
    batch: tuple,
    products: Callable[[list[dict]], list[dict]],
) -> SparseHessian:
    """The sparse Hessian from a per-sample pattern and a product: what both engines
    share. ``pattern`` holds the (row, col) pairs of one sample's Hessian over its scalar
    inputs; ``products`` maps a list of direction dicts (name -> array as given) to
    the list of H v dicts."""
    rows, cols, labels, sizes = _given_pattern(fn, pattern, arrays, leads, batch)
    n = len(labels)
    pattern = sps.csr_array((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(n, n))
    pattern.sort_indices()
    colors = _star_coloring(pattern)
    colors[np.diff(pattern.indptr) == 0] = -1  # a structurally zero column needs no product
    n_colors = int(colors.max(initial=-1)) + 1
    directions = []
    for c in range(n_colors):
        flat = (colors == c).astype(np.float64)
        vectors, start = {}, 0
        for name, size in sizes.items():
            vectors[name] = flat[start : start + size].reshape(np.shape(arrays[name]))
            start += size
        directions.append(vectors)
    columns = np.zeros((n, max(n_colors, 1)))
    for c, grads in enumerate(products(directions)):
        columns[:, c] = np.concatenate([np.ravel(grads[name]) for name in sizes]) if n else []
    return SparseHessian(_recover(pattern, colors, columns), labels, colors)


def _input_pattern(em: Any) -> tuple[np.ndarray, np.ndarray]:
    """Structural nonzeros (rows, cols) of one sample's Hessian over the scalar inputs.

    H = Zᵀ (∇²L) Z, so H_kl ≠ 0 needs a needed constraint e and a pair (p_a, p_b) with
    ∂²f_e/∂p_a∂p_b ≠ 0 (derived once per form), k ∈ deps(p_a) and l ∈ deps(p_b) or the
    reverse. deps is computed, in block order, only for the ancestors of such parents.
    """
    graph, n_in = em.graph, em.n_in
    curved: set[tuple[int, int]] = set()
    for e in sorted(graph.needed):
        _, second = em.table.second_derivatives(em.forms[e], em.ir.constraints[e].label)
        parents = graph.parents[e]
        curved.update((parents[a], parents[b]) for a, b, _ in second)
    block_of = {v: b for b in graph.blocks for v in b.unknowns}
    relevant: set[int] = set()
    stack = sorted({v for pair in curved for v in pair})
    while stack:  # iterative: the ancestors of the curved variables
        v = stack.pop()
        if v in relevant:
            continue
        relevant.add(v)
        if v >= n_in:
            b = block_of[v]
            stack.extend(u for e in b.constraints for u in graph.reads(e) if u not in relevant)
    deps: dict[int, frozenset[int]] = {k: frozenset((k,)) for k in range(n_in) if k in relevant}
    for b in graph.blocks:
        if relevant.isdisjoint(b.unknowns):
            continue
        inside = set(b.unknowns)
        outside = sorted({u for e in b.constraints for u in graph.reads(e)} - inside)
        found = (
            deps[outside[0]]
            if len(outside) == 1
            else frozenset().union(*(deps[u] for u in outside))
        )
        for v in b.unknowns:
            deps[v] = found
    rows, cols = [np.zeros(0, dtype=np.intp)], [np.zeros(0, dtype=np.intp)]
    blocks = {(deps[u], deps[v]) for u, v in curved}  # most pairs share their deps
    for du, dv in blocks:  # any order: np.unique sorts the result
        a = np.fromiter(sorted(du), dtype=np.intp, count=len(du))
        b = np.fromiter(sorted(dv), dtype=np.intp, count=len(dv))
        rows += [np.repeat(a, len(b)), np.tile(b, len(a))]
        cols += [np.tile(b, len(a)), np.repeat(a, len(b))]
    flat = np.unique(np.concatenate(rows) * n_in + np.concatenate(cols))
    return flat // max(n_in, 1), flat % max(n_in, 1)


def _given_pattern(fn: CompiledProgram, pattern, arrays: dict, leads: dict, batch: tuple):
    """The per-sample pattern laid over the flattened entries of the given arrays.

    Sample s reads entry (lead index of s, k) of each input, the lead index broadcast to
    the batch; so H over the given entries has the pair (G[s, k], G[s, l]) for every
    sample s and per-sample pair (k, l). Returns rows, cols, labels, sizes.
    """
    n_samples = int(np.prod(batch, dtype=np.int64))
    G = np.empty((n_samples, sum(v.size for v in fn._inputs.values())), dtype=np.intp)
    labels: list[tuple[str, tuple[int, ...]]] = []
    sizes: dict[str, int] = {}
    offset = k = 0
    for name, var in fn._inputs.items():
        shape, lead = np.shape(arrays[name]), leads[name]
        index = np.arange(int(np.prod(lead, dtype=np.int64))).reshape(
            (1,) * (len(batch) - len(lead)) + lead
        )
        use = np.broadcast_to(index, batch).ravel()
        G[:, k : k + var.size] = offset + use[:, None] * var.size + np.arange(var.size)
        labels.extend((name, tuple(int(i) for i in ix)) for ix in np.ndindex(*shape))
        sizes[name] = int(np.prod(shape, dtype=np.int64))
        offset += sizes[name]
        k += var.size
    prow, pcol = pattern
    n = offset
    flat = np.unique(G[:, prow].ravel() * n + G[:, pcol].ravel())
    return flat // max(n, 1), flat % max(n, 1), labels, sizes


def _star_coloring(pattern: sps.csr_array) -> np.ndarray:
    """Greedy star colouring of the adjacency graph of a symmetric pattern.

    A star colouring is a proper colouring in which every path on four vertices has at
    least three colours. Then each nonzero H_ij is the only one of its colour in row i or
    in row j (Coleman and Moré), so one product per colour recovers H — for an
    arrowhead (shared parameters, per-sample data) about as many colours as parameters
    plus one sample's entries, where a distance-2 colouring needs one per column.
    Vertices go by decreasing degree (ties in index order); each gets the smallest
    colour that keeps it proper and creates no two-coloured path v–w–x–y or w–v–x–y.
    ``count[x, c]`` is the number of neighbours of x coloured c.
    """
    n = pattern.shape[0]
    adj = pattern.tolil()
    adj.setdiag(0)
    adj = sps.csr_array(adj)
    adj.eliminate_zeros()
    adj.sort_indices()
    indptr, indices = adj.indptr, adj.indices
    order = np.argsort(-np.diff(indptr), kind="stable")
    colors = np.full(n, -1, dtype=np.intp)
    count = np.zeros((n, 8), dtype=np.int32)
    mark = np.full(n + 1, -1, dtype=np.intp)  # mark[c] == v: colour c is forbidden for v

    def neighbours(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All neighbours of ``rows``, concatenated, and the row each one came from."""
        starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        return indices[offsets + np.arange(lengths.sum())], np.repeat(rows, lengths)

    for v in order:
        near = indices[indptr[v] : indptr[v + 1]]
        colored = near[colors[near] >= 0]
        mark[colors[colored]] = v  # proper
        if colored.size:
            # v–w–x–y: x two steps away keeps its colour for v only if x has no other
            # neighbour y coloured like w.
            x, w = neighbours(colored)
            keep = (x != v) & (colors[x] >= 0)
            x, w = x[keep], w[keep]
            mark[colors[x[count[x, colors[w]] >= 2]]] = v
            # w–v–x–y: two neighbours w, x of one colour forbid the colours around x.
            values, times = np.unique(colors[colored], return_counts=True)
            twice = colored[np.isin(colors[colored], values[times >= 2])]
            if twice.size:
                y, _ = neighbours(twice)
                y = y[(y != v) & (colors[y] >= 0)]
                mark[colors[y]] = v
        c = int(np.argmax(mark != v))
        colors[v] = c
        if c >= count.shape[1]:
            count = np.concatenate([count, np.zeros_like(count)], axis=1)
        count[near, c] += 1
    return colors


def _recover(pattern: sps.csr_array, colors: np.ndarray, columns: np.ndarray) -> sps.csr_array:
    """H from the products ``columns[:, c] = H Σ_{col(j) = c} e_j`` of a star colouring.

    H_ij is read from column colour col(j) at row i when j is the only neighbour of i with
    that colour (always true on the diagonal), otherwise from colour col(i) at row j.
    """
    coo = pattern.tocoo()
    i, j = coo.row.astype(np.intp), coo.col.astype(np.intp)
    n_colors = columns.shape[1]
    off = i != j
    key = i[off] * n_colors + colors[j[off]]
    keys, times = np.unique(key, return_counts=True)
    alone = np.ones(len(i), dtype=bool)
    alone[off] = times[np.searchsorted(keys, key)] == 1
    data = np.where(alone, columns[i, colors[j]], columns[j, colors[i]])
    matrix = sps.csr_array((data, (i, j)), shape=pattern.shape)
    matrix.sort_indices()
    return matrix
