"""Solving: the forward pass, the multipliers and the gradient, for one sample or a batch.

Batching follows NumPy broadcasting. Each input's declared shape is the trailing shape of
the array given for it; the leading axes of all inputs broadcast to one batch shape B.
The output z_N has shape B; the gradient is that of Σ_B z_N, so ``grad[name]`` is summed
down to exactly the shape of the array given for ``name`` (a parameter given without
batch axes gets the gradient summed over the batch, like ``y.sum().backward()``).
The multipliers are per sample: λ_i = ∂z_N/∂z_i, with shape B + the variable's shape.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import sympy as sp

from ..core._errors import LagrangianADError, NonFiniteWarning, ProgramError
from ..core._ir import ProgramIR
from ..core._progress import Progress
from ..solving._blocks import METHODS, SolveOptions
from ..solving._values import (
    Array,
    Solution,
    _all_finite,
    _as_float_array,
    _assemble,
    _broadcasts_to,
    _finite,
    _not_finite,
    _shaped,
    _sum_to,
    _user_array,
)
from . import _pickling, _second
from ._codegen import Passes, generate, hessian_functions, jvp_functions, kkt_function
from ._graph import analyse

__all__ = ["CompiledProgram", "Solution"]


class _Context:
    """Per-call state of the generated code: options, and each block's factorization."""

    __slots__ = ("batches", "blocks", "options")

    def __init__(self, options: SolveOptions):
        self.options = options
        self.blocks: dict[int, tuple] = {}
        self.batches: dict[int, tuple[int, ...]] = {}


class CompiledProgram:
    """A program compiled once, to be solved many times.

    The partials are derived with SymPy and printed to NumPy code at construction; no
    call after that touches SymPy. ``print(fn.source)`` shows the generated code.

    With ``backend="numba"`` (acyclic programs only), `value` and `value_and_grad` run
    as one Numba loop over the batch (`_fused`); `solve`, `jvp` and the second-order
    methods stay on NumPy. The NumPy engine is the default everywhere.

    Solving options (keywords of `solve`, `value` and `value_and_grad`), used by cyclic
    blocks only: ``init`` (dict name -> starting value, default zeros), ``method``
    (``"auto"``, ``"newton"``, ``"inexact-newton"``, ``"fixed-point"`` or
    ``"anderson"``; see `SolveOptions`), ``tol`` (default 1e-12, relative to
    max(1, ``|z|``)) and ``maxiter`` (default 100).
    """

    def __init__(self, ir: ProgramIR, progress: Any = None, backend: str = "numpy"):
        if backend not in ("numpy", "numba"):
            raise ProgramError(f"unknown backend {backend!r}: use 'numpy' or 'numba'")
        self.backend = backend
        report = Progress(progress)
        self.ir = ir
        report("analysing the graph", 0, 0)
        self.graph = analyse(ir)
        self._code = generate(ir, self.graph, report)
        self._inputs = {v.name: v for v in ir.inputs}
        self._intermediates = {v.name: v for v in ir.intermediates}
        n_in = self.graph.n_inputs
        position = {s: k - n_in for k, s in enumerate(self.graph.symbols)}
        self._positions = {v.name: [position[s] for s in v.symbols] for v in ir.intermediates}
        self._output_index = position[ir.output]
        by_target = {c.target: e for e, c in enumerate(ir.constraints)}
        self._lam_positions = {
            v.name: [by_target[s] for s in v.symbols]
            for v in ir.intermediates
            if v.symbols[0] in by_target
        }
        self._lam_positions.update(
            {c.label: [e] for e, c in enumerate(ir.constraints) if c.target is None}
        )
        self._no_context = _Context(SolveOptions())
        self._has_cycles = bool(self.graph.cyclic_blocks)
        self._hessian: tuple | None = None  # generated on first use, like these two:
        self._jvp: tuple | None = None
        self._kkt: tuple | None = None
        in_cycles = {v for b in self.graph.cyclic_blocks for v in b.unknowns}
        self._cyclic_vars = {
            v.name: [position[s] + n_in for s in v.symbols]
            for v in ir.intermediates
            if position[v.symbols[0]] + n_in in in_cycles
        }
        report("grouping", 0, 0)
        self._lowered = self._lower_groups()
        self._fused = None
        if backend == "numba":
            from ._fused import FusedEngine, numba_available

            if not numba_available():
                raise ProgramError("backend='numba' needs Numba: pip install 'lagrangian_ad[fast]'")
            report("preparing the fused kernels", 0, 0)
            self._fused = FusedEngine(self)  # ProgramError for cyclic programs
        report.done(f"{len(ir.constraints):,} constraints")

    def _lower_groups(self) -> Any:
        """What runs batches instead of the per-scalar code (`_grouping`): None here."""
        return None

    # ----------------------------------------------------------------- inspection

    @property
    def engine(self) -> str:
        """Which engine runs this program: "entries" (per-scalar code), "lowered"
        (`_grouping.GroupedProgram`) or "arrays" (`ArrayProgram`)."""
        return "entries"

    @property
    def forward_source(self) -> str:
        """Python source of the generated forward pass."""
        return self._code.forward_source

    @property
    def adjoint_source(self) -> str:
        """Python source of the generated multiplier (adjoint) pass."""
        return self._code.adjoint_source

    @property
    def source(self) -> str:
        """All generated source: forward, adjoint, cyclic blocks."""
        parts = [self.forward_source, self.adjoint_source, self._code.blocks_source]
        return "\n".join(p for p in parts if p)

    def __repr__(self) -> str:
        n_c = len(self.ir.constraints)
        return (
            f"<CompiledProgram: {n_c} constraints ({self._code.n_forms} forms), "
            f"{self.graph.n_inputs} scalar inputs, {len(self.graph.cyclic_blocks)} cyclic blocks>"
        )

    # ----------------------------------------------------------------- pickling

    def __reduce__(self) -> tuple:
        """Pickled with its generated source, re-run on unpickling (`_pickling`): a
        worker process gets the compiled program without deriving anything again, and
        builds it once however many chunks it runs."""
        state = dict(self.__dict__)
        state["_fused"] = None  # Numba's kernels: made again where the program lands
        return _unpickle, (_pickling.dumps((type(self), state)),)

    # ----------------------------------------------------------------- solving

    def value(self, inputs: Mapping[Any, Any], check_finite: bool = True, **options: Any) -> Array:
        """The output z_N only (forward pass).

        ``check_finite`` (default True): an input holding NaN or inf is a `ProgramError`;
        False skips that check. Either way a non-finite output is reported by a
        `NonFiniteWarning` naming the first constraint, in evaluation order, whose value
        is not finite.

        Inputs may be Dask arrays chunked along their batch axes (`_dask`): the output
        is then a Dask array with their chunks, and nothing runs until it is computed.
        """
        if _dask_inputs(inputs):
            from ..solving import _dask

            return _dask.value(self, inputs, check_finite, options)
        return self._eager_value(inputs, check_finite, options)

    def _eager_value(self, inputs: Mapping[Any, Any], check_finite: bool, options: dict) -> Array:
        arrays, leads, batch = self._check(inputs, check_finite)
        value = self._value(arrays, leads, batch, options)
        if not _finite(value):
            self._warn_non_finite(arrays, leads, batch, options, adjoint=False, stacklevel=4)
        return value

    def _value(self, arrays, leads, batch, options) -> Array:
        if self._fused is not None:
            self._context(options)  # checks the options, though nothing here is cyclic
            return self._fused.value(self._entries(arrays, leads, batch), batch)
        entries = self._entries(arrays, leads, batch)
        z, _ = self._run(entries, batch == (), options, adjoint=False)
        return _shaped(z[self._output_index], batch)

    def value_and_grad(
        self,
        inputs: Mapping[Any, Any],
        check_finite: bool = True,
        wrt: Any = None,
        *,
        adjoint: str = "exact",
        steps: int | None = None,
        damping: float | None = None,
        **options: Any,
    ) -> tuple[Array, dict[str, Array]]:
        """The output and ∂(Σ z_N)/∂x for every input (``wrt``: for these inputs only;
        the array engine then also skips the work that leads only to the others).

        ``adjoint`` chooses the multipliers of the cyclic blocks (`_estimators`):
        ``"exact"`` (the default: the solve (I − J)ᵀ λ = g), ``"unrolled"`` (the
        gradient of ``steps`` = K plain iterations z ← f(z) from ``init``, whose output
        is then the value returned), ``"jfb"`` (Jacobian-free backprop, λ = g at the
        fixed point) or ``"phantom"`` (K steps λ ← (1 − α) λ + α (g + Jᵀ λ) from λ = g,
        α = ``damping``). K defaults to 5 and α to 0.5. Estimators other than
        ``"exact"`` run on the array engine (also an entry-wise program's lowered by
        groups), for blocks of definitions; on an acyclic program each is the exact
        gradient.

        ``check_finite`` as in `value`; a non-finite output or gradient is reported by a
        `NonFiniteWarning` naming the first constraint whose value or multiplier is not
        finite.

        Inputs may be Dask arrays chunked along their batch axes (`_dask`): the output
        and the gradients of inputs with batch axes are Dask arrays with their chunks;
        the gradients of the others (parameters) are summed over the chunks and are
        NumPy arrays, so the chunks run in this call (once: its Dask results are
        persisted). Without such gradients nothing runs until a result is computed.
        """
        if adjoint != "exact" or steps is not None or damping is not None:
            from ._estimators import Estimator, estimate

            est = Estimator.checked(adjoint, steps, damping)
            if _dask_inputs(inputs):
                raise ProgramError(f"adjoint={adjoint!r}: Dask inputs take adjoint='exact' only")
            return estimate(self, inputs, check_finite, wrt, est, options)
        if _dask_inputs(inputs):
            from ..solving import _dask

            return _dask.value_and_grad(self, inputs, check_finite, wrt, options)
        return self._eager_value_and_grad(inputs, check_finite, wrt, options)

    def _eager_value_and_grad(
        self, inputs: Mapping[Any, Any], check_finite: bool, wrt: Any, options: dict
    ) -> tuple[Array, dict[str, Array]]:
        wanted = None if wrt is None else [self._input_name(k) for k in wrt]
        arrays, leads, batch = self._check(inputs, check_finite)
        value, grad = self._value_and_grad(arrays, leads, batch, options)
        if wanted is not None:
            grad = {name: grad[name] for name in wanted}
        if not _all_finite(value, grad):
            self._warn_non_finite(arrays, leads, batch, options, adjoint=True, stacklevel=4)
        return value, grad

    def _value_and_grad(self, arrays, leads, batch, options) -> tuple[Array, dict[str, Array]]:
        if self._fused is not None:
            self._context(options)
            entries = self._entries(arrays, leads, batch)
            value, g = self._fused.value_and_grad(entries, batch, reduce=True)
            return value, self._fused.grads(g, arrays, leads, batch)
        entries = self._entries(arrays, leads, batch)
        z, (_, g, _) = self._run(entries, batch == (), options, adjoint=True)
        return _shaped(z[self._output_index], batch), self._grads(g, arrays, leads, batch)

    def _run(self, entries: list, scalar: bool, options: dict, adjoint: bool):
        """Forward (and adjoint) pass; returns z and, with ``adjoint``, (λ, grads, ctx)."""

        def passes(code: Passes, ctx: _Context, entries: list):
            z = code.forward(ctx, *entries)
            return z, ((*code.adjoint(ctx, *entries, *z), ctx) if adjoint else None)

        return self._on_floats_or_numpy(entries, scalar, options, passes)

    def _on_floats_or_numpy(self, entries: list, scalar: bool, options: dict, passes: Callable):
        """``passes(code, ctx, entries)`` over Python floats when ``scalar``, else NumPy.

        The float path runs the same generated source with ``math`` functions; where
        ``math`` raises (domain, overflow, division by zero) the call is rerun on NumPy,
        which returns the IEEE result (inf, nan); NumPy's own warnings are silenced, the
        callers report a non-finite result with a `NonFiniteWarning`.
        """
        batch = np.broadcast_shapes(*map(np.shape, entries)) if options.get("init") else None
        ctx = self._context(options, batch)
        if scalar:
            try:
                return passes(self._code.scalar, ctx, entries)
            except LagrangianADError:
                raise
            except (ArithmeticError, ValueError):
                entries = [np.float64(e) for e in entries]
                ctx = self._context(options, batch)  # afresh: the float run may have begun
        with np.errstate(all="ignore"):
            return passes(self._code.numpy, ctx, entries)

    def jvp(
        self,
        inputs: Mapping[Any, Any],
        tangents: Mapping[Any, Any],
        check_finite: bool = True,
        **options: Any,
    ) -> tuple[Array, Array]:
        """The output and its derivative along ``tangents``, per sample (forward mode).

        Solves the tangent system (I − J) ż = (∂f/∂x) ẋ block by block, cyclic blocks
        with the factorization of their forward solve. Inputs missing from ``tangents``
        have tangent 0; a tangent broadcasts to the shape of its input's array.
        ``check_finite`` (inputs and tangents) and the `NonFiniteWarning` as in `value`.
        """
        entries, arrays, leads, batch = self._prepare(inputs, check_finite)
        dots: list = []
        given = self._named(tangents, "tangents", "tangent")
        for name, var in self._inputs.items():
            if name not in given:
                dots.extend([0.0] * var.size)
                continue
            shape = np.shape(arrays[name])
            tangent = _as_float_array(given[name], f"tangent {name!r}")
            if check_finite and not np.isfinite(tangent).all():
                raise _not_finite(f"tangent {name!r}", tangent)
            try:
                t = np.broadcast_to(tangent, shape)
            except ValueError:
                raise ProgramError(
                    f"tangent {name!r}: shape {np.shape(given[name])} does not broadcast to "
                    f"the input's shape {shape}"
                ) from None
            if batch == ():
                dots.extend(t.ravel().tolist())
            else:
                flat = t.reshape((*leads[name], var.size))
                dots.extend(flat[..., k] for k in range(var.size))

        if self._jvp is None:
            self._jvp = jvp_functions(self._code.emitter)

        def passes(code: Passes, ctx: _Context, entries: list):
            z = code.forward(ctx, *entries)
            jvp = self._jvp[1] if code is self._code.scalar else self._jvp[0]
            return z[self._output_index], jvp(ctx, *entries, *z, *dots)

        value, d = self._on_floats_or_numpy(entries, batch == (), options, passes)
        value, d = _shaped(value, batch), _shaped(d, batch)
        if not (_finite(value) and _finite(d)):
            result = "the output and its derivative along the tangents are"
            self._warn_non_finite(arrays, leads, batch, options, adjoint=False, result=result)
        return value, d

    def hessian(
        self, inputs: Mapping[Any, Any], check_finite: bool = True, **options: Any
    ) -> dict[str, dict[str, Array]]:
        """Hessian of the batch sum of z_N: ``H[a][b]`` has shape (a's array) + (b's array).

        The reduced Hessian Zᵀ (∇²L) Z at the stationary point, with Z = dz/dx from forward
        mode along every entry of every input array, and ∇²L from the second partials of
        the constraints (derived with SymPy on the first call, then generated code).
        Dense in the inputs: meant for moderate numbers of input entries.
        ``check_finite`` and the `NonFiniteWarning` as in `value`.
        """
        if self._hessian is None:
            self._hessian = hessian_functions(self._code.emitter)
        tangents, hessian, _ = self._hessian
        entries, arrays, leads, batch = self._prepare(inputs, check_finite)
        if batch == ():
            entries = [np.float64(e) for e in entries]
        z, (lam, _, ctx) = self._run(entries, False, options, adjoint=True)
        sizes = {name: int(np.size(arrays[name])) for name in self._inputs}
        n_dir = sum(sizes.values())
        dots, offset = [], 0
        for name, var in self._inputs.items():
            lead = leads[name]
            eye = np.eye(n_dir)[:, offset : offset + sizes[name]]
            eye = eye.reshape((n_dir, *(1,) * (len(batch) - len(lead)), *lead, var.size))
            dots.extend(eye[..., k] for k in range(var.size))
            offset += sizes[name]
        with np.errstate(all="ignore"):  # non-finite results: a NonFiniteWarning instead
            Z = tangents(ctx, *entries, *z, *dots)
            H = hessian(*entries, *z, *lam, *Z)
        H = np.zeros((n_dir, n_dir)) if np.ndim(H) == 0 else H
        if not _finite(H):
            self._warn_non_finite(arrays, leads, batch, options, True, "the Hessian is")
        out: dict[str, dict[str, Array]] = {}
        starts = np.cumsum([0, *sizes.values()])
        names = list(self._inputs)
        for i, a in enumerate(names):
            out[a] = {}
            for j, b in enumerate(names):
                block = H[starts[i] : starts[i + 1], starts[j] : starts[j + 1]]
                out[a][b] = _user_array(block.reshape(np.shape(arrays[a]) + np.shape(arrays[b])))
        return out

    def hvp(
        self,
        inputs: Mapping[Any, Any],
        vectors: Mapping[Any, Any],
        check_finite: bool = True,
        **options: Any,
    ) -> dict[str, Array]:
        return _second.hvp(self, inputs, vectors, check_finite, **options)

    def sparse_hessian(
        self, inputs: Mapping[Any, Any], check_finite: bool = True, **options: Any
    ) -> _second.SparseHessian:
        return _second.sparse_hessian(self, inputs, check_finite, **options)

    hvp.__doc__ = _second.hvp.__doc__
    sparse_hessian.__doc__ = _second.sparse_hessian.__doc__

    def solve(
        self, inputs: Mapping[Any, Any], check_finite: bool = True, **options: Any
    ) -> Solution:
        """Forward values, multipliers and gradient: the full stationary point.

        ``check_finite`` and the `NonFiniteWarning` as in `value_and_grad`.

        Inputs may be Dask arrays chunked along their batch axes (`_dask`): values,
        multipliers and the gradients of inputs with batch axes are then Dask arrays
        with their chunks (persisted: the chunks run in this call, once), the gradients
        of parameters NumPy arrays summed over the chunks; ``blocks`` and ``kkt`` are the
        worst over the chunks.
        """
        if _dask_inputs(inputs):
            from ..solving import _dask

            return _dask.solve(self, inputs, check_finite, options)
        return self._eager_solve(inputs, check_finite, options)

    def _eager_solve(self, inputs: Mapping[Any, Any], check_finite: bool, options: dict):
        arrays, leads, batch = self._check(inputs, check_finite)
        sol = self._solve(arrays, leads, batch, options)
        if not _all_finite(sol.value, sol.grad):
            self._warn_non_finite(arrays, leads, batch, options, adjoint=True, stacklevel=4)
        return sol

    def _solve(self, arrays, leads, batch, options) -> Solution:
        entries = self._entries(arrays, leads, batch)
        z, (lam, g, ctx) = self._run(entries, batch == (), options, adjoint=True)
        return self._solution(
            entries,
            arrays,
            batch,
            z,
            lam,
            self._grads(g, arrays, leads, batch),
            tuple(ctx.blocks[k][1] for k in sorted(ctx.blocks)),
        )

    def _solution(self, entries, arrays, batch, z, lam, grad, reports) -> Solution:
        # copies: the caller's arrays are theirs to change
        values: dict[str, Array] = {name: _user_array(np.array(a)) for name, a in arrays.items()}
        for var in self.ir.intermediates:
            values[var.name] = _assemble(
                [z[k] for k in self._positions[var.name]], var.shape, batch
            )
        multipliers = {
            name: _assemble([lam[e] for e in pos], self._multiplier_shape(name), batch)
            for name, pos in self._lam_positions.items()
        }
        if self._kkt is None:
            self._kkt = kkt_function(self._code.emitter)
        point = [*entries, *z, *lam]
        if batch == ():  # NumPy scalars: IEEE results (1/0 is inf), not Python's exceptions
            point = [np.float64(v) for v in point]
        with np.errstate(all="ignore"):  # a non-finite point is reported on its own
            max_r, max_s = self._kkt[0](*point)
        return Solution(
            value=_shaped(z[self._output_index], batch),
            grad=grad,
            values=values,
            multipliers=multipliers,
            blocks=reports,
            kkt={  # initial=0: an empty batch has nothing to violate
                "max_dL_dlambda": float(np.max(max_r, initial=0.0)),
                "max_dL_dz": float(np.max(max_s, initial=0.0)),
            },
        )

    _not_finite = staticmethod(lambda what, value: _not_finite(what, value))

    def _warn_non_finite(
        self,
        arrays,
        leads,
        batch,
        options,
        adjoint: bool,
        result: str | None = None,
        stacklevel: int = 3,
    ) -> None:
        """A `NonFiniteWarning` naming where the first non-finite number appeared.

        Only called when the output or the gradient is not finite, so the hot path pays
        one ``isfinite`` for it. This reruns the straight-line NumPy passes and walks, in
        evaluation order, the inputs, the values of the constraints the output needs,
        their multipliers (reverse order), then the gradient.
        """
        graph, ir, n_in = self.graph, self.ir, self.graph.n_inputs
        entries = [np.float64(e) for e in self._entries(arrays, leads, batch)]
        z, rest = self._run(entries, False, options, adjoint=adjoint)
        n_samples = math.prod(batch)

        def bad(v: Any) -> str | None:
            v = np.asarray(v)
            count = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
            if not count:
                return None
            first = v[~np.isfinite(v)].flat[0] if v.ndim else v
            return f"{first}" + (f" in {count} of {n_samples} samples" if batch else "")

        def shown(e: int) -> str:
            c = ir.constraints[e]
            text = f"{c.target} = {c.expr}" if c.target is not None else f"0 = {c.expr}"
            return text if len(text) <= 60 else text[:57] + "..."

        where = None
        for name, arr in arrays.items():
            found = bad(arr)
            if found:
                where = f"input {name!r} is {found} (check_finite=False)"
                break
        order = [b for b in graph.blocks if graph.needed.intersection(b.constraints)]
        for b in order if where is None else ():
            for v in b.unknowns:
                found = bad(z[v - n_in])
                if found and b.explicit:
                    (e,) = b.constraints
                    label = ir.constraints[e].label
                    where = f"the value of constraint {label!r} ({shown(e)}) is {found}"
                elif found:
                    labels = ", ".join(repr(ir.constraints[e].label) for e in b.constraints[:5])
                    name = graph.symbols[v].name
                    where = f"the value of {name!r} (cyclic block of {labels}) is {found}"
                if where:
                    break
            if where:
                break
        if where is None and adjoint:
            lam, g, _ = rest
            for b in reversed(order):
                for e in b.constraints:
                    found = bad(lam[e])
                    if found:
                        label = ir.constraints[e].label
                        where = f"the multiplier of constraint {label!r} ({shown(e)}) is {found}"
                        break
                if where:
                    break
            for k in range(n_in) if where is None else ():
                found = bad(g[k])
                if found:
                    name = graph.symbols[k].name
                    readers = [
                        ir.constraints[e].label for e in graph.needed if k in graph.parents[e]
                    ]
                    where = (
                        f"the gradient with respect to input {name!r} is {found}, every value "
                        f"and multiplier being finite: a partial derivative of constraint "
                        f"{' or '.join(map(repr, sorted(readers)[:5]))} is not finite there"
                    )
                    break
        if result is None:
            result = "the output and its gradient are" if adjoint else "the output is"
        warnings.warn(
            NonFiniteWarning(
                f"{result} not finite: {where or 'a non-finite number appeared'}"
                + ("" if where and where.startswith("input") else " (the inputs are finite)")
            ),
            stacklevel=stacklevel,
        )

    def _multiplier_shapes(self) -> dict[str, tuple[int, ...]]:
        """The keys of ``Solution.multipliers``, in order, with their shapes per sample."""
        return {name: self._multiplier_shape(name) for name in self._lam_positions}

    def _multiplier_shape(self, name: str) -> tuple[int, ...]:
        var = self._intermediates.get(name)
        return () if var is None else var.shape  # an equation's multiplier is a scalar

    def _context(self, options: dict[str, Any], batch: tuple[int, ...] | None = None) -> _Context:
        """The per-call state for these solve options, checked (``batch``: the call's
        batch shape, which an ``init`` must broadcast to)."""
        if not options and not self._has_cycles:
            return self._no_context  # nothing to set or record without cyclic blocks
        return _Context(self._solve_options(options, batch))

    def _solve_options(
        self, options: dict[str, Any], batch: tuple[int, ...] | None
    ) -> SolveOptions:
        """The solve options checked, ``init`` keyed by the unknowns' flat indices
        (``self._cyclic_vars``: variable name -> its indices)."""
        unknown = set(options) - {"init", "method", "tol", "maxiter"}
        if unknown:
            raise ProgramError(
                f"unknown solve option {', '.join(sorted(unknown))}; "
                "the options are init, method, tol, maxiter"
            )
        method = options.get("method", "auto")
        if method not in METHODS:
            raise ProgramError(
                f"unknown method {method!r}: use one of {', '.join(map(repr, METHODS))}"
            )
        init: dict[int, Any] = {}
        given = options.get("init") or {}
        if not isinstance(given, Mapping):
            raise ProgramError(
                "init must be a dict of variable name -> starting value, "
                f"not {type(given).__name__}"
            )
        for key, val in given.items():
            name = key if isinstance(key, str) else getattr(key, "name", str(key))
            if name not in self._cyclic_vars:
                raise ProgramError(
                    f"init: {name!r} is not a variable of a cyclic block or implicit equation "
                    f"(those are: {', '.join(self._cyclic_vars) or 'none'})"
                )
            var = self._intermediates[name]
            arr = _as_float_array(val, f"init {name!r}")
            nd = len(var.shape)
            if arr.ndim < nd or arr.shape[arr.ndim - nd :] != var.shape:
                raise ProgramError(
                    f"init {name!r}: expected trailing shape {var.shape}, got shape {arr.shape}"
                )
            lead = arr.shape[: arr.ndim - nd]
            if batch is not None and _broadcasts_to(lead, batch) is False:
                raise ProgramError(
                    f"init {name!r}: its batch shape {lead} does not broadcast to the batch "
                    f"shape {batch} of the inputs"
                )
            flat = arr.reshape((*lead, var.size))
            for k, index in enumerate(self._cyclic_vars[name]):
                init[index] = flat[..., k]
        tol, maxiter = options.get("tol", 1e-12), options.get("maxiter", 100)
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
            raise ProgramError(f"tol must be a positive number, not {tol!r}")
        if not (math.isfinite(tol) and tol > 0):
            raise ProgramError(f"tol must be a positive number, not {tol!r}")
        if isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < 1:
            raise ProgramError(f"maxiter must be a positive integer, not {maxiter!r}")
        return SolveOptions(method=method, tol=float(tol), maxiter=int(maxiter), init=init)

    # ----------------------------------------------------------------- inputs

    def _prepare(self, inputs: Mapping[Any, Any], check_finite: bool = True):
        """Check the inputs; return scalar entries, arrays, batch axes, batch shape."""
        arrays, leads, batch = self._check(inputs, check_finite)
        return self._entries(arrays, leads, batch), arrays, leads, batch

    def _named(self, d: Any, what: str = "inputs", noun: str = "input") -> dict[str, Any]:
        """``d`` keyed by input name (its keys may be names, symbols or variables);
        ``what`` and ``noun`` name the argument and its entries in the errors."""
        if not isinstance(d, Mapping):
            raise ProgramError(
                f"{what} must be a dict of input name -> value, not {type(d).__name__}"
            )
        out: dict[str, Any] = {}
        for key, val in d.items():
            name = self._input_name(key)
            if name in out:
                raise ProgramError(f"{noun} {name!r} is given twice in {what}")
            out[name] = val
        return out

    def _check(self, inputs: Mapping[Any, Any], check_finite: bool = True):
        """Check the inputs; return the arrays, their batch axes, and the batch shape.

        With ``check_finite``, an input holding NaN or inf is a `ProgramError` (SciPy's
        convention): one reduction per input (`_finite`), on every call. The checks of
        shapes run once per combination of shapes (`_seen_shapes`).
        """
        if type(inputs) is dict and inputs.keys() == self._inputs.keys():
            given = inputs  # plain names, all present: nothing to map
            seen = self._seen_shapes(given) if self.__dict__.get("_shapes") else None
            if seen is not None:  # float64 arrays of shapes checked before
                leads, batch = seen
                arrays = {name: given[name] for name in self._inputs}
                if check_finite:
                    for name, arr in arrays.items():
                        if not _finite(arr):
                            raise _not_finite(f"input {name!r}", arr)
                return arrays, leads, batch
        else:
            given = self._named(inputs)
        missing = [n for n in self._inputs if n not in given]
        if missing:
            raise ProgramError(f"missing input {', '.join(map(repr, missing))}")
        arrays: dict[str, np.ndarray] = {}
        leads: dict[str, tuple[int, ...]] = {}
        remember = given is inputs  # whether all are float64 arrays, for `_seen_shapes`
        for name, var in self._inputs.items():
            value = given[name]
            if type(value) is float and var.shape == ():  # the common scalar case, cheaply
                if check_finite and not math.isfinite(value):
                    raise _not_finite(f"input {name!r}", value)
                arrays[name], leads[name] = value, ()
                remember = False
                continue
            arr = _as_float_array(value, f"input {name!r}")
            remember = remember and arr is value and type(arr) is np.ndarray
            if check_finite and not _finite(arr):
                raise _not_finite(f"input {name!r}", arr)
            nd = len(var.shape)
            if arr.ndim < nd or arr.shape[arr.ndim - nd :] != var.shape:
                raise ProgramError(
                    f"input {name!r}: expected an array of trailing shape {var.shape}, "
                    f"got shape {arr.shape}"
                )
            arrays[name], leads[name] = arr, arr.shape[: arr.ndim - nd]
        try:
            lead_shapes = set(leads.values())
            batch = (
                lead_shapes.pop() if len(lead_shapes) == 1 else np.broadcast_shapes(*leads.values())
            )
        except ValueError:
            desc = ", ".join(f"{n}: {s}" for n, s in leads.items())
            raise ProgramError(f"the batch axes of the inputs do not broadcast ({desc})") from None
        if remember:
            self._remember_shapes(given, leads, batch)
        return arrays, leads, batch

    # The checks of shapes above, once per combination of shapes: a call with float64
    # arrays of shapes seen before only looks up the batch axes (the values are still
    # checked for NaN and inf on every call). A few combinations are kept (batch sizes
    # vary in a loop over a data set with a short last batch).
    _SHAPES_KEPT = 16

    def _seen_shapes(self, given: dict) -> tuple[dict, tuple[int, ...]] | None:
        cache = self.__dict__["_shapes"]
        key = []
        for name in self._inputs:
            v = given[name]
            if type(v) is not np.ndarray or v.dtype != np.float64:
                return None
            key.append(v.shape)
        return cache.get(tuple(key))

    def _remember_shapes(self, given: dict, leads: dict, batch: tuple[int, ...]) -> None:
        cache = self.__dict__.setdefault("_shapes", {})
        if len(cache) >= self._SHAPES_KEPT:
            cache.clear()
        cache[tuple(given[n].shape for n in self._inputs)] = (leads, batch)

    def _entries(self, arrays: dict, leads: dict, batch: tuple[int, ...]) -> list:
        """One value per scalar input entry: floats for one sample, else arrays."""
        entries: list = []
        for name, var in self._inputs.items():
            arr = arrays[name]
            if batch == ():  # Python floats for the fast path
                entries.extend(arr.ravel().tolist() if type(arr) is not float else (arr,))
            elif var.shape == ():
                entries.append(arr)
            else:
                flat = arr.reshape((*leads[name], var.size))
                entries.extend(flat[..., k] for k in range(var.size))
        return entries

    def _input_name(self, key: Any) -> str:
        if isinstance(key, str):
            name = key
        elif isinstance(key, sp.Symbol):
            name = key.name
        elif isinstance(key, sp.MatrixBase) and len(key) and isinstance(key[0], sp.Symbol):
            name = key[0].name.split("[", 1)[0]
        else:
            raise ProgramError(f"input key {key!r}: use the input's name or its Symbol")
        if name not in self._inputs:
            known = ", ".join(self._inputs) or "none"
            what = (
                "an intermediate, not an input"
                if any(v.name == name for v in self.ir.intermediates)
                else "not an input of this program"
            )
            raise ProgramError(f"unknown input {name!r}: it is {what} (inputs: {known})")
        return name

    def _grads(self, g: list, arrays: dict, leads: dict, batch: tuple) -> dict[str, Array]:
        out: dict[str, Array] = {}
        pos = 0
        if batch == ():  # one sample: no reduction, only shaping
            for name, var in self._inputs.items():
                part = g[pos : pos + var.size]
                pos += var.size
                out[name] = (
                    float(part[0])
                    if var.shape == ()
                    else np.array(part, dtype=np.float64).reshape(var.shape)
                )
            return out
        for name, var in self._inputs.items():
            parts = [_sum_to(gk, batch, leads[name]) for gk in g[pos : pos + var.size]]
            pos += var.size
            grad = (
                parts[0]
                if var.shape == ()
                else np.stack(parts, axis=-1).reshape(arrays[name].shape)
            )
            out[name] = _user_array(grad)
        return out


def _dask_inputs(inputs: Any) -> bool:
    """Whether any input is a Dask array (never true unless Dask is already imported:
    Dask is optional, and this check must cost nothing on the hot path)."""
    da = sys.modules.get("dask.array")
    if da is None or not isinstance(inputs, Mapping):
        return False
    return any(isinstance(v, da.Array) for v in inputs.values())


def _unpickle(blob: bytes) -> CompiledProgram:
    return _pickling.loads(blob, _rebuilt)


def _rebuilt(pickled: tuple) -> CompiledProgram:
    cls, state = pickled
    fn = cls.__new__(cls)
    fn.__dict__.update(state)
    if fn.backend == "numba":
        from ._fused import FusedEngine

        fn._fused = FusedEngine(fn)
    return fn
