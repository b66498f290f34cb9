"""Cyclic programs and implicit equations: fixed points, linear cycles, blocks, errors."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import scipy.sparse as sps
import scipy.sparse.linalg as spla
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

import lagrangian_ad as lad
from lagrangian_ad import ConvergenceError, ProgramError, SingularSystemError
from lagrangian_ad.testing import check_grads


def _tanh_fixed_point():
    prog = lad.Program()
    x = prog.input("x")
    h = prog.var("h")
    prog.define(h, sp.tanh(0.5 * h + x))
    prog.define("y", h**2)
    return prog


@pytest.mark.parametrize("method", ["newton", "fixed-point", "anderson", "inexact-newton", "auto"])
def test_scalar_fixed_point_closed_form(method):
    """h = tanh(h/2 + x): by the implicit function theorem dh/dx = s / (1 − s/2), s = 1 − h²."""
    xs = np.array([-1.0, 0.0, 0.3, 2.0])
    sol = _tanh_fixed_point().solve({"x": xs}, method=method)
    h = sol.values["h"]
    np.testing.assert_allclose(h, np.tanh(0.5 * h + xs), rtol=0, atol=1e-14)
    s = 1 - h**2
    dh = s / (1 - 0.5 * s)
    np.testing.assert_allclose(sol.grad["x"], 2 * h * dh, rtol=1e-13, atol=1e-15)
    # λ_h = ∂y/∂h through the cycle = 2h / (1 − s/2); λ_y = 1
    np.testing.assert_allclose(sol.multipliers["h"], 2 * h / (1 - 0.5 * s), rtol=1e-13)
    np.testing.assert_allclose(sol.multipliers["y"], 1.0)
    (report,) = sol.blocks
    assert report.variables == ("h",) and report.iterations > 0 and report.residual < 1e-14
    assert sol.kkt["max_dL_dlambda"] < 1e-14 and sol.kkt["max_dL_dz"] < 1e-14


def _linear_cycle(n: int) -> lad.Program:
    """z = A z + b, out = c·z."""
    prog = lad.Program()
    A = prog.input("A", shape=(n, n))
    b = prog.input("b", shape=(n,))
    c = prog.input("c", shape=(n,))
    z = prog.var("z", shape=(n,))
    prog.define(z, A * z + b)
    prog.define("out", (c.T * z)[0, 0])
    return prog


def test_linear_cycle_against_numpy():
    """z = A z + b: z = (I − A)⁻¹ b, λ = (I − A)⁻ᵀ c, ∂(c·z)/∂A = λ zᵀ, ∂/∂b = λ."""
    rng = np.random.default_rng(3)
    n = 6
    prog = _linear_cycle(n)
    An = 0.3 * rng.standard_normal((n, n))
    bn, cn = rng.standard_normal(n), rng.standard_normal(n)
    sol = prog.solve({"A": An, "b": bn, "c": cn})
    M = np.eye(n) - An
    zn = np.linalg.solve(M, bn)
    lam = np.linalg.solve(M.T, cn)
    np.testing.assert_allclose(sol.values["z"], zn, rtol=1e-13)
    np.testing.assert_allclose(sol.multipliers["z"], lam, rtol=1e-12)
    np.testing.assert_allclose(sol.grad["b"], lam, rtol=1e-12)
    np.testing.assert_allclose(sol.grad["A"], np.outer(lam, zn), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sol.grad["c"], zn, rtol=1e-13)
    assert sol.blocks[0].condition == pytest.approx(np.linalg.cond(M, 1), rel=1e-8)


def test_ill_conditioned_block_multipliers_are_backward_stable():
    """z = A z + b with cond₁(I − A) ≈ 2e8 and c = (I − A)ᵀ λ* for a λ* of size 1: an LU
    solve gives λ with a residual at rounding level, ‖(I − A)ᵀ λ − c‖ ≲ ε ‖I − A‖ ‖λ‖
    (backward stable); multiplying by an explicit inverse left a residual near ε·cond."""
    n = 6
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    M = U @ np.diag(np.logspace(0, -8, n)) @ V.T
    cn = M.T @ rng.standard_normal(n)
    prog = _linear_cycle(n)
    bn = rng.standard_normal(n)
    for inputs in (
        {"A": np.eye(n) - M, "b": bn, "c": cn},
        {"A": np.eye(n) - M, "b": [bn, -bn], "c": cn},
    ):
        sol = prog.solve(inputs, tol=1e-6)
        lam = np.reshape(sol.multipliers["z"], (-1, n))
        bound = 20 * n * np.finfo(float).eps * np.abs(M).sum(axis=0).max() * np.abs(lam).max()
        assert np.abs(lam @ M - cn).max() <= bound
        assert sol.blocks[0].condition == pytest.approx(np.linalg.cond(M, 1), rel=1e-6)


def test_ill_conditioned_regular_blocks_are_not_called_singular():
    """Regular roots at the default tolerance, however ill-conditioned, still give their
    gradient: a linear cycle with cond₁(I − A) ≈ 2e5 (a tolerance of 1e-12 is below the
    ε·cond to which the rounded equations fix z) against NumPy, and u² = x at x = 1e-14,
    whose root 1e-7 has du/dx = 1/(2u) = 5e6 (condition 5e6)."""
    n = 6
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    M = U @ np.diag(np.logspace(0, -5, n)) @ V.T
    bn, cn = rng.standard_normal((30, n)), rng.standard_normal(n)
    sol = _linear_cycle(n).solve({"A": np.eye(n) - M, "b": bn, "c": cn})
    assert sol.blocks[0].condition > 1e5
    np.testing.assert_allclose(sol.values["z"], np.linalg.solve(M, bn.T).T, rtol=1e-9)
    np.testing.assert_allclose(sol.grad["b"], np.tile(np.linalg.solve(M.T, cn), (30, 1)), rtol=1e-9)
    root = lad.parse("input x\nvar u\nu**2 = x\ny = u\n").solve({"x": 1e-14}, init={"u": 1.0})
    assert root.value == pytest.approx(1e-7, rel=1e-12)
    assert root.grad["x"] == pytest.approx(5e6, rel=1e-9)


def test_mixed_dag_and_cycles_batched():
    """A DAG feeding two separate cycles feeding a DAG, over a batch of 5."""
    prog = lad.Program()
    x = prog.input("x")
    w = prog.input("w", shape=(2,))
    a = prog.define("a", sp.sin(x) * w[0])
    p, q = prog.var("p"), prog.var("q")
    prog.define(p, 0.4 * sp.cos(q) + a)
    prog.define(q, 0.3 * sp.sin(p) - w[1] * x)
    r = prog.var("r")
    prog.define(r, 0.5 * sp.tanh(r) + p * q)
    prog.define("out", r**2 + a)
    rng = np.random.default_rng(5)
    inputs = {"x": rng.uniform(-1, 1, 5), "w": np.array([0.7, -0.4])}
    sol = prog.solve(inputs)
    assert [b.variables for b in sol.blocks] == [("p", "q"), ("r",)]
    check_grads(prog, inputs, rtol=1e-7)
    # the gradient of r w.r.t. the inputs by the implicit function theorem, block by block
    P, Q, R = sol.values["p"], sol.values["q"], sol.values["r"]
    xs = inputs["x"]
    J = np.zeros((5, 2, 2))  # ∂(residual)/∂(p, q)
    J[:, 0, 0], J[:, 0, 1] = 1, 0.4 * np.sin(Q)
    J[:, 1, 0], J[:, 1, 1] = -0.3 * np.cos(P), 1
    dA = np.stack([np.cos(xs) * 0.7, np.full(5, 0.4)], axis=-1)  # ∂f/∂x of (p, q): (w0 cos x, −w1)
    dpq = np.linalg.solve(J, dA[..., None])[..., 0]  # d(p, q)/dx
    dr = (Q * dpq[:, 0] + P * dpq[:, 1]) / (1 - 0.5 * (1 - np.tanh(R) ** 2))
    np.testing.assert_allclose(sol.grad["x"], 2 * R * dr + np.cos(xs) * 0.7, rtol=1e-11)


def test_implicit_equation_cubic():
    """u³ + u = x: du/dx = 1/(3u² + 1)."""
    prog = lad.Program()
    x = prog.input("x")
    u = prog.var("u")
    prog.equation(u**3 + u, x)
    prog.define("y", sp.sin(u))
    xs = np.linspace(-3, 10, 7)
    sol = prog.solve({"x": xs})
    uv = sol.values["u"]
    np.testing.assert_allclose(uv**3 + uv, xs, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(sol.grad["x"], np.cos(uv) / (3 * uv**2 + 1), rtol=1e-13)
    np.testing.assert_allclose(sol.multipliers["eq1"], np.cos(uv) / (3 * uv**2 + 1), rtol=1e-13)
    assert "u" not in sol.multipliers
    check_grads(prog, {"x": xs})


def test_implicit_equation_matched_through_a_definition():
    """The unknown u appears only through y = 2u; the equation fixes y: y³ + y = x."""
    prog = lad.Program()
    x = prog.input("x")
    u = prog.var("u")
    y = prog.define("y", 2 * u)
    prog.equation(y**3 + y, x)
    prog.output(u)
    sol = prog.solve({"x": 3.0})
    yv = sol.values["y"]
    assert yv**3 + yv == pytest.approx(3.0, rel=1e-14)
    assert sol.value == pytest.approx(yv / 2, rel=1e-14)
    assert sol.grad["x"] == pytest.approx(0.5 / (3 * yv**2 + 1), rel=1e-13)


def test_init_selects_the_fixed_point():
    """u² = x has two roots; init chooses, and du/dx = 1/(2u) follows the one chosen."""
    prog = lad.Program()
    x = prog.input("x")
    u = prog.var("u")
    prog.equation(u**2, x)
    prog.define("y", u + 0)
    for start, sign in [(1.0, 1), (-1.0, -1)]:
        sol = prog.solve({"x": 4.0}, init={"u": start})
        assert sol.value == pytest.approx(2.0 * sign, rel=1e-14)
        assert sol.grad["x"] == pytest.approx(1 / (4.0 * sign), rel=1e-13)


def test_sparse_block_of_300_unknowns():
    """A ring z_i = 0.3 tanh(z_{i−1}) + 0.3 tanh(z_{i+1}) + x_i, one block of 300: beyond
    DENSE_MAX, so sparse LU per sample (2,000 unknowns tested the same in 15 s)."""
    from lagrangian_ad.solving._blocks import DENSE_MAX

    n = 300
    assert n > DENSE_MAX
    prog = lad.Program()
    x = prog.input("x", shape=(n,))
    z = prog.var("z", shape=(n,))
    prog.define(
        z,
        sp.Matrix(
            [0.3 * sp.tanh(z[i - 1]) + 0.3 * sp.tanh(z[(i + 1) % n]) + x[i] for i in range(n)]
        ),
    )
    w = np.random.default_rng(7).standard_normal(n)
    prog.define("out", sp.Add(*[float(w[i]) * z[i] for i in range(n)]))
    xs = np.sin(np.arange(n) * 0.01)
    sol = prog.solve({"x": xs})
    (report,) = sol.blocks
    assert len(report.variables) == n
    zs = sol.values["z"]
    np.testing.assert_allclose(
        zs, 0.3 * np.tanh(np.roll(zs, 1)) + 0.3 * np.tanh(np.roll(zs, -1)) + xs, atol=1e-13
    )
    # (I − J)ᵀ λ = w, with J built here by hand and solved by SciPy
    d = 0.3 * (1 - np.tanh(zs) ** 2)
    i = np.arange(n)
    J = sps.csr_matrix(
        (np.r_[d[(i - 1) % n], d[(i + 1) % n]], (np.r_[i, i], np.r_[(i - 1) % n, (i + 1) % n])),
        shape=(n, n),
    )
    lam = spla.spsolve((sps.eye(n) - J).T.tocsc(), w)
    np.testing.assert_allclose(sol.multipliers["z"], lam, rtol=1e-11)
    np.testing.assert_allclose(sol.grad["x"], lam, rtol=1e-11)


def test_nonconvergent_programs():
    prog = lad.Program()
    x = prog.input("x")
    h = prog.var("h")
    prog.define(h, h**2 + 1 + x)  # h² − h + 1 + x = 0 has no real root for x ≥ 0
    # Newton reaches the minimum of |r| = h² − h + 1.5 at h = 1/2, 1.25, and stops there
    with pytest.raises(ConvergenceError, match=r"stalled in the block h .*\(max 1\.250e\+00\)"):
        prog.solve({"x": 0.5}, maxiter=30)
    # no root either: Newton's steps double h while r = 1/(1 + (h − x)²) flattens out,
    # until the rounding of r stops them, far from any root
    runaway = lad.parse("input x\nh = h - 1/(1 + (h - x)**2)\ny = h\n")
    with pytest.raises(ConvergenceError, match=r"not find a solution in the block h: .*flat"):
        runaway.solve({"x": 0.5}, init={"h": -1.0})
    with pytest.raises(ConvergenceError, match=r"block h: max residual .* after 2 iter"):
        _tanh_fixed_point().solve({"x": 0.5}, maxiter=2)
    prog2 = lad.Program()
    x = prog2.input("x")
    g = prog2.var("g")
    prog2.define(g, 2 * g + x)  # g = −x, but the map z ↦ 2z + x is expanding
    with pytest.raises(
        ConvergenceError, match="fixed-point iteration did not converge in the block g"
    ):
        prog2.solve({"x": 0.5}, method="fixed-point")
    assert prog2.solve({"x": 0.5}).value == pytest.approx(-0.5)  # Newton solves it


def test_fixed_point_out_of_iterations_reports_its_rate_and_the_iterations_needed():
    """h = 0.8 h + x contracts at exactly 0.8: from h = 0 the change of step k is
    0.8^(k−1) x, so the iteration first meets the tolerance at the k found below."""
    prog = lad.parse("input x\nh = 0.8*h + x\ny = h\n")
    h, k = 0.0, 0
    while True:  # the iteration by hand, with the solver's test
        k, new = k + 1, 0.8 * h + 3.0
        change, h = abs(new - h), new
        if change <= 1e-12 * max(1.0, abs(h)):
            break
    message = rf"rate of 0\.8 per iteration, .* about {k} iterations in all: pass maxiter={k}"
    with pytest.raises(ConvergenceError, match=message):
        prog.solve({"x": [1.0, 3.0]}, method="fixed-point", maxiter=50)
    with pytest.raises(ConvergenceError, match=f"about {k} iterations"):
        prog.solve({"x": [1.0, 3.0]}, method="fixed-point", maxiter=k - 1)
    sol = prog.solve({"x": [1.0, 3.0]}, method="fixed-point", maxiter=k)
    np.testing.assert_allclose(sol.values["h"], [5.0, 15.0], rtol=1e-14)
    expanding = lad.parse("input x\nh = -1.1*h + x\ny = h\n")
    with pytest.raises(ConvergenceError, match=r"do not shrink \(measured rate 1\.1 per"):
        expanding.solve({"x": 1.0}, method="fixed-point")


def test_fixed_point_needs_explicit_constraints():
    prog = lad.Program()
    x = prog.input("x")
    u = prog.var("u")
    prog.equation(u**3 + u, x)
    prog.define("y", 2 * u)
    with pytest.raises(ConvergenceError, match="implicit equations: use method='newton'"):
        prog.solve({"x": 1.0}, method="fixed-point")


def test_singular_root_of_an_implicit_equation():
    """u³ = x at x = 0: the root u = 0 is found, but ∂r/∂u = 3u² vanishes there."""
    prog = lad.Program()
    x = prog.input("x")
    u = prog.var("u")
    prog.equation(u**3, x)
    prog.define("y", u + 1)
    with pytest.raises(SingularSystemError, match="singular at the solution of the block u"):
        prog.solve({"x": 0.0}, init={"u": 0.5})
    assert prog.solve({"x": 8.0}, init={"u": 1.0}).grad["x"] == pytest.approx(1 / 12, rel=1e-12)


def test_singular_identity_cycle():
    """h = h: every h solves it, I − J = 0."""
    prog = lad.Program()
    x = prog.input("x")
    h = prog.var("h")
    prog.define(h, 1 * h)
    prog.define("y", h + x)
    with pytest.raises(SingularSystemError, match="singular at the solution of the block h"):
        prog.solve({"x": 1.0})


def test_structurally_singular_programs():
    prog = lad.Program()
    x = prog.input("x")
    u, v = prog.var("u"), prog.var("v")
    prog.equation(u + v, x)
    prog.define("y", u * v)
    with pytest.raises(ProgramError, match=re.escape("1 implicit equation(s) for 2 unknown(s)")):
        prog.compile()
    prog = lad.Program()
    x = prog.input("x")
    u, v, w = prog.var("u"), prog.var("v"), prog.var("w")
    prog.equation(u, x, name="first")
    prog.equation(u**2, 1, name="second")
    prog.equation(u + v + w, 0, name="third")  # v and w in one equation only
    prog.define("y", u + x)
    with pytest.raises(ProgramError, match=r"structurally singular.*unmatched unknowns [vw]"):
        prog.compile()


def test_solve_option_errors():
    fn = _tanh_fixed_point().compile()
    with pytest.raises(ProgramError, match="unknown method 'bisect'"):
        fn.solve({"x": 0.1}, method="bisect")
    with pytest.raises(ProgramError, match="unknown solve option tolerance"):
        fn.solve({"x": 0.1}, tolerance=1e-3)
    with pytest.raises(ProgramError, match="init: 'y' is not a variable of a cyclic block"):
        fn.solve({"x": 0.1}, init={"y": 1.0})


@st.composite
def contractive_programs(draw):
    """h = tanh(A h + B x) with ‖A‖∞ < 0.9, then a DAG of a few nodes reading h and x."""
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    A = rng.uniform(-1, 1, (n, n))
    A *= draw(st.floats(0.1, 0.9)) / np.abs(A).sum(axis=1).max()
    B = rng.uniform(-1, 1, (n, m))
    prog = lad.Program()
    x = prog.input("x", shape=(m,))
    h = prog.var("h", shape=(n,))
    As = sp.Matrix(np.round(A, 6).tolist())
    Bs = sp.Matrix(np.round(B, 6).tolist())
    prog.define(h, (As * h + Bs * x).applyfunc(sp.tanh))
    pool = [*h, *x]
    for k in range(draw(st.integers(0, 4))):
        a, b = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
        pool.append(prog.define(f"d{k}", sp.sin(a) * b + a))
    prog.define("out", sum(pool[-3:]))
    batch = draw(st.sampled_from([(), (2,)]))
    return prog, {"x": rng.uniform(-1, 1, (*batch, m))}


@given(
    contractive_programs(), st.sampled_from(["newton", "fixed-point", "anderson", "inexact-newton"])
)
def test_random_contractive_cyclic_programs(case, method):
    prog, inputs = case
    sol = prog.solve(inputs, method=method)
    assert sol.kkt["max_dL_dlambda"] < 1e-12 and sol.kkt["max_dL_dz"] < 1e-12
    check_grads(prog, inputs, rtol=1e-7)


def test_newton_uses_the_true_jacobian_away_from_the_solution():
    """h = tanh(0.99 Q h + U x) from h = 0: Newton needs 1 − tanh(·)² there, not 1 − h².

    (With the derivative written in terms of the target, which the adjoint may use at a
    solution, Newton stalled on this problem at a residual of about 1.6.)
    """
    n, d = 20, 4
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    W, U = 0.99 * Q, 0.3 * rng.standard_normal((n, d))
    prog = lad.Program()
    x = prog.input("x", shape=(d,))
    h = prog.var("h", shape=(n,))
    prog.define(h, (sp.Matrix(W.tolist()) * h + sp.Matrix(U.tolist()) * x).applyfunc(sp.tanh))
    prog.define("out", sum(h))
    xs = rng.standard_normal((50, d))
    sol = prog.solve({"x": xs})
    H = sol.values["h"]
    np.testing.assert_allclose(H, np.tanh(H @ W.T + xs @ U.T), atol=1e-13)
    assert sol.blocks[0].iterations <= 15
    check_grads(prog, {"x": xs[:5]}, rtol=1e-7)


# Blocks without a regular solution (fold points, tangencies, no root at all) must raise
# for every method, never return a number; their regular neighbours must solve to the
# closed form. The programs take their coefficients as inputs: compiled once.

_FAMILIES = {
    # u² + a u + b = x: a double root u = −a/2 at the fold x = b − a²/4
    "fold": "input x\ninput a\ninput b\nvar u\nu**2 + a*u + b = x\ny = u\n",
    "fold-map": "input x\ninput a\ninput b\ninput k\nu = u - k*(u**2 + a*u + b - x)\ny = u\n",
    # h = h − k (g(h − x) − e), g > 0 tending to 0 only at infinity: no root for e = 0
    "runaway": "input x\ninput k\ninput e\nh = h - k*(1/(1 + (h - x)**2) - e)\ny = h\n",
    "runaway-exp": "input x\ninput k\ninput e\nh = h - k*(exp(h - x) - e)\ny = h\n",
    # u² + s (1 + x²) = 0: no real root for s > 0
    "no-root": "input x\ninput s\nvar u\nu**2 + s*(1 + x**2) = 0\ny = u\n",
    "no-root-map": "input x\ninput s\ninput k\nu = u - k*(u**2 + s*(1 + x**2))\ny = u\n",
    # the circle u² + v² = 2c² and the line u + v = 2c + x, tangent at x = 0
    "tangency": "input x\ninput c\nvar u\nvar v\nu**2 + v**2 = 2*c**2\nu + v = 2*c + x\ny = u\n",
}
_IMPLICIT = ("newton", "inexact-newton", "auto")  # implicit equations: Newton only
_ALL = ("newton", "fixed-point", "anderson", "inexact-newton", "auto")


@functools.cache
def _family(name: str):
    return lad.parse(_FAMILIES[name]).compile()


def _singular_case(name: str, rng: np.random.Generator):
    """(inputs, init, methods, block label) of a member of the family without a root
    that Newton's method could converge to quadratically."""
    if name in ("fold", "fold-map"):
        m, b = rng.uniform(-3, 3, 2)
        inputs = {"x": b - m * m, "a": 2 * m, "b": b}
        if name == "fold-map":
            return {**inputs, "k": rng.uniform(0.1, 1)}, {"u": -m + rng.uniform(0.1, 2)}, _ALL, "u"
        return inputs, {"u": -m + rng.choice([-1, 1]) * rng.uniform(0.1, 2)}, _IMPLICIT, "u"
    if name.startswith("runaway"):
        x = rng.uniform(-2, 2)
        inputs = {"x": x, "k": rng.uniform(0.2, 3), "e": 0.0}
        return inputs, {"h": x + rng.uniform(-3, 3)}, _ALL, "h"
    if name.startswith("no-root"):
        inputs = {"x": rng.uniform(-2, 2), "s": rng.uniform(0.1, 3)}
        if name == "no-root-map":
            return {**inputs, "k": rng.uniform(0.1, 1)}, {"u": rng.uniform(-3, 3)}, _ALL, "u"
        return inputs, {"u": rng.uniform(-3, 3)}, _IMPLICIT, "u"
    c = rng.uniform(0.5, 2)
    u0 = c + rng.choice([-1, 1]) * rng.uniform(0.05, 0.5) * c
    return {"x": 0.0, "c": c}, {"u": u0, "v": 2 * c - u0}, _IMPLICIT, "u, v"


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # diverging iterations
@given(st.sampled_from(sorted(_FAMILIES)), st.integers(0, 2**16))
def test_blocks_without_a_regular_root_raise_for_every_method(name, seed):
    inputs, init, methods, label = _singular_case(name, np.random.default_rng(seed))
    fn = _family(name)
    for method in methods:
        with pytest.raises((SingularSystemError, ConvergenceError), match=f"block {label}\\b"):
            fn.solve(inputs, init=init, method=method)


def _regular_case(name: str, rng: np.random.Generator):
    """(inputs, init, methods, expected value of y, expected dy/dx) of a member of the
    family near the singular one, with a regular root found in closed form."""
    if name in ("fold", "fold-map"):  # x = fold + d: roots −m ± √d, du/dx = ±1/(2√d)
        m, b = rng.uniform(-3, 3, 2)
        d, sign = rng.uniform(1e-3, 1), rng.choice([-1.0, 1.0])
        root = -m + sign * np.sqrt(d)
        init = {"u": root + sign * rng.uniform(-0.3, 0.3) * np.sqrt(d)}
        inputs = {"x": b - m * m + d, "a": 2 * m, "b": b}
        if name == "fold-map":  # a step k with f′ = 1 − 2k(u + m) = 0.4 at the root
            return (
                {**inputs, "k": 0.3 * sign / np.sqrt(d)},
                init,
                _ALL,
                root,
                sign / (2 * np.sqrt(d)),
            )
        return inputs, init, _IMPLICIT, root, sign / (2 * np.sqrt(d))
    if name.startswith("runaway"):  # g(h − x) = e at h = x + s*, dh/dx = 1
        x, e = rng.uniform(-2, 2), rng.uniform(0.05, 0.9)
        if name == "runaway":
            s = -np.sqrt(1 / e - 1)
            slope = 2 * -s / (1 + s * s) ** 2  # g′(s) > 0 on this branch
        else:
            s = np.log(e)
            slope = e
        inputs = {"x": x, "k": 1 / slope, "e": e}  # f′ = 1 − k g′ = 0 at the root
        return inputs, {"h": x + s + rng.uniform(-0.1, 0.1) * abs(s)}, _ALL, x + s, 1.0
    if name.startswith("no-root"):  # s < 0: u = √(|s| (1 + x²)), du/dx = |s| x / u
        x, s = rng.uniform(-2, 2), rng.uniform(0.1, 3)
        root = np.sqrt(s * (1 + x * x))
        inputs, init = {"x": x, "s": -s}, {"u": root * rng.uniform(0.7, 1.3)}
        if name == "no-root-map":
            return {**inputs, "k": 0.3 / root}, init, _ALL, root, s * x / root
        return inputs, init, _IMPLICIT, root, s * x / root
    # x = −d: the line cuts the circle where u − v = ±√(4c² − p²), p = u + v = 2c − d
    c, d, sign = rng.uniform(0.5, 2), rng.uniform(1e-3, 0.5), rng.choice([-1.0, 1.0])
    p = 2 * c - d
    w = np.sqrt(4 * c * c - p * p)
    u = (p + sign * w) / 2
    init = {"u": u + rng.uniform(-0.1, 0.1) * w, "v": p - u}
    return {"x": -d, "c": c}, init, _IMPLICIT, u, 0.5 - sign * p / (2 * w)


@given(st.sampled_from(sorted(_FAMILIES)), st.integers(0, 2**16))
def test_regular_neighbours_of_those_blocks_solve_to_the_closed_form(name, seed):
    inputs, init, methods, y, dy = _regular_case(name, np.random.default_rng(seed))
    fn = _family(name)
    for method in methods:
        sol = fn.solve(inputs, init=init, method=method)
        assert sol.value == pytest.approx(y, rel=1e-11, abs=1e-11), method
        assert sol.grad["x"] == pytest.approx(dy, rel=1e-8, abs=1e-10), method
