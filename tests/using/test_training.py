"""Training methods on the lifted Lagrangian: "penalty" and "descent-ascent".

Each method's final point is checked against what it claims, computed another way: the
exact forward and adjoint pass of the program at the final weights (`fn.solve`), central
differences of the forward value, and L-BFGS on the same problem run here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad
from lagrangian_ad import ProgramError

ALPHA = 0.1  # weight decay: the loss has a strict minimum (no drift to infinity)


def mlp(n_in: int = 2, n_h: int = 3, n_out: int = 2, n: int = 8) -> lad.Program:
    """x -> tanh(W1 x + b1) -> W2 h + b2 -> softmax cross-entropy, + α/(2n)‖W‖² per sample."""
    p = lad.Program()
    x = p.input("x", shape=(n_in,), array=True)
    t = p.input("t", shape=(n_out,), array=True)
    W1 = p.input("W1", shape=(n_h, n_in), array=True)
    b1 = p.input("b1", shape=(n_h,), array=True)
    W2 = p.input("W2", shape=(n_out, n_h), array=True)
    b2 = p.input("b2", shape=(n_out,), array=True)
    h = p.define("h", lad.tanh(W1 @ x + b1))
    y = p.define("y", W2 @ h + b2)
    lse = p.define("lse", sp.log(lad.sum(lad.exp(y))))
    decay = sp.Float(ALPHA / (2 * n)) * (lad.sum(lad.mul(W1, W1)) + lad.sum(lad.mul(W2, W2)))
    p.define("loss", lse - lad.sum(lad.mul(t, y)) + decay)
    return p


def entrywise(n: int = 8) -> lad.Program:
    """A 1-2-1 tanh regression, entry by entry: loss = (y − t)² + α/(2n)‖w‖² per sample."""
    p = lad.Program()
    x, t = p.input("x"), p.input("t")
    W1, b1 = p.input("W1", shape=(2,)), p.input("b1", shape=(2,))
    W2, b2 = p.input("W2", shape=(2,)), p.input("b2")
    h = [p.define(f"h{i}", sp.tanh(W1[i] * x + b1[i])) for i in range(2)]
    y = p.define("y", W2[0] * h[0] + W2[1] * h[1] + b2)
    decay = sp.Float(ALPHA / (2 * n)) * sum(W1[i] ** 2 + W2[i] ** 2 for i in range(2))
    p.define("loss", (y - t) ** 2 + decay)
    return p


def regression(n: int = 8) -> lad.Program:
    """The 1-2-1 regression of `entrywise` as an array program: h = tanh(W1 x + b1)."""
    p = lad.Program()
    x, t = p.input("x", shape=(1,), array=True), p.input("t")
    W1 = p.input("W1", shape=(2, 1), array=True)
    b1 = p.input("b1", shape=(2,), array=True)
    W2 = p.input("W2", shape=(1, 2), array=True)
    b2 = p.input("b2")
    h = p.define("h", lad.tanh(W1 @ x + b1))
    y = p.define("y", (W2 @ h)[0, 0] + b2)
    decay = sp.Float(ALPHA / (2 * n)) * (lad.sum(lad.mul(W1, W1)) + lad.sum(lad.mul(W2, W2)))
    p.define("loss", (y - t) ** 2 + decay)
    return p


def mlp_problem(n: int = 8):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 2))
    labels = (X @ np.array([1.0, -1.0]) + 0.5 * rng.normal(size=n) > 0).astype(int)
    x0 = {
        "W1": 0.5 * rng.normal(size=(3, 2)),
        "b1": np.zeros(3),
        "W2": 0.5 * rng.normal(size=(2, 3)),
        "b2": np.zeros(2),
    }
    return mlp(n=n).compile(), x0, {"x": X, "t": np.eye(2)[labels]}


def entrywise_problem(n: int = 8):
    rng = np.random.default_rng(1)
    X = np.linspace(-2, 2, n)
    x0 = {"W1": rng.normal(size=2), "b1": np.zeros(2), "W2": rng.normal(size=2), "b2": 0.0}
    return entrywise(n).compile(), x0, {"x": X, "t": np.sin(1.5 * X) + 0.3 * rng.normal(size=n)}


def regression_problem(n: int = 8):
    _, x0, data = entrywise_problem(n)
    x0 = {**x0, "W1": x0["W1"][:, None], "W2": x0["W2"][None, :]}
    return regression(n).compile(), x0, {**data, "x": data["x"][:, None]}


PROBLEMS = {"array": regression_problem, "entrywise": entrywise_problem, "mlp": mlp_problem}


def central_gradient(fn, x, data, h=1e-6):
    """∂F/∂x by central differences of the forward value F = Σ_b loss (no adjoint)."""
    out = {}
    for name, value in x.items():
        value = np.asarray(value, dtype=float)
        g = np.zeros(value.shape)
        for idx in np.ndindex(value.shape):
            e = np.zeros(value.shape)
            e[idx] = h
            plus = fn.value({**x, name: value + e, **data}).sum()
            minus = fn.value({**x, name: value - e, **data}).sum()
            g[idx] = (plus - minus) / (2 * h)
        out[name] = g
    return out


def max_abs(d):
    return max(float(np.max(np.abs(v))) for v in d.values())


def weight_gradient(fn, x, data) -> float:
    """‖∇F‖_∞ over the weights, by the library's exact forward and adjoint pass."""
    grad = fn.value_and_grad({**x, **data})[1]
    return max_abs({name: grad[name] for name in x})


def lbfgs_loss(fn, x0, data) -> tuple[float, float]:
    """The loss at the start and L-BFGS's final loss on the same problem."""
    start = float(fn.value({**x0, **data}).sum())
    return start, lad.minimize(fn, x0, fixed=data, method="lbfgs").fun


# Options that keep each run to a few seconds on these 8-sample problems.
PENALTY = {"mu0": 10.0, "growth": 10.0, "mu_max": 1e3, "inner_maxiter": 2, "step_maxiter": 50}
PENALTY_INNER_TOL = 1e-5  # the default inner_tol
DESCENT_ASCENT = {"step": 0.1, "dual_step": 0.1, "ctol": 1e-5, "gtol": 1e-5, "maxiter": 3000}


@pytest.mark.parametrize("kind", ["array", "entrywise"])
def test_penalty_approaches_a_stationary_point_of_the_forward_objective(kind):
    """As ρ grows the violation falls like 1/ρ and ∇F(θ) (the exact gradient of the
    forward-pass objective, checked by central differences) falls with it; ρc estimates
    the program's multipliers; the loss is L-BFGS's to within 1 % of the start's gap."""
    fn, x0, data = PROBLEMS[kind]()
    seen = []
    res = lad.minimize(
        fn, x0, fixed=data, method="penalty", options=PENALTY, callback=lambda r: seen.append(r.x)
    )
    assert res.status == 1 and "mu_max" in res.message  # ctol 1e-6 is below what 1e3 gives
    rhos = [h["penalty"] for h in res.history]
    assert rhos == [10.0, 100.0, 1000.0]
    cv = [h["constraint_violation"] for h in res.history]
    assert all(b < 0.2 * a for a, b in itertools.pairwise(cv)), cv
    grads = [weight_gradient(fn, x, data) for x in seen]
    start_grad = weight_gradient(fn, x0, data)
    assert all(b < 0.5 * a for a, b in itertools.pairwise(grads)), grads
    assert grads[-1] < 1e-3 * start_grad, (grads, start_grad)
    numeric = central_gradient(fn, res.x, data)
    for name, g in res.jac.items():
        np.testing.assert_allclose(g, numeric[name], atol=1e-6)
    sol = fn.solve({**res.x, **data})
    for name, lam in sol.multipliers.items():  # λ ≈ −ρ c, to O(1/ρ)
        np.testing.assert_allclose(res.multipliers[name], lam, atol=20 / rhos[-1])
    start, best = lbfgs_loss(fn, x0, data)
    assert res.fun <= best + 0.01 * (start - best), (res.fun, best, start)


@pytest.mark.parametrize("kind", ["array", "entrywise"])
def test_descent_ascent_ends_at_the_programs_multipliers(kind):
    """At the end, z is the forward pass to ctol, μ the program's adjoints (fn.solve at the
    final weights), θ stationary for F; the loss is L-BFGS's to within 1 % of the gap."""
    fn, x0, data = PROBLEMS[kind]()
    res = lad.minimize(fn, x0, fixed=data, method="descent-ascent", options=DESCENT_ASCENT)
    assert res.success, res.message
    assert res.maxcv <= 1e-5
    sol = fn.solve({**res.x, **data})
    assert set(res.multipliers) == set(sol.multipliers)
    for name, lam in sol.multipliers.items():
        np.testing.assert_allclose(res.multipliers[name], lam, atol=1e-3)
        np.testing.assert_allclose(res.z[name], sol.values[name], atol=1e-4)
    assert max_abs(res.jac) < 1e-4
    numeric = central_gradient(fn, res.x, data)
    for name, g in res.jac.items():
        np.testing.assert_allclose(g, numeric[name], atol=1e-6)
    start, best = lbfgs_loss(fn, x0, data)
    assert res.fun <= best + 0.01 * (start - best), (res.fun, best, start)
    assert res.nit == len(res.history) and res.history[-1]["constraint_violation"] < 1e-4


@pytest.mark.parametrize(
    ("method", "option", "value"),
    [
        ("penalty", "mu0", 0.0),
        ("penalty", "growth", 1.0),
        ("penalty", "inner_maxiter", 0),
        ("penalty", "ctol", -1.0),
        ("descent-ascent", "step", -0.1),
        ("descent-ascent", "dual_step", "big"),
        ("descent-ascent", "rho", -1.0),
        ("descent-ascent", "multipliers0", "ones"),
        ("descent-ascent", "maxiter", 2.5),
    ],
)
def test_bad_options_name_the_option(method, option, value):
    fn, x0, data = entrywise_problem()
    with pytest.raises(ProgramError, match=repr(option)):
        lad.minimize(fn, x0, fixed=data, method=method, options={option: value})


def test_unknown_option_and_method_list_the_training_methods():
    fn, x0, data = entrywise_problem()
    with pytest.raises(ValueError, match="'mu' for method 'penalty'"):
        lad.minimize(fn, x0, fixed=data, method="penalty", options={"mu": 1.0})
    with pytest.raises(ValueError, match="penalty, descent-ascent"):
        lad.minimize(fn, x0, fixed=data, method="admm")


def test_descent_ascent_steps_are_the_exact_gradient_of_the_lagrangian():
    """One iteration from the forward pass: θ moves by −η s∇F (at z = forward pass and
    μ = its adjoints, ∇_θ L_A is the gradient of F from the multipliers)."""
    fn, x0, data = entrywise_problem()
    res = lad.minimize(
        fn, x0, fixed=data, method="descent-ascent", options={**DESCENT_ASCENT, "maxiter": 1}
    )
    numeric = central_gradient(fn, x0, data)
    for name, g in numeric.items():
        np.testing.assert_allclose(res.x[name], np.asarray(x0[name]) - 0.1 * g, atol=1e-7)


def test_penalty_alternation_alone_lowers_the_loss_and_the_joint_finish_solves_each_rho():
    """θ- and z-steps alone (joint=False: the method of auxiliary coordinates as written)
    lower the loss from the start but leave ∇Q far above the tolerance after 20 rounds
    (block coordinate descent); the joint finish meets it at the same ρ."""
    fn, x0, data = entrywise_problem()
    options = {**PENALTY, "inner_maxiter": 20, "mu_max": 100.0}
    alone = lad.minimize(fn, x0, fixed=data, method="penalty", options={**options, "joint": False})
    joint = lad.minimize(fn, x0, fixed=data, method="penalty", options=options)
    start = float(fn.value({**x0, **data}).sum())
    assert alone.fun < 0.1 * start
    assert all(h["joint_iterations"] == 0 for h in alone.history)
    assert all(h["inner_iterations"] == 20 for h in alone.history)
    assert min(h["grad_norm"] for h in alone.history) > 1e3 * PENALTY_INNER_TOL
    assert all(h["grad_norm"] <= PENALTY_INNER_TOL for h in joint.history)
    assert joint.fun < alone.fun
