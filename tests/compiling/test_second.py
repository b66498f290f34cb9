"""Hessian-vector products and the sparse Hessian, each against a value computed another way:
the dense Hessian, SymPy's Hessian of the flat expression, differences of the gradient."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad
from lagrangian_ad import ProgramError
from lagrangian_ad.compiling._second import hvp, hvp_source, sparse_hessian
from lagrangian_ad.testing import inline_output

x, y = sp.symbols("x y")

FLAT = [
    sp.exp(sp.exp(x) + sp.exp(x) ** 2) + sp.sin(sp.exp(x) + sp.exp(x) ** 2) + 0 * y,
    x**y + sp.log(1 + x**2) * y,
    sp.tanh(x * y) * sp.sin(x) + sp.sqrt(1 + y**2),
    (x - y) ** 3 / (1 + sp.cos(x * y) ** 2),
]


def _mlp():
    """A data vector x (batched), a shared weight matrix W and readout v (parameters)."""
    prog = lad.Program()
    xin = prog.input("x", shape=(2,))
    W = prog.input("W", shape=(3, 2))
    v = prog.input("v", shape=(3,))
    h = prog.define("h", (W * xin).applyfunc(sp.tanh))
    prog.define("loss", ((v.T * h)[0, 0] - 0.5) ** 2)
    return prog


def _mlp_inputs(rng, batch=(4,)):
    return {
        "x": rng.standard_normal((*batch, 2)),
        "W": rng.standard_normal((3, 2)),
        "v": rng.standard_normal(3),
    }


def _dense_product(fn, inputs, vectors):
    """Σ_b H[a][b] · v[b] from the dense `CompiledProgram.hessian`."""
    H = fn.hessian(inputs)
    out = {}
    for a in H:
        shape = np.shape(inputs[a])
        total = np.zeros(shape)
        for b, block in H[a].items():
            vb = np.broadcast_to(vectors.get(b, 0.0), np.shape(inputs[b]))
            total = total + np.tensordot(block, vb, axes=vb.ndim)
        out[a] = total
    return out


def _grad_difference(fn, inputs, vectors, h=1e-5, **options):
    """(grad(x + h v) − grad(x − h v)) / 2h, input by input."""

    def moved(t):
        return {
            n: np.asarray(a, float) + t * np.asarray(vectors.get(n, 0.0)) for n, a in inputs.items()
        }

    up = fn.value_and_grad(moved(h), **options)[1]
    down = fn.value_and_grad(moved(-h), **options)[1]
    return {n: (np.asarray(up[n]) - np.asarray(down[n])) / (2 * h) for n in up}


# --------------------------------------------------------------------------- hvp


@pytest.mark.parametrize("expr", FLAT)
def test_hvp_matches_sympy_hessian_and_the_dense_hessian(expr):
    fn = lad.decompose(expr, [x, y]).compile()
    point = {"x": 0.7, "y": 1.3}
    v = np.array([0.4, -1.7])
    got = hvp(fn, point, {"x": v[0], "y": v[1]})
    assert set(got) == {"x", "y"} and all(isinstance(g, float) for g in got.values())
    exact = np.array(sp.hessian(expr, (x, y)).subs({x: 0.7, y: 1.3}).evalf(30), dtype=float) @ v
    np.testing.assert_allclose([got["x"], got["y"]], exact, rtol=1e-11, atol=1e-12)
    dense = _dense_product(fn, point, {"x": v[0], "y": v[1]})
    np.testing.assert_allclose([got["x"], got["y"]], [dense["x"], dense["y"]], rtol=1e-12)


def test_hvp_of_an_array_program_against_sympy_of_the_inlined_output():
    fn = _mlp().compile()
    rng = np.random.default_rng(3)
    inputs = _mlp_inputs(rng, batch=())
    vectors = {n: rng.standard_normal(np.shape(a)) for n, a in inputs.items()}
    got = hvp(fn, inputs, vectors)
    symbols = [s for var in fn.ir.inputs for s in var.symbols]
    flat = inline_output(fn.ir)
    values = np.concatenate([np.ravel(inputs[v.name]) for v in fn.ir.inputs])
    at = dict(zip(symbols, values, strict=True))
    H = np.array(sp.hessian(flat, symbols).subs(at).evalf(20), dtype=float)
    expect = H @ np.concatenate([np.ravel(vectors[v.name]) for v in fn.ir.inputs])
    got_flat = np.concatenate([np.ravel(got[v.name]) for v in fn.ir.inputs])
    np.testing.assert_allclose(got_flat, expect, rtol=1e-11, atol=1e-12)


def test_batched_hvp_has_the_gradients_structure_and_matches_differences():
    fn = _mlp().compile()
    rng = np.random.default_rng(5)
    inputs = _mlp_inputs(rng, batch=(4,))
    vectors = {
        "x": rng.standard_normal((4, 2)),
        "W": rng.standard_normal((3, 2)),
        "v": rng.standard_normal(3),
    }
    got = hvp(fn, inputs, vectors)
    _, grad = fn.value_and_grad(inputs)
    assert {n: np.shape(g) for n, g in got.items()} == {n: np.shape(g) for n, g in grad.items()}
    numeric = _grad_difference(fn, inputs, vectors)
    dense = _dense_product(fn, inputs, vectors)
    for name in inputs:
        np.testing.assert_allclose(got[name], numeric[name], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(got[name], dense[name], rtol=1e-11, atol=1e-13)


def test_a_vector_broadcasts_and_missing_vectors_are_zero():
    fn = _mlp().compile()
    rng = np.random.default_rng(6)
    inputs = _mlp_inputs(rng, batch=(2, 3))
    # one direction for every sample's x, given as a (2,) array, and W by its Matrix key
    W_key = fn.ir.inputs[1].symbols  # the Symbols of W, as prog.input handed them back
    got = hvp(fn, inputs, {"x": np.array([1.0, -0.5]), sp.ImmutableMatrix(W_key): np.ones((3, 2))})
    vectors = {"x": np.broadcast_to([1.0, -0.5], (2, 3, 2)), "W": np.ones((3, 2))}
    dense = _dense_product(fn, inputs, vectors)
    for name in inputs:
        np.testing.assert_allclose(got[name], dense[name], rtol=1e-11, atol=1e-13)
    zero = hvp(fn, inputs, {})
    assert zero["x"].shape == (2, 3, 2) and not np.any(zero["x"]) and not np.any(zero["W"])


def _fixed_point():
    prog = lad.Program()
    xi, yi = prog.input("x"), prog.input("y")
    u = prog.var("u")
    prog.define(u, 0.5 * sp.cos(u) + xi * yi)
    prog.define("out", sp.sin(u) * xi + u**2)
    return prog


def _implicit():
    prog = lad.Program()
    xi = prog.input("x")
    w = prog.input("w", shape=(2,))
    u = prog.var("u")
    prog.equation(u**3 + u, xi * w[0])
    prog.define("out", sp.exp(0.3 * u) * w[1] + u * xi)
    return prog


@pytest.mark.parametrize(
    ("make", "inputs", "vectors"),
    [
        (_fixed_point, {"x": 0.3, "y": -1.2}, {"x": 0.8, "y": 0.5}),
        (_fixed_point, {"x": np.array([0.3, -0.4, 1.1]), "y": 0.7}, {"x": [1, 2, -1], "y": 1}),
        (_implicit, {"x": 0.9, "w": np.array([1.5, -0.4])}, {"x": -0.3, "w": [0.2, 1.0]}),
        (_implicit, {"x": np.array([0.9, -2.0]), "w": np.array([1.5, -0.4])}, {"w": [0.2, 1.0]}),
    ],
)
def test_hvp_of_cyclic_programs_against_differences(make, inputs, vectors):
    fn = make().compile()
    got = hvp(fn, inputs, vectors, tol=1e-14)
    numeric = _grad_difference(fn, inputs, vectors, tol=1e-14)
    dense = _dense_product(fn, inputs, vectors)
    for name in inputs:
        assert np.shape(got[name]) == np.shape(inputs[name])
        np.testing.assert_allclose(got[name], numeric[name], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(got[name], dense[name], rtol=1e-10, atol=1e-12)


def test_the_generated_product_is_a_forward_and_a_reverse_sweep():
    fn = _fixed_point().compile()
    source = hvp_source(fn)
    assert "def tangents(" in source and "def second_adjoint(" in source
    assert "_blocks[0].tangent(" in source and "_blocks[0].adjoint(" in source  # the factorization
    assert "hessian" not in source.lower()  # never forms H


def test_bad_vectors_are_program_errors_that_name_the_input():
    fn = _implicit().compile()
    inputs = {"x": 0.9, "w": np.array([1.5, -0.4])}
    with pytest.raises(ProgramError, match="unknown input 'q'"):
        hvp(fn, inputs, {"q": 1.0})
    with pytest.raises(ProgramError, match="'u': it is an intermediate"):
        hvp(fn, inputs, {"u": 1.0})
    with pytest.raises(ProgramError, match=r"vector 'w': shape \(3,\) does not broadcast"):
        hvp(fn, inputs, {"w": np.ones(3)})
    with pytest.raises(ProgramError, match=r"vector 'w': shape \(2, 2\) does not broadcast"):
        hvp(fn, inputs, {"w": np.ones((2, 2))})  # no batch axes beyond the given array's
    with pytest.raises(ProgramError, match=r"vector 'x'.*not real"):
        hvp(fn, inputs, {"x": "one"})
    with pytest.raises(ProgramError, match="vector 'x' is given twice"):
        hvp(fn, inputs, {"x": 1.0, fn.ir.inputs[0].symbols[0]: 2.0})
    with pytest.raises(ProgramError, match="vectors must be a dict"):
        hvp(fn, inputs, [1.0, 2.0])


# --------------------------------------------------------------------------- sparse


def _banded(n):
    """Σ_i sin(x_i x_{i+1}) as a chain of partial sums: a tridiagonal Hessian."""
    prog = lad.Program()
    xs = prog.input("x", shape=(n,))
    s = prog.define("s1", sp.sin(xs[0] * xs[1]))
    for i in range(1, n - 1):
        s = prog.define(f"s{i + 1}", s + sp.sin(xs[i] * xs[i + 1]))
    return prog


def test_sparse_hessian_of_a_banded_program_takes_three_products():
    n = 500
    fn = _banded(n).compile()
    point = {"x": np.random.default_rng(1).uniform(-1, 1, n)}
    result = sparse_hessian(fn, point)
    H, labels = result
    assert result.n_hvp == 3  # distance-2 colouring of a tridiagonal pattern
    assert H.shape == (n, n) and H.nnz == 3 * n - 2
    assert labels[:2] == [("x", (0,)), ("x", (1,))] and len(labels) == n
    dense = fn.hessian(point)["x"]["x"]
    np.testing.assert_allclose(H.toarray(), dense, rtol=1e-12, atol=1e-14)
    # and a known entry: ∂²/∂x_i∂x_{i+1} sin(x_i x_{i+1}) = cos(p) − p sin(p), p = x_i x_{i+1}
    xv = point["x"]
    p = xv[10] * xv[11]
    assert H[10, 11] == pytest.approx(np.cos(p) - p * np.sin(p), rel=1e-13)


def test_sparse_hessian_of_an_mlp_with_shared_weights_matches_the_dense_one():
    fn = _mlp().compile()
    inputs = _mlp_inputs(np.random.default_rng(2), batch=(3,))
    H, labels = result = sparse_hessian(fn, inputs)
    dense = fn.hessian(inputs)
    flat = np.block(
        [
            [np.reshape(dense[a][b], (np.size(inputs[a]), np.size(inputs[b]))) for b in inputs]
            for a in inputs
        ]
    )
    np.testing.assert_allclose(H.toarray(), flat, rtol=1e-12, atol=1e-14)
    assert labels[0] == ("x", (0, 0)) and labels[6] == ("W", (0, 0)) and labels[-1] == ("v", (2,))
    # an arrowhead: 9 parameter entries, then each sample's x[b, 0], x[b, 1] share 2 colours
    assert result.n_hvp == 11
    assert H[0, 2] == 0 and H[0, 3] == 0  # x[0, :] and x[1, :] structurally apart


def test_an_arrowhead_needs_no_more_products_as_the_batch_grows():
    fn = _mlp().compile()
    inputs = _mlp_inputs(np.random.default_rng(4), batch=(200,))
    result = sparse_hessian(fn, inputs)
    assert len(result.labels) == 409 and result.n_hvp == 11
    rng = np.random.default_rng(7)
    vectors = {n: rng.standard_normal(np.shape(a)) for n, a in inputs.items()}
    product = hvp(fn, inputs, vectors)
    flat_v = np.concatenate([np.ravel(vectors[n]) for n in inputs])
    flat_p = np.concatenate([np.ravel(product[n]) for n in inputs])
    np.testing.assert_allclose(result.matrix @ flat_v, flat_p, rtol=1e-10, atol=1e-12)


def test_sparse_hessian_of_a_batch_is_diagonal_in_one_product():
    prog = lad.Program()
    xi = prog.input("x")
    prog.define("f", sp.exp(sp.sin(xi)) * xi)
    fn = prog.compile()
    xs = np.linspace(-1.0, 1.0, 50)
    result = sparse_hessian(fn, {"x": xs})
    assert result.n_hvp == 1 and result.matrix.nnz == 50
    t = sp.Symbol("t")
    second = sp.lambdify(t, sp.diff(sp.exp(sp.sin(t)) * t, t, 2))
    np.testing.assert_allclose(result.matrix.diagonal(), second(xs), rtol=1e-12)


def test_sparse_hessian_of_a_cyclic_program_matches_the_dense_one():
    fn = _implicit().compile()
    inputs = {"x": np.array([0.9, -2.0, 0.4]), "w": np.array([1.5, -0.4])}
    H, labels = sparse_hessian(fn, inputs)
    dense = fn.hessian(inputs)
    flat = np.block(
        [
            [np.reshape(dense[a][b], (inputs[a].size, inputs[b].size)) for b in inputs]
            for a in inputs
        ]
    )
    np.testing.assert_allclose(H.toarray(), flat, rtol=1e-11, atol=1e-13)
    assert [name for name, _ in labels] == ["x", "x", "x", "w", "w"]
