"""Energy-based programs and equilibrium propagation (issue 14, item 2).

The derived stationarity is checked against JAX's gradient of the energy written out in
the test; EP's estimate against the exact multipliers' gradient and central differences
of the cost at the equilibrium C(h*(θ)), with the rates theory gives as β → 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad

jax = pytest.importorskip("jax")
jnp = jax.numpy
jax.config.update("jax_enable_x64", True)

N, M, B = 4, 3, 5


def _hopfield(step: float = 1.0):
    """E = ½ h·h − ½ ρ·(W ρ) − b·ρ − ρ·(U x), ρ = tanh(h); C = ½ ‖ρ − t‖² + c·ρ."""
    prog = lad.Program()
    x = prog.input("x", shape=(M,), array=True)
    W = prog.input("W", shape=(N, N), array=True)
    U = prog.input("U", shape=(N, M), array=True)
    b = prog.input("b", shape=(N,), array=True)
    c = prog.input("c", shape=(N,), array=True)
    t = prog.input("t", shape=(N,), array=True)
    h = prog.var("h", shape=(N,), array=True)
    r = lad.tanh(h)
    E = (
        0.5 * lad.sum(lad.mul(h, h))
        - 0.5 * lad.sum(lad.mul(r, W @ r))
        - lad.sum(lad.mul(b, r))
        - lad.sum(lad.mul(r, U @ x))
    )
    C = 0.5 * lad.sum(lad.mul(r - t, r - t)) + lad.sum(lad.mul(c, r))
    return lad.energy_program(prog, h, E, C, step=step)


def _jax_energy(h, inputs, beta=0.0):
    r = jnp.tanh(h)
    W, U, b, c = (jnp.asarray(inputs[k]) for k in "WUbc")
    x, t = jnp.asarray(inputs["x"]), jnp.asarray(inputs["t"])
    E = 0.5 * jnp.sum(h * h) - 0.5 * jnp.sum(r * (r @ W.T))
    E = E - jnp.sum(r * b) - jnp.sum(r * (x @ U.T))
    C = 0.5 * jnp.sum((r - t) ** 2) + jnp.sum(r * c)
    return E + beta * C


def _inputs(rng, symmetric: bool = True):
    A = rng.normal(size=(N, N))
    W = A + A.T if symmetric else A
    W = 0.4 * W / np.linalg.norm(W, 2)
    return {
        "x": rng.normal(size=(B, M)),
        "W": W,
        "U": 0.5 * rng.normal(size=(N, M)),
        "b": 0.3 * rng.normal(size=N),
        "c": 0.3 * rng.normal(size=N),
        "t": rng.uniform(-0.5, 0.5, size=(B, N)),
    }


def _flat(grad, names):
    return np.concatenate([np.ravel(grad[k]) for k in names])


@pytest.fixture(scope="module")
def ep():
    return _hopfield()


def test_the_state_is_stationary_for_the_energy(ep):
    rng = np.random.default_rng(0)
    inputs = _inputs(rng)
    grad_h = jax.grad(_jax_energy)
    h0 = ep.equilibrium(inputs)
    assert h0.shape == (B, N)
    assert np.abs(np.asarray(grad_h(jnp.asarray(h0), inputs))).max() < 1e-11
    np.testing.assert_allclose(ep.solve(inputs).values["h"], h0, rtol=1e-12, atol=1e-13)
    h_beta = ep.equilibrium(inputs, beta=0.3)
    assert np.abs(np.asarray(grad_h(jnp.asarray(h_beta), inputs, 0.3))).max() < 1e-11
    assert np.abs(h_beta - h0).max() > 1e-3
    # the output is the cost there
    r = np.tanh(h0)
    want = 0.5 * ((r - inputs["t"]) ** 2).sum(-1) + r @ inputs["c"]
    np.testing.assert_allclose(ep.value(inputs), want, rtol=1e-12)


def test_the_exact_gradient_is_the_derivative_of_the_cost_at_equilibrium(ep):
    rng = np.random.default_rng(1)
    inputs = _inputs(rng)
    _, grad = ep.value_and_grad(inputs)
    for name in ("W", "U", "x"):
        d = rng.normal(size=np.shape(inputs[name]))
        eps = 1e-5
        up = {**inputs, name: inputs[name] + eps * d}
        down = {**inputs, name: inputs[name] - eps * d}
        fd = (ep.value(up).sum() - ep.value(down).sum()) / (2 * eps)
        assert np.sum(grad[name] * d) == pytest.approx(fd, rel=1e-7, abs=1e-10), name


@pytest.mark.parametrize("symmetric, order", [(False, 1.0), (True, 2.0)])
def test_ep_converges_to_the_exact_gradient_at_the_rate_of_theory(ep, symmetric, order):
    rng = np.random.default_rng(2)
    inputs = _inputs(rng)
    names = list(inputs)
    _, exact = ep.value_and_grad(inputs)
    g = _flat(exact, names)
    betas = np.geomspace(1e-1, 1e-3, 5)
    errors = []
    for beta in betas:
        value, est = ep.value_and_grad(inputs, adjoint="ep", beta=beta, symmetric=symmetric)
        np.testing.assert_array_equal(value, ep.value(inputs))  # the cost at h0
        errors.append(np.linalg.norm(_flat(est, names) - g) / np.linalg.norm(g))
    slope = np.polyfit(np.log(betas), np.log(errors), 1)[0]
    assert slope == pytest.approx(order, abs=0.15)


def test_ep_in_the_limit_is_the_exact_and_the_finite_difference_gradient(ep):
    rng = np.random.default_rng(3)
    inputs = _inputs(rng)
    names = list(inputs)
    _, exact = ep.value_and_grad(inputs)
    _, est = ep.value_and_grad(inputs, adjoint="ep", beta=1e-3, symmetric=True)
    g, e = _flat(exact, names), _flat(est, names)
    assert np.linalg.norm(e - g) / np.linalg.norm(g) < 1e-5
    # central differences of C(h*(θ)), entry by entry for W and b
    for name in ("W", "b"):
        fd = np.zeros(np.shape(inputs[name]))
        for k in np.ndindex(fd.shape):
            step = np.zeros(fd.shape)
            step[k] = 1e-5
            up = ep.value({**inputs, name: inputs[name] + step}).sum()
            down = ep.value({**inputs, name: inputs[name] - step}).sum()
            fd[k] = (up - down) / 2e-5
        np.testing.assert_allclose(est[name], fd, rtol=1e-5, atol=1e-8, err_msg=name)


def test_ep_one_sided_is_the_formula_of_the_phases(ep):
    """ĝ = (∂_θ(E + βC)(h_β) − ∂_θ E(h_0)) / β, with ∂_θ of the energy by JAX."""
    rng = np.random.default_rng(4)
    inputs = _inputs(rng)
    beta = 0.05
    h0 = ep.equilibrium(inputs)
    hb = ep.equilibrium(inputs, beta=beta, init={"h": h0})

    def total(theta, h, beta):
        return _jax_energy(jnp.asarray(h), {**inputs, **theta}, beta)

    theta = {k: jnp.asarray(inputs[k]) for k in ("W", "U", "b", "c")}
    d1 = jax.grad(total)(theta, hb, beta)
    d0 = jax.grad(total)(theta, h0, 0.0)
    _, est = ep.value_and_grad(inputs, adjoint="ep", beta=beta, wrt=list(theta))
    assert set(est) == set(theta)
    for k in theta:
        want = (np.asarray(d1[k]) - np.asarray(d0[k])) / beta
        np.testing.assert_allclose(est[k], want, rtol=1e-8, atol=1e-10, err_msg=k)


def test_the_step_changes_the_map_not_the_gradient():
    rng = np.random.default_rng(5)
    inputs = _inputs(rng)
    one, half = _hopfield(), _hopfield(step=0.5)
    _, g1 = one.value_and_grad(inputs)
    _, g2 = half.value_and_grad(inputs)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-9, atol=1e-12)
    _, j1 = one.value_and_grad(inputs, adjoint="unrolled", steps=3)
    _, j2 = half.value_and_grad(inputs, adjoint="unrolled", steps=3)
    assert not np.allclose(j1["W"], j2["W"])


def test_other_estimators_run_on_the_energy_program(ep):
    rng = np.random.default_rng(6)
    inputs = _inputs(rng)
    for options in ({"adjoint": "jfb"}, {"adjoint": "phantom", "steps": 3, "damping": 0.5}):
        _, a = ep.value_and_grad(inputs, **options)
        _, b = ep.compiled.value_and_grad(inputs, **options)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_an_asymmetric_w_still_writes_an_energy():
    """W not symmetric: the dynamics derived from E are those of (W + Wᵀ)/2, a gradient
    flow still (the Hessian of ρ·(W ρ) sees W + Wᵀ), so EP's limit is still exact."""
    ep = _hopfield()
    rng = np.random.default_rng(7)
    inputs = _inputs(rng, symmetric=False)
    _, exact = ep.value_and_grad(inputs)
    _, est = ep.value_and_grad(inputs, adjoint="ep", beta=1e-3, symmetric=True)
    names = list(inputs)
    g, e = _flat(exact, names), _flat(est, names)
    assert np.linalg.norm(e - g) / np.linalg.norm(g) < 1e-5


@pytest.mark.parametrize(
    "options, match",
    [
        ({"adjoint": "ep", "beta": 0.0}, "beta must be a positive number"),
        ({"adjoint": "ep", "beta": -0.1}, "beta must be a positive number"),
        ({"adjoint": "ep", "beta": float("nan")}, "beta must be a positive number"),
        ({"adjoint": "ep", "beta": "small"}, "beta must be a positive number"),
        ({"adjoint": "ep", "symmetric": "yes"}, "symmetric must be True or False"),
        ({"adjoint": "ep", "steps": 3}, "steps: adjoint='ep' takes beta and symmetric"),
        ({"beta": 0.1}, "beta: only adjoint='ep'"),
        ({"adjoint": "jfb", "symmetric": True}, "symmetric: only adjoint='ep'"),
        ({"adjoint": "nope"}, "unknown adjoint 'nope'"),
    ],
)
def test_bad_ep_options(ep, options, match):
    with pytest.raises(lad.ProgramError, match=match):
        ep.value_and_grad(_inputs(np.random.default_rng(8)), **options)


def test_bad_energy_programs():
    prog = lad.Program()
    x = prog.input("x", shape=(2,), array=True)
    h = prog.var("h", shape=(2,), array=True)
    E = lad.sum(lad.mul(h, h)) - lad.sum(lad.mul(h, x))
    with pytest.raises(lad.ProgramError, match="state must be an array variable"):
        lad.energy_program(prog, sp.Symbol("h"), E, lad.sum(h))
    other = lad.Program()
    g = other.var("g", shape=(2,), array=True)
    with pytest.raises(lad.ProgramError, match="'g' is not a variable declared in this program"):
        lad.energy_program(prog, g, E, lad.sum(h))
    with pytest.raises(lad.ProgramError, match="energy must be a scalar expression"):
        lad.energy_program(prog, h, lad.mul(h, h), lad.sum(h))
    with pytest.raises(lad.ProgramError, match="step must be a positive number"):
        lad.energy_program(prog, h, E, lad.sum(h), step=0)
    y = sp.Symbol("y")
    with pytest.raises(lad.ProgramError, match="cost must be an expression of the state 'h'"):
        lad.energy_program(prog, h, E, lad.sum(h) * y)
    with pytest.raises(lad.ProgramError, match=r"program must be a lad\.Program"):
        lad.energy_program(None, h, E, lad.sum(h))


def test_estimator_report_measures_bias_and_cost(ep):
    rng = np.random.default_rng(9)
    inputs = _inputs(rng)
    names = list(inputs)
    _, exact = ep.value_and_grad(inputs)
    for adjoint, options in (
        ("ep", {"beta": 0.05}),
        ("jfb", {}),
        ("phantom", {"steps": 2, "damping": 0.5}),
        ("unrolled", {"steps": 2}),
    ):
        rep = lad.estimator_report(ep, inputs, adjoint=adjoint, **options)
        _, est = ep.value_and_grad(inputs, adjoint=adjoint, **options)
        assert rep.adjoint == adjoint and rep.options == options
        for k in names:
            a, b = np.ravel(est[k]), np.ravel(exact[k])
            cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            assert rep.cosine[k] == pytest.approx(cos, rel=1e-12)
            rel = np.linalg.norm(a - b) / np.linalg.norm(b)
            assert rep.relative_error[k] == pytest.approx(rel, rel=1e-9, abs=1e-15)
        a, b = _flat(est, names), _flat(exact, names)
        assert rep.relative_error_all == pytest.approx(
            np.linalg.norm(a - b) / np.linalg.norm(b), rel=1e-9
        )
        assert rep.cosine_all == pytest.approx(
            a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), rel=1e-12
        )
        assert rep.seconds > 0 and rep.exact_seconds > 0
    # damped: the map h − ∇_h E need not contract, its damped adjoint iteration does
    exact_rep = lad.estimator_report(ep.compiled, inputs, adjoint="phantom", steps=300, damping=0.5)
    assert exact_rep.relative_error_all < 1e-10
    assert exact_rep.cosine_all == pytest.approx(1.0, abs=1e-12)
