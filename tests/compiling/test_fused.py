"""The fused (Numba) backend gives the NumPy engine's numbers: values, gradients, z and λ.

Numba compiles each kernel in about a second for these small programs, so the programs
are compiled once per module and shared by the tests. Skipped when Numba is missing.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

pytest.importorskip("numba")

from test_random_programs import BINARY, UNARY

import lagrangian_ad as lad
from lagrangian_ad.compiling._fused import FusedEngine
from lagrangian_ad.using._demo import blog_program

RTOL = 1e-12


def _close(got, want, what=""):
    """Equal to rounding, relative to the largest magnitude of ``want``; NaN where NaN."""
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    finite = np.isfinite(want)
    scale = float(np.max(np.abs(want[finite]))) if finite.any() else 1.0
    np.testing.assert_allclose(
        got, want, rtol=RTOL, atol=RTOL * scale, equal_nan=True, err_msg=what
    )


def _fused_value_and_grad(fn, engine, inputs, reduce=False):
    entries, arrays, leads, batch = fn._prepare(inputs)
    value, g = engine.value_and_grad(entries, batch, reduce=reduce)
    return value, engine.grads(g, arrays, leads, batch)


def _fused_solution(fn, engine, inputs):
    """values and multipliers by name, from `solve_arrays`, shaped like `Solution`'s."""
    entries, arrays, leads, batch = fn._prepare(inputs)
    z, lam, g = engine.solve_arrays(entries, batch)
    n_in = fn.graph.n_inputs
    by_symbol = dict(zip(fn.graph.symbols[n_in:], z, strict=True))
    lam_by_target = {
        c.target: lam[e] for e, c in enumerate(fn.ir.constraints) if c.target is not None
    }
    values, multipliers = {}, {}
    for var in fn.ir.intermediates:

        def stack(parts, var=var):
            parts = [np.broadcast_to(p, batch) for p in parts]
            return np.stack(parts, axis=-1).reshape(batch + var.shape)

        values[var.name] = stack([by_symbol[s] for s in var.symbols])
        multipliers[var.name] = stack([lam_by_target[s] for s in var.symbols])
    return values, multipliers, fn._grads(g, arrays, leads, batch)


def _agrees(fn, engine, inputs, what):
    """value, grad, every z and every λ as the NumPy engine's; value() alike."""
    with np.errstate(all="ignore"):
        ref = fn.solve(inputs)
        value, grad = _fused_value_and_grad(fn, engine, inputs)
        entries, _, _, batch = fn._prepare(inputs)
        only_value = engine.value(entries, batch)
        values, multipliers, grad_full = _fused_solution(fn, engine, inputs)
    assert type(value) is type(ref.value) and type(only_value) is type(ref.value)
    _close(value, ref.value, f"{what}: value")
    _close(only_value, ref.value, f"{what}: value()")
    for name, want in ref.grad.items():
        assert np.shape(grad[name]) == np.shape(want), name
        _close(grad[name], want, f"{what}: grad {name}")
        _close(grad_full[name], want, f"{what}: solve_arrays grad {name}")
    for var in fn.ir.intermediates:
        _close(values[var.name], ref.values[var.name], f"{what}: z {var.name}")
        _close(multipliers[var.name], ref.multipliers[var.name], f"{what}: λ {var.name}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def blog():
    fn = blog_program().compile()
    return fn, FusedEngine(fn)


def _mlp_program(n_in=3, n_hidden=4):
    prog = lad.Program()
    x = prog.input("x", shape=(n_in,))
    t = prog.input("t")
    W1 = prog.input("W1", shape=(n_hidden, n_in))
    b1 = prog.input("b1", shape=(n_hidden,))
    w2 = prog.input("w2", shape=(n_hidden,))
    b2 = prog.input("b2")
    pre = prog.define("pre", W1 * x + b1)
    h = prog.define("h", pre.applyfunc(sp.tanh))
    y = prog.define("y", (w2.T * h)[0, 0] + b2)
    prog.define("loss", (y - t) ** 2)
    return prog


@pytest.fixture(scope="module")
def mlp():
    fn = _mlp_program().compile()
    return fn, FusedEngine(fn)


def _mlp_inputs(lead_x, lead_t, rng):
    return {
        "x": rng.standard_normal((*lead_x, 3)),
        "t": rng.standard_normal(lead_t),
        "W1": rng.standard_normal((4, 3)),
        "b1": rng.standard_normal(4),
        "w2": rng.standard_normal(4),
        "b2": 0.3,
    }


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("x", [0.5, -1.2, [0.5, -0.3, 0.0, 0.8, -2.0]])
def test_blog_matches_numpy_engine(blog, x):
    fn, engine = blog
    _agrees(fn, engine, {"x": np.asarray(x) if isinstance(x, list) else x}, f"blog x={x}")


def test_one_sample_and_a_batch_share_one_kernel(blog):
    """A program whose inputs all carry the batch compiles one gradient kernel in all."""
    fn, engine = blog
    _fused_value_and_grad(fn, engine, {"x": 0.1})
    _fused_value_and_grad(fn, engine, {"x": np.linspace(-1, 1, 7)})
    _fused_value_and_grad(fn, engine, {"x": np.ones((2, 3))})
    grad_kernels = [k for k in engine.compile_seconds if k[0] == "grad"]
    assert grad_kernels == [("grad", (True,), False)]
    assert all(s > 0 for s in engine.compile_seconds.values())


def test_one_sample_returns_floats(blog):
    fn, engine = blog
    value, g = engine.value_and_grad([0.5], ())
    assert type(value) is float and len(g) == 1
    grad = fn.value_and_grad({"x": 0.5})[1]["x"]
    assert type(engine.grads(g, {"x": 0.5}, {"x": ()}, ())["x"]) is float
    assert g[0] == pytest.approx(grad, rel=RTOL)
    z, lam, g = engine.solve_arrays([0.5], ())
    assert all(type(v) is float for v in (*z, *lam, *g)) and len(z) == len(lam) == 6


@pytest.mark.parametrize(
    ("lead_x", "lead_t"),
    [((), ()), ((6,), (6,)), ((4, 1), (1, 3)), ((1,), (1,))],
    ids=["one sample", "batch", "broadcast", "batch of one"],
)
def test_mlp_batched_data_shared_weights(mlp, lead_x, lead_t):
    fn, engine = mlp
    inputs = _mlp_inputs(lead_x, lead_t, np.random.default_rng(1))
    _agrees(fn, engine, inputs, f"mlp {lead_x} {lead_t}")


def test_mlp_gradients_summed_inside_the_kernel(mlp):
    """reduce=True sums the shared weights' gradients in the loop: the same gradient."""
    fn, engine = mlp
    inputs = _mlp_inputs((50,), (50,), np.random.default_rng(2))
    inputs["W1"] = inputs["W1"][None]  # a batch axis of length 1: shared, summed too
    _, ref = fn.value_and_grad(inputs)
    entries, arrays, leads, batch = fn._prepare(inputs)
    _, g = engine.value_and_grad(entries, batch, reduce=True)
    assert all(type(gk) is float for gk in g[4:])  # 3 x, t; then the parameters
    assert all(np.shape(gk) == batch for gk in g[:4])
    grad = engine.grads(g, arrays, leads, batch)
    for name, want in ref.items():
        assert np.shape(grad[name]) == np.shape(want), name
        _close(grad[name], want, f"reduced grad {name}")


def test_functions_and_their_edge_cases_match_numpy():
    """Kinks, NaN and inf where NumPy gives them: Max, Min, Abs, Heaviside, erf, powers."""
    prog = lad.Program()
    x = prog.input("x")
    y = prog.input("y")
    prog.define("m", sp.Max(x, y) + sp.Min(x, 0.5 * y))
    prog.define("a", sp.Abs(x) * sp.sign(y) + sp.Heaviside(x))
    prog.define("e", sp.erf(x) + sp.erfc(y) + sp.atan2(y, x) + sp.sinc(y))
    prog.define("p", (x - 0.25) ** 2.5 + x**3)  # negative base: NaN, not an exception
    prog.define("r", 1 / x + y**-2 + sp.sqrt(y) + sp.log(x))  # 1/0 = inf, log(-1) = NaN
    prog.define("k", sp.Integer(3))  # a constant constraint
    m, a, e, p, r, k = (s.symbols[0] for s in prog.ir.intermediates)
    prog.define("out", m + a + e + p + r * k + sp.tanh(x * y) + sp.cosh(y) + sp.asinh(x))
    fn = prog.compile()
    engine = FusedEngine(fn)
    xs = np.array([0.7, -0.4, 0.0, 0.25, 1.3, -1.0, 2.0])
    ys = np.array([0.7, 0.9, 0.0, -0.5, 2.6, -1.0, 0.0])
    _agrees(fn, engine, {"x": xs, "y": ys}, "functions")
    with np.errstate(all="ignore"):
        for x0, y0 in [(0.0, 0.0), (-1.0, 2.0), (0.7, 0.7)]:
            value, g = engine.value_and_grad([x0, y0], ())
            ref_value, ref_grad = fn.value_and_grad({"x": x0, "y": y0})
            _close(value, ref_value, f"value at {x0, y0}")
            _close(g, [ref_grad["x"], ref_grad["y"]], f"grad at {x0, y0}")


def _random_program(seed: int, n_in: int = 3, n_nodes: int = 14):
    """A random DAG of the unary and binary operations of test_random_programs."""
    rng = np.random.default_rng(seed)
    prog = lad.Program()
    pool = [prog.input(f"x{k}") for k in range(n_in)]
    for k in range(n_nodes):
        c = round(float(rng.uniform(-2, 2)), 3)
        if rng.random() < 0.5:
            op = UNARY[rng.integers(len(UNARY))]
            expr = op(pool[rng.integers(len(pool))], c)
        else:
            op = BINARY[rng.integers(len(BINARY))]
            expr = op(pool[rng.integers(len(pool))], pool[rng.integers(len(pool))], c)
        pool.append(prog.define(f"z{k}", expr))
    prog.define("out", sp.Add(*pool[-3:]))
    inputs = {f"x{k}": rng.uniform(-1.5, 1.5, size=5) for k in range(n_in)}
    return prog, inputs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_dag_programs(seed):
    prog, inputs = _random_program(seed)
    fn = prog.compile()
    _agrees(fn, FusedEngine(fn), inputs, f"random program {seed}")


def test_kernel_source_assigns_each_local_once(blog):
    _, engine = blog
    source, signature = engine.source("grad")
    targets = [line.split("=")[0].strip() for line in source.splitlines() if " = " in line]
    assert len(targets) == len(set(targets))
    assert "numpy." not in source and signature.startswith("void(")


def test_cyclic_program_is_rejected():
    prog = lad.Program()
    x = prog.input("x")
    h = prog.var("h")
    prog.define(h, sp.tanh(0.5 * h + x))
    prog.define("y", h**2)
    with pytest.raises(lad.ProgramError, match=r"acyclic programs only.*h"):
        FusedEngine(prog.compile())


def test_code_numba_cannot_compile_names_the_constraint():
    prog = lad.Program()
    x = prog.input("x")
    prog.define("ok", sp.sin(x))
    prog.define("bent", sp.Piecewise((x, x > 0), (x**2, True)))  # printed as numpy.select
    with pytest.raises(lad.ProgramError, match=r"constraint 'bent'.*cannot compile numpy\."):
        FusedEngine(prog.compile())


def test_compile_backend_numba_matches_numpy():
    """The public switch: prog.compile(backend="numba") gives the NumPy engine's numbers."""
    from lagrangian_ad.using._demo import blog_program

    prog = blog_program()
    fast = prog.compile(backend="numba")
    assert fast.backend == "numba" and fast._fused is not None
    plain = lad.Program.compile(blog_program())
    x = np.linspace(0.1, 0.9, 7)
    v1, g1 = fast.value_and_grad({"x": x})
    v2, g2 = plain.value_and_grad({"x": x})
    np.testing.assert_allclose(v1, v2, rtol=1e-14)
    np.testing.assert_allclose(g1["x"], g2["x"], rtol=1e-14)
    assert fast.value({"x": 0.5}) == pytest.approx(plain.value({"x": 0.5}), rel=1e-15)
    with pytest.raises(lad.ProgramError, match="unknown backend 'cuda'"):
        blog_program().compile(backend="cuda")


def test_edge_rules_of_issue_11_compile_to_numba():
    """The derivative rules at the edges, fused: sinc at 0, powers at 0, ties, mod.

    Known answers at x = (0, 1e-9, 3): sinc′ = (0, −x/3, (3 cos 3 − sin 3)/9); for
    x**y + 0**y + x**0.0 at (0, 2): ∂x = y x^(y−1) = 0, ∂y = 0; max(x, y, 1) at a
    three-way tie gives each 1/3; mod(x, y) has partials (1, −floor(x/y)).
    """
    prog = lad.parse("input x\ny = sinc(x)\n")
    engine = FusedEngine(prog.compile())
    xs = np.array([0.0, 1e-9, 3.0])
    _, (g,) = engine.value_and_grad([xs], (3,))
    np.testing.assert_allclose(g, [0.0, -1e-9 / 3, (3 * np.cos(3) - np.sin(3)) / 9], rtol=1e-14)
    _agrees(prog.compile(), engine, {"x": xs}, "sinc")

    prog = lad.parse("input x\ninput y\nz = x**y + 0.0**y + x**0.0 + max(x, y, 1) + mod(x, y)\n")
    fn = prog.compile()
    engine = FusedEngine(fn)
    value, g = engine.value_and_grad([0.0, 2.0], ())
    assert value == 3.0 and g.tolist() == [1.0, 1.0]  # max: ∂y = 1; mod: ∂x = 1, −floor(0) = 0
    value, g = engine.value_and_grad([1.0, 1.0], ())
    assert g.tolist() == pytest.approx([1 + 1 / 3 + 1, 0 + 1 / 3 - 1], rel=1e-15)
    _agrees(fn, engine, {"x": np.array([0.0, 1.0, 2.5]), "y": np.array([2.0, 1.0, 0.5])}, "edges")


def test_special_functions_without_a_numba_counterpart_are_a_clear_error():
    fn = lad.parse("input x\ny = gamma(x)\n").compile()  # its derivative needs digamma
    with pytest.raises(lad.ProgramError, match=r"constraint 'y'.*special\.digamma"):
        FusedEngine(fn)
