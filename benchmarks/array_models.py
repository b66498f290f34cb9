"""The problems written once against the array operations PyTorch and JAX share.

``xp`` is ``torch`` or ``jax.numpy``; each function returns the per-sample output (batch
shape) from inputs in lagrangian_ad's shapes. Batch axes lead, so ``x @ W.T`` works for
one sample (``x`` of shape (d,)) and for a batch (shape (B, d)) alike. The chain is not
here: its loop is library-specific (a Python loop in PyTorch, ``lax.scan`` in JAX).
"""

from __future__ import annotations

from typing import Any

__all__ = ["blog", "deq_unrolled", "equilibrium_unrolled", "mlp", "mlp_softmax"]


def blog(xp: Any, x):
    """f = exp(c) + sin(c), c = a + a², a = exp(x)."""
    a = xp.exp(x)
    c = a + a * a
    return xp.exp(c) + xp.sin(c)


def mlp(xp: Any, x, t, W1, b1, w2, b2):
    """loss = (w2·tanh(W1 x + b1) + b2 − t)² per sample."""
    h = xp.tanh(x @ W1.T + b1)
    r = h @ w2 + b2 - t
    return r * r


def equilibrium_unrolled(xp: Any, W, U, b, x, steps: int):
    """Σ_i h_i after ``steps`` iterations h ← tanh(W h + U x + b) from h = 0."""
    c = x @ U.T + b
    h = xp.zeros_like(c)
    for _ in range(steps):
        h = xp.tanh(h @ W.T + c)
    return h.sum(-1)


def mlp_softmax(xp: Any, logsumexp, x, t, W1, b1, W2, b2, W3, b3):
    """Softmax cross-entropy of a tanh MLP per sample: logsumexp(y) − t·y.

    ``logsumexp(y)`` is the library's stable one over the last axis.
    """
    h1 = xp.tanh(x @ W1.T + b1)
    h2 = xp.tanh(h1 @ W2.T + b2)
    y = h2 @ W3.T + b3
    return logsumexp(y) - (t * y).sum(-1)


def deq_unrolled(xp: Any, W, U, b, c, x, steps: int, loop=None):
    """cᵀh after ``steps`` iterations h ← tanh(W h + U x + b) from h = 0.

    ``loop(step, h, steps)`` runs the iterations (JAX: a ``lax.fori_loop``); by default
    a Python loop.
    """
    C = x @ U.T + b

    def step(h):
        return xp.tanh(h @ W.T + C)

    h = xp.zeros_like(C)
    if loop is None:
        for _ in range(steps):
            h = step(h)
    else:
        h = loop(step, h, steps)
    return h @ c
