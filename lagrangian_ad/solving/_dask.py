"""Batches beyond one machine: compiled programs over Dask arrays, chunk by chunk.

The batch B is split into chunks B = ∪_c B_c along its batch axes (the chunks of the
Dask inputs). Per-sample results — z_N, the values and multipliers λ_i of a `solve`, the
gradient of an input with batch axes — are computed chunk by chunk, by the NumPy engine
on that chunk's samples, and come back as Dask arrays with the inputs' chunks. The
gradient of a parameter p (an input without batch axes, the same for every sample) is
that of the batch sum, which the chunks share out:

    ∂(Σ_B z_N)/∂p = Σ_c ∂(Σ_{B_c} z_N)/∂p

each chunk's gradient (already summed over its samples by the NumPy engine), then summed
over the chunks by Dask's own tree reduction (``sum`` with ``split_every``). An input
broadcast along a chunked axis (size 1 there) is summed over that axis the same way.

One task per chunk runs the program (`dask.array.blockwise` over the batch axes); the
compiled program and the parameters are one graph key each, so every worker receives
them once, and builds the program once (`_pickling`). Everything is checked before any
task is built: the inputs' names, shapes and dtypes, chunks along the declared axes of
an input (it must be one chunk there), chunks that differ between inputs along the same
batch axis, the solve options. NumPy inputs with batch axes may be mixed with Dask ones:
they broadcast as in NumPy, and are split into the Dask inputs' chunks.

Dask is imported here only, when a call is given a Dask array.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..core._errors import LagrangianADError, NonFiniteWarning, ProgramError
from ._blocks import BlockReport
from ._values import Solution, _as_float_array, _finite, _not_finite, _user_array

__all__ = ["solve", "value", "value_and_grad"]

# The compiled program these functions serve (either engine). Not imported: `_compiled`
# imports this module (lazily, for Dask inputs), and the layers import one way only.
CompiledProgram = Any


@dataclass(frozen=True)
class _Plan:
    """One call laid out over the chunks, checked: nothing has run yet."""

    batch: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]  # per batch axis
    leads: dict[str, tuple[int, ...]]  # each input's batch axes, as given
    batched: dict[str, Any]  # Dask inputs, and the others with batch axes, in those chunks
    params: dict[str, Any]  # the other inputs without batch axes: the same for every chunk
    given: dict[str, Any]  # the inputs as the caller gave them

    @property
    def index(self) -> tuple[str, ...]:
        """The blockwise indices of the batch axes."""
        return tuple(f"b{k}" for k in range(len(self.batch)))

    def spans(self, name: str) -> tuple[bool, ...]:
        """Per batch axis, whether the input has that axis at full length (its gradient
        is then per sample along it; else summed over it)."""
        lead = self.leads[name]
        padded = (1,) * (len(self.batch) - len(lead)) + lead
        return tuple(d == b and b > 1 for d, b in zip(padded, self.batch, strict=True))


def value(fn: CompiledProgram, inputs: Mapping, check_finite: bool, options: dict) -> Any:
    """`CompiledProgram.value` over Dask inputs: a lazy Dask array with the batch's
    chunks (nothing runs until it is computed)."""
    plan = _plan(fn, inputs, check_finite, options)
    results = _per_chunk(fn, plan, "value", check_finite, None, options)
    return _per_sample(results, plan, "value", ())


def value_and_grad(
    fn: CompiledProgram, inputs: Mapping, check_finite: bool, wrt: Any, options: dict
) -> tuple[Any, dict[str, Any]]:
    """`CompiledProgram.value_and_grad` over Dask inputs: the output and the gradients of
    inputs with batch axes as Dask arrays, parameters' gradients as NumPy arrays (the
    chunks then run here, once, and the Dask results are persisted)."""
    names = list(fn._inputs) if wrt is None else [fn._input_name(k) for k in wrt]
    plan = _plan(fn, inputs, check_finite, options)
    results = _per_chunk(fn, plan, "grad", check_finite, names, options)
    lazy = {"value": _per_sample(results, plan, "value", ())}
    partial = {}
    for name in names:
        g = _gradient_parts(results, plan, fn, name)
        (lazy if any(plan.spans(name)) else partial)[name] = g
    lazy, partial, _ = _run(lazy, partial, None)
    grad = {name: lazy[name] if name in lazy else partial[name] for name in names}
    return lazy["value"], grad


def solve(fn: CompiledProgram, inputs: Mapping, check_finite: bool, options: dict) -> Solution:
    """`CompiledProgram.solve` over Dask inputs: every per-sample result a persisted Dask
    array with the batch's chunks; the parameters' gradients, ``blocks`` and ``kkt``
    reduced over the chunks (the chunks run here, once)."""
    plan = _plan(fn, inputs, check_finite, options)
    results = _per_chunk(fn, plan, "solve", check_finite, None, options)
    lazy: dict[str, Any] = {"value": _per_sample(results, plan, "value", ())}
    for var in fn.ir.intermediates:
        lazy["values", var.name] = _per_sample(results, plan, ("values", var.name), var.shape)
    for name, shape in fn._multiplier_shapes().items():
        lazy["multipliers", name] = _per_sample(results, plan, ("multipliers", name), shape)
    partial = {}
    for name in fn._inputs:
        g = _gradient_parts(results, plan, fn, name)
        (lazy if any(plan.spans(name)) else partial)[name] = g
    summary = _summary(results)
    lazy, partial, (reports, kkt) = _run(lazy, partial, summary)
    values = {  # the inputs, as eager `solve` gives them (NumPy ones copied)
        name: v if isinstance(v, da.Array) else _user_array(np.array(v, dtype=np.float64))
        for name, v in plan.given.items()
    }
    values.update({k[1]: v for k, v in lazy.items() if k[0:1] == ("values",)})
    multipliers = {k[1]: v for k, v in lazy.items() if k[0:1] == ("multipliers",)}
    grad = {name: lazy[name] if name in lazy else partial[name] for name in fn._inputs}
    return Solution(lazy["value"], grad, values, multipliers, reports, kkt)


# --------------------------------------------------------------------------- checks


def _plan(fn: CompiledProgram, inputs: Mapping, check_finite: bool, options: dict) -> _Plan:
    """The inputs checked and laid out over the chunks (`ProgramError` naming the input
    for anything that would fail, before any task is built)."""
    given = fn._named(inputs)
    missing = [n for n in fn._inputs if n not in given]
    if missing:
        raise ProgramError(f"missing input {', '.join(map(repr, missing))}")
    arrays: dict[str, Any] = {}
    leads: dict[str, tuple[int, ...]] = {}
    for name, var in fn._inputs.items():
        v = given[name]
        nd = len(var.shape)
        if isinstance(v, da.Array):
            if v.dtype.kind not in "biuf":
                raise ProgramError(
                    f"input {name!r}: expected real numbers, got a Dask array of dtype {v.dtype}"
                )
            if any(np.isnan(d) for d in v.shape):
                raise ProgramError(
                    f"input {name!r}: a Dask array of unknown chunk sizes (shape {v.shape}); "
                    "call its compute_chunk_sizes() first"
                )
            arr = v
        else:
            arr = _as_float_array(v, f"input {name!r}")
            if check_finite and not _finite(arr):
                raise _not_finite(f"input {name!r}", arr)
        shape = tuple(int(d) for d in arr.shape)
        if len(shape) < nd or shape[len(shape) - nd :] != var.shape:
            raise ProgramError(
                f"input {name!r}: expected an array of trailing shape {var.shape}, "
                f"got shape {shape}"
            )
        if isinstance(arr, da.Array):
            for axis in range(len(shape) - nd, len(shape)):
                if len(arr.chunks[axis]) > 1:
                    raise ProgramError(
                        f"input {name!r}: a Dask array chunked along axis {axis}, one of the "
                        f"input's own axes (its declared shape is {var.shape}; chunks "
                        f"{arr.chunks[axis]} there): chunk along the batch axes only, e.g. "
                        f"{name}.rechunk({{{axis}: -1}})"
                    )
        arrays[name], leads[name] = arr, shape[: len(shape) - nd]
    try:
        batch = tuple(int(d) for d in np.broadcast_shapes(*leads.values()))
    except ValueError:
        desc = ", ".join(f"{n}: {s}" for n, s in leads.items())
        raise ProgramError(f"the batch axes of the inputs do not broadcast ({desc})") from None
    chunks = _batch_chunks(arrays, leads, batch)
    fn._solve_options(options, batch)  # the options checked here, not in every chunk
    for key, val in (options.get("init") or {}).items():
        name = key if isinstance(key, str) else getattr(key, "name", str(key))
        shape = np.shape(val)
        lead = shape[: len(shape) - len(fn._intermediates[name].shape)]
        if any(d != 1 for d in lead):
            raise ProgramError(
                f"init {name!r}: with Dask inputs, give one starting value for every sample "
                f"(no batch axes), not one of shape {shape}"
            )
    batched, params = {}, {}
    for name, arr in arrays.items():
        if not leads[name] and not isinstance(arr, da.Array):
            params[name] = arr
            continue
        if not isinstance(arr, da.Array):  # split like the Dask inputs (broadcast: whole)
            # (a Dask parameter stays a Dask array: every chunk gets it whole, see _per_chunk)
            lead = leads[name]
            mine = chunks[len(batch) - len(lead) :]
            split = [(1,) if d == 1 else c for d, c in zip(lead, mine, strict=True)]
            arr = da.from_array(arr, chunks=(*split, *arr.shape[len(lead) :]), name=False)
        batched[name] = arr
    return _Plan(batch, chunks, leads, batched, params, given)


def _batch_chunks(arrays: dict, leads: dict, batch: tuple[int, ...]) -> tuple:
    """The chunks of each batch axis: those of the Dask inputs that have it at full
    length (they must agree), else one chunk."""
    out = []
    for k, size in enumerate(batch):
        found: tuple[str, tuple[int, ...]] | None = None
        for name, arr in arrays.items():
            lead = leads[name]
            axis = k - (len(batch) - len(lead))
            if not isinstance(arr, da.Array) or axis < 0 or lead[axis] != size:
                continue
            mine = tuple(int(c) for c in arr.chunks[axis])
            if found is None:
                found = (name, mine)
            elif found[1] != mine:
                raise ProgramError(
                    f"inputs {found[0]!r} and {name!r} are chunked differently along batch "
                    f"axis {k} ({found[1]} and {mine}): rechunk one like the other, e.g. "
                    f"{name}.rechunk({{{axis}: {found[1]}}})"
                )
        out.append((size,) if found is None else found[1])
    return tuple(out)


# --------------------------------------------------------------------------- the graph


def _per_chunk(fn, plan: _Plan, job: str, check_finite: bool, wrt, options: dict) -> da.Array:
    """One task per chunk, each returning that chunk's results (a dict): an array over
    the batch's chunks whose blocks are those dicts. The program and the parameters are
    one graph key each (every worker fetches them once)."""
    index = plan.index
    nb = len(index)
    shared = dask.delayed((fn, plan.params), pure=False, traverse=False)
    shared = da.from_delayed(shared, shape=(), dtype=object, meta=np.empty((), dtype=object))
    ids = da.zeros(plan.batch, chunks=plan.chunks).map_blocks(
        _block_id, dtype=object, meta=np.empty((0,) * nb, dtype=object)
    )
    args: list[Any] = [shared, (), ids, index]
    names = list(plan.batched)
    for name in names:
        arr = plan.batched[name]
        lead = len(plan.leads[name])
        own = tuple(f"{name}:{j}" for j in range(arr.ndim - lead))
        args += [arr, index[nb - lead :] + own]
    task = _Chunk(job, tuple(names), check_finite, wrt, options)
    return da.blockwise(
        task,
        index,
        *args,
        concatenate=True,
        dtype=object,
        meta=np.empty((0,) * nb, dtype=object),
        token=f"lagrangian_ad-{job}",
    )


def _block_id(block: np.ndarray, block_id: tuple[int, ...] | None = None) -> tuple:
    return block_id


_first_call = threading.Lock()
_first_calls_done: set[tuple] = set()


class _Chunk:
    """The task of one chunk: the NumPy engine on that chunk's samples.

    An error of the program (a block that does not converge, a non-finite input) is
    raised again, of the same class, with the chunk's index in front."""

    def __init__(self, job: str, names: tuple, check_finite: bool, wrt, options: dict):
        self.job, self.names, self.check_finite = job, names, check_finite
        self.wrt, self.options = wrt, options

    def __call__(self, shared: tuple, block_id: tuple, *blocks: np.ndarray) -> dict:
        fn, params = shared
        inputs = {**params, **dict(zip(self.names, blocks, strict=True))}
        first = (id(fn), self.job, None if self.wrt is None else tuple(self.wrt))
        if first not in _first_calls_done:  # code made on a first call: once, not per thread
            with _first_call:
                out = self._run(fn, inputs, block_id)
                _first_calls_done.add(first)
            return out
        return self._run(fn, inputs, block_id)

    def _run(self, fn, inputs: dict, block_id: tuple) -> dict:
        try:
            if self.job == "value":
                return {"value": fn._eager_value(inputs, self.check_finite, self.options)}
            if self.job == "grad":
                v, g = fn._eager_value_and_grad(inputs, self.check_finite, self.wrt, self.options)
                return {"value": v, "grad": g}
            sol = fn._eager_solve(inputs, self.check_finite, self.options)
        except LagrangianADError as err:
            raise type(err)(f"chunk {block_id}: {err}") from err
        out = {"value": sol.value, "grad": sol.grad, "blocks": sol.blocks, "kkt": sol.kkt}
        out.update({("values", k): v for k, v in sol.values.items()})
        out.update({("multipliers", k): v for k, v in sol.multipliers.items()})
        return out


def _per_sample(results: da.Array, plan: _Plan, key: Any, shape: tuple[int, ...]) -> da.Array:
    """One per-sample result (batch shape + ``shape``) as a Dask array in the chunks."""
    own = tuple(f"out:{j}" for j in range(len(shape)))
    return da.blockwise(
        _Take(key),
        plan.index + own,
        results,
        plan.index,
        token="lagrangian_ad-" + (key if isinstance(key, str) else "-".join(key)),
        new_axes=dict(zip(own, shape, strict=True)),
        dtype=np.float64,
        meta=np.empty((0,) * (len(plan.batch) + len(shape))),
    )


class _Take:
    """One result out of a chunk's dict."""

    def __init__(self, key: Any):
        self.key = key

    def __call__(self, result: dict) -> np.ndarray:
        return np.asarray(result[self.key], dtype=np.float64)


def _gradient_parts(results: da.Array, plan: _Plan, fn, name: str) -> da.Array:
    """The gradient of input ``name``: per chunk where the input spans a batch axis, and
    summed over the chunks (Dask's tree reduction) along the others."""
    var = fn._inputs[name]
    spans = plan.spans(name)
    nb, lead = len(plan.batch), len(plan.leads[name])
    own = tuple(f"grad:{j}" for j in range(len(var.shape)))
    parts = da.blockwise(
        _GradPart(name, nb - lead),
        plan.index + own,
        results,
        plan.index,
        token=f"lagrangian_ad-grad-{name}",
        new_axes=dict(zip(own, var.shape, strict=True)),
        adjust_chunks={i: _one for i, s in zip(plan.index, spans, strict=True) if not s},
        dtype=np.float64,
        meta=np.empty((0,) * (nb + len(var.shape))),
    )
    summed = tuple(k for k, s in enumerate(spans) if not s)
    total = parts.sum(axis=summed, keepdims=True) if summed else parts
    return total[(0,) * (nb - lead)]  # drop the batch axes the input does not have


def _one(size: int) -> int:
    return 1


class _GradPart:
    """A chunk's gradient of one input, with the batch axes it lacks as size-1 axes."""

    def __init__(self, name: str, missing: int):
        self.name, self.missing = name, missing

    def __call__(self, result: dict) -> np.ndarray:
        g = np.asarray(result["grad"][self.name], dtype=np.float64)
        return g.reshape((1,) * self.missing + g.shape)


def _summary(results: da.Array) -> Any:
    """The cyclic blocks' reports and the KKT certificate, worst over the chunks."""
    parts = [dask.delayed(_summary_of)(d) for d in results.to_delayed().ravel()]
    return dask.delayed(_worst)(parts)


def _summary_of(result: dict) -> tuple:
    return result["blocks"], result["kkt"]


def _worst(parts: list[tuple]) -> tuple:
    reports: tuple[BlockReport, ...] = ()
    if parts and parts[0][0]:
        merged = []
        for k, first in enumerate(parts[0][0]):
            chunk = [p[0][k] for p in parts]
            methods = sorted({r.method for r in chunk})
            merged.append(
                BlockReport(
                    variables=first.variables,
                    iterations=max(r.iterations for r in chunk),
                    residual=max(r.residual for r in chunk),
                    condition=float(np.fmax.reduce([r.condition for r in chunk])),
                    method="+".join(methods),
                    inner_iterations=max(r.inner_iterations for r in chunk),
                )
            )
        reports = tuple(merged)
    keys = parts[0][1].keys() if parts else ()
    kkt = {k: max((p[1][k] for p in parts), default=0.0) for k in keys}
    return reports, kkt


def _run(lazy: dict, partial: dict, summary: Any) -> tuple[dict, dict, Any]:
    """Run the chunks where a result must be NumPy: persist the per-sample results and
    the chunks' partial gradients in one go (each chunk runs once), then reduce the
    partial gradients. With nothing to reduce, nothing runs: all stays lazy."""
    if not partial and summary is None:
        return lazy, partial, None
    keys_l, keys_p = list(lazy), list(partial)
    extra = [] if summary is None else [summary]
    persisted = dask.persist(*lazy.values(), *partial.values(), *extra)
    lazy = dict(zip(keys_l, persisted[: len(keys_l)], strict=True))
    held = persisted[len(keys_l) :]
    computed = dask.compute(*held)
    partial = {k: _user_array(v) for k, v in zip(keys_p, computed[: len(keys_p)], strict=True)}
    for name, g in partial.items():
        if not _finite(g):
            warnings.warn(
                NonFiniteWarning(
                    f"the gradient with respect to input {name!r} is not finite "
                    "(the chunks' NonFiniteWarnings, on the workers, say where)"
                ),
                stacklevel=4,
            )
    return lazy, partial, (computed[-1] if extra else None)
