"""Array programs: one constraint per layer, lowered to array operations and compiled.

A program with array variables (``array=True``) runs here, never expanded into scalar
entries. Every variable is a *unit*: an array variable, or one scalar (a scalar
variable, or one entry of an entry-wise array). Each constraint ``Z = F(…)`` is lowered
once (by `_lowering`, shared with the symbolic layer) to a small graph of `Node` s:

    read     a unit's value                  matmul   A @ B
    const    a number                        T        transpose
    ew       an elementwise form f(p0, …)    sum      sum of all entries (a scalar)
             (scalars broadcast)             entry    A[i, j] (a scalar)

Elementwise forms are derived by SymPy once per form, on scalar placeholders, by the
form machinery of `_forms` (the same that serves entry-wise programs); the other
operations have their rules written once, in `_Rules`: value, vector-Jacobian product
and Jacobian-vector product (`_array_symbolic` states the same vector-Jacobian rules as
SymPy matrix expressions, for `prog.conditions()`). Each pass is one walk over the
constraints in order (forward, tangent) or in reverse (adjoint) that prints those rules
as NumPy code: a few calls per constraint, readable in ``fn.source``.

Values live in one layout inside the generated code: batch axes first, then exactly two
axes (a vector of shape (n,) is n×1, a scalar 1×1), so elementwise broadcasting is
NumPy's own, and ``ndim == 2`` means "the same for every sample" (a parameter). Only
the boundary (`ArrayProgram`) converts to the declared shapes.

Cyclic blocks (``h = tanh(W h + U x + b)``) are solved as systems in the block's
unknowns, flattened per sample: up to DENSE_MAX unknowns by `_blocks.BlockSolver`
(Newton with the dense block Jacobian, built from Jacobian-vector products, and the
certification of the solution described there); beyond that matrix-free (`_Krylov`):
plain iteration while the map contracts fast, else Anderson or Newton-Krylov forward,
and for the multipliers the same plain iteration where it contracted fast, else GMRES,
on the Jacobian-vector and vector-Jacobian products of the rules, so no n × n matrix is
formed. A block's functions are split so that nothing is computed twice: what depends
on the known values only once per solve (``pre_k``), the nodes at a point once per
linearization (``lin_k``), then one product per ``jvp_k``/``vjp_k`` call; the nodes at
the solution go to the forward pass and the adjoint as they are.

Where the line between the two lies: a dense Newton step costs n products (the
Jacobian's columns) and an LU per sample, where a contraction reaches 1e-12 in some 30
products in all; the certification of the dense path (condition estimate, a regular
root) is worth that only for small blocks.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from graphlib import TopologicalSorter
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla
import scipy.special
import sympy as sp
from scipy.sparse import coo_matrix

from ..core._errors import ConvergenceError, NonFiniteWarning, ProgramError, SingularSystemError
from ..core._ir import ProgramIR
from ..solving._blocks import FORWARD, BlockReport, BlockSolver, SolveOptions, _anderson
from ..solving._values import Solution, _as_float_array, _finite, _shaped, _user_array
from . import _rules as rules
from ._codegen import NUMPY_NAMESPACE, _compile, _exec, _Printer
from ._compiled import CompiledProgram
from ._forms import Form, FormTable, float_text, instantiate
from ._lowering import Lowering, Node, Step, Unit, build_units
from ._second import SparseHessian, colored_hessian

__all__ = ["ArrayProgram"]

DENSE_MAX = 16  # cyclic blocks up to this many unknowns per sample: dense Newton
_BOUND_MIN = 1 << 15  # entries of a product below which reading it is as cheap as a bound
FAST_RATE = 0.6  # matrix-free "auto": plain iteration while each change shrinks this much
RATE_SPAN = 3  # iterations over which a plain iteration's contraction rate is measured
MAX_UNTESTED = 8  # iterations of a plain iteration run without its convergence test
_RESERVED = {"numpy", "special", "math", "_lad", "_rt", "_ctx", "_batch"}

# --------------------------------------------------------------------------- runtime


class _Shape:
    """What `_release` leaves of an array whose values are no longer read: its shape."""

    __slots__ = ("ndim", "shape")

    def __init__(self, a: np.ndarray):
        self.shape = a.shape
        self.ndim = a.ndim


class _rt:
    """The array operations of the generated code that are more than one NumPy call.

    Every value has two trailing axes; ``ndim == 2`` is a value shared by all samples.
    Each vector-Jacobian product returns the gradient with the shape of the operand it
    is for: the batch is summed out where the operand has none.
    """

    @staticmethod
    def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.ndim == 2 and b.ndim > 2 and b.shape[-1] == 1:  # a batch of vectors: one GEMM
            return (b[..., 0] @ a.T)[..., None]
        return a @ b

    @staticmethod
    def matmul_ga(g: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """∂/∂a of ⟨g, a @ b⟩ = g @ bᵀ, summed to a's shape."""
        if g.ndim == 2 and b.ndim == 2 and g.shape[1] == 1:  # one sample: an outer product,
            return np.dot(g, b.T)  # by BLAS (NumPy's matmul and broadcasting run it 3-6× slower)
        if a.ndim == 2 and (g.ndim > 2 or b.ndim > 2):
            r, c, k = g.shape[-2], g.shape[-1], b.shape[-2]
            if b.ndim > 2 and g.shape[:-2] == b.shape[:-2]:  # Σ_samples g bᵀ: one GEMM
                return np.swapaxes(g, -1, -2).reshape(-1, r).T @ np.swapaxes(b, -1, -2).reshape(
                    -1, k
                )
            if b.ndim == 2:
                return g.reshape(-1, r, c).sum(axis=0) @ b.T
        return _rt.sum_to(g @ np.swapaxes(b, -1, -2), a.shape)

    @staticmethod
    def matmul_gb(g: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """∂/∂b of ⟨g, a @ b⟩ = aᵀ @ g, summed to b's shape."""
        if a.ndim == 2:
            if b.ndim == 2 and g.ndim > 2:
                return a.T @ g.reshape(-1, *g.shape[-2:]).sum(axis=0)
            if g.shape[-1] == 1 and g.ndim > 2:
                return _rt.sum_to((g[..., 0] @ a)[..., None], b.shape)
            return _rt.sum_to(a.T @ g, b.shape)
        return _rt.sum_to(np.swapaxes(a, -1, -2) @ g, b.shape)

    Shape = _Shape

    @staticmethod
    def into(f: np.ufunc, x: Any) -> Any:
        """``f(x)``, written over ``x``: an array the generated code has just made for f
        alone (the value of an arithmetic expression, see `_in_place`)."""
        if type(x) is np.ndarray and x.dtype == np.float64:
            return f(x, out=x)
        return f(x)

    @staticmethod
    def bounded(c: np.ndarray, g: np.ndarray, b: np.ndarray) -> bool:
        """Whether ``c``, a product of ``g`` and ``b`` (`matmul_ga` or `matmul_gb`), is
        finite, proved from the operands where they are much smaller than ``c``.

        Each entry of c is a sum of at most K = max(g.size, b.size) products of an
        entry of g and one of b (the terms of one entry pair distinct entries of the
        one of them that carries the contracted and batch axes), so
        |c| ≤ K·max|g|·max|b|·(1 + ε)^K, and (1 + ε)^K < 2 for any K an array can have:
        when 2K·max|g|·max|b| is finite, so is every entry of c. A NaN or an inf in g or
        b makes that bound NaN or inf; then, or where the operands are not much smaller
        than c (or c is small: _BOUND_MIN), or the bound is too large, c itself is
        checked.
        """
        if c.size >= _BOUND_MIN and 4 * (g.size + b.size) <= c.size:
            bound = 2.0 * max(g.size, b.size) * float(np.abs(g).max()) * float(np.abs(b).max())
            if math.isfinite(bound):
                return True
        return _finite(c)

    @staticmethod
    def sum_to(g: Any, shape: tuple[int, ...]) -> np.ndarray:
        """``g`` summed over the axes along which a value of ``shape`` was broadcast."""
        g = np.asarray(g)
        if g.shape == shape:
            return g
        if g.ndim < len(shape):  # the same contribution for every sample
            return np.broadcast_to(g, shape)
        lead = g.ndim - len(shape)
        if lead > 0:
            g = g.sum(axis=tuple(range(lead)))
        pairs = enumerate(zip(g.shape, shape, strict=True))
        axes = tuple(k for k, (s, t) in pairs if t == 1 and s != 1)
        if axes:
            g = g.sum(axis=axes, keepdims=True)
        return g if g.shape == shape else np.broadcast_to(g, shape)

    @staticmethod
    def total(a: np.ndarray) -> np.ndarray:
        return a.sum(axis=(-2, -1), keepdims=True)

    @staticmethod
    def total_vjp(g: np.ndarray, a: np.ndarray) -> np.ndarray:
        if a.ndim == 2 and g.ndim > 2:
            g = g.reshape(-1).sum()
        elif g.shape[:-2] == a.shape[:-2]:  # the same batch: a's shape, without asking
            return np.broadcast_to(g, a.shape)
        return np.broadcast_to(g, np.broadcast_shapes(np.shape(g), a.shape))

    @staticmethod
    def gather(a: np.ndarray, ix: Any, shape: tuple[int, int]) -> np.ndarray:
        """The entries of ``a`` (C order) at the flat indices ``ix`` (an index array, a
        slice, or None: all of them in order) as an array of ``shape``."""
        lead = a.shape[:-2]
        if ix is None:
            return a.reshape(lead + shape)
        return a.reshape((*lead, -1))[..., ix].reshape(lead + shape)

    @staticmethod
    def scatter(g: np.ndarray, a: np.ndarray, ix: Any, unique: bool) -> np.ndarray:
        """∂/∂a of ⟨g, gather(a, ix)⟩: ``g`` added at the indices, summed to a's shape."""
        if a.ndim == 2 and g.ndim > 2:
            g = g.reshape(-1, *g.shape[-2:]).sum(axis=0)
        lead = g.shape[:-2]
        if ix is None:
            return _rt.sum_to(g.reshape(lead + a.shape[-2:]), a.shape)
        out = np.zeros((*lead, a.shape[-2] * a.shape[-1]))
        flat = g.reshape((*lead, -1))
        if unique:
            out[..., ix] = flat
        else:
            np.add.at(out, (Ellipsis, ix), flat)
        return _rt.sum_to(out.reshape(lead + a.shape[-2:]), a.shape)

    @staticmethod
    def add_entry(acc: Any, g: np.ndarray, shape: tuple[int, int], i: int, j: int) -> np.ndarray:
        """``acc`` (None or an array of this module's own) plus ``g`` at entry (i, j)."""
        if acc is None:
            acc = np.zeros(g.shape[:-2] + shape)
        elif acc.shape[:-2] != g.shape[:-2] and g.ndim > 2:
            acc = acc + np.zeros(g.shape[:-2] + shape)
        acc[..., i : i + 1, j : j + 1] += g
        return acc


# --------------------------------------------------------------------------- code


class _Namer:
    """Identifiers of the generated code: the units' own names where they are
    identifiers, fresh ``_t1``, ``_g_h`` … for the rest; never two alike."""

    def __init__(self) -> None:
        self.used = set(_RESERVED)
        self._next: dict[str, int] = {}  # base -> the next suffix to try

    def take(self, hint: str) -> str:
        base = re.sub(r"\W", "_", hint)
        if not base.isidentifier():
            base = "_" + base
        name, k = base, self._next.get(base, 1)
        if k > 1:
            name = f"{base}_{k}"
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self._next[base] = k + 1
        self.used.add(name)
        return name


class _Writer:
    """Lines of one generated function."""

    def __init__(self, namer: _Namer):
        self.namer = namer
        self.lines: list[str] = []

    def fresh(self, hint: str) -> str:
        return self.namer.take(hint)

    def emit(self, line: str) -> None:
        self.lines.append(line)

    def function(self, header: str, result: str) -> str:
        body = "\n".join("    " + ln for ln in self.lines) or "    pass"
        return f"def {header}:\n{body}\n    return {result}\n"


_NAMESPACES = {"numpy": np, "special": scipy.special}


def _in_place(code: str) -> str:
    """``numpy.tanh(a + b)`` as ``_rt.into(numpy.tanh, a + b)``: a one-argument ufunc of
    an arithmetic expression writes its result over that expression's array, which is
    new and of the result's shape (one array fewer per layer)."""
    tree = ast.parse(code, mode="eval").body
    if not (
        isinstance(tree, ast.Call)
        and len(tree.args) == 1
        and not tree.keywords
        and isinstance(tree.args[0], (ast.BinOp, ast.UnaryOp))
        and isinstance(tree.func, ast.Attribute)
        and isinstance(tree.func.value, ast.Name)
        and tree.func.value.id in _NAMESPACES
    ):
        return code
    f = getattr(_NAMESPACES[tree.func.value.id], tree.func.attr, None)
    if not (isinstance(f, np.ufunc) and f.nin == 1 and f.nout == 1 and "d->d" in f.types):
        return code  # (isnan and the like give booleans: not over a float array)
    return f"_rt.into({ast.unparse(tree.func)}, {ast.get_source_segment(code, tree.args[0])})"


def _names(form: Form, node: Node, operand_names: list[str]) -> dict[str, str]:
    names = {f"p{k}": v for k, v in enumerate(operand_names)}
    names.update((f"c{k}", float_text(f)) for k, f in enumerate(node.data[1]))
    return names


class _Transposed(str):
    """The code of Aᵀ, remembering A (so that (Aᵀ)ᵀ is A and g Bᵀ fits one GEMM)."""

    def __new__(cls, inner: str) -> _Transposed:
        code = super().__new__(cls, f"numpy.swapaxes({inner}, -1, -2)")
        code.inner = inner
        return code


class _Product(str):
    """The code of A B, remembering A and B (for `_NumpyAlgebra.fit`)."""

    def __new__(cls, a: str, b: str) -> _Product:
        code = super().__new__(cls, f"_rt.matmul({a}, {b})")
        code.a, code.b = a, b
        return code


class _Placed(NamedTuple):
    """g at entry (i, j) of an operand, zero elsewhere: accumulated in place by the
    adjoint walk (`_rt.add_entry`) rather than as a whole array per entry."""

    g: str
    i: int
    j: int


class _NumpyAlgebra:
    """The algebra of `_rules` as NumPy code over arrays with leading batch axes.

    ``fit`` sums a contribution down to its operand's shape (a weight given without
    batch axes gets the sum over the batch); the two products of matmul's rules are
    fitted by one GEMM each (`_rt.matmul_ga`, `_rt.matmul_gb`), never as a batch of
    outer products."""

    @staticmethod
    def matmul(a: str, b: str) -> str:
        return _Product(a, b)

    @staticmethod
    def T(a: str) -> str:
        return a.inner if isinstance(a, _Transposed) else _Transposed(a)

    @staticmethod
    def total(a: str) -> str:
        return f"_rt.total({a})"

    @staticmethod
    def entry(a: str, i: int, j: int) -> str:
        return f"{a}[..., {i}:{i + 1}, {j}:{j + 1}]"

    @staticmethod
    def gather(a: str, ix: str, unique: bool, shape: tuple[int, int]) -> str:
        return f"_rt.gather({a}, {ix}, {shape})"

    @staticmethod
    def scatter(g: str, like: str, ix: str, unique: bool, shape: tuple[int, int]) -> str:
        return f"_rt.scatter({g}, {like}, {ix}, {unique})"

    @staticmethod
    def spread(g: str, like: str) -> str:
        return f"_rt.total_vjp({g}, {like})"

    @staticmethod
    def place(g: str, like: str, i: int, j: int) -> _Placed:
        return _Placed(g, i, j)

    @staticmethod
    def fit(c: str, like: str) -> str:
        if isinstance(c, _Product) and isinstance(c.b, _Transposed):  # g Bᵀ -> A's shape
            return f"_rt.matmul_ga({c.a}, {like}, {c.b.inner})"
        if isinstance(c, _Product) and isinstance(c.a, _Transposed):  # Aᵀ g -> B's shape
            return f"_rt.matmul_gb({c.b}, {c.a.inner}, {like})"
        return f"_rt.sum_to({c}, {like}.shape)"

    @staticmethod
    def add(a: str, b: str) -> str:
        return f"{a} + {b}"


_NUMPY = _NumpyAlgebra()


class _Rules:
    """Value, vector-Jacobian and Jacobian-vector rules of each operation, as code."""

    def __init__(self, forms: FormTable):
        self.forms = forms
        # node id -> {operand position: name of ∂f/∂operand}: the partials of elementwise
        # nodes already computed (a linearization), for `jvp` and `vjp` to multiply by
        self.partials: dict[int, dict[int, str]] = {}

    # value -----------------------------------------------------------------

    @staticmethod
    def value(n: Node, a: list[str]) -> str:
        if n.op == "ew":
            return _in_place(instantiate(n.data[0].forward, _names(n.data[0], n, a)))
        return rules.value(_NUMPY, n.op, n.data, a)

    # vector-Jacobian ------------------------------------------------------

    def vjp(self, w: _Writer, n: Node, g: str, a: list[str], out: str, label: str):
        """Code of the contribution of ``g`` (the adjoint of n) to each operand:
        a list of (operand position, code, or a `_Placed` entry update)."""
        if n.op == "ew" and id(n) in self.partials:
            return [
                (k, f"_rt.sum_to({g} * {p}, {a[k]}.shape)") for k, p in self.partials[id(n)].items()
            ]
        if n.op == "ew":
            form: Form = n.data[0]
            names = _names(form, n, a)
            names.update(l=g, t=out)
            for t in form.temps:
                tmp, _, code = t.partition(" = ")
                names[tmp.strip("«»")] = w.fresh("_s")
                w.emit(f"{names[tmp.strip('«»')]} = {instantiate(code, names)}")
            return [
                (k, f"_rt.sum_to({instantiate(term, names)}, {a[k]}.shape)")
                for (k, _), term in zip(form.partials, form.terms, strict=True)
            ]
        return rules.vjp(_NUMPY, n.op, n.data, g, a)

    def vjp_tangent(self, w: _Writer, n: Node, g: str, dg: str | None, a: list[str], da: list):
        """The tangents of `vjp`'s contributions (second order): for each operand the code
        of d(contribution) from the tangent ``dg`` of g and ``da`` of the operands (None:
        zero); entries are `_Placed` updates with ``dg``."""
        out: dict[int, list[str]] = {}
        if n.op == "ew":
            form: Form = n.data[0]
            if dg is not None:
                for k, code in self.vjp(w, n, dg, a, n.name, ""):
                    out.setdefault(k, []).append(code)
            if any(d is not None for d in da):
                names = _names(form, n, a)
                names.update(l=g, t=n.name)
                temps, seconds = self.forms.second_derivatives(form, "")
                for t in temps:
                    tmp, _, code = t.partition(" = ")
                    names[tmp.strip("«»")] = w.fresh("_s")
                    w.emit(f"{names[tmp.strip('«»')]} = {instantiate(code, names)}")
                for i, j, code in seconds:
                    c = instantiate(code, names)
                    for k, other in ((i, j), (j, i)) if i != j else ((i, j),):
                        if da[other] is not None:
                            out.setdefault(k, []).append(
                                f"_rt.sum_to(({c}) * {da[other]}, {a[k]}.shape)"
                            )
            return [(k, " + ".join(v)) for k, v in out.items()]
        return rules.vjp_tangent(_NUMPY, n.op, n.data, g, dg, a, da)

    # Jacobian-vector ------------------------------------------------------

    def jvp(self, w: _Writer, n: Node, a: list[str], d: list[str | None], out: str, label: str):
        """Code of the tangent of n from the operands' tangents ``d`` (None: zero)."""
        if n.op == "ew" and id(n) in self.partials:
            terms = [f"{p} * {d[k]}" for k, p in self.partials[id(n)].items() if d[k] is not None]
            return " + ".join(terms) if terms else None
        if n.op == "ew":
            form: Form = n.data[0]
            names = _names(form, n, a)
            names.update(t=out)
            temps, codes = self.forms.jacobian(form, label)
            terms = []
            for t in temps:
                tmp, _, code = t.partition(" = ")
                names[tmp.strip("«»")] = w.fresh("_s")
                w.emit(f"{names[tmp.strip('«»')]} = {instantiate(code, names)}")
            for (k, _), code in zip(form.partials, codes, strict=True):
                if d[k] is not None:
                    terms.append(f"({instantiate(code, names)}) * {d[k]}")
            return " + ".join(terms) if terms else None
        return rules.jvp(_NUMPY, n.op, n.data, a, d)


# --------------------------------------------------------------------------- passes


@dataclass
class _Block:
    """A cyclic block: its steps and unknown units, and its position in the order."""

    index: int
    steps: list[Step]
    units: list[Unit]

    @property
    def size(self) -> int:
        return sum(u.shape[0] * u.shape[1] for u in self.units)


class _Generator:
    """The passes of one program, printed from the rules (one walk each)."""

    def __init__(self, units: list[Unit], order: list[Step | _Block], output: Unit, forms):
        self.units = units
        self.order = order
        self.output = output
        self.rules = _Rules(forms)
        self.inputs = [u for u in units if u.kind == "input"]
        self._relevant: set[int] | None = None  # see `adjoint`
        # contribution name -> (g, the other operand) of the matmul products (`adjoint`)
        self._products: dict[str, tuple[str, str]] = {}

    # forward ---------------------------------------------------------------

    def forward(self) -> tuple[str, list[str]]:
        """``forward(_ctx, inputs…)`` -> (unit values…, saved node values…)."""
        namer = _Namer()
        for u in self.units:
            namer.used.add(u.name)
        w = _Writer(namer)
        saved: list[str] = []
        for item in self.order:
            if isinstance(item, _Block):
                ext = sorted(_block_reads(item) - {u.index for u in item.units})
                args = ", ".join(self.units[i].name for i in ext)
                targets = ", ".join(u.name for u in item.units)
                w.emit(f"{targets}, = _ctx.solve({item.index}, ({args}{',' if ext else ''}))")
                # the node values at the solution, for the adjoint: the solver has them
                fixed, varying = [], []
                moving = _varying(item)
                for st in item.steps:
                    for n in st.nodes:
                        if n.op == "read":
                            n.name = n.data.name
                        else:
                            n.name = w.fresh("_c" if n.op == "const" else "_t")
                            (varying if id(n) in moving else fixed).append(n.name)
                w.emit(f"{_tuple(fixed)}, {_tuple(varying)} = _ctx.nodes({item.index})")
                saved += fixed + varying
            else:
                self._values(w, item, saved, final=True)
        # the passes over the forward values (adjoint, tangent, hvp, stationarity) read
        # these names; the blocks' own functions rename nodes locally (a list in node
        # order, not keyed by id(): the generator is pickled with the compiled program)
        self._forward_names = [n.name for st in _steps(self.order) for n in st.nodes]
        self._forward_lines = list(w.lines)  # for `value_and_grad`
        units = ", ".join(u.name for u in self.units)
        header = f"forward(_ctx, {', '.join(u.name for u in self.inputs)})"
        return w.function(header, f"({units},), ({', '.join(saved)}{',' if saved else ''})"), saved

    def _values(self, w: _Writer, s: Step, saved: list[str] | None, final: bool) -> None:
        """Names and code of each node of ``s``; the root is the unit when ``final``."""
        for n in s.nodes:
            if n.op == "read":
                n.name = n.data.name
                continue
            self._value(w, n, s.unit.name if (n is s.root and final) else None)
            if saved is not None and n.name != s.unit.name:
                saved.append(n.name)
        if final and s.root.op in ("read", "const"):
            w.emit(f"{s.unit.name} = {s.root.name}")

    def _value(self, w: _Writer, n: Node, name: str | None = None) -> None:
        """The code of one (non-read) node's value, under ``name`` or a fresh one."""
        if n.op == "const":
            n.name = w.fresh("_c")
            w.emit(f"{n.name} = numpy.asarray({_const_code(n.data)}).reshape({n.shape})")
        else:
            n.name = name or w.fresh("_t")
            w.emit(f"{n.name} = {self.rules.value(n, [a.name for a in n.args])}")

    # adjoint ---------------------------------------------------------------

    def adjoint(self, saved: list[str], wanted: frozenset[int] | None = None) -> str:
        """``adjoint(_ctx, _batch, units…, saved…)`` -> ((multipliers of every unit…),
        {input name: proved finite}).

        With ``wanted`` (indices of input units) only the contributions that lead to
        those inputs' gradients are computed: a gradient with respect to the weights
        alone never forms the one with respect to the data. The dict holds, for each
        array input whose multiplier is one matmul product (∂/∂W of W x: g xᵀ summed
        over the batch), whether `_rt.bounded` proves it finite, which reads the
        operands instead of the product where they are smaller (one sample's outer
        product: 1,040 numbers instead of 200,704)."""
        w, bounds = self._adjoint_lines(saved, wanted)
        result = ", ".join(self._final.get(u.index, "None") for u in self.units)
        args = ", ".join([u.name for u in self.units] + saved)
        header = f"adjoint(_ctx, _batch, {args})"
        proved = ", ".join(f"{u.label!r}: _rt.bounded({c}, {g}, {b})" for u, c, g, b in bounds)
        return w.function(header, f"({result},), {{{proved}}}")

    def value_and_grad(self, saved: list[str], wanted: frozenset[int] | None = None) -> str:
        """``value_and_grad(_ctx, _batch, inputs…)`` -> (the output's value, (multiplier
        of each input unit…), {input name: proved finite}): the forward pass and the
        adjoint (as `adjoint` prints it, with ``wanted``) in one function, where each
        value is deleted after its last use (`_release`): what the adjoint no longer
        needs (a layer's activations once its multiplier is formed) is freed while it
        runs, so that a call needs the memory of backprop written by hand, not that of
        every value and multiplier at once."""
        w, bounds = self._adjoint_lines(saved, wanted)
        lines = list(w.lines)
        proved = []
        for u, c, g, b in bounds:  # each right after its product: g and b die early
            ok = w.fresh(f"_ok_{u.name}")
            at = next(k for k, ln in enumerate(lines) if ln.startswith(f"{c} = "))
            lines.insert(at + 1, f"{ok} = _rt.bounded({c}, {g}, {b})")
            proved.append(f"{u.label!r}: {ok}")
        grads = [self._final.get(u.index, "None") for u in self.inputs]
        result = f"{self.output.name}, ({', '.join(grads)},), {{{', '.join(proved)}}}"
        body = "\n".join("    " + ln for ln in _release(self._forward_lines + lines, result))
        header = f"value_and_grad(_ctx, _batch, {', '.join(u.name for u in self.inputs)})"
        return f"def {header}:\n{body}\n    return {result}\n"

    def _adjoint_lines(self, saved: list[str], wanted: frozenset[int] | None):
        """The adjoint pass's lines (a writer) and its bounds (see `adjoint`: input unit,
        product, g, the other operand); the multiplier of each unit in ``self._final``
        (unit index -> name)."""
        self._over_forward_values()
        namer = _Namer()
        for u in self.units:
            namer.used.add(u.name)
        namer.used.update(saved)
        w = _Writer(namer)
        acc = _Accumulators(w, self.units)
        self._relevant = None if wanted is None else self._leads_to(wanted)
        self._products = {}
        acc.add(self.output.index, "numpy.ones(_batch + (1, 1))")
        for item in reversed(self.order):
            if isinstance(item, _Block):
                lams = self._block_adjoint(w, item, acc)
                for u, lam in zip(item.units, lams, strict=True):
                    acc.final[u.index] = lam
                inside = {u.index for u in item.units}
                # the block's own reads of its unknowns, as the context gives them (the
                # values themselves; the unrolled estimator's points: `_estimators`)
                reads = [n for st in item.steps for n in st.nodes if n.op == "read"]
                reads = [n for n in reads if n.data.index in inside]
                at = [w.fresh(f"_z_{u.name}") for u in item.units]
                own = ", ".join(u.name for u in item.units)
                w.emit(f"{', '.join(at)}, = _ctx.unknowns({item.index}, ({own},))")
                renamed = dict(zip((u.index for u in item.units), at, strict=True))
                for n in reads:
                    n.name = renamed[n.data.index]
                for s in item.steps:
                    self._backward(w, s, _signed(w, s, acc.final[s.unit.index]), acc, inside)
                for n in reads:
                    n.name = n.data.name
            else:
                g = acc.take(item.unit.index)
                acc.final[item.unit.index] = g
                self._backward(w, item, g, acc, skip=set())
        bounds = []  # the gradients that are one product: finite by a bound (`_rt.bounded`)
        for u in self.inputs:
            parts = acc.parts.get(u.index, [])
            single = len(parts) == 1 and not acc.entries.get(u.index)
            acc.final[u.index] = acc.take(u.index)
            if single and parts[0] in self._products and u.shape != (1, 1):
                bounds.append((u, parts[0], *self._products[parts[0]]))
        self._final = acc.final
        return w, bounds

    def _leads_to(self, wanted: frozenset[int]) -> set[int]:
        """ids of the nodes (and indices of the units) from which a wanted input is
        reached by following the operands: the only adjoints worth computing."""
        relevant: set[int] = set(wanted)
        for item in self.order:
            steps = item.steps if isinstance(item, _Block) else [item]
            for _ in range(2 if isinstance(item, _Block) else 1):  # a cycle: twice
                for st in steps:
                    for n in st.nodes:
                        if n.op == "read":
                            hit = n.data.index in relevant
                        else:
                            hit = any(id(a) in relevant for a in n.args)
                        if hit:
                            relevant.add(id(n))
                    if id(st.root) in relevant:
                        relevant.add(st.unit.index)
            if isinstance(item, _Block) and any(u.index in relevant for u in item.units):
                relevant.update(u.index for u in item.units)
                relevant.update(id(n) for st in steps for n in st.nodes)
        return relevant

    def _backward(
        self,
        w: _Writer,
        s: Step,
        g: str,
        acc: _Accumulators,
        skip: set[int],
        dg: str | None = None,
        dacc: _Accumulators | None = None,
        dnode: dict[int, str | None] | None = None,
        dskip: set[int] | None = None,
    ):
        """Contributions of constraint ``s`` with adjoint ``g`` to the units it reads
        (except those in ``skip``), node by node in reverse. With ``dacc`` (second
        order) also their tangents, from the tangent ``dg`` of g and the tangents
        ``dnode`` of the nodes' values, into ``dacc`` (except to ``dskip``, by default
        ``skip``)."""
        if g == "None":
            return
        second = dacc is not None
        dskip = skip if dskip is None else dskip
        adj: dict[int, list[str]] = {id(s.root): [g]}
        dadj: dict[int, list[str]] = {}
        if second and dg not in (None, "None"):
            dadj[id(s.root)] = [dg]
        entries: dict[int, list[tuple[str, tuple[int, int]]]] = {}
        dentries: dict[int, list[tuple[str, tuple[int, int]]]] = {}
        for n in reversed(s.nodes):
            parts, ent = adj.pop(id(n), None), entries.pop(id(n), None)
            dparts, dent = dadj.pop(id(n), None), dentries.pop(id(n), None)
            if not (parts or ent or dparts or dent):
                continue
            if n.op == "read":
                for target, ps, es, no in ((acc, parts, ent, skip), (dacc, dparts, dent, dskip)):
                    if n.data.index in no:
                        continue
                    for p in ps or ():
                        target.add(n.data.index, p)
                    for gi, (i, j) in es or ():
                        target.entry(n.data.index, gi, n.shape, i, j)
                continue
            if n.op == "const":
                continue
            gname = _sum_code(w, parts or [], ent or [], n.shape)
            dgname = _sum_code(w, dparts or [], dent or [], n.shape) if dparts or dent else None
            a = [x.name for x in n.args]
            contributions = [
                (adj, entries, k, c) for k, c in self.rules.vjp(w, n, gname, a, n.name, s.label)
            ]
            if second:
                da = [dnode.get(id(x)) for x in n.args]
                contributions += [
                    (dadj, dentries, k, c)
                    for k, c in self.rules.vjp_tangent(w, n, gname, dgname, a, da)
                ]
            relevant = self._relevant
            for into, into_entries, k, code in contributions:
                child = n.args[k]
                no = skip if into is adj else dskip
                if child.op == "const" or (child.op == "read" and child.data.index in no):
                    continue
                if relevant is not None and id(child) not in relevant:
                    continue
                if isinstance(code, _Placed):  # an entry: its parent gets g at (i, j)
                    into_entries.setdefault(id(child), []).append((code.g, (code.i, code.j)))
                else:
                    name = w.fresh("_g")
                    w.emit(f"{name} = {code}")
                    into.setdefault(id(child), []).append(name)
                    if n.op == "matmul" and into is adj:  # g times the other operand
                        self._products[name] = (gname, a[1 - k])

    def stationarity(self, saved: list[str]) -> str:
        """``stationarity(_ctx, _batch, units…, saved…, multipliers…)`` -> (∂L/∂z of every
        intermediate unit…): [z = output] + Σ_consumers (∂F_c/∂z)ᵀ λ_c − λ_z, recomputed
        from the given multipliers by the same rules (zero at a stationary point), and
        the residual z − F(…) of every constraint (zero at the forward solution)."""
        self._relevant = None
        self._over_forward_values()
        namer = _Namer()
        namer.used.update(u.name for u in self.units)
        namer.used.update(saved)
        lams = {u.index: "_lam_" + u.name for u in self.units if u.kind != "input"}
        namer.used.update(lams.values())
        w = _Writer(namer)
        acc = _Accumulators(w, self.units)
        acc.add(self.output.index, "numpy.ones(_batch + (1, 1))")
        for st in _steps(self.order):
            self._backward(w, st, _signed(w, st, lams[st.unit.index]), acc, skip=set())
        dz, dlam = [], []
        for st in _steps(self.order):
            got = acc.take(st.unit.index)
            lam = lams[st.unit.index]
            if st.implicit:  # an unknown: ∂L/∂u has no λ of its own definition
                dz.append("0.0" if got == "None" else f"numpy.abs({got})")
                dlam.append(f"numpy.abs({st.root.name})")
                continue
            dz.append(f"numpy.abs({lam})" if got == "None" else f"numpy.abs({got} - {lam})")
            dlam.append(f"numpy.abs({st.unit.name} - {st.root.name})")
        args = ", ".join([u.name for u in self.units] + saved + list(lams.values()))
        return w.function(
            f"stationarity(_ctx, _batch, {args})", f"({', '.join(dz)},), ({', '.join(dlam)},)"
        )

    def _over_forward_values(self) -> None:
        """Give every node its name in the forward pass again (see `forward`)."""
        nodes = [n for st in _steps(self.order) for n in st.nodes]
        for n, name in zip(nodes, self._forward_names, strict=True):
            n.name = name

    def _tangent_writer(self, saved: list[str]) -> tuple[_Writer, dict[int, str | None]]:
        """A writer for a pass over the forward values and the inputs' tangents."""
        self._over_forward_values()
        namer = _Namer()
        namer.used.update(u.name for u in self.units)
        namer.used.update(saved)
        dot: dict[int, str | None] = {u.index: "_d_" + u.name for u in self.inputs}
        namer.used.update(dot.values())
        return _Writer(namer), dot

    # second order ------------------------------------------------------------

    def hvp(self, saved: list[str]) -> str:
        """``hvp(_ctx, _batch, units…, saved…, input tangents…)`` -> (H v per input…):
        the tangent of the adjoint pass along the forward tangents (forward over
        reverse), with the second partials of each elementwise form."""
        self._relevant = None
        w, dot = self._tangent_writer(saved)
        dnode: dict[int, str | None] = {}
        for item in self.order:
            if isinstance(item, _Block):  # ż of the block, then every node's tangent
                self._block_tangent(w, item, dot)
                for st in item.steps:
                    self._forward_tangent(w, st, dot, set(), keep=dnode)
            else:
                dot[item.unit.index] = self._forward_tangent(w, item, dot, set(), keep=dnode)
        acc, dacc = _Accumulators(w, self.units), _Accumulators(w, self.units)
        acc.add(self.output.index, "numpy.ones(_batch + (1, 1))")
        for item in reversed(self.order):
            if not isinstance(item, _Block):
                g, dg = acc.take(item.unit.index), dacc.take(item.unit.index)
                self._backward(w, item, g, acc, set(), dg=dg, dacc=dacc, dnode=dnode)
                continue
            # A cyclic block: λ from (I − F_u)ᵀ λ = g; its tangent from
            # (I − F_u)ᵀ λ̇ = ġ + (d/dt F_uᵀ) λ, where the last term is the tangent of the
            # block's vector-Jacobian product with λ held fixed; then F_eᵀ λ̇ outward.
            inside = {u.index for u in item.units}
            lams = self._block_adjoint(w, item, acc)
            for st, lam in zip(item.steps, lams, strict=True):
                g = _signed(w, st, lam)
                self._backward(w, st, g, acc, inside, None, dacc, dnode, dskip=set())
            dlams = self._block_adjoint(w, item, dacc, "_dl_")
            for st, dlam in zip(item.steps, dlams, strict=True):
                self._backward(w, st, _signed(w, st, dlam), dacc, inside)
        result = ", ".join(dacc.take(u.index) for u in self.inputs)
        args = ", ".join([u.name for u in self.units] + saved + [dot[u.index] for u in self.inputs])
        return w.function(f"hvp(_ctx, _batch, {args})", f"({result},)")

    # tangent ---------------------------------------------------------------

    def _block_tangent(self, w: _Writer, b: _Block, dot: dict) -> None:
        """ż of a block's unknowns from (I − F_u) ż = F_e ė, into ``dot``."""
        inside = {u.index for u in b.units}
        rhs = []  # −∂R/∂e ė: +∂F/∂e ė for z = F, −∂c/∂e ė for c = 0
        for st in b.steps:
            d = self._forward_tangent(w, st, dot, skip=inside)
            rhs.append("0.0" if d is None else f"{st.sign}{d}")
        outs = [w.fresh(f"_d_{u.name}") for u in b.units]
        w.emit(f"{', '.join(outs)}, = _ctx.tangent({b.index}, ({', '.join(rhs)},))")
        for u, o in zip(b.units, outs, strict=True):
            dot[u.index] = o

    def _block_adjoint(self, w: _Writer, b: _Block, acc: _Accumulators, prefix: str = "_l_"):
        """λ of a block's constraints from (I − F_u)ᵀ λ = g, g taken from ``acc``."""
        names = [acc.take(u.index) for u in b.units]
        lams = [w.fresh(f"{prefix}{u.name}") for u in b.units]
        w.emit(f"{', '.join(lams)}, = _ctx.adjoint({b.index}, ({', '.join(names)},))")
        return lams

    def tangent(self, saved: list[str]) -> str:
        """``tangent(_ctx, units…, saved…, input tangents…)`` -> the output's tangent."""
        w, dot = self._tangent_writer(saved)
        for item in self.order:
            if isinstance(item, _Block):
                self._block_tangent(w, item, dot)
            else:
                dot[item.unit.index] = self._forward_tangent(w, item, dot, skip=set())
        args = ", ".join([u.name for u in self.units] + saved + [dot[u.index] for u in self.inputs])
        return w.function(f"tangent(_ctx, {args})", dot.get(self.output.index) or "0.0")

    def _forward_tangent(
        self, w: _Writer, s: Step, dot: dict, skip: set[int], keep: dict | None = None
    ) -> str | None:
        d: dict[int, str | None] = {} if keep is None else keep
        for n in s.nodes:
            if n.op == "read":
                d[id(n)] = None if n.data.index in skip else dot.get(n.data.index)
            elif n.op == "const":
                d[id(n)] = None
            else:
                code = self.rules.jvp(
                    w, n, [a.name for a in n.args], [d[id(a)] for a in n.args], n.name, s.label
                )
                if code is None:
                    d[id(n)] = None
                else:
                    name = w.fresh("_d")
                    w.emit(f"{name} = {code}")
                    d[id(n)] = name
        return d[id(s.root)]

    # blocks ----------------------------------------------------------------

    def block_functions(self, b: _Block) -> str:
        """The functions of a cyclic block, for its solvers (one namer: they share names).

        ``pre_k(ext…)`` computes once per solve what does not depend on the unknowns u
        (U x in tanh(W h + U x + b)); ``map_k(u…, ext…, pre…)`` is F(u); ``lin_k`` F(u)
        and the values of the nodes that depend on u; ``part_k`` from those the
        partials of the elementwise nodes (1 − t² for tanh), once per linearization;
        then ``jvp_k`` (∂F/∂u · du) and ``vjp_k`` ((∂F/∂u)ᵀ g) are one product each,
        with nothing of F recomputed (args: u…, ext…, pre…, lin…, part…, then du… or
        g…)."""
        self._relevant = None
        inside = {u.index for u in b.units}
        ext = sorted(_block_reads(b) - inside)
        unit_names = [u.name for u in b.units]
        ext_names = [self.units[i].name for i in ext]
        dot = {u.index: "_d_" + u.name for u in b.units}
        gs = ["_g_" + u.name for u in b.units]
        namer = _Namer()
        namer.used.update(unit_names + ext_names + list(dot.values()) + gs)
        varying = _varying(b)

        def values(w: _Writer, want_varying: bool) -> list[str]:
            names = []
            for s in b.steps:
                for n in s.nodes:
                    if n.op == "read":
                        n.name = n.data.name
                    elif (id(n) in varying) == want_varying:
                        self._value(w, n)
                        names.append(n.name)
            return names

        sources = []
        w = _Writer(namer)
        pre = values(w, want_varying=False)
        sources.append(w.function(f"pre_{b.index}({', '.join(ext_names)})", _tuple(pre)))
        head = unit_names + ext_names + pre
        w = _Writer(namer)
        values(w, want_varying=True)
        roots = _tuple([s.root.name for s in b.steps])
        sources.append(w.function(f"map_{b.index}({', '.join(head)})", roots))
        w = _Writer(namer)
        lin = values(w, want_varying=True)
        roots = _tuple([s.root.name for s in b.steps])
        sources.append(w.function(f"lin_{b.index}({', '.join(head)})", f"{roots}, {_tuple(lin)}"))
        head += lin
        w = _Writer(namer)
        partials = self._block_partials(w, b, varying)
        sources.append(w.function(f"part_{b.index}({', '.join(head)})", _tuple(partials)))
        head += partials
        # the tangent in the unknowns
        w = _Writer(namer)
        outs = [self._forward_tangent(w, s, dot, skip=set(ext)) or "0.0" for s in b.steps]
        dargs = ", ".join(head + [dot[u.index] for u in b.units])
        sources.append(w.function(f"jvp_{b.index}({dargs})", _tuple(outs)))
        # the transposed product, over the nodes that depend on u only
        w = _Writer(namer)
        acc = _Accumulators(w, self.units)
        self._relevant = varying
        for s, g in zip(b.steps, gs, strict=True):
            self._backward(w, s, g, acc, skip=set(ext))
        self._relevant = None
        self.rules.partials = {}
        res = [acc.take(u.index) for u in b.units]
        sources.append(w.function(f"vjp_{b.index}({', '.join(head + gs)})", _tuple(res)))
        return "\n".join(sources)

    def _block_partials(self, w: _Writer, b: _Block, varying: set[int]) -> list[str]:
        """Code of the partials ∂f/∂u-dependent operand of each elementwise node of a
        block (1 − t² for tanh), at a linearization: its products then multiply by them.
        Registers them with the rules; returns their names."""
        names = []
        for s in b.steps:
            for n in s.nodes:
                if n.op != "ew" or id(n) not in varying:
                    continue
                form: Form = n.data[0]
                subst = _names(form, n, [a.name for a in n.args])
                subst.update(t=n.name)
                temps, codes = self.rules.forms.jacobian(form, s.label)
                for t in temps:
                    tmp, _, code = t.partition(" = ")
                    subst[tmp.strip("«»")] = w.fresh("_s")
                    w.emit(f"{subst[tmp.strip('«»')]} = {instantiate(code, subst)}")
                mine = self.rules.partials.setdefault(id(n), {})
                for (k, _), code in zip(form.partials, codes, strict=True):
                    if id(n.args[k]) in varying:
                        mine[k] = w.fresh("_p")
                        w.emit(f"{mine[k]} = {instantiate(code, subst)}")
                        names.append(mine[k])
        return names


def _varying(b: _Block) -> set[int]:
    """ids of the nodes of a block's steps that depend on its unknowns."""
    inside = {u.index for u in b.units}
    varying: set[int] = set()
    for s in b.steps:
        for n in s.nodes:
            reads_u = n.op == "read" and n.data.index in inside
            if reads_u or any(id(a) in varying for a in n.args):
                varying.add(id(n))
    return varying


def _tuple(names: list[str]) -> str:
    return f"({', '.join(names)}{',' if names else ''})"


def _release(lines: list[str], result: str) -> list[str]:
    """``lines`` (one statement each) with a ``del`` after the last use of each name
    they assign, unless ``result`` (the returned expression) reads it.

    A name whose last uses read only its ``.shape`` or ``.ndim`` (``_rt.sum_to(g,
    t.shape)`` in the adjoint) becomes a `_Shape` after its last other use, so that the
    array is freed there. The analysis is of the code itself (Python's `ast`): a name
    is read, wholly or for its shape, where it appears.
    """
    statements = [ast.parse(line).body[0] for line in lines]
    stores: dict[str, int] = {}  # name -> how often assigned
    assigned: dict[str, int] = {}  # name -> the line assigning it
    read: dict[str, int] = {}  # name -> the last line reading its value
    shaped: dict[str, int] = {}  # name -> the last line reading its shape
    for k, st in enumerate(statements):
        shape_reads = {
            id(node.value)
            for node in ast.walk(st)
            if isinstance(node, ast.Attribute)
            and node.attr in ("shape", "ndim")
            and isinstance(node.value, ast.Name)
        }
        for node in ast.walk(st):
            if not isinstance(node, ast.Name):
                continue
            if isinstance(node.ctx, ast.Store):
                stores[node.id] = stores.get(node.id, 0) + 1
                assigned[node.id] = k
            elif id(node) in shape_reads:
                shaped[node.id] = k
            else:
                read[node.id] = k
    kept = {n.id for n in ast.walk(ast.parse(result, mode="eval")) if isinstance(n, ast.Name)}
    after: dict[int, list[str]] = {}  # line -> what to do after it
    for name, count in stores.items():
        if count != 1 or name in kept:
            continue
        last_read = read.get(name, -1)
        last_shape = shaped.get(name, -1)
        if last_shape > last_read:
            where = max(last_read, assigned[name])
            after.setdefault(where, []).append(f"{name} = _rt.Shape({name})")
        end = max(last_read, last_shape, assigned[name])
        after.setdefault(end, []).append(f"del {name}")
    out = []
    for k, line in enumerate(lines):
        out.append(line)
        todo = after.get(k, [])
        out += [t for t in todo if not t.startswith("del ")]
        gone = [t[4:] for t in todo if t.startswith("del ")]
        if gone:
            out.append(f"del {', '.join(gone)}")
    return out


def _signed(w: _Writer, st: Step, lam: str) -> str:
    """``lam`` as the weight of the root's vector-Jacobian product (see `Step.sign`)."""
    if not st.sign or lam == "None":
        return lam
    name = w.fresh("_n")
    w.emit(f"{name} = -{lam}")
    return name


def _block_reads(b: _Block) -> set[int]:
    return set().union(*(s.reads for s in b.steps))


def _const_code(value: Any) -> str:
    if isinstance(value, str):  # the name of one of the program's `_constants`
        return value
    if isinstance(value, np.ndarray):
        return repr(value.tolist())
    return float_text(sp.Float(value))


def _sum_code(w: _Writer, parts: list[str], entries: list, shape: tuple[int, int]) -> str:
    """One name for the sum of the contributions ``parts`` and ``entries`` to a node."""
    if len(parts) == 1 and not entries:
        return parts[0]
    name = w.fresh("_g")
    expr = " + ".join(parts) if parts else "None"
    if entries:
        buf = "None"
        for g, (i, j) in entries:
            w.emit(f"{name}_e = _rt.add_entry({buf}, {g}, {shape}, {i}, {j})")
            buf = f"{name}_e"
        expr = f"{expr} + {buf}" if parts else buf
    w.emit(f"{name} = {expr}")
    return name


class _Accumulators:
    """The adjoint of each unit as a sum of contributions, emitted when it is taken."""

    def __init__(self, w: _Writer, units: list[Unit]):
        self.w = w
        self.units = units
        self.parts: dict[int, list[str]] = {}
        self.entries: dict[int, list] = {}
        self.final: dict[int, str] = {}

    def add(self, index: int, code: str) -> None:
        self.parts.setdefault(index, []).append(code)

    def entry(self, index: int, g: str, shape: tuple[int, int], i: int, j: int) -> None:
        self.entries.setdefault(index, []).append((g, (i, j)))

    def take(self, index: int) -> str:
        parts, entries = self.parts.pop(index, []), self.entries.pop(index, [])
        if not parts and not entries:
            return "None"
        u = self.units[index]
        name = self.w.fresh("_g_" + u.name)
        if len(parts) == 1 and not entries:
            self.w.emit(f"{name} = {parts[0]}")
            return name
        got = _sum_code(self.w, parts, entries, u.shape)
        self.w.emit(f"{name} = {got}")
        return name


# --------------------------------------------------------------------------- blocks


class _Context:
    """Per-call state of the generated code: options, block solvers, their records."""

    def __init__(self, program: ArrayProgram, options: SolveOptions):
        self.program = program
        self.options = options
        self.blocks: dict[int, Any] = {}  # block index -> what its solver kept
        self.reports: dict[int, BlockReport] = {}
        self.batches: dict[int, tuple] = {}
        self.values: dict[int, tuple] = {}  # block index -> its nodes at the solution

    def solve(self, k: int, ext: tuple) -> tuple:
        return self.program._solvers[k].solve(self, ext)

    def nodes(self, k: int) -> tuple:
        """The values of block k's nodes at its solution: (those that depend on the
        known values only, those that depend on the unknowns)."""
        return self.values[k]

    def adjoint(self, k: int, g: tuple) -> tuple:
        return self.program._solvers[k].adjoint(self, g)

    def unknowns(self, k: int, z: tuple) -> tuple:
        """Block k's unknowns as its own steps' adjoint reads them: their values ``z``
        (an estimator's context answers otherwise, `_estimators`)."""
        return z

    def tangent(self, k: int, rhs: tuple) -> tuple:
        return self.program._solvers[k].tangent(self, rhs)


class _BlockCode:
    """A block's unknowns flattened per sample: batch + (n,), units in order.

    ``ext`` below is the block's known values followed by what ``pre_k`` computed from
    them (`prepare`, once per solve); a `_Point` holds the values ``lin_k`` computed at
    some unknowns, from which every product there is one call of ``jvp_k``/``vjp_k``.
    """

    def __init__(self, block: _Block, functions: dict, labels: list[str]):
        self.block = block
        self.n_ext = len(_block_reads(block) - {u.index for u in block.units})
        k = block.index
        self.pre = functions[f"pre_{k}"]
        self.map = functions[f"map_{k}"]
        self.lin = functions[f"lin_{k}"]
        self.part = functions[f"part_{k}"]
        self.jvp_fn = functions[f"jvp_{k}"]
        self.vjp_fn = functions[f"vjp_{k}"]
        self.shapes = [u.shape for u in block.units]
        self.sizes = [r * c for r, c in self.shapes]
        self.offsets = np.cumsum([0, *self.sizes]).tolist()
        self.n = self.offsets[-1]
        shown = ", ".join(labels[:5]) + (f", … ({len(labels)})" if len(labels) > 5 else "")
        self.label = shown
        # residual R = E z − σ M with M the blocks' map: z − F for a definition (E = 1,
        # σ = 1), c for an implicit equation (E = 0, σ = −1)
        sigma = [-1.0 if st.implicit else 1.0 for st in block.steps]
        self.sigma = np.repeat(sigma, self.sizes)
        self.explicit = (self.sigma > 0).astype(np.float64)
        self.all_explicit = not any(st.implicit for st in block.steps)

    def prepare(self, ext: tuple) -> tuple:
        """The known values and what of the map depends on them alone."""
        return (*ext, *self.pre(*ext))

    def keep(self, ctx: _Context, ext: tuple, p: _Point) -> None:
        """Record the block's node values at the solution p for the forward pass."""
        ctx.values[self.block.index] = (ext[self.n_ext :], p.nodes)

    def split(self, Z: np.ndarray) -> list[np.ndarray]:
        lead = Z.shape[:-1]
        return [
            Z[..., a:b].reshape(lead + shape)
            for a, b, shape in zip(self.offsets[:-1], self.offsets[1:], self.shapes, strict=True)
        ]

    def join(self, parts: Any, lead: tuple[int, ...]) -> np.ndarray:
        if len(parts) == 1 and np.shape(parts[0]) == lead + self.shapes[0]:
            return np.reshape(parts[0], (*lead, self.n))
        Z = np.empty((*lead, self.n))
        for a, b, shape, p in zip(
            self.offsets[:-1], self.offsets[1:], self.shapes, parts, strict=True
        ):
            Z[..., a:b] = np.broadcast_to(p, lead + shape).reshape((*lead, b - a))
        return Z

    def F(self, Z: np.ndarray, ext: tuple) -> np.ndarray:
        """The map z ↦ F(z) of a block of definitions (its fixed points solve it)."""
        return self.join(self.map(*self.split(Z), *ext), Z.shape[:-1])

    def residual(self, Z: np.ndarray, ext: tuple) -> np.ndarray:
        """R(z): z − F(z) for definitions, c(z) for implicit equations."""
        if self.all_explicit:
            return Z - self.F(Z, ext)
        return self.explicit * Z - self.sigma * self.F(Z, ext)

    def at(self, Z: np.ndarray, ext: tuple) -> _Point:
        """The linearization of the block at Z (for `Jv` and `JTv`), with F(Z)."""
        parts = self.split(Z)
        roots, nodes = self.lin(*parts, *ext)
        F = self.join(roots, Z.shape[:-1])
        return _Point(Z, (*parts, *ext, *nodes), F, nodes, self.part)

    def residual_at(self, p: _Point) -> np.ndarray:
        """R at the point of a linearization."""
        if self.all_explicit:
            return p.Z - p.F
        return self.explicit * p.Z - self.sigma * p.F

    def Kv(self, p: _Point, V: np.ndarray) -> np.ndarray:
        """(∂F/∂u) V at p, V of shape (…, batch…, n) (leading axes: several vectors)."""
        lead = np.broadcast_shapes(V.shape[:-1], p.Z.shape[:-1])
        return self.join(self.jvp_fn(*p.products(), *self.split(V)), lead)

    def KTv(self, p: _Point, G: np.ndarray) -> np.ndarray:
        """(∂F/∂u)ᵀ G at p (G of the batch shape of p: the vjp sums what broadcasts)."""
        out = self.vjp_fn(*p.products(), *self.split(G))
        return self.join([0.0 if o is None else o for o in out], G.shape[:-1])

    def Jv(self, p: _Point, V: np.ndarray) -> np.ndarray:
        """J V with J = ∂R/∂z (I − ∂F/∂u for definitions) at p."""
        out = self.Kv(p, V)
        return V - out if self.all_explicit else self.explicit * V - self.sigma * out

    def JTv(self, p: _Point, G: np.ndarray) -> np.ndarray:
        """Jᵀ G at p."""
        if self.all_explicit:
            return G - self.KTv(p, G)
        return self.explicit * G - self.KTv(p, self.sigma * G)


def _richardson(K: Callable, R: np.ndarray, rtol: float, maxiter: int) -> np.ndarray | None:
    """X with X = R + K X by the iteration X ← R + K X (K a contraction), every sample at
    once, until the residual R + K X − X (the change of the step) is within ``rtol`` of
    max |R| per sample; None once a step shrinks it by less than FAST_RATE (then a
    Krylov solve takes over)."""
    X = R
    goal = rtol * np.abs(R).max(axis=-1)
    loosest = float(goal.max(initial=0.0))
    last, skip = math.inf, 0
    for it in range(1, maxiter + 1):
        new = K(X)
        new += R
        if skip > 0:  # (see `_untested`)
            skip -= 1
            X, last = new, math.inf
            continue
        change = _max_change(new, X)
        X = new
        if np.all(change <= goal):
            return X
        worst = float(change.max(initial=0.0))
        if not worst < math.inf or (it > 3 and last < math.inf and worst > FAST_RATE * last):
            return None
        if 0 < worst < last < math.inf:
            skip = _untested(worst, worst / last, loosest)
        last = worst
    return None


def _untested(change: float, rate: float, tol: float) -> int:
    """Iterations of a contraction that shrinks ``change`` by ``rate`` per step which
    cannot reach ``tol`` yet (half the iterations the rate predicts, at most
    MAX_UNTESTED, and RATE_SPAN tested ones before the goal: a rate that improves
    costs a few iterations more, no accuracy): the convergence test is skipped there,
    its passes over the iterate saved."""
    if not 0 < rate < 1:
        return 0
    needed = math.log(tol / change) / math.log(rate)
    return min(max(0, int(0.5 * needed) - RATE_SPAN - 1), MAX_UNTESTED)


def _max_change(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """max |A − B| per sample (over the last axis), with one temporary."""
    d = np.subtract(A, B)
    np.abs(d, out=d)
    return d.max(axis=-1)


class _Point:
    """A block at unknowns Z: F(Z), the nodes' values, and (on the first product) the
    partials there: a plain iteration pays for the values alone."""

    __slots__ = ("F", "Z", "_args", "_part", "nodes")

    def __init__(self, Z: np.ndarray, args: tuple, F: np.ndarray, nodes: tuple, part: Any):
        self.Z, self.F, self.nodes = Z, F, nodes
        self._args, self._part = args, part

    def products(self) -> tuple:
        """The args of the block's jvp and vjp at Z."""
        if self._part is not None:
            self._args = (*self._args, *self._part(*self._args))
            self._part = None
        return self._args


class _Dense:
    """A small block: `BlockSolver` (Newton, certification) over the block's code."""

    def __init__(self, code: _BlockCode, first_index: int):
        self.code = code
        n = code.n
        rows, cols = np.divmod(np.arange(n * n), n)
        self.variables = tuple(range(first_index, first_index + n))
        self.solver = BlockSolver(
            code.block.index,
            tuple(f"{code.label}[{k}]" for k in range(n)) if n > 1 else (code.label,),
            self.variables,
            residual=self._residual,
            jacobian=self._jacobian,
            fixed_map=self._map if code.all_explicit else None,
            rows=rows,
            cols=cols,
        )
        self.solver.label = code.label
        self.solver.dense = True

    # BlockSolver reads the batch shape from np.shape of its ``ext``: it gets an array
    # of the batch shape and the block's own values in a holder (np.shape: ()).

    def _residual(self, R, Z, ext):
        R[...] = self.code.residual(Z, ext[1].values)

    def _map(self, F, Z, ext):
        F[...] = self.code.F(Z, ext[1].values)

    def _jacobian(self, D, Z, ext):
        n = self.code.n
        eye = np.eye(n).reshape((n,) + (1,) * (Z.ndim - 1) + (n,))
        point = self.code.at(Z, ext[1].values)
        cols = self.code.Jv(point, eye)  # (j, batch…, i): column j of I − J
        D[...] = np.moveaxis(cols, 0, -1).reshape(D.shape)

    def solve(self, ctx: _Context, ext: tuple) -> tuple:
        opts = ctx.options
        init = {v: opts.init[v] for v in self.variables if v in opts.init}
        method = {"inexact-newton": "newton"}.get(opts.method, opts.method)
        sub = _SubContext(SolveOptions(method, opts.tol, opts.maxiter, init))
        lead = np.broadcast_shapes(*(np.shape(e)[:-2] for e in ext))
        ext = self.code.prepare(ext)
        Z = self.solver.solve(sub, (np.zeros(lead), _Holder(ext)))
        self.code.keep(ctx, ext, self.code.at(Z, ext))
        ctx.blocks[self.code.block.index] = (sub, Z, ext)
        _fact, report = sub.blocks[self.code.block.index]
        ctx.reports[self.code.block.index] = report
        return tuple(self.code.split(Z))

    def adjoint(self, ctx: _Context, g: tuple) -> tuple:
        sub, Z, _ = ctx.blocks[self.code.block.index]
        G = self.code.join([0.0 if x is None else x for x in g], _lead(g, Z))
        lam = self.solver.adjoint(sub, list(np.moveaxis(G, -1, 0)))
        return tuple(self.code.split(lam))

    def tangent(self, ctx: _Context, rhs: tuple) -> tuple:
        sub, Z, _ = ctx.blocks[self.code.block.index]
        R = self.code.join(rhs, _lead(rhs, Z))
        d = self.solver.tangent(sub, list(np.moveaxis(R, -1, 0)))
        return tuple(self.code.split(d))


class _Holder:
    __slots__ = ("values",)

    def __init__(self, values: tuple):
        self.values = values


class _SubContext:
    def __init__(self, options: SolveOptions):
        self.options = options
        self.blocks: dict = {}
        self.batches: dict = {}


def _lead(parts: tuple, Z: np.ndarray) -> tuple[int, ...]:
    shapes = [np.shape(p)[:-2] for p in parts if p is not None and np.ndim(p) >= 2]
    return np.broadcast_shapes(Z.shape[:-1], *shapes)


class _Krylov:
    """A large block, matrix-free: Anderson or Newton-Krylov forward, GMRES for λ.

    The linear systems of all samples are solved as one block-diagonal system by
    SciPy's GMRES (one product of the rules per iteration for the whole batch). The
    forward solution is accepted when the residual is within tolerance and the Newton
    correction there (a GMRES solve) is too; a multiplier solve GMRES cannot finish is a
    `SingularSystemError` (I − J is singular, or too ill-conditioned to give a gradient).
    """

    def __init__(self, code: _BlockCode, first_index: int):
        self.code = code
        self.variables = tuple(range(first_index, first_index + code.n))

    def solve(self, ctx: _Context, ext: tuple) -> tuple:
        opts, code = ctx.options, self.code
        shapes = [np.shape(e)[:-2] for e in ext]
        inits = [opts.init.get(v) for v in self.variables]
        lead = np.broadcast_shapes(*shapes, *(np.shape(v) for v in inits if v is not None))
        Z = np.zeros((*lead, code.n))
        for j, v in enumerate(inits):
            if v is not None:
                Z[..., j] = v
        ext = code.prepare(ext)
        method, iterations, inner, point, rate = opts.method, 0, 0, None, math.nan
        if not code.all_explicit and method in ("anderson", "fixed-point"):
            raise ConvergenceError(
                f"{method} iteration needs definitions z = f(z); the block {code.label} has "
                "implicit equations: use method='newton'"
            )
        if not code.all_explicit:
            method = "newton"
        if method == "auto":  # plain iteration while it contracts fast, else Anderson
            point, iterations, res, rate = self._iterate(Z, ext, opts, False, slow=FAST_RATE)
            if point is not None:
                method = "fixed-point"
        if method in ("auto", "anderson", "fixed-point") and point is None:
            point, more, res, rate = self._iterate(Z, ext, opts, method != "fixed-point")
            iterations += more
            if point is None and method != "auto":
                raise ConvergenceError(
                    f"{'Anderson-accelerated ' if method == 'anderson' else ''}fixed-point "
                    f"iteration did not converge in the block {code.label}: max |f(z) − z| "
                    f"= {res:.3e} after {opts.maxiter} iterations (tol {opts.tol}); try "
                    "method='newton'"
                )
            if point is not None:
                method = "anderson" if method == "auto" else method
            else:
                method = "newton-krylov"
        if method in ("newton", "inexact-newton", "newton-krylov"):
            Z, iterations, inner = self._newton(Z, ext, opts)
            point, method = code.at(Z, ext), "newton-krylov"
        Z = point.Z
        R = code.residual_at(point)
        scale = np.maximum(1.0, np.abs(Z).max(axis=-1))
        it_lin = 0
        # The forward-error test. A plain iteration that contracted by a factor q ≤
        # FAST_RATE in its last step is within |R|/(1 − q) of the fixed point (the
        # contraction estimate); otherwise the Newton correction there, to 10 % (a few
        # products, not a full solve), must be within FORWARD tolerances.
        contracted = rate <= FAST_RATE and np.all(
            np.abs(R).max(axis=-1) / (1 - rate) <= FORWARD * opts.tol * scale
        )
        if not contracted:
            step, it_lin = self._gmres(lambda V: code.Jv(point, V), -R, 0.1)
            if step is None or not np.all(np.abs(step).max(axis=-1) <= FORWARD * opts.tol * scale):
                raise ConvergenceError(
                    f"the solve of the block {code.label} did not reach a solution: the "
                    f"residual is {float(np.abs(R).max()):.3e}, but the Newton correction "
                    "there is not within tolerance"
                )
            point = code.at(Z + step, ext)
            Z, R = point.Z, code.residual_at(point)
        residual = float(np.abs(R).max(initial=0.0))
        code.keep(ctx, ext, point)
        # λ by the same plain iteration where the map contracts that fast (its
        # Jacobian's spectral radius is then about q): one product per step, no Krylov
        # basis to keep
        ctx.blocks[code.block.index] = (point, ext, rate if contracted else math.nan)
        ctx.reports[code.block.index] = BlockReport(
            tuple(u.label for u in code.block.units),
            iterations,
            residual,
            math.nan,
            method,
            inner + it_lin,
        )
        return tuple(code.split(Z))

    def _iterate(self, Z, ext, opts, anderson: bool, slow: float | None = None):
        """Fixed-point iteration z ← F(z) (Anderson-accelerated or plain) from Z: (the
        block linearized at the solution or None, iterations, last change, rate). A
        plain run given ``slow`` stops (None) once the change shrinks by less than that
        factor per iteration; its ``rate`` is the mean factor of its last RATE_SPAN
        iterations (worst sample: near the tolerance rounding makes a single factor
        erratic; NaN for Anderson)."""
        code = self.code
        if anderson:

            def G(Zt: np.ndarray) -> np.ndarray:
                return np.moveaxis(code.F(np.moveaxis(Zt, 0, -1), ext), -1, 0)

            Zt, it, res = _anderson(G, np.moveaxis(Z, -1, 0), opts.tol, opts.maxiter)
            point = None if Zt is None else code.at(np.moveaxis(Zt, 0, -1).copy(), ext)
            return point, it, res, math.nan
        last, history = math.inf, []  # the changes of the last RATE_SPAN iterations
        skip = 0  # iterations left before the next test: it cannot pass before then
        for it in range(1, opts.maxiter + 1):
            point = code.at(Z, ext)  # F(Z) with the nodes' values: kept at the solution
            F = point.F
            if skip > 0:
                skip -= 1
                history = []
                Z = F
                continue
            change = _max_change(F, Z)
            worst = float(change.max(initial=0.0))
            if not worst < math.inf:  # (NaN too)
                return None, it, math.inf, math.nan
            if slow is not None and it > 3 and history and worst > slow * last:
                return None, it, worst, math.nan
            if worst <= opts.tol or (  # the scale max(1, |z|) per sample once it matters
                worst <= opts.tol * max(float(Z.max(initial=0.0)), -float(Z.min(initial=0.0)))
                and np.all(change <= opts.tol * np.maximum(1.0, np.abs(Z).max(axis=-1)))
            ):
                rate = math.nan
                if len(history) == RATE_SPAN:  # the mean factor over those iterations
                    ratio = np.divide(
                        change, history[0], out=np.zeros_like(change), where=change > 0
                    )
                    rate = float(ratio.max(initial=0.0)) ** (1 / RATE_SPAN)
                return point, it, worst, rate  # at Z, whose residual is the last change
            if history and 0 < worst < last:
                skip = _untested(worst, worst / last, opts.tol)
            history = [*history[1 - RATE_SPAN :], change]
            Z, last = F, worst
        return None, opts.maxiter, last, math.nan

    def _newton(self, Z, ext, opts):
        code, inner = self.code, 0
        for it in range(1, opts.maxiter + 1):
            R = code.residual(Z, ext)
            scale = np.maximum(1.0, np.abs(Z).max(axis=-1))
            rnorm = np.abs(R).max(axis=-1)
            if np.all(rnorm <= opts.tol * scale):
                return Z, it - 1, inner
            forcing = max(opts.tol, min(0.1, float(rnorm.max()) ** 0.5))
            point = code.at(Z, ext)
            step, k = self._gmres(lambda V, p=point: code.Jv(p, V), -R, forcing)
            inner += k
            if step is None:
                raise ConvergenceError(
                    f"Newton-Krylov stalled in the block {code.label} after {it} iterations "
                    f"(max residual {float(rnorm.max()):.3e}): the linear solve did not "
                    "converge"
                )
            t = 1.0
            merit = np.sum(R * R)
            for _ in range(30):
                Zt = Z + t * step
                Rt = code.residual(Zt, ext)
                if np.sum(Rt * Rt) <= (1 - 1e-4 * t) * merit:
                    break
                t *= 0.5
            Z = Zt
        raise ConvergenceError(
            f"Newton-Krylov did not converge in the block {code.label}: max residual "
            f"{float(np.abs(code.residual(Z, ext)).max()):.3e} after {opts.maxiter} iterations "
            f"(tol {opts.tol}); try a better init= or more maxiter"
        )

    def _gmres(self, apply, rhs: np.ndarray, rtol: float):
        """Solve apply(X) = rhs for every sample at once (one block-diagonal system)."""
        shape = rhs.shape
        size = rhs.size
        count = [0]

        def mv(v: np.ndarray) -> np.ndarray:
            count[0] += 1
            return apply(v.reshape(shape)).reshape(-1)

        op = spla.LinearOperator((size, size), matvec=mv, dtype=np.float64)
        b = rhs.reshape(-1)
        norm = float(np.linalg.norm(b))
        if norm == 0.0:
            return np.zeros(shape), 0
        x, info = spla.gmres(op, b, rtol=rtol, atol=0.0, restart=60, maxiter=20)
        if info != 0 or not np.all(np.isfinite(x)):
            return None, count[0]
        return x.reshape(shape), count[0]

    def _linear(self, ctx: _Context, parts: tuple, transposed: bool) -> tuple:
        code = self.code
        point, ext, rate = ctx.blocks[code.block.index]
        R = code.join([0.0 if p is None else p for p in parts], _lead(parts, point.Z))
        if R.shape != point.Z.shape:  # several right-hand sides a sample
            point = code.at(np.broadcast_to(point.Z, R.shape), ext)
        rtol = min(ctx.options.tol, 1e-10)
        X = None
        if rate <= FAST_RATE:
            K = code.KTv if transposed else code.Kv
            X = _richardson(lambda V: K(point, V), R, rtol, ctx.options.maxiter)
        if X is None:
            apply = (lambda V: code.JTv(point, V)) if transposed else (lambda V: code.Jv(point, V))
            X, _ = self._gmres(apply, R, rtol)
        if X is None:
            raise SingularSystemError(
                f"I − J is singular (or too ill-conditioned for a gradient) at the solution "
                f"of the block {code.label}: GMRES could not solve the "
                f"{'multiplier' if transposed else 'tangent'} system"
            )
        return tuple(code.split(X))

    def adjoint(self, ctx: _Context, g: tuple) -> tuple:
        return self._linear(ctx, g, transposed=True)

    def tangent(self, ctx: _Context, rhs: tuple) -> tuple:
        return self._linear(ctx, rhs, transposed=False)


# --------------------------------------------------------------------------- program


class ArrayProgram(CompiledProgram):
    """A compiled program with array variables (see the module docstring).

    The same calls as `CompiledProgram`: `solve`, `value`, `value_and_grad`, `jvp`,
    `hvp`, `hessian`; ``fn.source`` shows the generated code. Cyclic blocks take the
    options ``init``, ``method`` (``"auto"``, ``"newton"``, ``"inexact-newton"``,
    ``"fixed-point"``, ``"anderson"``), ``tol`` and ``maxiter``; blocks of more than
    DENSE_MAX unknowns per sample are solved matrix-free (their report's ``condition``
    is NaN: no matrix is formed to estimate it).
    """

    backend = "numpy"
    engine = "arrays"

    def __init__(self, ir: ProgramIR, progress: Any = None):
        self.ir = ir
        self._inputs = {v.name: v for v in ir.inputs}
        self._intermediates = {v.name: v for v in ir.intermediates}
        self._build_units(ir)
        forms = FormTable(_Printer)
        low = Lowering({u.key: u for u in self._units}, forms)
        steps = [
            low.constraint(c.label, self._by_key[c.target], c.expr)
            for c in ir.constraints
            if c.target is not None
        ]
        steps += self._equations(ir, low, steps)
        self._compile_steps(steps, self._by_key[ir.output], forms)

    def _compile_steps(self, steps: list[Step], output: Unit, forms: FormTable) -> None:
        """Order the lowered constraints, generate and compile every pass (``self._units``
        are the units they read and define)."""
        self._order = _order(steps, self._units)
        self._output_unit = output
        gen = _Generator(self._units, self._order, self._output_unit, forms)
        forward, saved = gen.forward()
        # the saved node values that depend on an intermediate (`_both_passes`)
        moving: set[int] = set()
        by_name: dict[str, bool] = {}
        nodes = [n for st in _steps(self._order) for n in st.nodes]
        for n, name in zip(nodes, gen._forward_names, strict=True):
            if n.op == "read":
                hit = n.data.kind != "input"
            else:
                hit = any(id(a) in moving for a in n.args)
            if hit:
                moving.add(id(n))
            by_name.setdefault(name, hit)
        self._saved_per_sample = [by_name.get(name, False) for name in saved]
        adjoint = gen.adjoint(saved)
        tangent = gen.tangent(saved)
        blocks = [b for b in self._order if isinstance(b, _Block)]
        self._block_source = "\n".join(gen.block_functions(b) for b in blocks)
        self._forward_source, self._adjoint_source = forward, adjoint
        self._tangent_source = tangent
        source = "\n".join([forward, adjoint, tangent, self._block_source])
        self._functions = _exec(_compile(source, "array program"), self._namespace())
        self._solvers: dict[int, Any] = {}
        first = 0
        self._cyclic_vars: dict[str, list[int]] = {}  # name -> flat indices of its unknowns
        for b in blocks:
            labels = [u.label for u in b.units]
            code = _BlockCode(b, self._functions, labels)
            for u, a in zip(b.units, code.offsets[:-1], strict=True):
                if u.label in self._intermediates:  # a whole variable (not an entry)
                    self._cyclic_vars[u.label] = list(
                        range(first + a, first + a + u.shape[0] * u.shape[1])
                    )
            self._solvers[b.index] = (_Dense if code.n <= DENSE_MAX else _Krylov)(code, first)
            first += code.n
        self._has_cycles = bool(blocks)
        self._n_forms = len(forms)
        self._generator, self._saved, self._hvp = gen, saved, None
        # generated passes by (kind, the inputs they are for): (function, source)
        self._pruned: dict[tuple[str, frozenset[str]], tuple[Callable, str]] = {}
        self._stationarity = None
        self._all_inputs = frozenset(self._inputs)

    _constants: Mapping[str, np.ndarray] = {}  # named arrays the generated code reads

    def _namespace(self) -> dict[str, Any]:
        """The globals of this program's generated code."""
        return {**NUMPY_NAMESPACE, "_rt": _rt, **self._constants}

    def _equations(self, ir: ProgramIR, low: Lowering, steps: list[Step]) -> list[Step]:
        """The implicit equations, each matched to an unknown it reads (SciPy's maximum
        bipartite matching): the unknowns are the scalar units of the intermediates
        declared and never defined."""
        equations = [c for c in ir.constraints if c.target is None]
        if not equations:
            return []
        defined = {st.unit.index for st in steps}
        unknowns = [u for u in self._units if u.kind == "intermediate" and u.index not in defined]
        arrays = [u.label for u in unknowns if u.shape != (1, 1)]
        if arrays:
            raise ProgramError(
                f"array variable {arrays[0]!r} is never defined; implicit equations fix "
                "scalar unknowns (define the array, or declare it entry-wise)"
            )
        column = {u.index: k for k, u in enumerate(unknowns)}
        lowered = [low.constraint(c.label, unknowns[0], c.expr, implicit=True) for c in equations]
        rows, cols = [], []
        for e, st in enumerate(lowered):
            for r in sorted(st.reads):
                if r in column:
                    rows.append(e)
                    cols.append(column[r])
        graph = coo_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(len(equations), len(unknowns))
        ).tocsr()
        match = csgraph.maximum_bipartite_matching(graph, perm_type="column")
        unmatched = [equations[e].label for e in range(len(equations)) if match[e] < 0]
        used = {int(m) for m in match if m >= 0}
        free = [u.label for k, u in enumerate(unknowns) if k not in used]
        if unmatched or free:
            raise ProgramError(
                "the implicit equations and their unknowns do not match one to one "
                f"(structurally singular): equations {', '.join(unmatched) or 'none'} without "
                f"an unknown, unknowns {', '.join(free) or 'none'} without an equation"
            )
        for e, st in enumerate(lowered):
            st.unit = unknowns[int(match[e])]
        return lowered

    def _build_units(self, ir: ProgramIR) -> None:
        self._units = build_units(ir, _Namer().take)
        self._by_key = {u.key: u for u in self._units}
        # the unit of each array input (`array=True`), by name
        self._by_name = {v.name: self._by_key[v.matrix] for v in ir.inputs if v.matrix is not None}

    # ----------------------------------------------------------------- sources

    @property
    def forward_source(self) -> str:
        """The generated forward pass (NumPy), with each cyclic block's solve."""
        return self._forward_source

    @property
    def adjoint_source(self) -> str:
        """The generated multiplier pass: the program run backwards, rule by rule."""
        return self._adjoint_source

    @property
    def source(self) -> str:
        """All generated code: forward, adjoint, tangent and the blocks' functions."""
        return "\n".join(
            [self._forward_source, self._adjoint_source, self._tangent_source, self._block_source]
        )

    def __repr__(self) -> str:
        n_b = len(self._solvers)
        return (
            f"<CompiledProgram (arrays): {len(self.ir.constraints)} constraints "
            f"({self._n_forms} elementwise forms), {len(self._inputs)} inputs, "
            f"{n_b} cyclic blocks>"
        )

    # ----------------------------------------------------------------- calls

    # `value`, `value_and_grad` and `solve` are `CompiledProgram`'s (where inputs that
    # are Dask arrays go to `_dask`); these are what they run on arrays in memory.

    def _eager_value(self, inputs: Mapping[Any, Any], check_finite: bool, options: dict):
        arrays, _leads, batch = self._check(inputs, check_finite)
        values, _, _ = self._forward(arrays, batch, options)
        value = self._output_value(values, batch)
        if not _finite(value):
            self._warn(values, None, batch, stacklevel=4)
        return value

    def _eager_value_and_grad(
        self, inputs: Mapping[Any, Any], check_finite: bool, wrt: Any, options: dict
    ):
        # ``wrt``: the adjoint pass skips what leads only to the other inputs
        wanted = None if wrt is None else frozenset(self._input_name(k) for k in wrt)
        arrays, leads, batch = self._check(inputs, check_finite)
        ctx = self._call_context(options, batch)
        run = self._value_and_grad_function(wanted)
        with np.errstate(all="ignore"):  # non-finite values are reported below
            out, lam_inputs, proved = run(ctx, batch, *self._inputs_internal(arrays))
            value = _shaped(np.asarray(out)[..., 0, 0], batch)
            lam: list = [None] * len(self._units)
            for u, g in zip(self._input_units, lam_inputs, strict=True):
                lam[u.index] = g
            grad = self._grads(lam, arrays, leads, batch, wanted)
            finite = self._all_finite(value, grad, lam, leads, proved)
        if not finite:
            # which constraint: the values and every multiplier, by the separate passes
            passes = self._both_passes(arrays, False, options, report=False)
            values, lam = passes[4], passes[7]
            self._warn(values, lam, batch, stacklevel=4, grad=grad)
        return value, grad

    @property
    def _input_units(self) -> list[Unit]:
        """The units of the inputs, in the order the generated functions take them."""
        return self._generator.inputs

    def _pruned_pass(self, kind: str, wrt: frozenset[str] | None) -> tuple[Callable, str]:
        """(function, source) of the generated pass ``kind`` ("adjoint", or
        "value_and_grad": the forward and adjoint passes in one function; `_Generator`'s
        methods of those names) for the gradients of ``wrt`` only (None: every input),
        made on the first call that asks for it."""
        key = (kind, self._all_inputs if wrt is None else wrt)
        made = self._pruned.get(key)
        if made is None:
            wanted = frozenset(
                u.index for u in self._units if u.kind == "input" and _owner(u) in key[1]
            )
            source = getattr(self._generator, kind)(self._saved, wanted)
            code = _compile(source, f"array program {kind}")
            made = self._pruned[key] = (_exec(code, self._namespace())[kind], source)
        return made

    def _value_and_grad_function(self, wrt: frozenset[str] | None) -> Callable:
        return self._pruned_pass("value_and_grad", wrt)[0]

    @property
    def value_and_grad_source(self) -> str:
        """The generated code `value_and_grad` runs for the gradients of every input:
        the forward pass, then the adjoint, each value deleted after its last use."""
        return self._pruned_pass("value_and_grad", None)[1]

    def _all_finite(self, value: Any, grad: dict, lam: Any, leads: dict, proved: dict) -> bool:
        """Whether the output and every gradient are finite.

        Every gradient is checked, and the output: a NaN or an inf anywhere that matters
        reaches one of them, and they are what is returned. A gradient that
        `_rt.bounded` proved finite (one product of finite operands) is not read again,
        unless `_grads` summed it over broadcast batch axes (a sum the bound does not
        cover)."""
        unread = [n for n, ok in proved.items() if ok and self._unsummed(lam, leads, n)]
        return _finite(value) and all(_finite(g) for n, g in grad.items() if n not in unread)

    def _both_passes(
        self,
        inputs: Mapping[Any, Any],
        check_finite: bool,
        options: dict,
        wrt=None,
        per_sample: bool = False,
        report: bool = True,
    ):
        """Forward and adjoint passes. An intermediate the same for every sample (a
        constant, a function of parameters only) is one value, and its multiplier the
        batch sum, as a parameter's gradient; ``per_sample`` gives it a value per sample
        for the adjoint instead, and so do the saved nodes that depend on it (the
        others, functions of inputs alone, keep summing into the inputs' gradients):
        ``solve`` reports λ per sample, as the contract says, at the memory of that
        many copies. ``report``: a `NonFiniteWarning` where the output or a gradient is
        not finite."""
        arrays, leads, batch = self._check(inputs, check_finite)
        with np.errstate(all="ignore"):  # non-finite values are reported below
            value, grad, values, saved, ctx, lam, proved = self._passes(
                arrays, leads, batch, options, wrt, per_sample
            )
            finite = self._all_finite(value, grad, lam, leads, proved)
        if not finite and report:
            self._warn(values, lam, batch, stacklevel=5, grad=grad)
        return value, grad, arrays, batch, values, saved, ctx, lam

    def _passes(self, arrays: dict, leads: dict, batch: tuple, options: dict, wrt, per_sample):
        """`_both_passes` on checked inputs, without the check and the warning: (value,
        grad, values, saved, ctx, lam, proved), ``proved`` the gradients the adjoint
        showed finite from their operands (see `_all_finite`)."""
        ctx = self._call_context(options, batch)
        adjoint = self._adjoint_function(wrt)
        values, saved = self._functions["forward"](ctx, *self._inputs_internal(arrays))
        if per_sample and batch:
            values = tuple(
                np.broadcast_to(v, (*batch, *np.shape(v)))
                if u.kind != "input" and np.ndim(v) == 2
                else v
                for u, v in zip(self._units, values, strict=True)
            )
            saved = tuple(
                np.broadcast_to(v, (*batch, *np.shape(v))) if np.ndim(v) == 2 and moves else v
                for v, moves in zip(saved, self._saved_per_sample, strict=True)
            )
        lam, proved = adjoint(ctx, batch, *values, *saved)
        value = self._output_value(values, batch)
        grad = self._grads(lam, arrays, leads, batch, wrt)
        return value, grad, values, saved, ctx, lam, proved

    def _eager_solve(self, inputs: Mapping[Any, Any], check_finite: bool, options: dict):
        value, grad, arrays, batch, values, saved, ctx, lam = self._both_passes(
            inputs, check_finite, options, per_sample=True
        )
        out_values = {n: v.copy() if isinstance(v, np.ndarray) else v for n, v in arrays.items()}
        out_values = {n: _user_array(np.array(a, dtype=np.float64)) for n, a in out_values.items()}
        multipliers = {}
        keys = self._multiplier_shapes()
        for var in self.ir.intermediates:
            out_values[var.name] = self._user_value(var, values, batch)
            if var.name in keys:  # an unknown's multiplier is its equation's
                multipliers[var.name] = self._user_value(var, lam, batch, zero_missing=True)
        for st in _steps(self._order):
            if st.implicit:
                g = lam[st.unit.index]
                multipliers[st.label] = _shaped(
                    0.0 if g is None else np.asarray(g)[..., 0, 0], batch
                )
        kkt = self._kkt(values, lam, saved, ctx, batch)
        reports = tuple(ctx.reports[k] for k in sorted(ctx.reports))
        return Solution(value, grad, out_values, multipliers, reports, kkt)

    def jvp(self, inputs: Mapping[Any, Any], tangents: Mapping[Any, Any], **options: Any):
        """(value, derivative of z_N along the tangents), per sample; inputs missing from
        ``tangents`` have tangent 0."""
        check_finite = options.pop("check_finite", True)
        arrays, _, batch = self._check(inputs, check_finite)
        dots = self._tangents(tangents, arrays, check_finite)
        values, saved, ctx = self._forward(arrays, batch, options)
        with np.errstate(all="ignore"):
            d = np.asarray(self._functions["tangent"](ctx, *values, *saved, *dots))
        d = d[..., 0, 0] if d.ndim >= 2 else d
        return self._output_value(values, batch), _shaped(np.broadcast_to(d, batch), batch)

    def hvp(
        self,
        inputs: Mapping[Any, Any],
        vectors: Mapping[Any, Any],
        check_finite: bool = True,
        **options: Any,
    ) -> dict[str, Any]:
        """H v: the Hessian of the batch sum of z_N times ``vectors`` (input name -> an
        array of the input's shape; missing ones are 0), one array per input, of its
        shape. Forward over reverse: the tangent of the adjoint pass, generated on the
        first call."""
        arrays, leads, batch = self._check(inputs, check_finite)
        dots = self._tangents(vectors, arrays, check_finite)
        if self._hvp is None:
            source = self._generator.hvp(self._saved)
            self._hvp = _exec(_compile(source, "array program hvp"), self._namespace())["hvp"]
            self._hvp_source = source
        values, saved, ctx = self._forward(arrays, batch, options)
        with np.errstate(all="ignore"):
            out = self._hvp(ctx, tuple(batch), *values, *saved, *dots)
        lam = [None] * len(self._units)
        for u, h in zip((u for u in self._units if u.kind == "input"), out, strict=True):
            lam[u.index] = None if h is None else np.asarray(h)
        return self._grads(tuple(lam), arrays, leads, batch)

    def hessian(
        self, inputs: Mapping[Any, Any], check_finite: bool = True, **options: Any
    ) -> dict[str, dict[str, Any]]:
        """The Hessian of the batch sum of z_N: ``H[a][b]`` of shape (a's array) + (b's
        array), one `hvp` per entry of the inputs (dense: for moderate sizes)."""
        arrays, _, _ = self._check(inputs, check_finite)
        shapes = {n: np.shape(a) for n, a in arrays.items()}
        out: dict[str, dict[str, Any]] = {a: {} for a in arrays}
        rows: dict[str, list] = {b: [] for b in arrays}
        for b, shape in shapes.items():
            size = int(np.prod(shape, dtype=int))
            for k in range(size):
                e = np.zeros(size)
                e[k] = 1.0
                hv = self.hvp(arrays, {b: e.reshape(shape)}, check_finite=False, **options)
                rows[b].append(hv)
        for a in arrays:
            for b, shape in shapes.items():
                cols = [np.asarray(hv[a], dtype=np.float64) for hv in rows[b]]
                block = np.stack(cols, axis=-1).reshape(shapes[a] + shape)
                out[a][b] = _user_array(block)
        return out

    def sparse_hessian(
        self, inputs: Mapping[Any, Any], check_finite: bool = True, **options: Any
    ) -> SparseHessian:
        """The Hessian of the batch sum of z_N as a sparse matrix, as
        `CompiledProgram.sparse_hessian` returns it. An array constraint couples whole
        layers, so one sample's pattern is taken dense over its input entries; the
        sparsity found is the batch's: per-sample data meet only their own sample and
        the shared parameters, and the star colouring recovers the arrowhead from about
        (parameters + one sample's entries) products, each an `hvp`."""
        arrays, leads, batch = self._check(inputs, check_finite)
        n = sum(v.size for v in self._inputs.values())
        pattern = (np.repeat(np.arange(n), n), np.tile(np.arange(n), n))

        def products(directions: list[dict]) -> list[dict]:
            return [self.hvp(arrays, v, check_finite=False, **options) for v in directions]

        result = colored_hessian(self, pattern, arrays, leads, batch, products)
        if not np.isfinite(result.matrix.data).all():
            import warnings

            warnings.warn("the Hessian is not finite", NonFiniteWarning, stacklevel=2)
        return result

    def _multiplier_shapes(self) -> dict[str, tuple[int, ...]]:
        """The keys of ``Solution.multipliers``, in order, with their shapes per sample."""
        defined = {c.label.split("[", 1)[0] for c in self.ir.constraints if c.target is not None}
        shapes = {v.name: v.shape for v in self.ir.intermediates if v.name in defined}
        shapes.update({st.label: () for st in _steps(self._order) if st.implicit})
        return shapes

    def _tangents(self, tangents: Mapping[Any, Any], arrays: dict, check_finite: bool) -> list:
        """The tangent of each input unit, in the generated code's layout (zeros where
        none is given)."""
        given = self._named(tangents, "tangents", "tangent")
        full = {}
        for name, t in given.items():
            t = _as_float_array(t, f"tangent {name!r}")
            if check_finite and not np.isfinite(t).all():
                raise ProgramError(f"tangent {name!r} holds non-finite values")
            try:
                full[name] = np.broadcast_to(t, np.shape(arrays[name]))
            except ValueError:
                raise ProgramError(
                    f"tangent {name!r}: shape {t.shape} does not broadcast to the input's "
                    f"shape {np.shape(arrays[name])}"
                ) from None
        zero = {n: np.zeros(np.shape(a)) for n, a in arrays.items() if n not in full}
        return self._inputs_internal({**zero, **full})

    # ----------------------------------------------------------------- internals

    def _internal(self, arr: Any, var: Any) -> np.ndarray:
        """An input in the generated code's layout (two trailing axes)."""
        if type(arr) is float or (np.ndim(arr) == len(var.shape) and var.shape == ()):
            return np.reshape(arr, (1, 1))
        arr = np.asarray(arr)
        if var.shape == ():
            return arr.reshape((*arr.shape, 1, 1))
        if len(var.shape) == 1:
            return arr[..., None]
        return arr

    def _inputs_internal(self, arrays: dict) -> list[np.ndarray]:
        whole = self.__dict__.get("_whole_inputs")
        if whole is None:  # (name, rank) of each input unit, if each is a whole input
            units = [u for u in self._units if u.kind == "input"]
            ok = all(u.label in self._inputs for u in units)
            whole = [(u.label, len(self._inputs[u.label].shape)) for u in units] if ok else []
            self._whole_inputs = whole
        if whole and all(type(arrays[name]) is np.ndarray for name, _ in whole):
            # arrays of whole inputs (what `_check` hands over): a view each, or the array
            return [
                arrays[n]
                if rank == 2
                else arrays[n][..., None]
                if rank == 1
                else arrays[n][..., None, None]
                for n, rank in whole
            ]
        out = []
        for u in self._units:
            if u.kind != "input":
                continue
            var = self._inputs.get(u.label)
            if var is not None:
                out.append(self._internal(arrays[var.name], var))
            else:  # an entry of an entry-wise input
                name = u.label.split("[", 1)[0]
                var = self._inputs[name]
                arr = np.asarray(arrays[name])
                k = var.symbols.index(u.key)
                flat = arr.reshape((*arr.shape[: arr.ndim - len(var.shape)], -1))
                out.append(flat[..., k][..., None, None])
        return out

    def _call_context(self, options: dict, batch: tuple) -> _Context:
        """The per-call state of the generated code, the options checked (the options
        of a call without any, checked once)."""
        if options:
            return _Context(self, self._solve_options(options, batch))
        default = self.__dict__.get("_default_options")
        if default is None:
            default = self._default_options = self._solve_options({}, None)
        return _Context(self, default)

    def _forward(self, arrays: dict, batch: tuple, options: dict):
        ctx = self._call_context(options, batch)
        with np.errstate(all="ignore"):
            values, saved = self._functions["forward"](ctx, *self._inputs_internal(arrays))
        return values, saved, ctx

    def _adjoint_function(self, wrt: frozenset[str] | None = None) -> Callable:
        """The generated adjoint pass; with ``wrt``, the one pruned to those inputs
        (generated on the first call that asks for them)."""
        if wrt is None or wrt == self._all_inputs:
            return self._functions["adjoint"]
        return self._pruned_pass("adjoint", wrt)[0]

    def _output_value(self, values: tuple, batch: tuple):
        v = np.asarray(values[self._output_unit.index])[..., 0, 0]
        return _shaped(v, batch)

    def _grads(self, lam: tuple, arrays: dict, leads: dict, batch: tuple, wrt=None) -> dict:
        out = {}
        for name, var in self._inputs.items():
            if wrt is not None and name not in wrt:
                continue
            given = np.shape(arrays[name])
            lead = leads[name]
            if var.matrix is not None:  # an array input: its multiplier as it is, mostly
                unit = self._by_name[name]
                g = lam[unit.index]
                internal = lead + unit.shape
                if type(g) is not np.ndarray or g.shape != internal or g.dtype != np.float64:
                    g = np.zeros(internal) if g is None else _rt.sum_to(g, internal)
                    g = np.asarray(g, dtype=np.float64)
                out[name] = g.reshape(given)
            elif var.shape == ():
                unit = self._by_key[var.symbols[0]]
                g = lam[unit.index]
                internal = lead + unit.shape
                g = np.zeros(internal) if g is None else _rt.sum_to(g, internal)
                out[name] = _user_array(np.reshape(g, given))
            else:
                parts = []
                for s in var.symbols:
                    g = lam[self._by_key[s].index]
                    parts.append(
                        np.zeros(lead) if g is None else _rt.sum_to(g, (*lead, 1, 1))[..., 0, 0]
                    )
                out[name] = _user_array(np.stack(parts, axis=-1).reshape(given))
        return out

    def _unsummed(self, lam: tuple, leads: dict, name: str) -> bool:
        """Whether `_grads` hands array input ``name``'s multiplier back as it is (not
        summed over batch axes along which the input was broadcast)."""
        unit = self._by_key[self._inputs[name].matrix]
        return np.shape(lam[unit.index]) == leads[name] + unit.shape

    def _user_value(self, var: Any, store: tuple, batch: tuple, zero_missing: bool = False):
        def one(u: Unit) -> np.ndarray:
            v = store[u.index]
            if v is None:
                v = np.zeros(u.shape)
            v = np.asarray(v)
            return np.broadcast_to(v, batch + u.shape) if v.shape[:-2] != batch else v

        if var.matrix is not None:
            v = one(self._by_key[var.matrix])
            return _user_array(np.array(v.reshape(batch + var.shape)))
        parts = [one(self._by_key[s])[..., 0, 0] for s in var.symbols]
        if var.shape == ():
            return _shaped(parts[0], batch)
        return _user_array(np.stack(parts, axis=-1).reshape(batch + var.shape))

    def _kkt(self, values, lam, saved, ctx, batch) -> dict:
        """The certificate of stationarity, recomputed by a pass of its own (generated on
        the first `solve`): max |∂L/∂λ| over every constraint's residual z − F(…) and max
        |∂L/∂z| over every intermediate, at the returned values and multipliers."""
        if self._stationarity is None:
            source = self._generator.stationarity(self._saved)
            code = _compile(source, "array program stationarity")
            self._stationarity = _exec(code, self._namespace())["stationarity"]
        lams = [
            np.zeros(u.shape) if lam[u.index] is None else lam[u.index]
            for u in self._units
            if u.kind != "input"
        ]
        with np.errstate(all="ignore"):
            dz, dlam = self._stationarity(None, tuple(batch), *values, *saved, *lams)
        worst = lambda parts: max((float(np.max(p, initial=0.0)) for p in parts), default=0.0)  # noqa: E731
        return {"max_dL_dlambda": worst(dlam), "max_dL_dz": worst(dz)}

    def _warn(
        self,
        values: tuple,
        lam: tuple | None,
        batch: tuple,
        stacklevel: int,
        grad: dict | None = None,
    ) -> None:
        """A `NonFiniteWarning` naming where the first non-finite number appeared: the
        first constraint in evaluation order whose value is not finite, else the first
        in reverse order whose multiplier is not, else the first input whose gradient
        is not (every value and multiplier finite: a vector-Jacobian product that is
        not, an overflowing product or an infinite partial). Only called when the
        output or a gradient is not finite, so it always warns."""
        import warnings

        def warn(message: str) -> None:
            warnings.warn(message, NonFiniteWarning, stacklevel=stacklevel + 1)

        for step in _steps(self._order):
            v = values[step.unit.index]
            if v is not None and not np.all(np.isfinite(v)):
                warn(
                    f"the output is not finite: the value of constraint {step.label!r} is "
                    "not finite"
                )
                return
        if lam is not None:
            for step in reversed(_steps(self._order)):
                g = lam[step.unit.index]
                if g is not None and not np.all(np.isfinite(g)):
                    warn(
                        f"the gradient is not finite: the multiplier of constraint "
                        f"{step.label!r} is not finite"
                    )
                    return
        for name, g in (grad or {}).items():
            if not np.all(np.isfinite(g)):
                units = {u.index for u in self._units if _owner(u) == name}
                readers = [st.label for st in _steps(self._order) if st.reads & units]
                warn(
                    f"the gradient is not finite: the gradient with respect to input "
                    f"{name!r} is not finite, every value and multiplier being finite: a "
                    f"vector-Jacobian product of constraint "
                    f"{' or '.join(map(repr, readers[:5]))} is not (an overflowing product "
                    "or an infinite partial derivative)"
                )
                return
        warn("the output or its gradient is not finite")


def _owner(u: Unit) -> str:
    """The input a unit belongs to (an entry ``W[0,1]`` belongs to ``W``)."""
    return u.label.split("[", 1)[0]


def _steps(order: list) -> list[Step]:
    out = []
    for item in order:
        out.extend(item.steps if isinstance(item, _Block) else [item])
    return out


def _order(steps: list[Step], units: list[Unit]) -> list[Step | _Block]:
    """Steps in dependency order, strongly connected ones as cyclic blocks (SciPy)."""
    by_unit = {s.unit.index: k for k, s in enumerate(steps)}
    rows, cols = [], []
    for k, s in enumerate(steps):
        for r in s.reads:
            if r in by_unit:
                rows.append(by_unit[r])  # step r before step k
                cols.append(k)
    n = len(steps)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    _count, labels = csgraph.connected_components(graph, directed=True, connection="strong")
    members: dict[int, list[int]] = {}
    for k, lab in enumerate(labels):
        members.setdefault(int(lab), []).append(k)
    deps: dict[int, set[int]] = {lab: set() for lab in members}
    for r, c in zip(rows, cols, strict=True):
        if labels[r] != labels[c]:
            deps[int(labels[c])].add(int(labels[r]))
    order: list[Step | _Block] = []
    ts = TopologicalSorter(deps)
    index = 0
    for lab in ts.static_order():
        ks = members[lab]
        self_loop = any(by_unit.get(r) == ks[0] for r in steps[ks[0]].reads)
        if len(ks) == 1 and not self_loop:
            order.append(steps[ks[0]])
        else:
            block_steps = [steps[k] for k in sorted(ks)]
            order.append(_Block(index, block_steps, [s.unit for s in block_steps]))
            index += 1
    return order
