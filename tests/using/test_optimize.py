"""Optimizers: every method against an independent reference, on known-answer problems.

References are computed here, independently of the package: SciPy's optimizers on
hand-written NumPy objectives, NumPy's least squares, a NumPy fixed-point iteration for
the cyclic program.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.optimize as so
import sympy as sp

import lagrangian_ad as lad
from lagrangian_ad import ProgramError

METHODS = ["gradient", "lbfgs", "augmented-lagrangian", "newton-kkt"]
FULL_SPACE = ["augmented-lagrangian", "newton-kkt"]

# Tight tolerances, so that every method's answer can be compared with the reference.
TIGHT = {
    "gradient": {"gtol": 1e-9},
    "lbfgs": {"gtol": 1e-10, "ftol": 1e-15},
    "augmented-lagrangian": {"gtol": 1e-6, "ctol": 1e-8},
    "newton-kkt": {"tol": 1e-10},
}
# What those tolerances give in x on these problems: the augmented Lagrangian's first-order
# inner solves stop at a stationarity of about 1e-6 in the lifted (x, z) space.
X_ATOL = {"gradient": 1e-6, "lbfgs": 1e-6, "augmented-lagrangian": 2e-5, "newton-kkt": 1e-8}


# --------------------------------------------------------------------------- problems


def rosenbrock(sign: int = 1) -> lad.Program:
    """f = (1 − x)² + 100 (y − x²)², as a program of three constraints (times ``sign``)."""
    prog = lad.Program()
    x, y = prog.input("x"), prog.input("y")
    a = prog.define("a", 1 - x)
    b = prog.define("b", y - x**2)
    prog.define("f", sign * (a**2 + 100 * b**2))
    return prog


def least_squares() -> lad.Program:
    """Per sample: loss = (w·X − y)², with X, y data and w the variable."""
    prog = lad.Program()
    X = prog.input("X", shape=(3,))
    y = prog.input("y")
    w = prog.input("w", shape=(3,))
    r = prog.define("r", (w.T * X)[0, 0] - y)
    prog.define("loss", r**2)
    return prog


N_SAMPLES, ALPHA = 60, 0.5


def classifier(sign: int = 1) -> lad.Program:
    """Logistic regression with an L2 term: per sample log(1 + exp(−t s)) + α‖w‖²/(2n)."""
    prog = lad.Program()
    X = prog.input("X", shape=(3,))
    t = prog.input("t")
    w = prog.input("w", shape=(3,))
    b = prog.input("b")
    s = prog.define("s", (w.T * X)[0, 0] + b)
    loss = prog.define("loss", sp.log(1 + sp.exp(-t * s)))
    reg = sp.Rational(1, 2) * sp.Float(ALPHA) / N_SAMPLES * (w.T * w)[0, 0]
    prog.define("objective", sign * (loss + reg))
    return prog


def classifier_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(N_SAMPLES, 3))
    noisy = X @ np.array([1.5, -2.0, 0.5]) + 0.3 + 0.8 * rng.normal(size=N_SAMPLES)
    return {"X": X, "t": np.where(noisy > 0, 1.0, -1.0)}


def classifier_reference(data: dict[str, np.ndarray]) -> so.OptimizeResult:
    """SciPy's L-BFGS-B on the same objective written by hand in NumPy."""
    X, t = data["X"], data["t"]

    def objective(p: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = p[:3], p[3]
        u = -t * (X @ w + b)
        sigma = 1 / (1 + np.exp(-u))
        value = np.logaddexp(0, u).sum() + 0.5 * ALPHA * w @ w
        grad = np.concatenate([X.T @ (-t * sigma) + ALPHA * w, [np.sum(-t * sigma)]])
        return value, grad

    return so.minimize(
        objective, np.zeros(4), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 0}
    )


def cyclic() -> lad.Program:
    """h = tanh(0.5 h + a x) per sample (a fixed point), loss = (h − t)²."""
    prog = lad.Program()
    a, x, t = prog.input("a"), prog.input("x"), prog.input("t")
    h = prog.var("h")
    prog.define(h, sp.tanh(sp.Float(0.5) * h + a * x))
    prog.define("loss", (h - t) ** 2)
    return prog


def cyclic_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.uniform(-1.5, 1.5, size=8)
    return {"x": x, "t": _fixed_point(0.8, x) + 0.05 * rng.normal(size=8)}


def _fixed_point(a: float, x: np.ndarray) -> np.ndarray:
    h = np.zeros_like(x)
    for _ in range(200):  # a contraction with factor ≤ 0.5: converged to rounding
        h = np.tanh(0.5 * h + a * x)
    return h


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("method", METHODS)
def test_rosenbrock_matches_scipy(method):
    ref = so.minimize(
        so.rosen, [-1.2, 1.0], jac=so.rosen_der, method="BFGS", options={"gtol": 1e-10}
    )
    res = lad.minimize(rosenbrock(), {"x": -1.2, "y": 1.0}, method=method, options=TIGHT[method])
    assert res.success, res.message
    assert [res.x["x"], res.x["y"]] == pytest.approx(ref.x, abs=X_ATOL[method])
    assert res.fun == pytest.approx(so.rosen(np.array([res.x["x"], res.x["y"]])), abs=1e-15)
    assert abs(res.fun - ref.fun) < 1e-11
    assert isinstance(res.x["x"], float) and set(res.jac) == {"x", "y"}
    assert [res.jac["x"], res.jac["y"]] == pytest.approx(
        so.rosen_der(np.array([res.x["x"], res.x["y"]])), rel=1e-12, abs=1e-12
    )


@pytest.mark.parametrize("method", METHODS)
def test_maximize_reports_the_maximum(method):
    # max of −rosenbrock from a start off the valley; fun is the maximum, not negated
    res = lad.maximize(rosenbrock(-1), {"x": 0.5, "y": -0.5}, method=method, options=TIGHT[method])
    assert res.success, res.message
    assert [res.x["x"], res.x["y"]] == pytest.approx([1.0, 1.0], abs=X_ATOL[method])
    assert res.fun <= 0 and res.fun == pytest.approx(
        -so.rosen(np.array([res.x["x"], res.x["y"]])), abs=1e-15
    )
    assert res.history[-1]["fun"] == pytest.approx(res.fun, abs=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_least_squares_matches_lstsq(method):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = X @ np.array([0.7, -1.2, 2.0]) + 0.1 * rng.normal(size=40)
    w_ref, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    res = lad.minimize(
        least_squares(),
        {"w": np.zeros(3)},
        fixed={"X": X, "y": y},
        method=method,
        options=TIGHT[method],
    )
    assert res.success, res.message
    assert res.x["w"].shape == (3,) and res.jac["w"].shape == (3,)
    np.testing.assert_allclose(res.x["w"], w_ref, atol=X_ATOL[method])
    assert res.fun == pytest.approx(rss[0], rel=1e-9)


@pytest.mark.parametrize("sign", [1, -1], ids=["minimize-loss", "maximize-likelihood"])
@pytest.mark.parametrize("method", METHODS)
def test_classifier_matches_scipy(method, sign):
    data = classifier_data()
    ref = classifier_reference(data)
    optimize = lad.minimize if sign == 1 else lad.maximize
    res = optimize(
        classifier(sign),
        {"w": np.zeros(3), "b": 0.0},
        fixed=data,
        method=method,
        options=TIGHT[method],
    )
    assert res.success, res.message
    np.testing.assert_allclose(np.r_[res.x["w"], res.x["b"]], ref.x, atol=X_ATOL[method])
    assert res.fun == pytest.approx(sign * ref.fun, rel=1e-10)


@pytest.mark.parametrize("kind", ["entries", "arrays"])
@pytest.mark.parametrize("method", METHODS)
def test_cyclic_program_matches_scalar_minimization(method, kind):
    # the scalar fixed point h = tanh(0.5 h + a x), or the vector one u = tanh(A u + a x)
    build, data, fixed_point, unknown = {
        "entries": (cyclic, cyclic_data(), _fixed_point, "h"),
        "arrays": (array_cyclic, array_cyclic_data(), _vector_fixed_point, "u"),
    }[kind]

    def loss(a: float) -> float:
        return float(np.sum((fixed_point(a, data["x"]) - data["t"]) ** 2))

    ref = so.minimize_scalar(loss, bracket=(0.0, 2.0), method="brent", tol=1e-12)
    res = lad.minimize(build(), {"a": 0.2}, fixed=data, method=method, options=TIGHT[method])
    assert res.success, res.message
    assert res.x["a"] == pytest.approx(ref.x, abs=max(X_ATOL[method], 1e-6))  # Brent: ~sqrt(eps)
    assert res.fun == pytest.approx(ref.fun, rel=1e-9)
    if method in FULL_SPACE:
        np.testing.assert_allclose(res.z[unknown], fixed_point(res.x["a"], data["x"]), atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_batched_variables_one_per_sample(method):
    # x given with a batch axis: one variable per sample; each minimum is at x = c
    prog = lad.Program()
    x, c = prog.input("x"), prog.input("c")
    prog.define("f", sp.cosh(x - c) + x**2 / 10)
    c_data = np.linspace(-1.0, 2.0, 5)
    res = lad.minimize(
        prog, {"x": np.zeros(5)}, fixed={"c": c_data}, method=method, options=TIGHT[method]
    )
    assert res.success, res.message
    # per sample: sinh(x − c) + x/5 = 0, solved independently by SciPy's brentq
    expected = [so.brentq(lambda v, ck=ck: np.sinh(v - ck) + v / 5, -5, 5) for ck in c_data]
    assert res.x["x"].shape == (5,)
    np.testing.assert_allclose(res.x["x"], expected, atol=X_ATOL[method])


@pytest.mark.parametrize("method", ["gradient", "lbfgs", "augmented-lagrangian"])
def test_bounds_match_scipy(method):
    bounds = {"x": (None, 0.5), "y": (-1.0, 1.0)}
    ref = so.minimize(
        so.rosen,
        [-1.2, 1.0],
        jac=so.rosen_der,
        method="L-BFGS-B",
        bounds=[(None, 0.5), (-1.0, 1.0)],
        options={"gtol": 1e-12, "ftol": 0},
    )
    res = lad.minimize(
        rosenbrock(),
        {"x": -1.2, "y": 1.0},
        method=method,
        options={**TIGHT[method], "bounds": bounds},
    )
    assert res.success, res.message
    assert [res.x["x"], res.x["y"]] == pytest.approx(ref.x, abs=X_ATOL[method])
    assert res.x["x"] <= 0.5


# --------------------------------------------------------------------------- array programs


def array_classifier() -> lad.Program:
    """`classifier` as an array program: X and w are whole vectors, one constraint each."""
    prog = lad.Program()
    X = prog.input("X", shape=(3,), array=True)
    t = prog.input("t")
    w = prog.input("w", shape=(3,), array=True)
    b = prog.input("b")
    s = prog.define("s", lad.sum(lad.mul(w, X)) + b)
    loss = prog.define("loss", sp.log(1 + sp.exp(-t * s)))
    reg = sp.Rational(1, 2) * sp.Float(ALPHA) / N_SAMPLES * lad.sum(lad.mul(w, w))
    prog.define("objective", loss + reg)
    return prog


def array_cyclic() -> lad.Program:
    """u = tanh(A u + a x) per sample, u a vector unknown (one cyclic array constraint)."""
    prog = lad.Program()
    A = prog.input("A", shape=(2, 2), array=True)
    x = prog.input("x", shape=(2,), array=True)
    t = prog.input("t", shape=(2,), array=True)
    a = prog.input("a")
    u = prog.var("u", shape=(2,), array=True)
    prog.define(u, lad.tanh(A @ u + a * x))
    r = prog.define("r", u - t)
    prog.define("loss", lad.sum(lad.mul(r, r)))
    return prog


A_CYCLIC = np.array([[0.3, -0.2], [0.1, 0.4]])


def array_cyclic_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.uniform(-1.5, 1.5, size=(6, 2))
    return {
        "A": A_CYCLIC,
        "x": x,
        "t": _vector_fixed_point(0.8, x) + 0.05 * rng.normal(size=(6, 2)),
    }


def _vector_fixed_point(a: float, x: np.ndarray) -> np.ndarray:
    u = np.zeros_like(x)
    for _ in range(300):  # ‖A‖ < 0.5 and |tanh'| ≤ 1: a contraction, converged to rounding
        u = np.tanh(u @ A_CYCLIC.T + a * x)
    return u


@pytest.mark.parametrize("method", METHODS)
def test_array_classifier_matches_scipy(method):
    data = classifier_data()
    ref = classifier_reference(data)
    fn = array_classifier().compile()
    assert fn.engine == "arrays"
    res = lad.minimize(
        fn, {"w": np.zeros(3), "b": 0.0}, fixed=data, method=method, options=TIGHT[method]
    )
    assert res.success, res.message
    assert res.x["w"].shape == (3,)
    np.testing.assert_allclose(np.r_[res.x["w"], res.x["b"]], ref.x, atol=X_ATOL[method])
    assert res.fun == pytest.approx(ref.fun, rel=1e-10)


# --------------------------------------------------------------------------- method properties


def test_newton_kkt_converges_quadratically():
    data = classifier_data()
    res = lad.minimize(classifier(), {"w": np.zeros(3), "b": 0.0}, fixed=data, method="newton-kkt")
    assert res.success, res.message
    r = [h["kkt_residual"] for h in res.history]
    assert r[-1] <= 1e-9
    tail = [(a, b) for a, b in itertools.pairwise(r) if 1e-13 < a < 1e-2]
    assert len(tail) >= 2
    for a, b in tail:  # r_{k+1} ≤ C r_k²: quadratic, not merely linear
        assert b <= 100 * a**2, r
    assert all(h["step"] == 1.0 for h in res.history[-3:])  # full Newton steps near the end


@pytest.mark.parametrize("build", [classifier, array_classifier], ids=["entries", "arrays"])
@pytest.mark.parametrize("method", FULL_SPACE)
def test_full_space_multipliers_are_the_adjoints(method, build):
    data = classifier_data()
    fn = build().compile()
    res = lad.minimize(fn, {"w": np.zeros(3), "b": 0.0}, fixed=data, method=method)
    assert res.success, res.message
    sol = fn.solve({**res.x, **data})
    assert set(res.multipliers) == set(sol.multipliers)
    for name, lam in sol.multipliers.items():
        np.testing.assert_allclose(res.multipliers[name], lam, atol=1e-5)
        np.testing.assert_allclose(res.z[name], sol.values[name], atol=1e-7)
    assert res.maxcv <= 1e-8
    assert res.fun_model == pytest.approx(res.fun, rel=1e-7)


def test_augmented_lagrangian_records_penalty_and_violation():
    res = lad.minimize(rosenbrock(), {"x": -1.2, "y": 1.0}, method="augmented-lagrangian")
    assert res.success, res.message
    penalties = [h["penalty"] for h in res.history]
    assert penalties == sorted(penalties)
    assert res.history[-1]["constraint_violation"] <= 1e-8
    assert res.inner_nit >= res.nit


@pytest.mark.parametrize("method", METHODS)
def test_history_and_counts(method):
    res = lad.minimize(rosenbrock(), {"x": -1.2, "y": 1.0}, method=method)
    assert res.nit == len(res.history) > 0
    assert [h["iteration"] for h in res.history] == list(range(1, res.nit + 1))
    times = [h["time"] for h in res.history]
    assert times == sorted(times)
    for h in res.history:
        assert {"iteration", "fun", "grad_norm", "nfev", "time"} <= set(h)
    assert res.nfev >= res.nit and res.njev >= 1
    assert isinstance(res, lad.OptimizeResult) and isinstance(res, so.OptimizeResult)
    assert "history: <" in repr(res)


@pytest.mark.parametrize("how", ["return-true", "stop-iteration"])
@pytest.mark.parametrize("method", METHODS)
def test_callback_stops(method, how):
    seen = []

    def callback(intermediate_result):
        seen.append(intermediate_result)
        if intermediate_result.nit == 2:
            if how == "return-true":
                return True
            raise StopIteration

    # a start far from the optimum, where no method converges in two iterations
    res = lad.minimize(rosenbrock(), {"x": -1.9, "y": 2.5}, method=method, callback=callback)
    assert res.status == 3 and not res.success
    assert len(seen) == 2 and len(res.history) == 2
    assert set(seen[0].x) == {"x", "y"} and np.isfinite(seen[0].fun)


def test_gradient_grow_step_still_converges():
    res = lad.minimize(
        rosenbrock(), {"x": -1.2, "y": 1.0}, method="gradient", options={"initial": "grow"}
    )
    assert res.success, res.message
    assert [res.x["x"], res.x["y"]] == pytest.approx([1.0, 1.0], abs=1e-3)


def test_maxiter_is_reported():
    res = lad.minimize(
        rosenbrock(), {"x": -1.2, "y": 1.0}, method="gradient", options={"maxiter": 5}
    )
    assert res.status == 1 and not res.success and res.nit == 5


# --------------------------------------------------------------------------- errors


def test_unknown_method_lists_the_methods():
    with pytest.raises(ValueError) as err:
        lad.minimize(rosenbrock(), {"x": 0.0, "y": 0.0}, method="bfgs")
    assert str(err.value) == (
        "Unknown method 'bfgs'; methods: gradient, lbfgs, augmented-lagrangian, newton-kkt, "
        "interior-point, penalty, descent-ascent"
    )


def test_input_in_both_x0_and_fixed():
    with pytest.raises(ProgramError, match="'y' is in both x0 and fixed"):
        lad.minimize(rosenbrock(), {"x": 0.0, "y": 0.0}, fixed={"y": 1.0})


def test_missing_input():
    with pytest.raises(ProgramError, match="'y' is in neither x0 nor fixed"):
        lad.minimize(rosenbrock(), {"x": 0.0})


def test_unknown_input_and_wrong_shape():
    with pytest.raises(ProgramError, match="unknown input 'z'"):
        lad.minimize(rosenbrock(), {"x": 0.0, "y": 0.0, "z": 1.0})
    with pytest.raises(ProgramError, match="'a'"):  # an intermediate is not an input
        lad.minimize(rosenbrock(), {"x": 0.0, "y": 0.0}, fixed={"a": 1.0})
    with pytest.raises(ProgramError, match="'w'"):
        lad.minimize(least_squares(), {"w": np.zeros(2)}, fixed={"X": np.ones((4, 3)), "y": 0.0})


def test_unknown_option_and_bad_bounds():
    with pytest.raises(ValueError, match="Unknown option 'gtool' for method 'lbfgs'"):
        lad.minimize(rosenbrock(), {"x": 0.0, "y": 0.0}, options={"gtool": 1e-3})
    with pytest.raises(ProgramError, match="bounds: input 'y' is not optimized"):
        lad.minimize(rosenbrock(), {"x": 0.0}, fixed={"y": 1.0}, options={"bounds": {"y": (0, 1)}})
    with pytest.raises(ValueError, match="Unknown option 'bounds' for method 'newton-kkt'"):
        lad.minimize(
            rosenbrock(), {"x": 0.0, "y": 0.0}, method="newton-kkt", options={"bounds": {}}
        )


@pytest.mark.parametrize("inertia", ["reduced", "descent"])
def test_newton_kkt_inertia_correction_from_a_saddle_region(inertia):
    # at (0, 1) the Hessian of Rosenbrock is indefinite: a pure Newton step on ∇F = 0
    # would head for a stationary point of any kind; the corrected KKT step descends
    res = lad.minimize(
        rosenbrock(), {"x": 0.0, "y": 1.0}, method="newton-kkt", options={"inertia": inertia}
    )
    assert res.success, res.message
    assert [res.x["x"], res.x["y"]] == pytest.approx([1.0, 1.0], abs=1e-10)
    if inertia == "reduced":
        # at the start (forward point, adjoint multipliers) the reduced Hessian is the
        # Hessian of F, so δ = 2|λ_min| of SciPy's Rosenbrock Hessian there
        lam_min = np.linalg.eigvalsh(so.rosen_hess(np.array([0.0, 1.0])))[0]
        assert lam_min < 0
        assert res.history[0]["delta"] == pytest.approx(2 * abs(lam_min), rel=1e-10)


@pytest.mark.parametrize("method", ["gradient", "lbfgs", "augmented-lagrangian"])
def test_trial_points_where_the_forward_solve_fails(method):
    # u² = a has no real solution for a < 0, and 0.01/a blows up at 0: L-BFGS-B's first
    # trial step from a = 1 lands at a = 0, and the methods must back off from there
    prog = lad.Program()
    a = prog.input("a")
    u = prog.var("u")
    prog.equation(u**2, a)
    prog.define("loss", (u - 0.1) ** 2 + sp.Float(0.01) / a)
    res = lad.minimize(prog, {"a": 1.0}, method=method, options={"solve": {"init": {"u": 1.0}}})
    assert res.success, res.message
    # with u = √a: d/da [(√a − 0.1)² + 0.01/a] = 1 − 0.1/√a − 0.01/a² = 0
    a_ref = so.brentq(lambda v: 1 - 0.1 / np.sqrt(v) - 0.01 / v**2, 0.05, 1.0, xtol=1e-14)
    assert res.x["a"] == pytest.approx(a_ref, abs=X_ATOL[method])
