"""CasADi: an SX expression graph of one sample, its gradient, and ``Function.map``.

Per sample, a ``casadi.Function`` returns the output and ``casadi.gradient`` of it with
respect to every input. A batch runs through ``F.map(name, "serial", B, reduce_in,
reduce_out)``: the shared parameters are broadcast and their gradients summed over the
batch inside CasADi; batch 1 calls the function itself. Inputs are converted to ``DM``
once (the data as columns, one per sample). The cold time includes building the graph,
the gradient and the map. Memory is what CasADi asks for per call: its work vectors
(``sz_w``, ``sz_iw``) plus the outputs.

The equilibrium model is written with MX (matrix operations, the batch as the columns of
one matrix) and backprops through the same unrolled iterations as PyTorch and JAX: an SX
graph would hold 20 · n² = 800,000 scalar nodes per sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .implementations import Bench, Memory
from .problems import Inputs, Problem

LABEL = "CasADi"


def available() -> tuple[bool, str]:
    try:
        import casadi  # noqa: F401
    except ImportError:
        return False, "not installed (pip install casadi)"
    return True, ""


def version() -> str:
    import casadi

    return casadi.__version__


def _sym(ca, name: str, shape: tuple[int, ...]):
    return ca.SX.sym(name, *shape) if shape else ca.SX.sym(name)


def _work_bytes(F, outputs) -> int:
    return 8 * (F.sz_w() + F.sz_iw()) + 8 * sum(o.nnz() for o in outputs)


def _mapped_bench(problem: Problem, inputs: Inputs, batch: int, F_val, F_vag, note: str) -> Bench:
    """Time ``F_val``/``F_vag`` (one sample: inputs -> output, gradients) over the batch."""
    import casadi as ca

    names = list(inputs)
    batched = [n in problem.batched and batch > 1 for n in names]
    if batch > 1:
        shared = [k for k, b in enumerate(batched) if not b]
        val = F_val.map("value_map", "serial", batch, shared, [])
        vag = F_vag.map("value_and_grad_map", "serial", batch, shared, [k + 1 for k in shared])
    else:
        val, vag = F_val, F_vag
    dms = []
    for n, b in zip(names, batched, strict=True):
        a = np.asarray(inputs[n], dtype=np.float64)
        dms.append(ca.DM(a.reshape(batch, -1).T if b else a))

    def to_numpy(result: Any):
        y, *gs = result
        grads = {}
        for n, b, g in zip(names, batched, gs, strict=True):
            g = np.asarray(g)
            grads[n] = (g.T if b else g).reshape(np.shape(inputs[n]))
        return np.asarray(y).reshape(() if batch == 1 else (batch,)), grads

    how = "map(serial)" if batch > 1 else "one call"
    return Bench(
        value=lambda: val(*dms),
        value_and_grad=lambda: vag(*dms),
        to_numpy=to_numpy,
        memory=lambda: Memory(_work_bytes(vag, vag(*dms)), "work vectors"),
        note=", ".join(filter(None, [note, how])),
    )


def _per_sample(problem: Problem, inputs: Inputs, batch: int, model, note: str = "SX") -> Bench:
    """Map the SX function ``model(ca, **symbols)`` of one sample over the batch."""
    import casadi as ca

    names = list(inputs)
    syms = {}
    for n in names:
        shape = np.shape(inputs[n])
        if n in problem.batched and batch > 1:
            shape = shape[1:]
        syms[n] = _sym(ca, n, shape)
    out = model(ca, **syms)
    args = [syms[n] for n in names]
    F_vag = ca.Function("value_and_grad", args, [out, *(ca.gradient(out, s) for s in args)])
    F_val = ca.Function("value", args, [out])
    return _mapped_bench(problem, inputs, batch, F_val, F_vag, note)


def blog(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    def model(ca, x):
        a = ca.exp(x)
        c = a + a * a
        return ca.exp(c) + ca.sin(c)

    return _per_sample(problem, inputs, batch, model)


def mlp(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    def model(ca, x, t, W1, b1, w2, b2):
        h = ca.tanh(ca.mtimes(W1, x) + b1)
        r = ca.dot(w2, h) + b2 - t
        return r * r

    return _per_sample(problem, inputs, batch, model)


def chain(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    steps = problem.sizes["steps"]

    def model(ca, x):
        z = x
        for _ in range(steps):
            z = ca.sin(z + x)
        return z

    return _per_sample(problem, inputs, batch, model)


def equilibrium(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    import casadi as ca

    steps = problem.sizes["unroll"]
    n, d = problem.sizes["n"], problem.sizes["d"]
    W, U, b = ca.MX.sym("W", n, n), ca.MX.sym("U", n, d), ca.MX.sym("b", n)
    X = ca.MX.sym("x", d, batch)  # the batch as columns
    C = ca.mtimes(U, X) + ca.repmat(b, 1, batch)
    H = ca.MX.zeros(n, batch)
    for _ in range(steps):
        H = ca.tanh(ca.mtimes(W, H) + C)
    out = ca.sum1(H)  # 1 × batch
    total = ca.sum2(out)
    args = [W, U, b, X]
    F_vag = ca.Function("value_and_grad", args, [out, *(ca.gradient(total, s) for s in args)])
    F_val = ca.Function("value", args, [out])
    dms = [ca.DM(np.asarray(inputs[k], dtype=np.float64)) for k in ("W", "U", "b")]
    dms.append(ca.DM(np.asarray(inputs["x"], dtype=np.float64).reshape(batch, d).T))

    def to_numpy(result: Any):
        y, gW, gU, gb, gX = (np.asarray(r) for r in result)
        shape = np.shape(inputs["x"])
        grads = {"W": gW, "U": gU, "b": gb.reshape(n), "x": gX.T.reshape(shape)}
        return y.reshape(shape[:-1]), grads

    return Bench(
        value=lambda: F_val(*dms),
        value_and_grad=lambda: F_vag(*dms),
        to_numpy=to_numpy,
        memory=lambda: Memory(_work_bytes(F_vag, F_vag(*dms)), "work vectors"),
        note=f"MX, batch as matrix columns, backprop through {steps} unrolled iterations",
    )


BUILDERS = {"blog": blog, "mlp": mlp, "chain": chain, "equilibrium": equilibrium}
