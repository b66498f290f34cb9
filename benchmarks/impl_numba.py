"""lagrangian_ad's fused backend: the forward and adjoint passes in one Numba loop.

It drives `lagrangian_ad.compiling._fused.FusedEngine` through the interface the library will use:
``fn._prepare(inputs)``, then ``engine.value`` or ``engine.value_and_grad`` (the
parameters' gradients summed over the batch inside the kernel, ``reduce=True``), then
``engine.grads`` (which is ``fn._grads`` for per-sample gradients). The program is
compiled once per problem (as for lagrangian_ad) and so is the engine; Numba compiles one
kernel per kind (value, value_and_grad) and per pattern of batched inputs, on first use.
Both kernels are compiled in ``build``, so the cold time of the first row of a pattern
holds them (and the rows after it reuse them; the note says which). Cyclic programs (the
equilibrium model) are outside the fused backend: "acyclic only".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import impl_lad
from .implementations import Bench, Memory, Unsupported
from .problems import Inputs, Problem
from .timing import tracemalloc_peak

LABEL = "lagrangian_ad (numba)"

_engines: dict[tuple, Any] = {}


def available() -> tuple[bool, str]:
    from lagrangian_ad.compiling._fused import numba_available

    if not numba_available():
        return False, "not installed (pip install numba, or lagrangian_ad[fast])"
    return True, ""


def version() -> str:
    import numba

    import lagrangian_ad

    return f"{lagrangian_ad.__version__} + Numba {numba.__version__}"


def _engine(problem: Problem) -> tuple[Any, Any]:
    """The problem's compiled program and its fused engine, built once."""
    import lagrangian_ad as lad
    from lagrangian_ad.compiling._fused import FusedEngine

    prog, _ = impl_lad.program(problem)
    fn = prog.compile()
    if problem.key not in _engines:
        try:
            _engines[problem.key] = FusedEngine(fn)
        except lad.ProgramError as err:
            if "acyclic programs only" in str(err):
                raise Unsupported("acyclic only") from err
            raise
    return fn, _engines[problem.key]


def build(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    fn, engine = _engine(problem)
    before = dict(engine.compile_seconds)

    def value():
        entries, _, _, shape = fn._prepare(inputs)
        return engine.value(entries, shape)

    def value_and_grad():
        entries, arrays, leads, shape = fn._prepare(inputs)
        out, g = engine.value_and_grad(entries, shape, reduce=True)
        return out, engine.grads(g, arrays, leads, shape)

    value()  # compiles this pattern's value kernel here, inside the cold time
    value_and_grad()  # and its value_and_grad kernel
    new = {k: s for k, s in engine.compile_seconds.items() if k not in before}
    if new:
        parts = ", ".join(f"{kind} {s:.1f} s" for (kind, *_), s in new.items())
        note = f"Numba compiled {parts} (in cold)"
    else:
        note = "Numba kernels reused from an earlier row (not in cold)"

    def to_numpy(result):
        v, g = result
        return np.asarray(v), {k: np.asarray(a) for k, a in g.items()}

    return Bench(
        value=value,
        value_and_grad=value_and_grad,
        to_numpy=to_numpy,
        memory=lambda: Memory(tracemalloc_peak(value_and_grad), "tracemalloc"),
        note=note,
    )


BUILDERS = {
    "blog": build,
    "mlp": build,
    "chain": build,
    "equilibrium": build,
}
