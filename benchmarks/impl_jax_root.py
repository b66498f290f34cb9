"""JAX's implicit differentiation of the equilibrium models: ``jax.lax.custom_root``.

The forward pass finds the root of f(H) = H − tanh(H Wᵀ + C), C = X Uᵀ + b, by
fixed-point iteration in a ``lax.while_loop`` until max |f(H)| ≤ 1e-12 (the tolerance of
every implementation of the problem, `problems.DEQ_TOL`). Its derivative comes from the
implicit function theorem, as custom_root defines it: the tangent system
(I − D W) ḣ = … and, under reverse mode, its transpose (I − Wᵀ D) λ = c, solved
matrix-free by ``lax.custom_linear_solve`` with a Richardson (fixed-point) iteration
x ← b + (x − g(x)) to a relative residual of 1e-12, the solve and its transpose alike.
No n × n matrix is formed. Jitted, float64, one thread, as `impl_jax`. The entry-wise
equilibrium problem (output Σ h, no c) runs the same code.
"""

from __future__ import annotations

from .impl_jax import _bench, _jax, available, version
from .implementations import Bench
from .problems import DEQ_TOL, Inputs, Problem

__all__ = ["BUILDERS", "LABEL", "available", "version"]

LABEL = "JAX custom_root"
MAX_ITER = 10_000


def _richardson(matvec, b):
    """x with matvec(x) = b, for matvec = I − K with K a contraction: x ← b + K x."""
    jax = _jax()
    jnp = jax.numpy
    scale = jnp.max(jnp.abs(b))

    def cond(state):
        _, residual, k = state
        return (residual > DEQ_TOL * scale) & (k < MAX_ITER)

    def body(state):
        x, _, k = state
        r = b - matvec(x)
        return x + r, jnp.max(jnp.abs(r)), k + 1

    x, _, _ = jax.lax.while_loop(cond, body, (b, jnp.inf, 0))
    return x


def deq(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    jax = _jax()
    jnp, lax = jax.numpy, jax.lax

    def model(W, U, b, x, c=None):
        C = x @ U.T + b

        def f(H):
            return H - jnp.tanh(H @ W.T + C)

        def solve(f, H0):
            def cond(state):
                _, residual, k = state
                return (residual > DEQ_TOL) & (k < MAX_ITER)

            def body(state):
                H, _, k = state
                r = f(H)
                return H - r, jnp.max(jnp.abs(r)), k + 1

            H, _, _ = lax.while_loop(cond, body, (H0, jnp.inf, 0))
            return H

        def tangent_solve(g, y):
            return lax.custom_linear_solve(g, y, _richardson, transpose_solve=_richardson)

        H = lax.custom_root(f, jnp.zeros_like(C), solve, tangent_solve)
        return H.sum(-1) if c is None else H @ c

    return _bench(
        model,
        inputs,
        note="implicit: fixed point to 1e-12, adjoint (I − Wᵀ D) λ = ∂out/∂h by Richardson",
        wrt=problem.wrt,
    )


BUILDERS = {"deq": deq, "equilibrium": deq}
