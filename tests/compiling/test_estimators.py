"""Gradient estimators of cyclic programs (issue 14, item 2): ``adjoint=`` per call.

Each estimate is checked against an independent computation: the unrolled gradient
against JAX's gradient of the K-step loop written out in the test, JFB and phantom
gradients against their formulas in NumPy with the block's dense Jacobian written in
the test, and the exact one against the dense implicit-function solve.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad

jax = pytest.importorskip("jax")
jnp = jax.numpy
jax.config.update("jax_enable_x64", True)


def _deq(n: int, m: int = 3):
    """h = tanh(W h + U x + b), loss = Σ h∘h + Σ V h (a small equilibrium layer)."""
    prog = lad.Program()
    x = prog.input("x", shape=(m,), array=True)
    W = prog.input("W", shape=(n, n), array=True)
    U = prog.input("U", shape=(n, m), array=True)
    b = prog.input("b", shape=(n,), array=True)
    v = prog.input("v", shape=(n,), array=True)
    h = prog.var("h", shape=(n,), array=True)
    prog.define(h, lad.tanh(W @ h + U @ x + b))
    prog.define("loss", lad.sum(lad.mul(h, h)) + lad.sum(lad.mul(v, h)))
    return prog


def _inputs(rng, n: int, m: int = 3, batch=(4,), scale: float = 0.6):
    W = rng.normal(size=(n, n))
    return {
        "x": rng.normal(size=(*batch, m)),
        "W": scale * W / np.linalg.norm(W, 2),  # ‖W‖₂ = scale: a contraction
        "U": rng.normal(size=(n, m)),
        "b": rng.normal(size=n),
        "v": rng.normal(size=n),
    }


def _jax_loss(inputs, steps, h0=None):
    """The K-step unrolled program, in JAX."""

    def loss(x, W, U, b, v):
        h = jnp.zeros((*x.shape[:-1], W.shape[0])) if h0 is None else jnp.asarray(h0)
        for _ in range(steps):
            h = jnp.tanh(h @ W.T + x @ U.T + b)
        return jnp.sum(h * h) + jnp.sum(h * v)

    names = ("x", "W", "U", "b", "v")
    value, grads = jax.value_and_grad(loss, argnums=tuple(range(5)))(
        *(jnp.asarray(inputs[k]) for k in names)
    )
    return float(value), dict(zip(names, (np.asarray(g) for g in grads), strict=True))


def _dense_estimate(fn, inputs, lam_of):
    """The gradient from the multipliers ``lam_of(g, J)`` (per sample: g = ∂loss/∂h,
    J = ∂F/∂h = diag(1 − h²) W) at the exact fixed point, written out in NumPy."""
    h = np.atleast_2d(fn.solve(inputs).values["h"])
    x = np.atleast_2d(inputs["x"])
    W, U = inputs["W"], inputs["U"]
    d = 1 - h**2
    lam = np.stack(
        [lam_of(2 * hs + inputs["v"], ds[:, None] * W) for hs, ds in zip(h, d, strict=True)]
    )
    a = lam * d  # the adjoint of W h + U x + b
    grads = {"W": a.T @ h, "U": a.T @ x, "b": a.sum(0), "v": h.sum(0), "x": a @ U}
    if np.ndim(inputs["x"]) == 1:
        grads["x"] = grads["x"][0]
    return grads


@pytest.mark.parametrize("n, batch", [(5, (4,)), (5, ()), (20, (3,))])
def test_exact_is_the_default_and_the_implicit_function_gradient(n, batch):
    rng = np.random.default_rng(0)
    inputs = _inputs(rng, n, batch=batch)
    fn = _deq(n).compile()
    value, grad = fn.value_and_grad(inputs)
    value2, grad2 = fn.value_and_grad(inputs, adjoint="exact")
    assert np.array_equal(value, value2)
    for k in grad:
        assert np.array_equal(grad[k], grad2[k]), k
    ift = _dense_estimate(fn, inputs, lambda g, J: np.linalg.solve((np.eye(len(g)) - J).T, g))
    for k in grad:
        np.testing.assert_allclose(grad[k], ift[k], rtol=1e-9, atol=1e-11, err_msg=k)


@pytest.mark.parametrize("n, batch", [(5, (4,)), (5, ()), (20, (3,))])
@pytest.mark.parametrize("steps", [1, 4, 12])
def test_unrolled_is_the_gradient_of_the_unrolled_loop(n, batch, steps):
    rng = np.random.default_rng(1)
    inputs = _inputs(rng, n, batch=batch)
    fn = _deq(n).compile()
    value, grad = fn.value_and_grad(inputs, adjoint="unrolled", steps=steps)
    jv, jg = _jax_loss(inputs, steps)
    assert np.sum(value) == pytest.approx(jv, rel=1e-12)
    for k in jg:
        assert np.shape(grad[k]) == np.shape(inputs[k])
        np.testing.assert_allclose(grad[k], jg[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_unrolled_starts_from_init():
    rng = np.random.default_rng(2)
    inputs = _inputs(rng, 5)
    h0 = rng.normal(size=(4, 5))
    fn = _deq(5).compile()
    value, grad = fn.value_and_grad(inputs, adjoint="unrolled", steps=3, init={"h": h0})
    jv, jg = _jax_loss(inputs, 3, h0)
    assert np.sum(value) == pytest.approx(jv, rel=1e-12)
    for k in jg:
        np.testing.assert_allclose(grad[k], jg[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_unrolled_through_two_blocks_and_a_block_of_parameters():
    """Two cyclic blocks in a row (the second's unrolled multipliers reach the first),
    and a first block that depends on parameters only (the same for every sample)."""
    n = 4
    prog = lad.Program()
    x = prog.input("x", shape=(n,), array=True)
    A = prog.input("A", shape=(n, n), array=True)
    c = prog.input("c", shape=(n,), array=True)
    B = prog.input("B", shape=(n, n), array=True)
    p = prog.var("p", shape=(n,), array=True)
    prog.define(p, lad.tanh(A @ p + c))  # parameters only
    q = prog.var("q", shape=(n,), array=True)
    prog.define(q, lad.tanh(B @ q + lad.mul(p, x)))
    prog.define("y", lad.sum(lad.mul(q, q)))
    fn = prog.compile()
    rng = np.random.default_rng(3)
    inputs = {
        "x": rng.normal(size=(5, n)),
        "A": 0.5 * rng.normal(size=(n, n)) / np.sqrt(n),
        "c": rng.normal(size=n),
        "B": 0.5 * rng.normal(size=(n, n)) / np.sqrt(n),
    }
    K = 6

    def loss(x, A, c, B):
        p = jnp.zeros(n)
        for _ in range(K):
            p = jnp.tanh(A @ p + c)
        q = jnp.zeros(x.shape)
        for _ in range(K):
            q = jnp.tanh(q @ B.T + p * x)
        return jnp.sum(q * q)

    names = ("x", "A", "c", "B")
    jv, jg = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(*(inputs[k] for k in names))
    value, grad = fn.value_and_grad(inputs, adjoint="unrolled", steps=K)
    assert np.sum(value) == pytest.approx(float(jv), rel=1e-12)
    for k, g in zip(names, jg, strict=True):
        np.testing.assert_allclose(grad[k], np.asarray(g), rtol=1e-10, atol=1e-12, err_msg=k)


def test_unrolled_tends_to_exact_geometrically():
    rng = np.random.default_rng(4)
    inputs = _inputs(rng, 6, scale=0.5)
    fn = _deq(6).compile()
    _, exact = fn.value_and_grad(inputs)
    ks = np.array([4, 8, 12, 16, 20])
    errors = []
    for k in ks:
        _, g = fn.value_and_grad(inputs, adjoint="unrolled", steps=int(k))
        errors.append(max(np.abs(g[n] - exact[n]).max() for n in exact))
    errors = np.array(errors)
    assert np.all(np.diff(errors) < 0)
    slope, intercept = np.polyfit(ks, np.log(errors), 1)
    # geometric: log error linear in K, at a rate no slower than the contraction ‖W‖₂
    assert np.max(np.abs(np.log(errors) - (slope * ks + intercept))) < 0.5
    assert np.exp(slope) < 0.5 + 0.05
    assert errors[-1] < 1e-6


def _phantom(steps, damping):
    def lam(g, J):
        out = g
        for _ in range(steps):
            out = (1 - damping) * out + damping * (g + J.T @ out)
        return out

    return lam


@pytest.mark.parametrize("n, batch", [(5, (4,)), (5, ()), (20, (3,))])
@pytest.mark.parametrize(
    "options, formula",
    [
        ({"adjoint": "jfb"}, lambda g, J: g),
        ({"adjoint": "phantom", "steps": 1, "damping": 0.5}, _phantom(1, 0.5)),
        ({"adjoint": "phantom", "steps": 3, "damping": 0.3}, _phantom(3, 0.3)),
        ({"adjoint": "phantom", "steps": 5, "damping": 1.0}, _phantom(5, 1.0)),
    ],
)
def test_jfb_and_phantom_are_their_formulas(n, batch, options, formula):
    """JFB: λ = g; phantom: K steps λ ← (1 − α) λ + α (g + Jᵀ λ) from λ = g."""
    rng = np.random.default_rng(6)
    inputs = _inputs(rng, n, batch=batch)
    fn = _deq(n).compile()
    value, grad = fn.value_and_grad(inputs, **options)
    assert np.array_equal(value, fn.value(inputs))  # the exact forward
    want = _dense_estimate(fn, inputs, formula)
    for k in want:
        np.testing.assert_allclose(grad[k], want[k], rtol=1e-9, atol=1e-11, err_msg=k)


def test_phantom_defaults_are_five_steps_at_one_half():
    rng = np.random.default_rng(7)
    inputs = _inputs(rng, 5)
    fn = _deq(5).compile()
    _, default = fn.value_and_grad(inputs, adjoint="phantom")
    _, given = fn.value_and_grad(inputs, adjoint="phantom", steps=5, damping=0.5)
    _, other = fn.value_and_grad(inputs, adjoint="phantom", steps=4, damping=0.5)
    for k in default:
        assert np.array_equal(default[k], given[k])
    assert not np.allclose(default["W"], other["W"])


@pytest.mark.parametrize("n", [5, 20])
def test_phantom_with_many_undamped_steps_is_exact(n):
    rng = np.random.default_rng(8)
    inputs = _inputs(rng, n)
    fn = _deq(n).compile()
    _, exact = fn.value_and_grad(inputs)
    _, grad = fn.value_and_grad(inputs, adjoint="phantom", steps=80, damping=1.0)
    for k in exact:
        np.testing.assert_allclose(grad[k], exact[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_wrt_prunes_the_estimate_too():
    rng = np.random.default_rng(9)
    inputs = _inputs(rng, 5)
    fn = _deq(5).compile()
    _, full = fn.value_and_grad(inputs, adjoint="phantom", steps=3)
    _, some = fn.value_and_grad(inputs, wrt=["W", "b"], adjoint="phantom", steps=3)
    assert set(some) == {"W", "b"}
    for k in some:
        np.testing.assert_allclose(some[k], full[k], rtol=1e-13, atol=1e-15)


def _mlp():
    prog = lad.Program()
    x = prog.input("x", shape=(3,), array=True)
    W = prog.input("W", shape=(4, 3), array=True)
    h = prog.define("h", lad.tanh(W @ x))
    prog.define("y", lad.sum(lad.mul(h, h)))
    return prog


@pytest.mark.parametrize(
    "options",
    [
        {"adjoint": "unrolled", "steps": 2},
        {"adjoint": "jfb"},
        {"adjoint": "phantom", "steps": 3, "damping": 0.7},
    ],
)
def test_acyclic_programs_get_the_exact_gradient(options):
    rng = np.random.default_rng(10)
    inputs = {"x": rng.normal(size=(5, 3)), "W": rng.normal(size=(4, 3))}
    fn = _mlp().compile()
    value, exact = fn.value_and_grad(inputs)
    v, g = fn.value_and_grad(inputs, **options)
    assert np.array_equal(v, value)
    for k in exact:
        np.testing.assert_array_equal(g[k], exact[k])
    # and by hand: ∂/∂W Σ tanh(W x)² = Σ_s (2 h (1 − h²)) xᵀ
    h = np.tanh(inputs["x"] @ inputs["W"].T)
    np.testing.assert_allclose(g["W"], (2 * h * (1 - h**2)).T @ inputs["x"], rtol=1e-12)
    # an entry-wise acyclic program too
    prog = lad.Program()
    a = prog.input("a")
    prog.define("f", sp.exp(a) * sp.sin(a))
    _, ge = prog.compile().value_and_grad({"a": 0.3}, **options)
    assert ge["a"] == pytest.approx(np.exp(0.3) * (np.sin(0.3) + np.cos(0.3)), rel=1e-14)


def test_entrywise_cyclic_programs_say_which_engine_runs_estimators():
    prog = lad.Program()
    x = prog.input("x")
    h = prog.var("h")
    prog.define(h, sp.tanh(0.5 * h + x))
    prog.output(h)
    with pytest.raises(lad.ProgramError, match=r"array engine.*engine='arrays'"):
        prog.compile().value_and_grad({"x": 0.3}, adjoint="jfb")
    # on the array engine it runs: λ = g = 1, so ∂h/∂x ≈ 1 − h² (J = 0.5 (1 − h²) ignored)
    fn = prog.compile(engine="arrays")
    value, grad = fn.value_and_grad({"x": 0.3}, adjoint="jfb")
    assert grad["x"] == pytest.approx(1 - value**2, rel=1e-12)


def test_entrywise_programs_lowered_by_groups_run_estimators_there():
    """An entry-wise cyclic program with repeated structure runs on the array engine,
    lowered by groups (`_grouping`): the estimators run there too."""
    n = 16
    prog = lad.Program()
    x = prog.input("x", shape=(n,))
    W = prog.input("W", shape=(n, n))
    h = prog.var("h", shape=(n,))
    prog.define(h, (W * h + x).applyfunc(sp.tanh))
    prog.define("y", sum(h[i] ** 2 for i in range(n)))
    fn = prog.compile()
    assert fn.engine == "lowered"
    rng = np.random.default_rng(12)
    A = rng.normal(size=(n, n))
    inputs = {"x": rng.normal(size=(3, n)), "W": 0.5 * A / np.linalg.norm(A, 2)}

    def loss(x, W):
        z = jnp.zeros(x.shape)
        for _ in range(4):
            z = jnp.tanh(z @ W.T + x)
        return jnp.sum(z * z)

    jv, (jx, jW) = jax.value_and_grad(loss, argnums=(0, 1))(inputs["x"], inputs["W"])
    value, grad = fn.value_and_grad(inputs, adjoint="unrolled", steps=4)
    assert np.sum(value) == pytest.approx(float(jv), rel=1e-12)
    np.testing.assert_allclose(grad["W"], np.asarray(jW), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad["x"], np.asarray(jx), rtol=1e-10, atol=1e-12)
    # JFB: λ = g = 2h at the fixed point, a = λ (1 − h²)
    _, grad = fn.value_and_grad(inputs, adjoint="jfb")
    hs = fn.solve(inputs).values["h"]
    a = 2 * hs * (1 - hs**2)
    np.testing.assert_allclose(grad["W"], a.T @ hs, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(grad["x"], a, rtol=1e-9, atol=1e-11)


def test_a_non_finite_estimate_is_reported():
    rng = np.random.default_rng(13)
    inputs = _inputs(rng, 5)
    inputs["v"] = np.full(5, np.inf)
    fn = _deq(5).compile()
    with pytest.warns(lad.NonFiniteWarning, match="not finite"):
        fn.value_and_grad(inputs, check_finite=False, adjoint="jfb")


def test_dask_inputs_take_the_exact_adjoint_only():
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(14)
    inputs = _inputs(rng, 5)
    inputs["x"] = da.from_array(inputs["x"], chunks=(2, 3))
    with pytest.raises(lad.ProgramError, match="Dask inputs take adjoint='exact' only"):
        _deq(5).compile().value_and_grad(inputs, adjoint="jfb")


def test_blocks_of_implicit_equations_are_refused():
    prog = lad.Program()
    x = prog.input("x", shape=(2,), array=True)
    u = prog.var("u")
    prog.equation(u**3 + u, lad.sum(x))
    prog.define("y", u**2)
    fn = prog.compile()
    assert fn.value_and_grad({"x": [0.1, 0.2]})[1]["x"].shape == (2,)
    with pytest.raises(lad.ProgramError, match="implicit equations"):
        fn.value_and_grad({"x": [0.1, 0.2]}, adjoint="phantom")


@pytest.mark.parametrize(
    "options, match",
    [
        ({"adjoint": "backprop"}, "unknown adjoint 'backprop'"),
        ({"adjoint": "ep"}, "unknown adjoint 'ep'.*energy_program"),
        ({"adjoint": 3}, "unknown adjoint 3"),
        ({"adjoint": "unrolled", "steps": 0}, "steps must be a positive integer"),
        ({"adjoint": "phantom", "steps": 2.5}, "steps must be a positive integer"),
        ({"adjoint": "phantom", "steps": True}, "steps must be a positive integer"),
        ({"adjoint": "phantom", "damping": 0.0}, r"damping must be a number in \(0, 1\]"),
        ({"adjoint": "phantom", "damping": 1.5}, r"damping must be a number in \(0, 1\]"),
        ({"adjoint": "phantom", "damping": float("nan")}, "damping must be"),
        ({"adjoint": "jfb", "steps": 3}, "steps: adjoint='jfb' takes no steps"),
        ({"adjoint": "jfb", "damping": 0.5}, "damping: adjoint='jfb' takes no damping"),
        ({"adjoint": "unrolled", "damping": 0.5}, "damping: adjoint='unrolled'"),
        ({"steps": 3}, "steps: adjoint='exact' takes no steps"),
        ({"adjoint": "jfb", "beta": 0.1}, "unknown solve option beta"),
    ],
)
def test_bad_options_are_program_errors_naming_them(options, match):
    rng = np.random.default_rng(11)
    fn = _deq(5).compile()
    with pytest.raises(lad.ProgramError, match=match):
        fn.value_and_grad(_inputs(rng, 5), **options)
