"""Array programs (issue 12): one constraint per layer, gradients exactly right.

Every gradient is checked against an independent computation: backprop written out by
hand in NumPy, a dense implicit-function solve for cyclic blocks, central differences,
and JAX where it is installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import lagrangian_ad as lad
from lagrangian_ad import testing


def _mlp(sizes=(4, 6, 3)):
    prog = lad.Program()
    d, m, k = sizes
    x = prog.input("x", (d,), array=True)
    t = prog.input("t", (k,), array=True)
    W1 = prog.input("W1", (m, d), array=True)
    b1 = prog.input("b1", (m,), array=True)
    W2 = prog.input("W2", (k, m), array=True)
    b2 = prog.input("b2", (k,), array=True)
    h = prog.define("h", lad.tanh(W1 @ x + b1))
    y = prog.define("y", W2 @ h + b2)
    lse = prog.define("lse", sp.log(lad.sum(lad.exp(y))))
    prog.define("loss", lse - lad.sum(lad.mul(t, y)))
    return prog


def _mlp_inputs(rng, batch=(5,), sizes=(4, 6, 3)):
    d, m, k = sizes
    t = np.zeros((*batch, k))
    t[..., 0] = 1.0
    return {
        "x": rng.normal(size=(*batch, d)),
        "t": t,
        "W1": rng.normal(size=(m, d)),
        "b1": rng.normal(size=m),
        "W2": rng.normal(size=(k, m)),
        "b2": rng.normal(size=k),
    }


def _mlp_by_hand(v):
    """Forward and backprop of the same network, written out in NumPy."""
    h = np.tanh(v["x"] @ v["W1"].T + v["b1"])
    y = h @ v["W2"].T + v["b2"]
    e = np.exp(y)
    loss = np.log(e.sum(-1)) - (v["t"] * y).sum(-1)
    gy = e / e.sum(-1, keepdims=True) - v["t"]
    gh = gy @ v["W2"]
    ga = gh * (1 - h**2)
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    grads = {
        "W2": flat(gy).T @ flat(h),
        "b2": flat(gy).sum(0),
        "W1": flat(ga).T @ flat(v["x"]),
        "b1": flat(ga).sum(0),
        "x": ga @ v["W1"],
        "t": -y,
    }
    return loss, grads, {"h": h, "y": y}, {"y": gy, "h": gh}


@pytest.mark.parametrize("batch", [(), (7,), (2, 3)])
def test_mlp_matches_backprop_by_hand(batch):
    rng = np.random.default_rng(1)
    fn = _mlp().compile()
    v = _mlp_inputs(rng, batch)
    value, grad = fn.value_and_grad(v)
    loss, want, values, lams = _mlp_by_hand(v)
    np.testing.assert_allclose(value, loss, rtol=1e-13)
    for name, g in want.items():
        assert np.shape(grad[name]) == np.shape(v[name])
        np.testing.assert_allclose(grad[name], g, rtol=1e-12, atol=1e-13, err_msg=name)
    sol = fn.solve(v)
    for name in ("h", "y"):
        assert sol.values[name].shape == batch + v["b1" if name == "h" else "b2"].shape
        np.testing.assert_allclose(sol.values[name], values[name], rtol=1e-13)
        np.testing.assert_allclose(sol.multipliers[name], lams[name], rtol=1e-12, atol=1e-14)


def test_generated_code_is_a_few_calls_per_layer():
    fn = _mlp((50, 40, 10)).compile()
    lines = [ln for ln in fn.forward_source.splitlines()[1:-1]]
    assert len(lines) <= 10  # five constraints, no entries expanded
    assert "_rt.matmul(W1, x)" in fn.forward_source
    assert "W1[" not in fn.source


def test_parameters_given_per_sample_get_per_sample_gradients():
    rng = np.random.default_rng(2)
    fn = _mlp().compile()
    v = _mlp_inputs(rng, (4,))
    v["b1"] = np.broadcast_to(v["b1"], (4, 6)).copy()
    _, grad = fn.value_and_grad(v)
    _, _want, _, _ = _mlp_by_hand(v)
    h = np.tanh(v["x"] @ v["W1"].T + v["b1"])
    y = h @ v["W2"].T + v["b2"]
    gy = np.exp(y) / np.exp(y).sum(-1, keepdims=True) - v["t"]
    per_sample = (gy @ v["W2"]) * (1 - h**2)
    np.testing.assert_allclose(grad["b1"], per_sample, rtol=1e-12)


def test_entries_scalars_and_transpose_against_central_differences():
    prog = lad.Program()
    A = prog.input("A", (3, 2), array=True)
    v = prog.input("v", (3,), array=True)
    s = prog.input("s")
    B = prog.define("B", lad.sin(A.T @ v @ v.T) * s)  # 2×3, a scalar multiple
    C = prog.define("C", lad.apply(lambda a, q: a**2 + q, B, s))  # a scalar broadcast
    prog.define("out", C[1, 2] * sp.cos(B[0, 0]) + lad.sum(C) / 7 + s**2)
    rng = np.random.default_rng(3)
    inputs = {"A": rng.normal(size=(3, 2)), "v": rng.normal(size=3), "s": 0.7}
    testing.check_grads(prog, inputs, modes=("rev", "fwd"))
    fn = prog.compile()

    def f(a, vv, ss):
        b = np.sin(a.T @ np.outer(vv, vv)) * ss
        c = b**2 + ss
        return c[1, 2] * np.cos(b[0, 0]) + c.sum() / 7 + ss**2

    value, grad = fn.value_and_grad(inputs)
    assert value == pytest.approx(f(inputs["A"], inputs["v"], inputs["s"]), rel=1e-13)
    eps = 1e-6
    for i, j in [(0, 0), (2, 1)]:
        E = np.zeros((3, 2))
        E[i, j] = eps
        fd = (f(inputs["A"] + E, inputs["v"], 0.7) - f(inputs["A"] - E, inputs["v"], 0.7)) / 2 / eps
        assert grad["A"][i, j] == pytest.approx(fd, rel=1e-7)
    fd = (f(inputs["A"], inputs["v"], 0.7 + eps) - f(inputs["A"], inputs["v"], 0.7 - eps)) / 2 / eps
    assert grad["s"] == pytest.approx(fd, rel=1e-7)


def _equilibrium(n, d=3):
    prog = lad.Program()
    x = prog.input("x", (d,), array=True)
    W = prog.input("W", (n, n), array=True)
    U = prog.input("U", (n, d), array=True)
    b = prog.input("b", (n,), array=True)
    c = prog.input("c", (n,), array=True)
    h = prog.var("h", (n,), array=True)
    prog.define(h, lad.tanh(W @ h + U @ x + b))
    prog.define("loss", lad.sum(lad.mul(c, h)))
    return prog


def _equilibrium_inputs(rng, n, batch, d=3, norm=0.8):
    W = rng.normal(size=(n, n))
    W *= norm / np.linalg.norm(W, 2)
    return {
        "x": rng.normal(size=(batch, d)),
        "W": W,
        "U": rng.normal(size=(n, d)),
        "b": rng.normal(size=n),
        "c": rng.normal(size=n),
    }


def _implicit_reference(v):
    """The fixed point by plain iteration to convergence, the gradient by a dense
    implicit-function solve per sample: λ = (I − D W)⁻ᵀ c, D = diag(1 − h²)."""
    W, U, b, c, X = v["W"], v["U"], v["b"], v["c"], v["x"]
    n = len(b)
    H = np.zeros((len(X), n))
    for _ in range(2000):
        H = np.tanh(H @ W.T + X @ U.T + b)
    gW, gU, gb, gx = np.zeros_like(W), np.zeros_like(U), np.zeros(n), np.zeros_like(X)
    lams = np.zeros_like(H)
    for k in range(len(X)):
        D = 1 - H[k] ** 2
        lam = np.linalg.solve((np.eye(n) - D[:, None] * W).T, c)
        mu = D * lam
        gW += np.outer(mu, H[k])
        gU += np.outer(mu, X[k])
        gb += mu
        gx[k] = U.T @ mu
        lams[k] = lam
    return H @ c, {"W": gW, "U": gU, "b": gb, "x": gx, "c": H.sum(0)}, H, lams


@pytest.mark.parametrize(
    ("n", "method"),
    [
        (4, "auto"),
        (4, "newton"),
        (4, "anderson"),
        (130, "auto"),
        (130, "newton"),
        (130, "fixed-point"),
    ],
)
def test_equilibrium_layer_against_a_dense_implicit_solve(n, method):
    rng = np.random.default_rng(n)
    fn = _equilibrium(n).compile()
    v = _equilibrium_inputs(rng, n, batch=6)
    sol = fn.solve(v, method=method, maxiter=300)
    value, want, H, lams = _implicit_reference(v)
    np.testing.assert_allclose(sol.value, value, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(sol.values["h"], H, atol=1e-12)
    np.testing.assert_allclose(sol.multipliers["h"], lams, rtol=1e-9, atol=1e-11)
    for name, g in want.items():
        np.testing.assert_allclose(sol.grad[name], g, rtol=1e-9, atol=1e-10, err_msg=name)
    (report,) = sol.blocks
    assert report.variables[0].startswith("h")
    assert report.residual <= 1e-12
    assert sol.kkt["max_dL_dlambda"] <= 1e-12


@pytest.mark.parametrize(
    ("norm", "forward", "linear"),
    [(0.3, "fixed-point", "plain iteration"), (0.999, "anderson", "GMRES")],
)
def test_matrix_free_paths_against_a_dense_implicit_solve(norm, forward, linear):
    """A block beyond DENSE_MAX: a fast contraction is solved by plain iteration both
    ways (forward and λ); one with ‖W‖₂ near 1 (h small: tanh' near 1), whose first
    steps contract too slowly for plain iteration, by Anderson, and λ by GMRES. Both
    give the dense implicit-function solve's multipliers."""
    from lagrangian_ad.compiling import _array_engine

    n = _array_engine.DENSE_MAX + 24
    rng = np.random.default_rng(int(norm * 1000))
    fn = _equilibrium(n).compile()
    v = _equilibrium_inputs(rng, n, batch=4, norm=norm)
    v["U"] *= 0.01  # near h = 0, where tanh' = 1: the contraction rate is about ‖W‖₂
    v["b"] *= 0.01
    sol = fn.solve(v, maxiter=2000)
    (report,) = sol.blocks
    assert report.method == forward, linear
    _, want, H, lams = _implicit_reference(v)
    np.testing.assert_allclose(sol.values["h"], H, atol=1e-11)
    np.testing.assert_allclose(sol.multipliers["h"], lams, rtol=1e-8, atol=1e-10)
    for name, g in want.items():
        np.testing.assert_allclose(sol.grad[name], g, rtol=1e-8, atol=1e-10, err_msg=name)


def test_equilibrium_tangent_matches_gradient():
    rng = np.random.default_rng(5)
    for n in (4, 130):
        fn = _equilibrium(n).compile()
        v = _equilibrium_inputs(rng, n, batch=3)
        _, grad = fn.value_and_grad(v)
        direction = {k: rng.normal(size=np.shape(a)) for k, a in v.items()}
        _, dot = fn.jvp(v, direction)
        assert np.sum(dot) == pytest.approx(
            sum(np.sum(grad[k] * direction[k]) for k in v), rel=1e-9
        )


def test_a_singular_equilibrium_is_refused():
    # h = h·s + x: I − J = 1 − s is singular at s = 1 (no solution unless x = 0)
    prog = lad.Program()
    x = prog.input("x", (2,), array=True)
    h = prog.var("h", (2,), array=True)
    prog.define(h, lad.apply(lambda a, q: a + q, h, x))
    prog.define("y", lad.sum(h))
    with pytest.raises((lad.ConvergenceError, lad.SingularSystemError)):
        prog.solve({"x": np.array([1.0, 2.0])})


# --------------------------------------------------------------------------- errors


def test_shape_errors_name_the_operands_and_shapes():
    prog = lad.Program()
    W = prog.input("W", (3, 4), array=True)
    b = prog.input("b", (3,), array=True)
    x = prog.input("x", (5,), array=True)
    with pytest.raises(lad.ProgramError, match=r"W @ x.*\(3, 4\) and \(5, 1\)"):
        W @ x
    with pytest.raises(lad.ProgramError, match=r"\(3, 1\) and \(5, 1\)"):
        b + x
    with pytest.raises(lad.ProgramError, match="shape"):
        lad.mul(b, x)
    with pytest.raises(lad.ProgramError, match=r"out of range"):
        b[3, 0]
    h = prog.define("h", lad.tanh(b))
    with pytest.raises(lad.ProgramError, match="must be a scalar"):
        prog.output("h")
    with pytest.raises(lad.ProgramError, match=r"array of shape \(3,\)"):
        prog.compile()  # no scalar output: the last intermediate is an array
    prog.define("s", lad.sum(h) + lad.sum(x) + W[0, 0])
    fn = prog.compile()
    good = {"W": np.ones((3, 4)), "b": np.ones(3), "x": np.ones(5)}
    fn.value(good)
    with pytest.raises(lad.ProgramError, match=r"input 'W'.*\(3, 4\)"):
        fn.value({**good, "W": np.ones((4, 3))})
    u = prog.var("u", (2,), array=True)
    with pytest.raises(lad.ProgramError, match=r"'u'.*\(2,\).*\(3,\)"):
        prog.define(u, lad.tanh(b))


def test_undeclared_arrays_are_refused_by_name():
    prog = lad.Program()
    x = prog.input("x", (2,), array=True)
    other = sp.MatrixSymbol("Q", 2, 2)
    with pytest.raises(lad.ProgramError, match="Q"):
        prog.define("y", lad.tanh(x + other @ x))


# --------------------------------------------------------------------------- random


@st.composite
def _programs(draw):
    """Random layered array programs: products, elementwise forms, sums, entries."""
    n = draw(st.integers(1, 4))
    m = draw(st.integers(1, 4))
    funcs = [sp.tanh, sp.sin, sp.exp, lambda a: a**2, lambda a: a * sp.cos(a)]
    layers = draw(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=3))
    return n, m, [(funcs[f], t) for f, t in layers]


@settings(max_examples=25, deadline=None)
@given(_programs(), st.integers(0, 2**31))
def test_random_array_programs_against_central_differences(spec, seed):
    n, m, layers = spec
    prog = lad.Program()
    x = prog.input("x", (n,), array=True)
    A = prog.input("A", (n, n), array=True)
    B = prog.input("B", (m, n), array=True)
    s = prog.input("s")
    z = x
    for k, (f, transpose) in enumerate(layers):
        M = A.T if transpose else A
        z = prog.define(f"z{k}", lad.apply(f, 0.5 * (M @ z) + s * x))
    prog.define("out", lad.sum(lad.sin(B @ z)) + z[0, 0] * s)
    rng = np.random.default_rng(seed)
    inputs = {
        "x": rng.normal(size=(3, n)),
        "A": 0.5 * rng.normal(size=(n, n)),
        "B": rng.normal(size=(m, n)),
        "s": rng.normal(size=3),
    }
    testing.check_grads(prog, inputs, modes=("rev", "fwd"), rtol=1e-5, atol=1e-7)


def test_against_jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    rng = np.random.default_rng(7)
    fn = _mlp().compile()
    v = _mlp_inputs(rng, (5,))

    def loss(p):
        h = jnp.tanh(p["x"] @ p["W1"].T + p["b1"])
        y = h @ p["W2"].T + p["b2"]
        return jnp.sum(jax.nn.logsumexp(y, axis=-1) - jnp.sum(p["t"] * y, axis=-1))

    want = jax.grad(loss)({k: jnp.asarray(a) for k, a in v.items()})
    _, grad = fn.value_and_grad(v)
    for name in v:
        np.testing.assert_allclose(grad[name], np.asarray(want[name]), rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------- second order


def test_hessian_and_hvp_match_differences_of_gradients():
    rng = np.random.default_rng(11)
    sizes = (3, 4, 2)
    fn = _mlp(sizes).compile()
    v = _mlp_inputs(rng, (3,), sizes)
    H = fn.hessian(v)
    direction = {k: rng.normal(size=np.shape(a)) for k, a in v.items()}
    hv = fn.hvp(v, direction)
    eps = 1e-5
    gp = fn.value_and_grad({k: a + eps * direction[k] for k, a in v.items()})[1]
    gm = fn.value_and_grad({k: a - eps * direction[k] for k, a in v.items()})[1]
    for a in v:
        fd = (gp[a] - gm[a]) / (2 * eps)
        np.testing.assert_allclose(hv[a], fd, rtol=1e-6, atol=1e-7, err_msg=a)
        by_hessian = sum(np.tensordot(H[a][b], direction[b], axes=np.ndim(direction[b])) for b in v)
        np.testing.assert_allclose(by_hessian, hv[a], rtol=1e-10, atol=1e-12, err_msg=a)
    np.testing.assert_allclose(H["W1"]["b1"], np.moveaxis(H["b1"]["W1"], 0, -1), atol=1e-12)


def test_sparse_hessian_of_a_batch_matches_differences_of_gradients():
    # shared weights, per-sample data: an arrowhead, recovered from few products
    rng = np.random.default_rng(12)
    sizes = (3, 4, 2)
    fn = _mlp(sizes).compile()
    v = _mlp_inputs(rng, (6,), sizes)
    result = fn.sparse_hessian(v)
    H, labels = result
    names = list(v)
    assert [n for n, _ in labels] == [n for n in names for _ in range(np.size(v[n]))]
    eps, columns = 1e-5, []
    for name in names:  # each column by central differences of the exact gradient
        for k in range(np.size(v[name])):
            e = np.zeros(np.size(v[name]))
            e[k] = eps
            grads = [
                fn.value_and_grad({**v, name: v[name] + sign * e.reshape(np.shape(v[name]))})[1]
                for sign in (1, -1)
            ]
            columns.append(
                np.concatenate([np.ravel(grads[0][n] - grads[1][n]) for n in names]) / (2 * eps)
            )
    np.testing.assert_allclose(H.toarray(), np.stack(columns, axis=1), rtol=1e-6, atol=1e-7)
    n_shared = sum(np.size(v[n]) for n in ("W1", "b1", "W2", "b2"))
    per_sample = sum(np.size(v[n][0]) for n in ("x", "t"))
    assert result.n_hvp <= n_shared + per_sample < H.shape[0]
    x_rows = [i for i, (n, _) in enumerate(labels) if n == "x"]  # samples do not meet
    assert H[x_rows[0], x_rows[-1]] == 0


@settings(max_examples=10, deadline=None)
@given(_programs(), st.integers(0, 2**31))
def test_random_array_programs_second_order(spec, seed):
    n, _, layers = spec
    prog = lad.Program()
    x = prog.input("x", (n,), array=True)
    A = prog.input("A", (n, n), array=True)
    s = prog.input("s")
    z = x
    for k, (f, transpose) in enumerate(layers):
        z = prog.define(f"z{k}", lad.apply(f, 0.5 * ((A.T if transpose else A) @ z) + s * x))
    prog.define("out", lad.sum(lad.sin(z)) * s + z[0, 0] ** 2)
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.normal(size=(2, n)), "A": 0.5 * rng.normal(size=(n, n)), "s": 0.3}
    testing.check_grads(prog, inputs, modes=("rev",), order=2, rtol=1e-5, atol=1e-7)


def test_gradients_with_respect_to_some_inputs_only():
    rng = np.random.default_rng(12)
    fn = _mlp().compile()
    v = _mlp_inputs(rng, (6,))
    _, full = fn.value_and_grad(v)
    weights = ("W1", "b1", "W2", "b2")
    _, part = fn.value_and_grad(v, wrt=weights)
    assert set(part) == set(weights)
    for name in weights:
        np.testing.assert_array_equal(part[name], full[name])
    with pytest.raises(lad.ProgramError, match="unknown input 'h'"):
        fn.value_and_grad(v, wrt=["h"])


@pytest.mark.parametrize("n", [3, 130])
def test_second_order_through_a_cyclic_array_block(n):
    """hvp of an equilibrium layer (dense block and matrix-free block) against
    differences of gradients; the Hessian of a small one against its hvps."""
    rng = np.random.default_rng(n)
    fn = _equilibrium(n).compile()
    v = _equilibrium_inputs(rng, n, batch=2)
    direction = {k: rng.normal(size=np.shape(a)) for k, a in v.items()}
    hv = fn.hvp(v, direction)
    eps = 1e-5
    gp = fn.value_and_grad({k: a + eps * direction[k] for k, a in v.items()})[1]
    gm = fn.value_and_grad({k: a - eps * direction[k] for k, a in v.items()})[1]
    for a in v:
        fd = (gp[a] - gm[a]) / (2 * eps)
        np.testing.assert_allclose(hv[a], fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max(), err_msg=a)
    if n <= 3:
        H = fn.hessian(v)
        by_hessian = sum(np.tensordot(H["b"][k], direction[k], axes=np.ndim(v[k])) for k in v)
        np.testing.assert_allclose(by_hessian, hv["b"], rtol=1e-9, atol=1e-12)


def test_array_operations_without_a_rule_are_refused_at_define():
    prog = lad.Program()
    W = prog.input("W", (3, 3), array=True)
    x = prog.input("x", (3,), array=True)
    with pytest.raises(lad.ProgramError, match=r"'q'.*scalar operation to the array W"):
        prog.define("q", sp.sin(W))  # SymPy's sin of a matrix is not elementwise
    with pytest.raises(lad.ProgramError, match=r"'r'.*Inverse"):
        prog.define("r", W.I @ x)
    with pytest.raises(lad.ProgramError, match="powers of arrays are elementwise"):
        W**2
    with pytest.raises(lad.ProgramError, match=r"'eq1'.*array of shape \(3, 1\)"):
        prog.equation(x, 0)
    with pytest.raises(lad.ProgramError, match=r"output: 'x' is an array"):
        prog.output(x)


def test_the_certificate_of_stationarity_is_recomputed():
    rng = np.random.default_rng(13)
    fn = _equilibrium(130).compile()
    v = _equilibrium_inputs(rng, 130, batch=2)
    loose = fn.solve(v, tol=1e-4)
    tight = fn.solve(v, tol=1e-13)
    # the certificate measures the point returned: looser solves show larger residuals
    assert tight.kkt["max_dL_dz"] < 1e-9
    assert tight.kkt["max_dL_dlambda"] < 1e-12
    assert loose.kkt["max_dL_dlambda"] > 10 * tight.kkt["max_dL_dlambda"]


@pytest.mark.parametrize("array", [True, False])
def test_sigmoid_and_softplus_compile_and_do_not_overflow(array):
    """lad.sigmoid and lad.softplus on both engines against their closed forms, at
    arguments where exp(−x) or exp(x) overflows (the generated code uses scipy's expit
    and NumPy's logaddexp)."""
    u0 = np.array([0.1, -2.0, 3.0, 40.0, -800.0, 800.0])
    prog = lad.Program()
    u = prog.input("u", (6,), array=array)
    if array:
        prog.define("s", lad.sum(lad.sigmoid(u)) + 2 * lad.sum(lad.softplus(u)))
    else:
        prog.define("s", sum(lad.sigmoid(u[i]) + 2 * lad.softplus(u[i]) for i in range(6)))
    value, grad = prog.compile().value_and_grad({"u": u0})
    sig = np.where(
        u0 >= 0, 1 / (1 + np.exp(-np.abs(u0))), np.exp(-np.abs(u0)) / (1 + np.exp(-np.abs(u0)))
    )
    softplus = np.maximum(u0, 0) + np.log1p(np.exp(-np.abs(u0)))
    np.testing.assert_allclose(value, sig.sum() + 2 * softplus.sum(), rtol=1e-15)
    np.testing.assert_allclose(grad["u"], sig * (1 - sig) + 2 * sig, rtol=1e-14, atol=1e-300)
