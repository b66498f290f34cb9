"""JAX with ``jax.jit``, float64, one thread: ``jax.vjp`` with a cotangent of ones.

``XLA_FLAGS`` must ask for one thread before JAX is imported (``python -m benchmarks``
sets it); float64 is switched on here. Inputs are put on the device once
(``jax.device_put``); every timed call blocks until its result is ready. The cold time
is ``jax.jit`` plus the first call (tracing and XLA compilation at this batch shape).
Peak memory is XLA's own buffer assignment for the compiled value_and_grad: its
temporaries plus its outputs (``compiled.memory_analysis()``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import array_models
from .implementations import Bench, Memory
from .problems import Inputs, Problem, deq_steps

LABEL = "JAX jit"

SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def available() -> tuple[bool, str]:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False, "not installed (pip install jax)"
    return True, ""


def version() -> str:
    import jax

    return jax.__version__


def _jax():
    os.environ.setdefault("XLA_FLAGS", SINGLE_THREAD_FLAGS)
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def _bench(model, inputs: Inputs, note: str = "", wrt: tuple[str, ...] | None = None) -> Bench:
    """Jit ``model(**inputs)`` and its value_and_grad over the inputs in ``wrt`` (all
    by default); the other inputs are arguments too (not constants baked into the
    compiled code), only not differentiated."""
    jax = _jax()
    import jax.numpy as jnp

    names = list(inputs)
    diff = [n for n in names if wrt is None or n in wrt]
    rest = [n for n in names if n not in diff]

    def f(*a):
        return model(**dict(zip(names, a, strict=True)))

    args = [jax.device_put(np.asarray(inputs[n], dtype=np.float64)) for n in names]
    at = {n: k for k, n in enumerate(names)}

    def _value_and_grad(*a):
        fixed = dict(zip(rest, (a[at[n]] for n in rest), strict=True))

        def g(*d):
            return model(**fixed, **dict(zip(diff, d, strict=True)))

        y, pull = jax.vjp(g, *(a[at[n]] for n in diff))
        return y, pull(jnp.ones_like(y))

    value_jit = jax.jit(f)
    vag_jit = jax.jit(_value_and_grad)

    def value():
        return jax.block_until_ready(value_jit(*args))

    def value_and_grad():
        return jax.block_until_ready(vag_jit(*args))

    def to_numpy(result: Any):
        y, grads = result
        return np.asarray(y), {n: np.asarray(g) for n, g in zip(diff, grads, strict=True)}

    def memory() -> Memory:
        stats = vag_jit.lower(*args).compile().memory_analysis()
        if stats is None:
            return Memory(None, "n/a")
        return Memory(stats.temp_size_in_bytes + stats.output_size_in_bytes, "XLA buffers")

    return Bench(value, value_and_grad, to_numpy, memory, note)


def blog(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    jnp = _jax().numpy
    return _bench(lambda x: array_models.blog(jnp, x), inputs)


def mlp(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    jnp = _jax().numpy
    return _bench(lambda **a: array_models.mlp(jnp, **a), inputs, note="matrix ops")


def chain(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    jax = _jax()
    steps = problem.sizes["steps"]

    def f(x):
        def step(z, _):
            return jax.numpy.sin(z + x), None

        z, _ = jax.lax.scan(step, x, None, length=steps)
        return z

    return _bench(f, inputs, note="lax.scan")


def equilibrium(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    jnp = _jax().numpy
    steps = problem.sizes["unroll"]
    return _bench(
        lambda **a: array_models.equilibrium_unrolled(jnp, steps=steps, **a),
        inputs,
        note=f"backprop through {steps} iterations unrolled in the trace",
    )


def mlp784(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    jax = _jax()

    def lse(y):
        return jax.nn.logsumexp(y, axis=-1)

    return _bench(
        lambda **a: array_models.mlp_softmax(jax.numpy, lse, **a),
        inputs,
        note="matrix ops, jax.nn.logsumexp",
        wrt=problem.wrt,
    )


def deq(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    jax = _jax()
    steps = deq_steps(inputs)

    def loop(step, h, n):
        return jax.lax.fori_loop(0, n, lambda _, h: step(h), h)

    return _bench(
        lambda **a: array_models.deq_unrolled(jax.numpy, steps=steps, loop=loop, **a),
        inputs,
        note=f"backprop through {steps} iterations (lax.fori_loop; the forward tolerance)",
        wrt=problem.wrt,
    )


BUILDERS = {
    "blog": blog,
    "mlp": mlp,
    "chain": chain,
    "equilibrium": equilibrium,
    "mlp784": mlp784,
    "deq": deq,
}
