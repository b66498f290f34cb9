"""Solving, fused: the forward and adjoint passes of an acyclic program as one Numba loop.

The NumPy engine makes one array operation per scalar constraint, so every z_i and every
λ_i of the batch goes through memory. For an acyclic program the stationary point of
L = z_N − Σ_i λ_i (z_i − f_i(z_Pa(i))) is, per sample, straight-line code: the forward
pass z_i = f_i(z_Pa(i)) in topological order, the adjoint pass
λ_j = [j = N] + Σ_{i ∈ children(j)} λ_i ∂f_i/∂z_j in reverse order, and the gradient
∂L/∂x_k = Σ_{i ∈ children(k)} λ_i ∂f_i/∂x_k. This module puts the generated source of
those two passes (`_codegen`) inside one loop over the flattened batch and compiles it
with Numba: the locals z_i, λ_i stay scalars in registers, and only the inputs, the
output and the gradients touch memory.

Kernels are specialized to which input entries carry the batch (the *mask*): an entry
given without batch axes (a parameter shared by the batch) is read once, before the loop,
and its gradient can be summed over the batch inside the loop (``reduce=True``), which
is what ∂(Σ_batch z_N)/∂x needs. One sample runs as a batch of one through the kernel in
which every entry is batched, so a program whose inputs all carry the batch needs one
kernel for every batch size. Each kernel is compiled on first use (Numba's cache does
not cover code made by ``exec``); `FusedEngine.compile_seconds` records how long each
took. Compile time is what limits this backend, so the kernel source is shaped for it:
every local is assigned once (Numba's SSA pass is quadratic in re-assignments inside a
loop), and arrays are read and written through three small intrinsics at constant
offsets (one output row per sample) rather than by subscripts (LLVM's SROA pass is
quadratic in Numba's per-subscript copies of the array descriptor).

The printed NumPy calls become Numba's scalar functions: ``math.*`` where it computes the
same function (``numpy.power`` → ``math.pow``, NaN for a negative base as in NumPy),
Numba's own scalar ``numpy.maximum``/``minimum``/``sign`` (NaN-propagating, like
NumPy's), and a small ``heaviside``. Division follows NumPy (``error_model="numpy"``:
1/0 is inf, not an exception) and a negative integer power b**(−n) is computed as
1/(b**n), so that 0**(−n) is inf as in NumPy. Results agree with the NumPy engine to
rounding (the math library's last bit, and the order of the batch sum).
"""

from __future__ import annotations

import ast
import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..core._errors import ProgramError
from . import _codegen

__all__ = ["FusedEngine", "numba_available"]

# --------------------------------------------------------------------------- translation

# numpy.<name> -> math.<name>: the same function of one double.
_MATH = {
    "exp": "exp",
    "log": "log",
    "log1p": "log1p",
    "expm1": "expm1",
    "log2": "log2",
    "log10": "log10",
    "sqrt": "sqrt",
    "hypot": "hypot",
    "fabs": "fabs",
    "sin": "sin",
    "cos": "cos",
    "tan": "tan",
    "arcsin": "asin",
    "arccos": "acos",
    "arctan": "atan",
    "arctan2": "atan2",
    "sinh": "sinh",
    "cosh": "cosh",
    "tanh": "tanh",
    "arcsinh": "asinh",
    "arccosh": "acosh",
    "arctanh": "atanh",
    "power": "pow",
}
_SPECIAL = {"erf": "erf", "erfc": "erfc", "gamma": "gamma", "gammaln": "lgamma"}
# numpy.<name> kept: Numba's scalar version has NumPy's semantics (NaN in, NaN out).
_NUMPY_SCALAR = ("maximum", "minimum", "fmax", "fmin", "sign", "abs", "absolute", "sinc")
_NUMPY_SCALAR += ("floor", "ceil", "mod", "float64")
_NUMPY_CONSTANTS = ("pi", "e", "inf", "nan")
_BUILTINS = frozenset({"abs", "float"})
_OWN = ("sinc_prime", "sinc_second")  # the generated code's own functions (``_lad``)
_MODULE_ATTRIBUTE = re.compile(r"\b(numpy|special|math|_lad)\.(\w+)")


def _translate(module: str, attr: str) -> str | None:
    """The kernel's global name for ``module.attr`` of the printed code, or None.

    Functions and constants are bound to globals of the kernel (``math.sin`` as
    ``_math_sin``): Numba types a global function faster than a module attribute.
    """
    if module == "numpy":
        if attr in _MATH:
            return f"_math_{_MATH[attr]}"
        if attr in _NUMPY_SCALAR or attr in _NUMPY_CONSTANTS:
            return f"_numpy_{attr}"
        if attr == "heaviside":
            return "_heaviside"
    elif module == "special" and attr in _SPECIAL:
        return f"_math_{_SPECIAL[attr]}"
    elif module == "math" and attr in {*_MATH.values(), *_SPECIAL.values()}:
        return f"_math_{attr}"
    elif module == "_lad" and attr in _OWN:
        return f"_lad_{attr}"
    return None


_globals: dict[str, Any] = {}


def _kernel_globals() -> dict[str, Any]:
    """Every global a kernel may use (built once per process; needs Numba)."""
    if not _globals:
        numba = _numba()

        @numba.njit(nogil=True)
        def _heaviside(x, at_zero):  # numpy.heaviside: NaN in, NaN out
            if x != x:
                return x
            if x == 0.0:
                return at_zero
            return 1.0 if x > 0.0 else 0.0

        _globals.update(
            {f"_math_{m}": getattr(math, m) for m in (*_MATH.values(), *_SPECIAL.values())}
        )
        _globals.update(
            {f"_numpy_{n}": getattr(np, n) for n in (*_NUMPY_SCALAR, *_NUMPY_CONSTANTS)}
        )
        _globals["_heaviside"] = _heaviside
        _globals.update(
            {f"_lad_{f}": numba.njit(nogil=True)(getattr(_codegen, f"scalar_{f}")) for f in _OWN}
        )
        _globals.update(_memory_intrinsics())
    return dict(_globals)


def _memory_intrinsics() -> dict[str, Any]:
    """``_load(base, a, b)``, ``_store(base, a, b, v)``, ``_accumulate(base, a, b, v)``.

    base[a + b] for the float64 data at address ``base`` (``array.ctypes.data``). A
    kernel reads and writes its arrays through these rather than ``array[k, i]``: Numba
    lowers every array subscript with a copy of the array's descriptor, and LLVM's SROA
    pass is quadratic in those copies (a 1,000-step chain's full kernel took minutes to
    compile; with these, seconds). The engine allocates every array it passes, so the
    offsets are in bounds by construction.
    """
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    double_ptr = ir.DoubleType().as_pointer()

    def address(builder, base, a, b):
        return builder.gep(builder.inttoptr(base, double_ptr), [builder.add(a, b)])

    @intrinsic
    def _load(typingctx, base, a, b):
        def codegen(context, builder, signature, args):
            return builder.load(address(builder, *args))

        return types.float64(types.uintp, types.intp, types.intp), codegen

    @intrinsic
    def _store(typingctx, base, a, b, value):
        def codegen(context, builder, signature, args):
            builder.store(args[3], address(builder, *args[:3]))

        return types.void(types.uintp, types.intp, types.intp, types.float64), codegen

    @intrinsic
    def _accumulate(typingctx, base, a, b, value):
        def codegen(context, builder, signature, args):
            ptr = address(builder, *args[:3])
            builder.store(builder.fadd(builder.load(ptr), args[3]), ptr)

        return types.void(types.uintp, types.intp, types.intp, types.float64), codegen

    return {"_load": _load, "_store": _store, "_accumulate": _accumulate}


class _Untranslatable(Exception):
    """A construct of the printed code that has no Numba counterpart here."""


class _ToNumba(ast.NodeTransformer):
    """Rewrites one statement of the printed NumPy code into Numba-compilable scalar code."""

    _ALLOWED = (
        ast.Assign,
        ast.Name,
        ast.Load,
        ast.Store,
        ast.Constant,
        ast.BinOp,
        ast.UnaryOp,
        ast.operator,
        ast.unaryop,
        ast.Call,
        ast.Attribute,
        ast.Compare,  # (a == m): the ties of Max and Min, and ReplaceZero
        ast.Eq,
    )

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if not isinstance(node, self._ALLOWED):
            raise _Untranslatable(ast.unparse(node) if isinstance(node, ast.expr) else "")
        return super().generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if not isinstance(node.value, ast.Name):
            raise _Untranslatable(ast.unparse(node))
        name = _translate(node.value.id, node.attr)
        if name is None:
            raise _Untranslatable(f"{node.value.id}.{node.attr}")
        return ast.copy_location(ast.Name(name, ast.Load()), node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id not in _BUILTINS:
            raise _Untranslatable(node.func.id)
        if node.keywords:
            raise _Untranslatable(ast.unparse(node))
        return self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        node = self.generic_visit(node)
        exponent = _negative_integer(node.right) if isinstance(node.op, ast.Pow) else None
        if exponent is None:
            return node
        # b**(-n) as 1/(b**n): Numba's integer power raises on 0**(-n), NumPy gives inf.
        power = ast.BinOp(node.left, ast.Pow(), ast.Constant(exponent))
        return ast.copy_location(ast.BinOp(ast.Constant(1.0), ast.Div(), power), node)


def _negative_integer(node: ast.AST) -> int | None:
    """n if ``node`` is the literal −n of a positive integer n."""
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) is int
    ):
        return node.operand.value
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value < 0:
        return -node.value
    return None


def _translated(function: ast.FunctionDef, labels: dict[str, str]) -> list[ast.Assign]:
    """The assignments of a generated function (its return left out), for Numba.

    An assignment whose right side reads no variable is made a float, so that every
    local of the kernel has one type. ``labels`` names the constraint of a target.
    """
    out = []
    for stmt in function.body[:-1]:
        if not (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
        ):
            raise ProgramError(
                f"the fused (Numba) backend does not recognise the generated statement "
                f"{ast.unparse(stmt)!r}; use the NumPy engine for this program"
            )
        target = stmt.targets[0].id
        constant = not any(isinstance(n, ast.Name) for n in ast.walk(stmt.value)) and not (
            isinstance(stmt.value, ast.Constant) and type(stmt.value.value) is float
        )
        try:
            stmt = _ToNumba().visit(stmt)
        except _Untranslatable as err:
            where = labels.get(target, "the adjoint pass")
            raise ProgramError(
                f"{where}: the fused (Numba) backend cannot compile {err}; "
                "use the NumPy engine for this program"
            ) from None
        if constant:  # no variable read (functions are still numpy.*, not names)
            stmt.value = ast.Call(ast.Name("float", ast.Load()), [stmt.value], [])
        out.append(stmt)
    return out


class _SingleAssignment(ast.NodeTransformer):
    """Renames every re-assignment to a fresh name, so each local is assigned once.

    The generated adjoint re-assigns accumulators (``grad_x = grad_x + t0``) and
    temporaries; inside a loop, Numba's SSA reconstruction is quadratic in those
    re-assignments (seconds for a few hundred). Generated names never start with an
    underscore, so ``_grad_x_3`` cannot clash with one.
    """

    def __init__(self) -> None:
        self.current: dict[str, str] = {}
        self.count: dict[str, int] = {}

    def statement(self, stmt: ast.Assign) -> str:
        stmt.value = self.visit(stmt.value)
        (target,) = stmt.targets
        name = target.id
        if name in self.count:
            self.count[name] += 1
            self.current[name] = f"_{name}_{self.count[name]}"
        else:
            self.count[name], self.current[name] = 0, name
        target.id = self.current[name]
        return ast.unparse(ast.fix_missing_locations(stmt))

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.current.get(node.id, node.id)
        return node

    def expressions(self, nodes: Sequence[ast.expr]) -> list[str]:
        """Returned expressions (names, or constants 0.0, 1.0) under the current names."""
        return [ast.unparse(self.visit(n)) for n in nodes]


# --------------------------------------------------------------------------- Numba


def numba_available() -> bool:
    """Whether Numba can be imported (the fused backend's optional dependency)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _numba():
    try:
        import numba
    except ImportError as err:
        raise ImportError(
            "the fused backend needs Numba: pip install numba (or lagrangian_ad[fast])"
        ) from err
    return numba


def _compile(source: str, name: str, signature: str, options: dict) -> Callable:
    """Compile a kernel's source (our own generated code, never user text) with Numba."""
    numba = _numba()
    code = _codegen._compile(source, f"fused {name}")  # the one compile path
    namespace = _codegen._exec(code, _kernel_globals())
    return numba.njit(signature, **options)(namespace[name])


_OPTIONS = {"error_model": "numpy", "nogil": True, "fastmath": False, "cache": False}
_SIGNATURES = {a: "float64[::1]" for a in ("_P", "_OUT", "_S")}
_SIGNATURES.update({a: "float64[:, ::1]" for a in ("_X", "_G", "_Z", "_L")})


# --------------------------------------------------------------------------- engine

_EMPTY = np.empty(0)  # no shared entries, or no sums: the kernels never touch it


class FusedEngine:
    """The forward and adjoint passes of an acyclic compiled program, fused by Numba.

    Parameters
    ----------
    fn : CompiledProgram
        A compiled program without cyclic blocks. Its generated forward and adjoint
        source is translated at construction (a `ProgramError` names the constraint
        whose code Numba cannot compile); kernels are compiled by Numba on first use.

    Notes
    -----
    ``entries`` and ``batch`` are what ``CompiledProgram._prepare(inputs)`` returns: one
    item per scalar input entry (a float when ``batch == ()``, else anything
    broadcastable to ``batch``), and the batch shape. In a batch of more than one
    sample, an entry of size 1 is a parameter shared by the batch: it is read once,
    outside the loop. A kernel is compiled for each pattern of shared entries met (and
    for each of the three kinds: value, value and gradient, full solve); one sample runs
    the kernel of the pattern where every entry is batched, as a batch of one. Per-sample
    results are columns of an array with one row per sample (strided views).

    Attributes
    ----------
    compile_seconds : dict
        Seconds Numba took for each kernel compiled so far, keyed by
        (kind, which entries are batched, whether shared gradients are summed).
    """

    def __init__(self, fn: Any):
        _numba()
        graph = fn.graph
        if graph.cyclic_blocks:
            names = ", ".join(
                str(graph.symbols[v]) for b in graph.cyclic_blocks for v in b.unknowns
            )
            raise ProgramError(
                "the fused (Numba) backend covers acyclic programs only; this program has "
                f"cyclic blocks or implicit equations (in {names}): use the NumPy engine"
            )
        self._fn = fn
        self.n_in = n_in = graph.n_inputs
        labels = _constraint_labels(fn)
        _check_forms(fn)
        fwd = ast.parse(fn.forward_source).body[0]
        adj = ast.parse(fn.adjoint_source).body[0]
        self.inputs = [a.arg for a in fwd.args.args[1:]]
        forward, adjoint = _translated(fwd, labels), _translated(adj, labels)
        names = _SingleAssignment()
        self._forward = [names.statement(s) for s in forward]
        self._z = names.expressions(fwd.body[-1].value.elts)
        self._adjoint = [names.statement(s) for s in adjoint]
        lam, grads = adj.body[-1].value.elts
        self._lam, self._grad = names.expressions(lam.elts), names.expressions(grads.elts)
        self._out = self._z[graph.output - n_in]
        self.n_z, self.n_lam = len(self._z), len(self._lam)
        self._kernels: dict[tuple, Callable] = {}
        self.compile_seconds: dict[tuple, float] = {}
        self._one_sample = (True,) * n_in
        self._single: dict[str, Callable] = {}  # the one-sample kernels, found fast

    # ----------------------------------------------------------------- calls

    def value(self, entries: Sequence[Any], batch: tuple[int, ...]) -> Any:
        """The output z_N per sample: a float when ``batch == ()``, else shape ``batch``."""
        if batch == ():
            out = np.empty(1)
            kernel = self._single.get("value") or self._kernel("value", self._one_sample)
            kernel(np.array(entries, dtype=np.float64).reshape(self.n_in, 1), _EMPTY, out)
            return out.item()
        mask, X, P, nb = self._pack(entries, batch)
        out = np.empty(nb)
        self._kernel("value", mask)(X, P, out)
        return out.reshape(batch)

    def value_and_grad(
        self, entries: Sequence[Any], batch: tuple[int, ...], reduce: bool = False
    ) -> tuple[Any, list]:
        """The output per sample and, per input entry, ∂z_N/∂x per sample.

        With ``batch == ()`` the output is a float and the gradients one 1-D float array
        (what ``fn._grads`` reads, without building a list). With ``reduce=True``, the
        gradient of an entry shared by the batch (size 1) is its sum over the batch, a
        float, computed inside the loop; `grads` turns either form into the gradient dict.
        """
        if batch == ():
            kernel = self._single.get("grad") or self._kernel("grad", self._one_sample)
            out, G = np.empty(1), np.empty(self.n_in)
            X = np.array(entries, dtype=np.float64).reshape(self.n_in, 1)
            kernel(X, _EMPTY, out, G.reshape(1, self.n_in), _EMPTY)
            return out.item(), G
        mask, X, P, nb = self._pack(entries, batch)
        reduce = reduce and len(P) > 0
        n_rows = mask.count(True) if reduce else self.n_in
        out, G = np.empty(nb), np.empty((nb, n_rows))
        S = np.zeros(len(P)) if reduce else _EMPTY
        self._kernel("grad", mask, reduce)(X, P, out, G, S)
        columns = _columns(G, batch)
        if not reduce:
            return out.reshape(batch), columns
        columns, sums = iter(columns), iter(S.tolist())
        return out.reshape(batch), [next(columns) if b else next(sums) for b in mask]

    def solve_arrays(self, entries: Sequence[Any], batch: tuple[int, ...]) -> tuple:
        """(z, λ, g): every intermediate, every multiplier and ∂z_N/∂x, per sample.

        The layout of the NumPy passes: lists in the order of the generated forward's
        targets, of the constraints, and of the input entries; floats when
        ``batch == ()``, else arrays of shape ``batch``.
        """
        shape = batch if batch != () else (1,)
        mask, X, P, nb = self._pack(entries, shape)
        Z, L = np.empty((nb, self.n_z)), np.empty((nb, self.n_lam))
        G = np.empty((nb, self.n_in))
        self._kernel("full", mask)(X, P, Z, L, G)
        if batch == ():
            return Z[0].tolist(), L[0].tolist(), G[0].tolist()
        return _columns(Z, batch), _columns(L, batch), _columns(G, batch)

    def grads(self, g: list, arrays: dict, leads: dict, batch: tuple[int, ...]) -> dict:
        """The gradient dict of ``value_and_grad`` from the ``g`` of `value_and_grad`.

        Equals ``fn._grads(g, arrays, leads, batch)`` for per-sample ``g``, and also takes
        the ``reduce=True`` form, whose shared entries are already sums over the batch.
        """
        if batch == () or not any(type(gk) is float for gk in g):
            return self._fn._grads(g, arrays, leads, batch)
        out: dict[str, Any] = {}
        pos = 0
        for var in self._fn.ir.inputs:
            part = g[pos : pos + var.size]
            pos += var.size
            shape = np.shape(arrays[var.name])
            if type(part[0]) is float:  # summed in the kernel: the input is shared
                grad = np.array(part, dtype=np.float64).reshape(shape)
            else:
                lead = leads[var.name]
                if lead != batch:
                    part = [_sum_to(p, batch, lead) for p in part]
                grad = np.stack(part, axis=-1).reshape(shape)
            out[var.name] = float(grad) if grad.ndim == 0 else grad
        return out

    # ----------------------------------------------------------------- packing

    def _pack(self, entries: Sequence[Any], batch: tuple[int, ...]):
        """(mask, X, P, nb): the batched entries as rows of X, the shared ones in P."""
        nb = math.prod(batch)
        if nb == 1:
            return self._one_sample, _flat(entries).reshape(self.n_in, 1), _EMPTY, nb
        mask = tuple([getattr(e, "size", 1) != 1 for e in entries])
        n_b = mask.count(True)
        X = np.empty((n_b, nb))
        rows = X if len(batch) == 1 else X.reshape((n_b, *batch))
        for r, e in enumerate([e for e, b in zip(entries, mask, strict=True) if b]):
            rows[r] = e
        if n_b == len(entries):
            return mask, X, _EMPTY, nb
        return mask, X, _flat([e for e, b in zip(entries, mask, strict=True) if not b]), nb

    # ----------------------------------------------------------------- kernels

    def _kernel(self, kind: str, mask: tuple[bool, ...], reduce: bool = False) -> Callable:
        key = (kind, mask, reduce)
        kernel = self._kernels.get(key)
        if kernel is None:
            source, signature = self.source(kind, mask, reduce)
            t0 = time.perf_counter()
            kernel = _compile(source, "kernel", signature, _OPTIONS)
            self.compile_seconds[key] = time.perf_counter() - t0
            self._kernels[key] = kernel
            if mask == self._one_sample:
                self._single[kind] = kernel
        return kernel

    def source(self, kind: str, mask: Sequence[bool] | None = None, reduce: bool = False):
        """(Python source, Numba signature) of a kernel, for inspection.

        ``kind`` is ``"value"``, ``"grad"`` or ``"full"``; ``mask`` says which input
        entries are batched (default: all); ``reduce`` sums the shared entries' gradients.
        """
        mask = self._one_sample if mask is None else tuple(mask)
        body = self._forward if kind == "value" else self._forward + self._adjoint
        if kind == "value":
            arrays, outputs = ("_X", "_P", "_OUT"), {}
        elif kind == "grad":
            arrays = ("_X", "_P", "_OUT", "_G", "_S")
            outputs = {"_G": [g for g, b in zip(self._grad, mask, strict=True) if b or not reduce]}
        elif kind == "full":  # every z, every λ, every gradient, per sample
            arrays = ("_X", "_P", "_Z", "_L", "_G")
            outputs = {"_Z": self._z, "_L": self._lam, "_G": self._grad}
        else:
            raise ValueError(f"unknown kernel kind {kind!r}: use 'value', 'grad' or 'full'")
        head = [f"{a.lower()} = {a}.ctypes.data" for a in arrays]
        head.append(f"_nb = {'_Z' if kind == 'full' else '_OUT'}.shape[0]")
        loop = []
        n_batched, n_shared = itertools.count(), itertools.count()
        for name, batched in zip(self.inputs, mask, strict=True):
            if batched:
                r = next(n_batched)
                head.append(f"_x{r} = {r} * _nb")
                loop.append(f"{name} = _load(_x, _x{r}, _i)")
            else:
                head.append(f"{name} = _load(_p, {next(n_shared)}, 0)")
        loop += body
        if kind != "full":
            loop.append(f"_store(_out, _i, 0, {self._out})")
        for array, values in outputs.items():  # one row per sample: constant offsets
            row = f"{array.lower()}_row"
            loop.append(f"{row} = _i * {len(values)}")
            loop += [f"_store({array.lower()}, {row}, {k}, {v})" for k, v in enumerate(values)]
        if kind == "grad" and reduce:
            shared = [g for g, b in zip(self._grad, mask, strict=True) if not b]
            loop += [f"_accumulate(_s, {k}, 0, {g})" for k, g in enumerate(shared)]
        signature = f"void({', '.join(_SIGNATURES[a] for a in arrays)})"
        lines = [f"    {s}" for s in head]
        lines.append("    for _i in range(_nb):")
        lines += [f"        {s}" for s in loop]
        return _function(", ".join(arrays), lines), signature


def _function(args: str, lines: list[str]) -> str:
    return "\n".join([f"def kernel({args}):", *lines]) + "\n"


def _constraint_labels(fn: Any) -> dict[str, str]:
    """Generated name of each constraint's target -> 'constraint <label>'."""
    em, graph = fn._code.emitter, fn.graph
    return {
        em.names[t]: f"constraint {c.label!r}"
        for c, t in zip(fn.ir.constraints, graph.targets, strict=True)
        if t is not None
    }


def _check_forms(fn: Any) -> None:
    """A ProgramError naming the first constraint whose code (forward, or partials) calls
    a function with no Numba counterpart here."""
    em = fn._code.emitter
    for e, form in enumerate(em.forms):
        texts = [form.forward, *form.temps, *form.terms]
        for module, attr in sorted({m for t in texts for m in _MODULE_ATTRIBUTE.findall(t)}):
            if _translate(module, attr) is None:
                label = fn.ir.constraints[e].label
                raise ProgramError(
                    f"constraint {label!r}: the fused (Numba) backend cannot compile "
                    f"{module}.{attr}; use the NumPy engine for this program"
                )


def _columns(A: np.ndarray, batch: tuple[int, ...]) -> list[np.ndarray]:
    """The columns of a kernel's output (one row per sample), each of shape ``batch``."""
    columns = A.T  # a view: shape (n, samples)
    return list(columns if len(batch) == 1 else columns.reshape((A.shape[1], *batch)))


def _flat(entries: list) -> np.ndarray:
    """Entries of size 1 (floats, 0-d or size-1 arrays) as one 1-D float array."""
    try:  # floats and 0-d arrays, the usual case: one conversion
        return np.array(entries, dtype=np.float64).reshape(len(entries))
    except ValueError:  # size-1 arrays of different shapes
        return np.array([np.ravel(e)[0] for e in entries], dtype=np.float64)


def _sum_to(g: Any, batch: tuple[int, ...], target: tuple[int, ...]) -> np.ndarray:
    """Sum per-sample ``g`` (shape ``batch``) down to the batch axes ``target`` of an input."""
    g = np.broadcast_to(g, batch)
    extra = len(batch) - len(target)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(k for k, t in enumerate(target) if t == 1 and g.shape[k] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else np.asarray(g)
