"""Hand-written NumPy adjoints: what a careful person writes by hand, vectorized over the batch.

Each problem's backward pass is derived on paper from its constraints (the multipliers of
DESIGN.md: λ_j = [j = N] + Σ_{i ∈ children(j)} λ_i ∂f_i/∂z_j) and written with whole-array
operations: matrix products for the MLP, a reversed cumulative product for the chain's
multipliers, and for the equilibrium model the implicit adjoint — the fixed point
h = tanh(W h + U x + b) by iteration to 1e-13, then λ = 1 + Wᵀ(D λ), D = diag(1 − h²),
i.e. (I − J)ᵀλ = 1 with J = D W, by the same iteration.

The array problems of issue 12: the 784-256-256-10 MLP's backward pass by hand (λ_y =
softmax(y) − t, then back through the layers), and for the equilibrium models (deq*)
the tight reference every implementation is checked against: the fixed point by
iteration to 1e-15 (the rounding floor), then the dense implicit-function solve of the
multipliers, (I − Wᵀ D) λ = c per sample (`numpy.linalg.solve`, LAPACK's LU).
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


def _reshaper(inputs: Inputs):
    """to_numpy for the problems with a batched ``x`` of shape B + (d,): the value gets
    the batch shape, each gradient its input's shape (batch 1 has no batch axis)."""
    shapes = {k: np.shape(a) for k, a in inputs.items()}

    def to_numpy(result):
        v, g = result
        return v.reshape(shapes["x"][:-1]), {k: g[k].reshape(shapes[k]) for k in g}

    return to_numpy


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

    return _bench(value, value_and_grad, _reshaper(inputs))


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

    _, iters = _fixed_point(X @ U.T + b, W)
    note = f"implicit: fixed point by iteration ({iters} steps to 1e-13), adjoint likewise"
    return _bench(value, value_and_grad, _reshaper(inputs), note=note)


# --------------------------------------------------------------------------- array MLP


def mlp784(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    X, T = np.atleast_2d(inputs["x"]), np.atleast_2d(inputs["t"])
    W1, b1, W2, b2, W3, b3 = (inputs[k] for k in ("W1", "b1", "W2", "b2", "W3", "b3"))
    weights_only = problem.wrt is not None and not {"x", "t"} & set(problem.wrt)

    def forward():
        h1 = np.tanh(X @ W1.T + b1)
        h2 = np.tanh(h1 @ W2.T + b2)
        y = h2 @ W3.T + b3
        m = y.max(1, keepdims=True)  # a stable log-sum-exp
        e = np.exp(y - m)
        s = e.sum(1, keepdims=True)
        loss = m[:, 0] + np.log(s[:, 0]) - (T * y).sum(1)
        return h1, h2, y, e / s, loss

    def value():
        return forward()[-1]

    def value_and_grad():
        h1, h2, y, p, loss = forward()
        dy = p - T  # λ_y = ∂loss/∂y = softmax(y) − t
        d2 = (dy @ W3) * (1 - h2 * h2)  # λ_h2 ∘ tanh′: the multiplier of W2 h1 + b2
        d1 = (d2 @ W2) * (1 - h1 * h1)
        grads = {} if weights_only else {"x": d1 @ W1, "t": -y}
        grads |= {
            "W1": d1.T @ X,
            "b1": d1.sum(0),
            "W2": d2.T @ h1,
            "b2": d2.sum(0),
            "W3": dy.T @ h2,
            "b3": dy.sum(0),
        }
        return loss, grads

    return _bench(value, value_and_grad, _reshaper(inputs), note="matrix ops, stable log-sum-exp")


# --------------------------------------------------------------------------- array DEQ

_TIGHT = 1e-15  # the rounding floor of the fixed-point iteration in float64
_CHUNK = 8  # samples per batched dense solve (8 × 1000 × 1000 floats = 64 MB)


def _tight_fixed_point(C: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, int]:
    """h ← tanh(W h + c) per sample until max |Δh| ≤ 1e-15, or it stops improving."""
    H, best, stalled = np.tanh(C), np.inf, 0
    for k in range(_MAX_ITER):
        new = np.tanh(H @ W.T + C)
        step = float(np.max(np.abs(new - H)))
        H = new
        if step <= _TIGHT:
            return H, k + 1
        stalled = stalled + 1 if step >= best else 0
        best = min(best, step)
        if stalled >= 5 and best <= 1e-13:  # at the rounding floor
            return H, k + 1
    raise RuntimeError("deq: the fixed-point iteration did not converge")


def deq(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    W, U, b, c = inputs["W"], inputs["U"], inputs["b"], inputs["c"]
    X = np.atleast_2d(inputs["x"])
    n = W.shape[0]
    eye = np.eye(n)

    def value():
        H, _ = _tight_fixed_point(X @ U.T + b, W)
        return H @ c

    def value_and_grad():
        H, _ = _tight_fixed_point(X @ U.T + b, W)
        D = 1 - H * H
        lam = np.empty_like(H)  # (I − J)ᵀ λ = c with J = D W: (I − Wᵀ D) λ = c
        for s in range(0, len(H), _CHUNK):
            A = eye - W.T[None, :, :] * D[s : s + _CHUNK, None, :]
            rhs = np.broadcast_to(c[:, None], (len(A), n, 1))
            lam[s : s + _CHUNK] = np.linalg.solve(A, rhs)[..., 0]
        M = D * lam  # multipliers of the pre-activations W h + U x + b
        grads = {"W": M.T @ H, "U": M.T @ X, "b": M.sum(0), "c": H.sum(0), "x": M @ U}
        if problem.wrt is not None:
            grads = {k: g for k, g in grads.items() if k in problem.wrt}
        return H @ c, grads

    _, iters = _tight_fixed_point(X @ U.T + b, W)
    note = f"reference: fixed point to 1e-15 ({iters} steps), dense solve (I − Wᵀ D) λ = c"
    return _bench(value, value_and_grad, _reshaper(inputs), note=note)


BUILDERS = {
    "blog": blog,
    "mlp": mlp,
    "chain": chain,
    "equilibrium": equilibrium,
    "mlp784": mlp784,
    "deq": deq,
}
