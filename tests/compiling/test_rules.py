"""The table of structural rules (`_rules`), checked with an algebra of NumPy numbers:
each vector-Jacobian product is the adjoint of the Jacobian-vector product (the
dot-product test), the Jacobian-vector product matches central differences of the
value, and the second-order rule matches differences of the vector-Jacobian product."""

from __future__ import annotations

import numpy as np
import pytest

from lagrangian_ad.compiling import _rules as rules


class _Numbers:
    """The rules' algebra on plain 2-D NumPy arrays (no batch axes)."""

    matmul = staticmethod(np.matmul)
    T = staticmethod(np.transpose)
    add = staticmethod(np.add)

    @staticmethod
    def total(a):
        return np.array([[a.sum()]])

    @staticmethod
    def entry(a, i, j):
        return a[i : i + 1, j : j + 1]

    @staticmethod
    def spread(g, like):
        return np.full(like.shape, g.item())

    @staticmethod
    def place(g, like, i, j):
        out = np.zeros(like.shape)
        out[i, j] = g.item()
        return out

    @staticmethod
    def gather(a, ix, unique, shape):
        return a.reshape(-1)[ix].reshape(shape)

    @staticmethod
    def scatter(g, like, ix, unique, shape):
        out = np.zeros(like.size)
        np.add.at(out, ix, g.reshape(-1))
        return out.reshape(like.shape)

    @staticmethod
    def fit(c, like):
        assert c.shape == like.shape
        return c


NUM = _Numbers()
CASES = [  # op, data, operand shapes
    ("matmul", None, [(3, 4), (4, 2)]),
    ("matmul", None, [(1, 5), (5, 1)]),
    ("T", None, [(3, 2)]),
    ("sum", None, [(3, 4)]),
    ("entry", (1, 2), [(3, 4)]),
    ("gather", (np.array([5, 0, 5, 11, 2]), False, (5, 1)), [(3, 4)]),  # 5 read twice
    ("gather", (np.array([3, 1]), True, (1, 2)), [(2, 2)]),
]

IDS = [f"{c[0]}{k}" for k, c in enumerate(CASES)]


def _operands(rng, shapes):
    return [rng.standard_normal(s) for s in shapes]


@pytest.mark.parametrize(("op", "data", "shapes"), CASES, ids=IDS)
def test_vjp_is_the_adjoint_of_jvp_and_jvp_is_the_derivative(op, data, shapes):
    rng = np.random.default_rng(7)
    a, da = _operands(rng, shapes), _operands(rng, shapes)
    out = rules.value(NUM, op, data, a)
    g = rng.standard_normal(out.shape)
    jvp = rules.jvp(NUM, op, data, a, da)
    lhs = np.sum(g * jvp)
    rhs = sum(np.sum(c * da[k]) for k, c in rules.vjp(NUM, op, data, g, a))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    h = 1e-6
    plus = rules.value(NUM, op, data, [x + h * d for x, d in zip(a, da, strict=True)])
    minus = rules.value(NUM, op, data, [x - h * d for x, d in zip(a, da, strict=True)])
    np.testing.assert_allclose(jvp, (plus - minus) / (2 * h), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(("op", "data", "shapes"), CASES, ids=IDS)
def test_vjp_tangent_is_the_derivative_of_vjp(op, data, shapes):
    """d/dε of vjp(g + ε ġ, a + ε ȧ), by central differences."""
    rng = np.random.default_rng(11)
    a, da = _operands(rng, shapes), _operands(rng, shapes)
    out = rules.value(NUM, op, data, a)
    g, dg = rng.standard_normal(out.shape), rng.standard_normal(out.shape)
    got = dict(rules.vjp_tangent(NUM, op, data, g, dg, a, da))
    h = 1e-6

    def vjp_at(eps):
        moved = [x + eps * d for x, d in zip(a, da, strict=True)]
        return dict(rules.vjp(NUM, op, data, g + eps * dg, moved))

    plus, minus = vjp_at(h), vjp_at(-h)
    for k in plus:
        np.testing.assert_allclose(got[k], (plus[k] - minus[k]) / (2 * h), rtol=1e-7, atol=1e-9)


def test_zero_tangents_give_no_code():
    """A tangent that is zero everywhere (None) contributes nothing: no term is printed."""
    a = [np.ones((2, 2)), np.ones((2, 2))]
    assert rules.jvp(NUM, "matmul", None, a, [None, None]) is None
    assert rules.vjp_tangent(NUM, "T", None, a[0], None, a[:1], [np.ones((2, 2))]) == []
    only_b = rules.vjp_tangent(NUM, "matmul", None, a[0], None, a, [None, np.ones((2, 2))])
    assert [k for k, _ in only_b] == [0]  # ȧ = 0: only A's adjoint moves (it reads B)
