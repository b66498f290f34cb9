"""Hand-written NumPy adjoints: what a careful person writes by hand, vectorized over the batch.

Each problem's backward pass is derived on paper from its constraints (the multipliers of
DESIGN.md: λ_j = [j = N] + Σ_{i ∈ children(j)} λ_i ∂f_i/∂z_j) and written with whole-array
operations: matrix products for the MLP, a reversed cumulative product for the chain's
multipliers, and for the equilibrium model the implicit adjoint — the fixed point
h = tanh(W h + U x + b) by iteration to 1e-13, then λ = 1 + Wᵀ(D λ), D = diag(1 − h²),
i.e. (I − J)ᵀλ = 1 with J = D W, by the same iteration.
"""

from __future__ import annotations

import numpy as np

from .implementations import Bench, Memory
from .problems import Inputs, Problem
from .timing import tracemalloc_peak

LABEL = "NumPy by hand"

_TOL = 1e-13
_MAX_ITER = 1_000


def available() -> tuple[bool, str]:
    return True, ""


def version() -> str:
    return np.__version__


def _bench(value, value_and_grad, to_numpy, note: str = "") -> Bench:
    return Bench(
        value=value,
        value_and_grad=value_and_grad,
        to_numpy=to_numpy,
        memory=lambda: Memory(tracemalloc_peak(value_and_grad), "tracemalloc"),
        note=note,
    )


def _identity(result):
    return result


# --------------------------------------------------------------------------- blog


def blog(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    x = np.asarray(inputs["x"], dtype=float)

    def value():
        a = np.exp(x)
        c = a + a * a
        return np.exp(c) + np.sin(c)

    def value_and_grad():
        a = np.exp(x)
        c = a + a * a
        d = np.exp(c)
        lam_c = d + np.cos(c)  # λ_c = λ_d ∂d/∂c + λ_e ∂e/∂c
        return d + np.sin(c), {"x": lam_c * (1 + 2 * a) * a}  # λ_a ∂a/∂x

    return _bench(value, value_and_grad, _identity)


# --------------------------------------------------------------------------- MLP


def mlp(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    X = np.atleast_2d(inputs["x"])
    T = np.atleast_1d(inputs["t"])
    W1, b1, w2 = inputs["W1"], inputs["b1"], inputs["w2"]
    b2 = float(inputs["b2"])

    def value():
        h = np.tanh(X @ W1.T + b1)
        r = h @ w2 + b2 - T
        return r * r

    def value_and_grad():
        h = np.tanh(X @ W1.T + b1)
        r = h @ w2 + b2 - T
        dy = 2 * r  # λ_y
        dpre = np.multiply.outer(dy, w2)  # λ_h, then λ_pre = λ_h (1 − h²)
        dpre *= 1 - h * h
        grads = {
            "x": dpre @ W1,
            "t": -dy,
            "W1": dpre.T @ X,
            "b1": dpre.sum(0),
            "w2": h.T @ dy,
            "b2": dy.sum(),
        }
        return r * r, grads

    def to_numpy(result):
        v, g = result
        shapes = {k: np.shape(a) for k, a in inputs.items()}
        return v.reshape(np.shape(inputs["t"])), {k: g[k].reshape(shapes[k]) for k in g}

    return _bench(value, value_and_grad, to_numpy)


# --------------------------------------------------------------------------- chain


def chain(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    x = np.asarray(inputs["x"], dtype=float)
    steps = problem.sizes["steps"]

    def value():
        z = x
        for _ in range(steps):
            z = np.sin(z + x)
        return z

    def value_and_grad():
        A = np.empty((steps, *x.shape))  # a_k = z_{k−1} + x, kept for the backward pass
        z = x
        for k in range(steps):
            a = A[k, ...]  # a view, also when x is a single sample
            np.add(z, x, out=a)
            z = np.sin(a)
        # λ_{a_k} = Π_{j ≥ k} cos(a_j); ∂z/∂x = Σ_k λ_{a_k} + λ_{z_0}, and λ_{z_0} = λ_{a_1}
        lam = np.cumprod(np.cos(A)[::-1], axis=0)[::-1]
        return z, {"x": lam.sum(0) + lam[0]}

    return _bench(value, value_and_grad, _identity, note="forward loop, vectorized cumprod")


# --------------------------------------------------------------------------- equilibrium


def _fixed_point(C: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, int]:
    """Iterate h ← tanh(W h + c) for every sample (rows of C) to max |Δh| ≤ 1e-13."""
    H = np.tanh(C)
    for k in range(_MAX_ITER):
        new = np.tanh(H @ W.T + C)
        if np.max(np.abs(new - H)) <= _TOL:
            return new, k + 1
        H = new
    raise RuntimeError("equilibrium: the fixed-point iteration did not converge")


def equilibrium(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    W, U, b = inputs["W"], inputs["U"], inputs["b"]
    X = np.atleast_2d(inputs["x"])

    def value():
        H, _ = _fixed_point(X @ U.T + b, W)
        return H.sum(1)

    def value_and_grad():
        H, _ = _fixed_point(X @ U.T + b, W)
        D = 1 - H * H
        lam = np.ones_like(H)  # (I − J)ᵀλ = 1 with J = D W, i.e. λ = 1 + Wᵀ(D λ)
        for _ in range(_MAX_ITER):
            new = 1 + (D * lam) @ W
            if np.max(np.abs(new - lam)) <= _TOL * np.max(np.abs(new)):
                break
            lam = new
        else:
            raise RuntimeError("equilibrium: the adjoint iteration did not converge")
        M = D * new  # multipliers of the pre-activations
        grads = {"W": M.T @ H, "U": M.T @ X, "b": M.sum(0), "x": M @ U}
        return H.sum(1), grads

    def to_numpy(result):
        v, g = result
        g = dict(g)
        g["x"] = g["x"].reshape(np.shape(inputs["x"]))
        return v.reshape(np.shape(inputs["x"])[:-1]), g

    _, iters = _fixed_point(X @ U.T + b, W)
    note = f"implicit: fixed point by iteration ({iters} steps to 1e-13), adjoint likewise"
    return _bench(value, value_and_grad, to_numpy, note=note)


BUILDERS = {"blog": blog, "mlp": mlp, "chain": chain, "equilibrium": equilibrium}
