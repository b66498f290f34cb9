"""Compiled programs over Dask arrays (issue 15), on a cluster of two worker processes.

Every result is compared with the NumPy run of the same batch (in this process): the
per-sample ones entry by entry, with the chunks of the inputs, the parameters' gradients
(summed over the chunks on the cluster) to rounding. Laziness is checked with inputs
whose chunks are made by a function that records each call in a file: a result that is
lazy has run nothing until it is computed, and a call that must run (NumPy gradients)
runs each chunk once.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    """One cluster for the module: two worker processes, one thread each."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=None,
            memory_limit=None,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def _scalar_program():
    prog = lad.Program()
    x, w, t = prog.input("x"), prog.input("w"), prog.input("t")
    a = prog.define("a", sp.exp(w * x))
    b = prog.define("b", a**2 + t)
    prog.define("f", sp.sin(b) + a * t)
    return prog.compile()


def _recorded(arr, chunks, log):
    """``arr`` as a Dask array whose every chunk, when made, appends a line to ``log``."""

    def make(block, block_id=None):
        with open(log, "a") as f:
            f.write(f"{block_id}\n")
        return block

    meta = np.empty((0,) * arr.ndim, dtype=arr.dtype)  # no call of make() to find it
    return da.from_array(arr, chunks=chunks).map_blocks(make, dtype=arr.dtype, meta=meta)


def _runs(log) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


# --------------------------------------------------------------------------- acyclic


def test_scalar_program_value_grad_solve_match_numpy(client):
    fn = _scalar_program()
    rng = np.random.default_rng(0)
    x, t = rng.uniform(-1, 1, 11), rng.uniform(0, 1, 11)
    inputs = {"x": da.from_array(x, chunks=4), "w": 0.7, "t": da.from_array(t, chunks=4)}
    numpy_inputs = {"x": x, "w": 0.7, "t": t}

    v = fn.value(inputs)
    assert isinstance(v, da.Array) and v.chunks == ((4, 4, 3),)
    _close(v.compute(), fn.value(numpy_inputs))

    v, g = fn.value_and_grad(inputs)
    v0, g0 = fn.value_and_grad(numpy_inputs)
    assert isinstance(g["w"], float)  # a parameter: summed over the chunks, NumPy
    assert isinstance(g["x"], da.Array) and g["x"].chunks == ((4, 4, 3),)
    _close(v.compute(), v0)
    _close(g["w"], g0["w"])
    _close(g["x"].compute(), g0["x"])
    _close(g["t"].compute(), g0["t"])

    sol, sol0 = fn.solve(inputs), fn.solve(numpy_inputs)
    for name in ("a", "b", "f"):
        assert sol.values[name].chunks == ((4, 4, 3),)
        _close(sol.values[name].compute(), sol0.values[name])
        _close(sol.multipliers[name].compute(), sol0.multipliers[name])
    assert sol.values["x"] is inputs["x"] and sol.values["w"] == 0.7
    _close(sol.grad["w"], sol0.grad["w"])
    assert sol.kkt == pytest.approx(sol0.kkt, abs=1e-12)


def test_two_batch_axes_and_an_input_broadcast_along_a_chunked_one(client):
    # x is (4, 6) in chunks (2, 3); t is (4, 1): broadcast along axis 1, so its gradient
    # is summed over that axis, chunks included; w is a parameter.
    fn = _scalar_program()
    rng = np.random.default_rng(1)
    x, t = rng.uniform(-1, 1, (4, 6)), rng.uniform(0, 1, (4, 1))
    inputs = {"x": da.from_array(x, chunks=(2, 3)), "w": 0.3, "t": da.from_array(t, chunks=(2, 1))}
    v, g = fn.value_and_grad(inputs)
    v0, g0 = fn.value_and_grad({"x": x, "w": 0.3, "t": t})
    assert v.chunks == ((2, 2), (3, 3))
    assert g["t"].shape == (4, 1) and g["t"].chunks == ((2, 2), (1,))
    _close(v.compute(), v0)
    _close(g["x"].compute(), g0["x"])
    _close(g["t"].compute(), g0["t"])
    _close(g["w"], g0["w"])


def test_numpy_inputs_with_batch_axes_mix_with_dask_ones(client):
    # t given as NumPy with the batch axis: split into x's chunks, broadcast as in NumPy
    fn = _scalar_program()
    x, t = np.linspace(-1, 1, 9), np.linspace(0, 1, 9)
    v, g = fn.value_and_grad({"x": da.from_array(x, chunks=5), "w": 1.1, "t": t})
    v0, g0 = fn.value_and_grad({"x": x, "w": 1.1, "t": t})
    assert isinstance(g["t"], da.Array) and g["t"].chunks == ((5, 4),)
    _close(v.compute(), v0)
    _close(g["t"].compute(), g0["t"])
    _close(g["w"], g0["w"])


def test_entrywise_arrays(client):
    prog = lad.Program()
    x = prog.input("x", shape=(3,))
    W = prog.input("W", shape=(2, 3))
    v = prog.define("v", W * x)  # a 2-vector of entry-wise constraints
    prog.define("s", sp.tanh(v[0]) * v[1] + x[2] ** 2)
    fn = prog.compile()
    rng = np.random.default_rng(2)
    X, Wv = rng.normal(size=(10, 3)), rng.normal(size=(2, 3))
    inputs = {"x": da.from_array(X, chunks=(3, 3)), "W": Wv}
    sol, sol0 = fn.solve(inputs), fn.solve({"x": X, "W": Wv})
    assert isinstance(sol.grad["W"], np.ndarray) and sol.grad["W"].shape == (2, 3)
    _, g = fn.value_and_grad(dict(inputs, W=da.from_array(Wv)))  # a Dask parameter: whole
    _close(g["W"], sol0.grad["W"])
    _close(sol.grad["W"], sol0.grad["W"])
    _close(sol.grad["x"].compute(), sol0.grad["x"])
    assert sol.values["v"].chunks == ((3, 3, 3, 1), (2,))
    _close(sol.values["v"].compute(), sol0.values["v"])
    _close(sol.multipliers["v"].compute(), sol0.multipliers["v"])
    _close(sol.value.compute(), sol0.value)


# --------------------------------------------------------------------------- cyclic


def _cyclic_program():
    prog = lad.Program()
    x, c = prog.input("x"), prog.input("c")
    h = prog.var("h")
    prog.define(h, sp.tanh(c * h + x))  # a fixed point
    u = prog.var("u")
    prog.equation(u**3 + u, h)  # an implicit equation
    prog.define("y", u**2 + x * h)
    return prog.compile()


def test_cyclic_program_each_chunk_solves_its_blocks(client):
    fn = _cyclic_program()
    x = np.linspace(-2, 2, 12)
    inputs = {"x": da.from_array(x, chunks=5), "c": 0.5}
    sol, sol0 = fn.solve(inputs, tol=1e-13), fn.solve({"x": x, "c": 0.5}, tol=1e-13)
    for name in ("h", "u", "y"):
        _close(sol.values[name].compute(), sol0.values[name])
    for name in sol0.multipliers:
        _close(sol.multipliers[name].compute(), sol0.multipliers[name])
    _close(sol.grad["c"], sol0.grad["c"])
    _close(sol.grad["x"].compute(), sol0.grad["x"])
    assert [b.variables for b in sol.blocks] == [b.variables for b in sol0.blocks]
    assert max(b.iterations for b in sol.blocks) >= 1
    assert all(b.residual <= 1e-12 for b in sol.blocks)
    v, g = fn.value_and_grad(inputs, tol=1e-13)
    _close(v.compute(), sol0.value)
    _close(g["c"], sol0.grad["c"])


def test_a_chunk_that_does_not_converge_raises_convergence_error_with_its_index(client):
    prog = lad.Program()
    x = prog.input("x")
    u = prog.var("u")
    prog.equation(u**2, x)  # no real root where x < 0: only in the third chunk
    prog.define("y", u * x)
    fn = prog.compile()
    x = np.array([1.0, 2.0, 3.0, 4.0, -1.0, 5.0])
    lazy = fn.value({"x": da.from_array(x, chunks=2)}, init={"u": 1.0})
    with pytest.raises(lad.ConvergenceError, match=r"^chunk \(2,\): .*block u"):
        lazy.compute()
    with pytest.raises(lad.ConvergenceError, match=r"^chunk \(2,\): .*block u"):
        fn.solve({"x": da.from_array(x, chunks=2)}, init={"u": 1.0})


# --------------------------------------------------------------------------- arrays


def _mlp(sizes=(5, 4, 3)):
    d, m, k = sizes
    prog = lad.Program()
    x = prog.input("x", (d,), array=True)
    t = prog.input("t", (k,), array=True)
    W1, b1 = prog.input("W1", (m, d), array=True), prog.input("b1", (m,), array=True)
    W2, b2 = prog.input("W2", (k, m), array=True), prog.input("b2", (k,), array=True)
    h = prog.define("h", lad.tanh(W1 @ x + b1))
    y = prog.define("y", W2 @ h + b2)
    lse = prog.define("lse", sp.log(lad.sum(lad.exp(y))))
    prog.define("loss", lse - lad.sum(lad.mul(t, y)))
    return prog.compile()


def _mlp_inputs(rng, n=13, sizes=(5, 4, 3)):
    d, m, k = sizes
    return {
        "x": rng.normal(size=(n, d)),
        "t": np.eye(k)[rng.integers(0, k, n)],
        "W1": rng.normal(size=(m, d)) / 2,
        "b1": rng.normal(size=m),
        "W2": rng.normal(size=(k, m)) / 2,
        "b2": rng.normal(size=k),
    }


def test_array_program(client):
    fn = _mlp()
    assert fn.engine == "arrays"
    data = _mlp_inputs(np.random.default_rng(3))
    inputs = dict(data, x=da.from_array(data["x"], chunks=(4, 5)))
    inputs["t"] = da.from_array(data["t"], chunks=(4, 3))
    v, g = fn.value_and_grad(inputs)
    v0, g0 = fn.value_and_grad(data)
    assert v.chunks == ((4, 4, 4, 1),)
    _close(v.compute(), v0)
    for name in ("W1", "b1", "W2", "b2"):
        assert type(g[name]) is np.ndarray and g[name].shape == data[name].shape
        _close(g[name], g0[name])
    _close(g["x"].compute(), g0["x"])
    _, some = fn.value_and_grad(inputs, wrt=["W1"])
    assert list(some) == ["W1"]
    _close(some["W1"], g0["W1"])
    sol, sol0 = fn.solve(inputs), fn.solve(data)
    _close(sol.values["h"].compute(), sol0.values["h"])
    _close(sol.multipliers["y"].compute(), sol0.multipliers["y"])
    assert sol.kkt == pytest.approx(sol0.kkt, abs=1e-12)


def test_cyclic_array_program(client):
    n = 4
    prog = lad.Program()
    x = prog.input("x", (n,), array=True)
    W = prog.input("W", (n, n), array=True)
    h = prog.var("h", (n,), array=True)
    prog.define(h, lad.tanh(W @ h + x))
    prog.define("s", lad.sum(lad.mul(h, h)))
    fn = prog.compile()
    rng = np.random.default_rng(4)
    X, Wv = rng.normal(size=(9, n)), 0.3 * rng.normal(size=(n, n))
    inputs = {"x": da.from_array(X, chunks=(3, n)), "W": Wv}
    sol, sol0 = fn.solve(inputs), fn.solve({"x": X, "W": Wv})
    _close(sol.values["h"].compute(), sol0.values["h"])
    _close(sol.grad["W"], sol0.grad["W"])
    _close(sol.grad["x"].compute(), sol0.grad["x"])
    assert [b.variables for b in sol.blocks] == [b.variables for b in sol0.blocks]


# --------------------------------------------------------------------------- laziness


def test_nothing_runs_before_compute_where_the_result_is_lazy(client, tmp_path):
    fn = _scalar_program()
    log = tmp_path / "chunks.log"
    x = _recorded(np.linspace(0, 1, 12), 4, log)
    t = _recorded(np.linspace(1, 2, 12), 4, log)
    v = fn.value({"x": x, "w": 0.5, "t": t})
    _, g = fn.value_and_grad({"x": x, "w": 0.5, "t": t}, wrt=["x", "t"])  # all per sample
    assert _runs(log) == 0
    assert len(v.__dask_graph__()) < 40  # a few tasks per chunk, nothing materialized
    v0, g0 = fn.value_and_grad({"x": np.linspace(0, 1, 12), "w": 0.5, "t": np.linspace(1, 2, 12)})
    _close(v.compute(), v0)
    assert _runs(log) == 6  # two inputs, three chunks
    _close(g["t"].compute(), g0["t"])


def test_numpy_gradients_run_each_chunk_once(client, tmp_path):
    # a parameter's gradient must be NumPy: the call runs the chunks, once, and keeps the
    # per-sample results on the workers (computing them later runs nothing again)
    fn = _scalar_program()
    log = tmp_path / "chunks.log"
    x = _recorded(np.linspace(0, 1, 12), 4, log)
    v, g = fn.value_and_grad({"x": x, "w": 0.5, "t": 1.0})
    assert _runs(log) == 3 and isinstance(g["w"], float)
    v0, g0 = fn.value_and_grad({"x": np.linspace(0, 1, 12), "w": 0.5, "t": 1.0})
    _close(v.compute(), v0)
    _close(g["x"].compute(), g0["x"])
    assert _runs(log) == 3
    _close([g["w"], g["t"]], [g0["w"], g0["t"]])


# --------------------------------------------------------------------------- bad input


def test_chunks_along_a_declared_axis_are_a_program_error(client, tmp_path):
    fn = _mlp()
    data = _mlp_inputs(np.random.default_rng(5))
    log = tmp_path / "chunks.log"
    inputs = dict(data, x=_recorded(data["x"], (4, 2), log))  # x is (5,) per sample
    with pytest.raises(lad.ProgramError, match=r"input 'x'.*axis 1.*declared shape is \(5,\)"):
        fn.value_and_grad(inputs)
    assert _runs(log) == 0


def test_mismatched_chunks_between_inputs_are_a_program_error(client, tmp_path):
    fn = _mlp()
    data = _mlp_inputs(np.random.default_rng(6))
    log = tmp_path / "chunks.log"
    inputs = dict(data, x=_recorded(data["x"], (4, 5), log), t=_recorded(data["t"], (5, 3), log))
    with pytest.raises(lad.ProgramError, match=r"inputs 'x' and 't' are chunked differently"):
        fn.value(inputs)
    with pytest.raises(lad.ProgramError, match=r"input 't'.*trailing shape \(3,\)"):
        fn.value(dict(data, x=da.from_array(data["x"], chunks=(4, 5)), t=da.ones((13, 2))))
    with pytest.raises(lad.ProgramError, match=r"init 'h'"):
        _cyclic_program().value({"x": da.ones(4, chunks=2), "c": 0.5}, init={"h": np.ones(4)})
    assert _runs(log) == 0


def test_a_non_finite_dask_input_names_the_input_and_the_chunk(client):
    fn = _scalar_program()
    x = np.array([0.0, 1.0, 2.0, np.nan])
    with pytest.raises(lad.ProgramError, match=r"^chunk \(1,\): input 'x' holds nan"):
        fn.value({"x": da.from_array(x, chunks=2), "w": 1.0, "t": 0.0}).compute()


# --------------------------------------------------------------------------- workers


def test_each_worker_builds_the_program_once(client):
    # the program is one key of the graph, and unpickling is cached per process
    # (`_pickling`; tests/compiling/test_pickling.py checks the numbers of pickled programs)
    def cached() -> int:
        from lagrangian_ad.compiling import _pickling

        return len(_pickling._cache)

    def clear() -> None:
        from lagrangian_ad.compiling import _pickling

        _pickling._cache.clear()

    client.run(clear)
    fn = _mlp()
    data = _mlp_inputs(np.random.default_rng(8), n=40)
    inputs = dict(data, x=da.from_array(data["x"], chunks=(5, 5)), t=da.from_array(data["t"]))
    inputs["t"] = inputs["t"].rechunk((5, 3))
    fn.value_and_grad(inputs)  # 8 chunks on 2 workers: each builds the program once
    built = client.run(cached)  # programs built on each worker since the clear
    assert 1 <= sum(built.values()) <= 2 and all(n <= 1 for n in built.values()), built


# --------------------------------------------------------------------------- README


def test_the_readme_dask_example_matches_numpy(client):
    # last in the file: the example starts (and closes) a cluster and client of its own
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (example,) = [b for b in blocks if "LocalCluster" in b]
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # our own file, not user text
    exec(compile(example, "README.md", "exec"), namespace)
    x, t = namespace["x"].compute(), namespace["t"].compute()  # the same seeds, here
    fn, weights = namespace["fn"], namespace["weights"]
    loss0, grad0 = fn.value_and_grad({"x": x, "t": t, **weights})
    assert x.shape == (8_000, 784) and namespace["loss"].chunks == ((2_000,) * 4,)
    for name in weights:
        np.testing.assert_allclose(namespace["grad"][name], grad0[name], rtol=1e-11, atol=1e-11)
    assert namespace["total"] == pytest.approx(loss0.sum(), rel=1e-12)
