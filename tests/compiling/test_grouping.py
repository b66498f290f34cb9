"""Entry-wise programs lowered by groups: array constraints, gathers and matrix products.

Every result is checked against an independent computation: NumPy written by hand (the
forward pass and backprop of a dense layer, the implicit function theorem with a dense
solve for an equilibrium model), the one-constraint-at-a-time engine run sample by
sample on Python floats, or central differences (`check_grads`).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

import lagrangian_ad as lad
from lagrangian_ad import ConvergenceError, SingularSystemError
from lagrangian_ad.testing import check_grads


def _per_sample(fn, inputs: dict, batch: int):
    """value_and_grad sample by sample on the float path (not the grouped engine)."""
    values, grads = [], []
    for k in range(batch):
        one = {n: (a[k] if n in ("x", "t") else a) for n, a in inputs.items()}
        v, g = fn.value_and_grad(one)
        values.append(v)
        grads.append(g)
    return np.array(values), {
        n: np.array([g[n] for g in grads]) if n in ("x", "t") else sum(g[n] for g in grads)
        for n in grads[0]
    }


def _mlp(n_in=5, n_hidden=12):
    prog = lad.Program()
    x = prog.input("x", shape=(n_in,))
    t = prog.input("t")
    W1 = prog.input("W1", shape=(n_hidden, n_in))
    b1 = prog.input("b1", shape=(n_hidden,))
    w2 = prog.input("w2", shape=(n_hidden,))
    pre = prog.define("pre", W1 * x + b1)
    h = prog.define("h", pre.applyfunc(sp.tanh))
    y = prog.define("y", (w2.T * h)[0, 0])
    prog.define("loss", (y - t) ** 2)
    return prog


def _mlp_inputs(batch, n_in=5, n_hidden=12, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((batch, n_in)),
        "t": rng.standard_normal(batch),
        "W1": rng.standard_normal((n_hidden, n_in)) / 2,
        "b1": rng.standard_normal(n_hidden),
        "w2": rng.standard_normal(n_hidden),
    }


def test_dense_layer_against_numpy_backprop():
    fn = _mlp().compile()
    assert fn.engine == "lowered" and "lowered to 4 array constraints" in repr(fn)
    inp = _mlp_inputs(300)
    value, grad = fn.value_and_grad(inp)
    X, T, W1, b1, w2 = (inp[k] for k in ("x", "t", "W1", "b1", "w2"))
    h = np.tanh(X @ W1.T + b1)
    r = h @ w2 - T
    np.testing.assert_allclose(value, r * r, rtol=1e-13)
    dpre = np.outer(2 * r, w2) * (1 - h * h)
    expect = {
        "x": dpre @ W1,
        "t": -2 * r,
        "W1": dpre.T @ X,
        "b1": dpre.sum(0),
        "w2": h.T @ (2 * r),
    }
    for name, g in expect.items():
        np.testing.assert_allclose(grad[name], g, rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(fn.value(inp), r * r, rtol=1e-13)


def test_grouped_solve_matches_the_float_path_sample_by_sample():
    fn = _mlp().compile()
    inp = _mlp_inputs(7, seed=1)
    sol = fn.solve(inp)
    values, grads = _per_sample(fn, inp, 7)
    np.testing.assert_allclose(sol.value, values, rtol=1e-13)
    for name in grads:
        np.testing.assert_allclose(sol.grad[name], grads[name], rtol=1e-12, atol=1e-13)
    one = fn.solve({n: (a[3] if n in ("x", "t") else a) for n, a in inp.items()})
    for name in ("pre", "h", "y", "loss"):
        np.testing.assert_allclose(sol.values[name][3], one.values[name], rtol=1e-13)
        np.testing.assert_allclose(sol.multipliers[name][3], one.multipliers[name], rtol=1e-12)
    assert sol.kkt["max_dL_dlambda"] < 1e-12 and sol.kkt["max_dL_dz"] < 1e-12


def test_weights_with_batch_axes_and_broadcast_leading_axes():
    """Weights given per sample take the batched contraction; shapes stay the user's."""
    fn = _mlp(3, 8).compile()
    inp = _mlp_inputs(4, 3, 8, seed=2)
    rng = np.random.default_rng(5)
    inp["W1"] = rng.standard_normal((4, 8, 3))
    inp["x"] = inp["x"][:, None, :].repeat(2, axis=1)  # batch (4, 2); W1 broadcasts
    inp["t"] = rng.standard_normal((4, 2))
    inp["W1"] = inp["W1"][:, None]  # (4, 1, 8, 3)
    value, grad = fn.value_and_grad(inp)
    assert value.shape == (4, 2) and grad["W1"].shape == (4, 1, 8, 3)
    summed = {"W1": np.zeros((4, 1, 8, 3)), "b1": 0.0, "w2": 0.0}  # over the axes given 1
    for i in range(4):
        for j in range(2):
            one = {
                "x": inp["x"][i, j],
                "t": float(inp["t"][i, j]),
                "W1": inp["W1"][i, 0],
                "b1": inp["b1"],
                "w2": inp["w2"],
            }
            v, g = fn.value_and_grad(one)
            assert value[i, j] == pytest.approx(v, rel=1e-13)
            np.testing.assert_allclose(grad["x"][i, j], g["x"], rtol=1e-12, atol=1e-14)
            summed["W1"][i, 0] += g["W1"]
            summed["b1"] = summed["b1"] + g["b1"]
            summed["w2"] = summed["w2"] + g["w2"]
    for name, expect in summed.items():  # (sums of entries up to about 3: atol 1e-13)
        np.testing.assert_allclose(grad[name], expect, rtol=1e-12, atol=1e-13, err_msg=name)
    # the float path per sample is checked against SymPy elsewhere; here differences
    check_grads(fn, inp, rtol=1e-6, symbolic=False)


def test_contraction_variants_against_finite_differences():
    """Numeric coefficients, both factors varying, a coefficient on each product,
    repeated reads of one entry, and a one-member sum."""
    n, k = 6, 9
    rng = np.random.default_rng(3)
    C = np.round(rng.standard_normal((n, k)), 4)
    prog = lad.Program()
    x = prog.input("x", shape=(k,))
    A = prog.input("A", shape=(n, k))
    B = prog.input("B", shape=(n, k))
    u = prog.define("u", sp.Matrix(C.tolist()) * x)  # constants × shared x
    v = prog.define(
        "v", sp.Matrix([sum(A[i, j] * B[i, j] for j in range(k)) for i in range(n)])
    )  # both factors vary by member
    w = prog.define(
        "w", sp.Matrix([sum(3 * A[i, j] * x[j] for j in range(k)) + x[0] * x[0] for i in range(n)])
    )
    s = prog.define("s", sum(sp.sin(u[i]) * v[i] + w[i] ** 2 for i in range(n)))
    prog.define("out", sum(s * x[j] for j in range(k)) / 10)
    fn = prog.compile()
    assert fn.engine == "lowered"
    inp = {
        "x": rng.standard_normal((5, k)),
        "A": rng.standard_normal((n, k)) / 3,
        "B": rng.standard_normal((5, n, k)) / 3,
    }
    # finite differences (SymPy's inlined derivative, check_grads' default here, took 50 s;
    # backprop by hand below checks every entry instead)
    check_grads(fn, inp, rtol=1e-6, symbolic=False)
    sol = fn.solve(inp)
    X, Am, Bm = inp["x"], inp["A"], inp["B"]
    uu = X @ C.T
    vv = np.einsum("ij,bij->bi", Am, Bm)
    ww = 3 * X @ Am.T + X[:, :1] ** 2
    ss = (np.sin(uu) * vv + ww**2).sum(1)
    np.testing.assert_allclose(sol.value, ss * X.sum(1) / 10, rtol=1e-12)
    # out = s Σ_j x_j / 10: λ_s = Σx/10, λ_u = λ_s cos(u) v, λ_v = λ_s sin(u), λ_w = 2 λ_s w
    lam_s = X.sum(1) / 10
    lam = {
        "s": lam_s,
        "u": lam_s[:, None] * np.cos(uu) * vv,
        "v": lam_s[:, None] * np.sin(uu),
        "w": 2 * lam_s[:, None] * ww,
    }
    for name, expect in lam.items():
        np.testing.assert_allclose(sol.multipliers[name], expect, rtol=1e-12, err_msg=name)
    grad_x = ss[:, None] / 10 + lam["u"] @ C + 3 * lam["w"] @ Am
    grad_x[:, 0] += 2 * X[:, 0] * lam["w"].sum(1)
    grads = {
        "x": grad_x,
        "A": np.einsum("bi,bij->ij", lam["v"], Bm) + 3 * lam["w"].T @ X,
        "B": lam["v"][:, :, None] * Am,
    }
    for name, expect in grads.items():
        np.testing.assert_allclose(sol.grad[name], expect, rtol=1e-12, atol=1e-14, err_msg=name)


def _equilibrium(n, d, numeric_W=None):
    prog = lad.Program()
    W = None if numeric_W is not None else prog.input("W", shape=(n, n))
    U = prog.input("U", shape=(n, d))
    b = prog.input("b", shape=(n,))
    x = prog.input("x", shape=(d,))
    h = prog.var("h", shape=(n,))
    Wm = sp.Matrix(numeric_W.tolist()) if numeric_W is not None else W
    rows = [
        sp.tanh(
            sp.Add(*[Wm[i, j] * h[j] for j in range(n)])
            + sp.Add(*[U[i, k] * x[k] for k in range(d)])
            + b[i],
            evaluate=False,
        )
        for i in range(n)
    ]
    prog.define(h, sp.Matrix(rows))
    prog.define("loss", sp.Add(*h))
    return prog


def _equilibrium_inputs(n, d, batch, norm=0.5, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, n))
    W *= norm / np.linalg.norm(W, 2)
    return {
        "W": W,
        "U": rng.standard_normal((n, d)) / np.sqrt(d),
        "b": rng.standard_normal(n) / 2,
        "x": rng.standard_normal((batch, d)),
    }


def _ift(inp):
    """h* by fixed point polished by dense Newton steps, λ = (I − D W)⁻ᵀ 1 with a dense
    solve per sample, and the grads."""
    W, U, b, X = inp["W"], inp["U"], inp["b"], inp["x"]
    n = len(b)
    H = np.zeros((len(X), n))
    for _ in range(200):
        H = np.tanh(H @ W.T + X @ U.T + b)
    for _ in range(3):  # Newton: h ← h − (I − D W)⁻¹ (h − tanh(W h + c)), per sample
        T = np.tanh(H @ W.T + X @ U.T + b)
        D = 1 - T * T
        H = H - np.stack(
            [
                np.linalg.solve(np.eye(n) - Di[:, None] * W, r)
                for Di, r in zip(D, H - T, strict=True)
            ]
        )
    D = 1 - H * H
    lam = np.stack([np.linalg.solve((np.eye(n) - Di[:, None] * W).T, np.ones(n)) for Di in D])
    mu = lam * D  # ∂L/∂(pre-activation)
    grads = {"W": mu.T @ H, "U": mu.T @ X, "b": mu.sum(0), "x": mu @ U}
    return H, lam, grads


@pytest.mark.parametrize("method", ["anderson", "inexact-newton"])
def test_equilibrium_by_iteration_against_the_implicit_function_theorem(method):
    n, d = 30, 4
    fn = _equilibrium(n, d).compile()
    assert fn.engine == "lowered"
    inp = _equilibrium_inputs(n, d, 40)
    H, lam, grads = _ift(inp)
    sol = fn.solve(inp, method=method)
    np.testing.assert_allclose(sol.values["h"], H, rtol=0, atol=1e-13)
    np.testing.assert_allclose(sol.multipliers["h"], lam, rtol=1e-11)
    for name, g in grads.items():
        np.testing.assert_allclose(sol.grad[name], g, rtol=1e-11, atol=1e-12, err_msg=name)
    (report,) = sol.blocks
    assert report.method == method
    assert 0 < report.iterations < 40 and report.residual < 1e-12
    if method == "inexact-newton":  # Newton's few steps, the work in J-vector products
        assert report.iterations <= 8 and report.inner_iterations > report.iterations
    assert 1 < report.condition < 10  # ‖W‖₂ = 0.5: cond(I − DW) ≤ 3 in the 2-norm
    assert sol.kkt["max_dL_dlambda"] < 1e-12 and sol.kkt["max_dL_dz"] < 1e-12
    value, g2 = fn.value_and_grad(inp, method=method)
    np.testing.assert_allclose(value, H.sum(1), rtol=1e-13)
    np.testing.assert_allclose(g2["W"], grads["W"], rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("method", ["auto", "newton", "fixed-point", "inexact-newton"])
def test_equilibrium_other_methods_agree(method):
    n, d = 16, 3
    fn = _equilibrium(n, d).compile()
    assert fn.engine == "lowered"
    inp = _equilibrium_inputs(n, d, 6, seed=4)
    _, _, grads = _ift(inp)
    _, grad = fn.value_and_grad(inp, method=method)
    for name, g in grads.items():
        np.testing.assert_allclose(grad[name], g, rtol=1e-11, atol=1e-12, err_msg=name)


def test_non_contractive_block_falls_back_to_newton():
    """h = tanh(W h + …) with ‖W‖₂ = 3 at a point where the fixed-point map diverges:
    "auto" tries inexact Newton, whose inner iteration δ ← r + J δ diverges with it,
    then falls back to Newton's factorization; "inexact-newton" and "anderson" alone
    say they did not converge (24 unknowns: more than the array engine's DENSE_MAX, so
    that "auto" starts matrix-free)."""
    n, d = 24, 2
    rng = np.random.default_rng(11)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    W = -3.0 * Q  # f′ = −3·diag(tanh′) Q: the plain iteration oscillates and grows
    fn = _equilibrium(n, d, numeric_W=np.round(W, 12)).compile()
    assert fn.engine == "lowered"
    inp = _equilibrium_inputs(n, d, 3, seed=2)
    del inp["W"]
    inp["b"] = inp["b"] * 0
    inp["x"] = inp["x"] * 0.01
    sol = fn.solve(inp, method="auto", maxiter=60)
    assert sol.blocks[0].method == "newton"
    H = sol.values["h"]
    np.testing.assert_allclose(H, np.tanh(H @ W.T + inp["x"] @ inp["U"].T), atol=1e-12)
    check_grads(fn, inp, rtol=1e-6)
    with pytest.raises(ConvergenceError, match=r"Anderson.*block h\[0\]"):
        fn.value(inp, method="anderson", maxiter=60)
    with pytest.raises(ConvergenceError, match=r"iterative linear solves.*block h\[0\]"):
        fn.value(inp, method="inexact-newton", maxiter=60)


def test_equilibrium_with_numeric_weights_is_one_matrix_product():
    n, d = 16, 3
    inp = _equilibrium_inputs(n, d, 8, seed=7)
    W = np.round(inp.pop("W"), 10)
    fn = _equilibrium(n, d, numeric_W=W).compile()
    # the block's map: one product by W (a constant, prepared once a solve), U x apart
    blocks = fn.source[fn.source.index("# batches") :]
    prepare = blocks[blocks.index("def pre_0") :].split("\n\n")[0]
    the_map = blocks[blocks.index("def map_0") :].split("\n\n")[0]
    assert the_map.count("_rt.matmul(") == 1 and "numpy.asarray(_k" in prepare
    _, _, grads = _ift({**inp, "W": W})
    _, grad = fn.value_and_grad(inp)
    for name in ("U", "b", "x"):
        np.testing.assert_allclose(grad[name], grads[name], rtol=1e-11, atol=1e-12)


def test_chain_programs_are_not_grouped():
    prog = lad.Program()
    x = prog.input("x")
    z = x
    for k in range(40):
        z = prog.define(f"z{k}", sp.sin(z + x))
    assert prog.compile().engine == "entries"


def test_adjoint_falls_back_to_gmres(monkeypatch):
    """When the iteration for the multipliers fails, GMRES solves (I − J)ᵀ λ = g at the
    solution."""
    import lagrangian_ad.compiling._inexact as inexact

    calls = []
    mixed = inexact._mixed_richardson

    def failing(apply, apply_low, rhs, tol, maxiter, verify=True):
        if not verify:  # the forward solve's inner iterations
            return mixed(apply, apply_low, rhs, tol, maxiter, verify)
        calls.append(maxiter)  # the multipliers'
        return None, maxiter

    monkeypatch.setattr(inexact, "_mixed_richardson", failing)
    n, d = 24, 3  # more than DENSE_MAX unknowns: the block is solved matrix-free
    fn = _equilibrium(n, d).compile()
    assert fn.engine == "lowered"
    inp = _equilibrium_inputs(n, d, 5, seed=8)
    _, grad = fn.value_and_grad(inp, method="anderson")  # the forward pass by Anderson
    assert calls
    _, _, grads = _ift(inp)
    for name, g in grads.items():
        np.testing.assert_allclose(grad[name], g, rtol=1e-11, atol=1e-12, err_msg=name)


def _rotation_equilibrium(rho: float, batch: int, n: int = 24, d: int = 3, seed=2) -> dict:
    """Inputs of `_equilibrium` with W = ρ·Q for a rotation Q: J's eigenvalues lie near a
    circle of radius about ρ, so δ ← r + J δ gains a digit every ln 10 / (−ln ρ) steps."""
    rng = np.random.default_rng(seed)
    Q, R = np.linalg.qr(rng.standard_normal((n, n)))
    return {
        "W": rho * Q * np.sign(np.diag(R)),
        "U": 0.1 * rng.standard_normal((n, d)) / np.sqrt(d),
        "b": 0.02 * rng.standard_normal(n),
        "x": rng.standard_normal((batch, d)),
    }


@pytest.mark.parametrize(("rho", "expected"), [(0.5, "inexact-newton"), (0.99, "newton")])
def test_auto_chooses_by_the_measured_cost_of_the_inner_iterations(rho, expected):
    """ "auto" starts with inexact Newton on a block of 24 unknowns, allowing each inner
    solve `_inexact.INNER_MAX` Jacobian-vector products: at ρ = 0.5 they suffice; at
    ρ = 0.99 the measured rate predicts more, and Newton takes over. Both match the
    implicit function theorem."""
    fn = _equilibrium(24, 3).compile()
    inp = _rotation_equilibrium(rho, 2)
    sol = fn.solve(inp)
    assert sol.blocks[0].method == expected
    H, _, grads = _ift(inp)
    np.testing.assert_allclose(sol.values["h"], H, rtol=0, atol=1e-13)
    for name, g in grads.items():
        np.testing.assert_allclose(sol.grad[name], g, rtol=1e-10, atol=1e-12, err_msg=name)


def test_one_sample_of_a_cyclic_program_runs_the_lowered_block():
    """One sample of a cyclic program runs the lowered program too (the per-scalar code's
    Newton steps loop over the Jacobian's entries in Python): "inexact-newton" is
    inexact Newton there as for a batch; a block that only forms its Jacobian is Newton
    (16 unknowns: the array engine's DENSE_MAX), and the report says so."""
    fn = _equilibrium(24, 3).compile()
    inp = _equilibrium_inputs(24, 3, 1, seed=4)
    one = {**inp, "x": inp["x"][0]}
    assert fn.solve(one, method="inexact-newton").blocks[0].method == "inexact-newton"
    assert fn.solve(inp, method="inexact-newton").blocks[0].method == "inexact-newton"
    small = _equilibrium(16, 3).compile()
    small_one = {k: v[:16] if k == "b" else v for k, v in one.items()}
    small_one["W"], small_one["U"] = one["W"][:16, :16], one["U"][:16]
    assert small.solve(small_one, method="inexact-newton").blocks[0].method == "newton"
    _, _, grads = _ift(inp)
    np.testing.assert_allclose(fn.solve(one).grad["W"], grads["W"], rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize(
    ("rate", "size"),
    [(0.5, 1.0), (0.9, 1.0), (0.5, 1e35), (0.999, 1.0)],
    ids=["contractive", "slow", "beyond-float32", "rate-near-1"],
)
def test_mixed_precision_refinement_against_a_dense_solve(rate, size):
    """x = b + A x by float32 iterations refined in float64 meets the float64 tolerance,
    also at a rate of 0.999 (|x| ≈ 700 |b|: float32 resolves each correction only to a
    few parts in 10⁴, so several rounds, each ended at float32's rounding floor), and
    falls back to float64 for values beyond float32's range."""
    from lagrangian_ad.compiling._inexact import _mixed_richardson

    rng = np.random.default_rng(5)
    n, batch = 40, 7
    A = rng.standard_normal((n, n))
    if rate > 0.99:  # symmetric: steady convergence, no oscillation to judge the rate by
        A = A + A.T
    A *= rate / np.max(np.abs(np.linalg.eigvals(A)))
    b = size * rng.standard_normal((n, batch))
    tol = 1e-12 * size
    A32 = A.astype(np.float32)
    x, k = _mixed_richardson(lambda v: A @ v, lambda v: A32 @ v, b, tol, 100_000)
    assert x.dtype == np.float64 and k > 0
    exact = np.linalg.solve(np.eye(n) - A, b)
    residual = np.abs(b + A @ x - x).max()
    assert residual <= tol
    np.testing.assert_allclose(x, exact, rtol=0, atol=tol / (1 - rate) * 10)


def test_inexact_newton_backtracks_on_a_slowly_contracting_rotation(monkeypatch):
    """W = 0.95·Q for a rotation Q: J's eigenvalues lie near a circle of radius ~0.95, the
    first Newton steps (solved loosely) overshoot and are halved sample by sample; the
    answer still matches the implicit function theorem's dense solve."""
    import lagrangian_ad.compiling._array_engine as array_engine
    import lagrangian_ad.compiling._inexact as inexact

    n, d = 24, 3
    inp = _rotation_equilibrium(0.95, 12, seed=0)  # a step overshoots here (most do not)
    counts = {"evaluations": 0, "steps": 0}
    linearize, mixed = array_engine._BlockCode.at, inexact._mixed_richardson

    def counted_linearize(*args):
        counts["evaluations"] += 1
        return linearize(*args)

    def counted_mixed(*args, **kwargs):
        counts["steps"] += 1
        return mixed(*args, **kwargs)

    monkeypatch.setattr(array_engine._BlockCode, "at", counted_linearize)
    monkeypatch.setattr(inexact, "_mixed_richardson", counted_mixed)
    fn = _equilibrium(n, d).compile()
    sol = fn.solve(inp, method="inexact-newton", maxiter=2000)
    (report,) = sol.blocks
    assert report.method == "inexact-newton" and report.residual < 1e-12
    # evaluations: one per Newton step, the final check (whose linearization the
    # multipliers reuse) and one per halving; inner solves: one per Newton step, the
    # Newton correction at the final point and the adjoint's
    assert counts["evaluations"] >= counts["steps"]  # so some step was halved
    H, lam, grads = _ift(inp)
    np.testing.assert_allclose(sol.values["h"], H, rtol=0, atol=1e-13)
    np.testing.assert_allclose(sol.multipliers["h"], lam, rtol=1e-10)
    for name, g in grads.items():
        np.testing.assert_allclose(sol.grad[name], g, rtol=1e-10, atol=1e-12, err_msg=name)


# The grouped engine's own methods (Anderson, inexact Newton; "auto" reaches Newton)
# on coupled blocks without a regular root, and on their regular neighbours: a fold of
# the symmetric equilibrium h = tanh(W h + b), W = (w/n)·11ᵀ, and h = W h − k (g(W h − x)
# − e) with 1ᵀ(W − I) = 0, which has no root at all for e = 0 (summing the equations:
# 0 = Σ k g > 0).

_N = 8


@functools.cache
def _coupled(kind: str):
    prog = lad.Program()
    W = prog.input("W", shape=(_N, _N))
    h = prog.var("h", shape=(_N,))
    v = prog.define(
        "v", sp.Matrix([sp.Add(*[W[i, j] * h[j] for j in range(_N)]) for i in range(_N)])
    )
    if kind == "tanh":
        b = prog.input("b", shape=(_N,))
        prog.define(h, sp.Matrix([sp.tanh(v[i] + b[i]) for i in range(_N)]))
    else:
        x, k, e = prog.input("x"), prog.input("k"), prog.input("e")
        prog.define(h, sp.Matrix([v[i] - k * (1 / (1 + (v[i] - x) ** 2) - e) for i in range(_N)]))
    prog.define("y", sp.Add(*h))
    fn = prog.compile()
    assert fn.engine == "lowered"
    return fn


def _tanh_fold(rng) -> tuple[float, float, float, np.ndarray]:
    """(w, η, c, W) of a fold of η = tanh(w η + c), where w (1 − η²) = 1, W = (w/n)·11ᵀ."""
    w = rng.uniform(1.5, 4)
    eta = np.sqrt(1 - 1 / w)
    return w, eta, np.arctanh(eta) - w * eta, np.full((_N, _N), w / _N)


def _ring_weights(rng) -> np.ndarray:
    C = np.eye(_N) - 1 / _N  # W − I = 0.1 C R C: 1ᵀ(W − I) = 0 and (W − I) 1 = 0
    return np.eye(_N) + 0.1 * C @ rng.standard_normal((_N, _N)) @ C


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@settings(max_examples=10)
@given(st.sampled_from(["fold", "no-root"]), st.integers(0, 2**16))
def test_grouped_blocks_without_a_regular_root_raise(kind, seed):
    rng = np.random.default_rng(seed)
    batch = 3
    if kind == "fold":
        fn = _coupled("tanh")
        _, eta, c, W = _tanh_fold(rng)
        h0 = np.full((batch, _N), eta) + rng.uniform(0.05, 0.2, (batch, 1))
        inputs = {"W": W, "b": np.full((batch, _N), c)}
    else:
        fn = _coupled("ring")
        W = _ring_weights(rng)
        h0 = rng.uniform(-1, 1, (batch, _N))
        inputs = {"W": W, "x": rng.uniform(-1, 1, batch), "k": rng.uniform(0.3, 2), "e": 0.0}
    init = {"h": h0, "v": h0 @ W.T}
    for method in ("anderson", "inexact-newton", "auto"):
        for call in (fn.value_and_grad, fn.solve):
            with pytest.raises((SingularSystemError, ConvergenceError), match=r"block v\[0\]"):
                call(inputs, init=init, method=method)


@settings(max_examples=10)
@given(st.sampled_from(["fold", "no-root"]), st.integers(0, 2**16))
def test_grouped_regular_neighbours_solve_to_the_closed_form(kind, seed):
    """Beside the fold, c = c_f + d: the upper root η (SciPy's brentq) with
    ∂y/∂b_i = (1 − η²)/(1 − w(1 − η²)); beside the ring without a root, e > 0: h = x + s*
    with g(s*) = e, and ∂y/∂x = n."""
    rng = np.random.default_rng(seed)
    batch = 3
    if kind == "fold":
        fn = _coupled("tanh")
        w, eta_f, c_f, W = _tanh_fold(rng)
        c = c_f + rng.uniform(0.01, 0.1, batch)
        eta = np.array(
            [brentq(lambda q, ci=ci: np.arctanh(q) - w * q - ci, eta_f, 1 - 1e-15) for ci in c]
        )
        h0 = np.repeat((eta + 0.3 * (eta - eta_f))[:, None], _N, axis=1)
        inputs = {"W": W, "b": np.repeat(c[:, None], _N, axis=1)}
        D = 1 - eta**2
        expect_h, grad = (
            np.repeat(eta[:, None], _N, axis=1),
            ("b", np.repeat((D / (1 - w * D))[:, None], _N, axis=1)),
        )
    else:
        fn = _coupled("ring")
        W = _ring_weights(rng)
        x, e = rng.uniform(-1, 1, batch), rng.uniform(0.05, 0.9)
        s = -np.sqrt(1 / e - 1)  # g(s) = 1/(1 + s²) = e, on the branch where g′ > 0
        inputs = {"W": W, "x": x, "k": (1 + s * s) ** 2 / (-2 * s), "e": e}  # k = 1/g′(s)
        expect_h = np.repeat((x + s)[:, None], _N, axis=1)
        h0 = expect_h + 0.05 * abs(s) * rng.standard_normal((batch, _N))
        grad = ("x", np.full(batch, float(_N)))
    for method in ("anderson", "inexact-newton", "auto"):
        sol = fn.solve(inputs, init={"h": h0, "v": h0 @ W.T}, method=method)
        np.testing.assert_allclose(
            sol.values["h"], expect_h, rtol=1e-12, atol=1e-12, err_msg=method
        )
        np.testing.assert_allclose(sol.grad[grad[0]], grad[1], rtol=1e-8, err_msg=method)


def test_lowering_edge_cases_against_differences_and_the_float_path():
    """The output an entry of an array whose other entries share its form (a group of
    its own), entries read in shuffled order and twice (gathers by index, scatter-add
    into repeated entries), one entry read by every member, a member-varying constant:
    the batch against one sample at a time and central differences."""
    n = 12
    rng = np.random.default_rng(21)
    q = rng.permutation(n) // 2
    prog = lad.Program()
    x = prog.input("x", shape=(n,))
    w = prog.input("w", shape=(n,))
    M = prog.input("M", shape=(n, n))
    a = prog.define(
        "a", sp.Matrix([sp.sin(x[int(q[i])]) * x[int(q[i])] + 0.5 * w[i] for i in range(n)])
    )
    b = prog.define("b", M * a)
    c = np.round(rng.standard_normal(n), 3)
    v = prog.define("v", sp.Matrix([sp.tanh(b[i] + float(c[i])) * a[0] for i in range(n)]))
    prog.output(v[3])
    fn = prog.compile()
    assert fn.engine == "lowered"
    inp = {
        "x": rng.standard_normal((6, n)),
        "w": rng.standard_normal(n),
        "M": rng.standard_normal((n, n)) / n,
    }
    check_grads(fn, inp, rtol=1e-6, symbolic=False)
    sol = fn.solve(inp)
    for k in range(6):
        one = fn.solve({**inp, "x": inp["x"][k]})
        assert sol.value[k] == pytest.approx(one.value, rel=1e-13)
        for name in ("a", "b", "v"):
            np.testing.assert_allclose(sol.values[name][k], one.values[name], rtol=1e-12)
            np.testing.assert_allclose(
                sol.multipliers[name][k], one.multipliers[name], rtol=1e-11, atol=1e-14
            )
        np.testing.assert_allclose(sol.grad["x"][k], one.grad["x"], rtol=1e-11, atol=1e-14)


def test_hvp_of_a_batch_on_the_lowered_program_against_one_sample_at_a_time():
    """H v of the batch sum (the lowered program: the tangent of its adjoint pass) is the
    sum over the samples of the per-scalar code's H v, one sample at a time."""
    fn, inp = _mlp().compile(), _mlp_inputs(4, seed=3)
    assert fn.engine == "lowered"
    rng = np.random.default_rng(9)
    vectors = {k: rng.standard_normal(np.shape(a)) for k, a in inp.items()}
    got = fn.hvp(inp, vectors)
    want = {k: np.zeros(np.shape(a)) for k, a in inp.items()}
    for s in range(4):
        one = {k: (a[s] if k in ("x", "t") else a) for k, a in inp.items()}
        h = fn.hvp(one, {k: (a[s] if k in ("x", "t") else a) for k, a in vectors.items()})
        for k in want:
            if k in ("x", "t"):
                want[k][s] = h[k]
            else:
                want[k] = want[k] + h[k]
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-11, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("batch", [None, 4])
def test_hvp_of_the_lowered_equilibrium_against_differences_of_gradients(batch):
    """A cyclic block's H v on the lowered program (one sample too): the central
    difference of the gradient along v (the implicit function theorem's gradient,
    checked above), to the accuracy of the difference."""
    fn = _equilibrium(20, 3).compile()  # 20 unknowns: matrix-free in the lowered program
    inp = _equilibrium_inputs(20, 3, batch or 1, seed=3)
    if batch is None:
        inp["x"] = inp["x"][0]
    rng = np.random.default_rng(9)
    v = {k: rng.standard_normal(np.shape(a)) for k, a in inp.items()}
    eps = 1e-5
    plus = fn.value_and_grad({k: inp[k] + eps * v[k] for k in inp})[1]
    minus = fn.value_and_grad({k: inp[k] - eps * v[k] for k in inp})[1]
    got = fn.hvp(inp, v)
    for k in inp:
        np.testing.assert_allclose(
            got[k], (plus[k] - minus[k]) / (2 * eps), rtol=1e-6, atol=1e-6, err_msg=k
        )


def test_hessian_of_the_lowered_equilibrium_against_differences_of_gradients():
    """The Hessian of a cyclic program (on the lowered program: an hvp per entry), column
    by column against central differences of the gradient."""
    n, d = 16, 2
    fn = _equilibrium(n, d).compile()
    assert fn.engine == "lowered"
    inp = _equilibrium_inputs(n, d, 1, seed=5)
    inp["x"] = inp["x"][0]
    H = fn.hessian(inp)
    eps = 1e-5
    for a in ("b", "x"):
        for j in range(np.size(inp[a])):
            e = np.zeros(np.shape(inp[a]))
            e.flat[j] = eps
            plus = fn.value_and_grad({**inp, a: inp[a] + e})[1]
            minus = fn.value_and_grad({**inp, a: inp[a] - e})[1]
            for b in inp:
                column = np.reshape(H[b][a], (np.size(inp[b]), -1))[:, j]
                fd = np.ravel(plus[b] - minus[b]) / (2 * eps)
                np.testing.assert_allclose(column, fd, rtol=1e-6, atol=1e-7, err_msg=f"{b} {a}")
