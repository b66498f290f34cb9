"""The benchmark problems: their mathematics, their data, and their lagrangian_ad program.

Each problem has a scalar output per sample; every implementation returns that output
with the batch shape and the gradient of its batch sum with respect to every input (the
convention of `lagrangian_ad`: a parameter given without a batch axis gets the gradient
summed over the batch). Batch 1 is one sample given without a batch axis.

blog
    f(x) = exp(exp(x) + exp(x)²) + sin(exp(x) + exp(x)²), as six constraints
    a = eˣ, b = a², c = a + b, d = eᶜ, e = sin c, f = d + e (Vieira 2017).
mlp
    An 8-16-1 network written as scalar constraints: pre = W1 x + b1, h = tanh(pre),
    y = w2·h + b2, loss = (y − t)² — 306 scalar operations over 8 + 1 data entries per
    sample and 16·8 + 16 + 16 + 1 parameters shared over the batch.
chain
    A chain of scalar steps z_0 = x, z_k = sin(z_{k−1} + x) for k = 1 … steps (1,000):
    two operations a step, nothing to hoist out of the loop; output z_steps.
equilibrium
    An implicit layer h = tanh(W h + U x + b), with n = 200 hidden units, d = 20
    inputs, ‖W‖₂ = 0.5 (a contraction, so the fixed point is unique); output Σ_i h_i.
    It is cyclic: lagrangian_ad solves it once its cyclic solver lands. The peers
    backprop through a fixed number of unrolled iterations (20), the hand-written NumPy
    version solves the fixed point and the adjoint (I − J)ᵀλ = 1 by iteration.

The array programs of issue 12 (one constraint per layer; lagrangian_ad builds them with
``array=True`` inputs, see docs/design.md "Array programs"):

mlp784
    An MLP 784-256-256-10 with tanh hidden layers and softmax cross-entropy:
    h1 = tanh(W1 x + b1), h2 = tanh(W2 h1 + b2), y = W3 h2 + b3,
    loss = log Σ_k exp(y_k) − Σ_k t_k y_k, with t one-hot; 269,322 weights and biases.
    Every implementation forms the gradient of the batch sum with respect to the
    weights and biases only (`Problem.wrt`), as a training step does.
deq100, deq500, deq1000
    The equilibrium model h = tanh(W h + U x + b) as ONE array constraint, n = 100, 500
    or 1,000 units, d = 50 inputs, ‖W‖₂ = 0.9 (a contraction: the fixed point is
    unique), output cᵀh with c given. The forward solve and every peer stop at the
    same tolerance, a residual max |h − tanh(W h + U x + b)| ≤ 1e-12 (lagrangian_ad's
    default ``tol``); every implementation is checked against a tight NumPy reference,
    the dense implicit-function solve (`reference` is ``"numpy"``). Gradients: with
    respect to the parameters W, U, b and c.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy as sp

__all__ = [
    "DEQ_TOL",
    "GROUPS",
    "PROBLEMS",
    "Problem",
    "blog",
    "chain",
    "deq",
    "deq_steps",
    "equilibrium",
    "get",
    "mlp",
    "mlp784",
    "names",
]

DEQ_TOL = 1e-12  # forward residual of the equilibrium models, every implementation

Inputs = dict[str, Any]


@dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    Attributes
    ----------
    name : str
        Short name used on the command line (``--problems``).
    title : str
        The row label of the results table.
    batches, quick_batches : tuple of int
        Batch sizes of a full run and of a ``--quick`` run.
    batched : tuple of str
        The inputs that carry the batch axis (data); the others are parameters, shared.
    sizes : dict
        The size parameters the problem was built with (steps, n, d, unroll …).
    make_inputs : callable
        ``make_inputs(batch, rng)`` -> dict name -> NumPy array, lagrangian_ad's shapes.
    program : callable
        Builds the `lagrangian_ad.Program` (SymPy work, done once per problem).
    family : str
        The key of the implementations' ``BUILDERS`` tables (default: ``name``), so
        that one builder serves a family of sizes (deq100, deq500 … are family "deq").
    reference : str
        What every implementation is checked against: ``"lad"`` (lagrangian_ad, itself
        checked against NumPy by hand) or ``"numpy"`` (NumPy by hand for all).
    arrays : bool
        Whether lagrangian_ad builds it as an array program (``array=True``).
    wrt : tuple of str or None
        The inputs whose gradients every implementation forms (lagrangian_ad:
        ``value_and_grad(..., wrt=...)``); None for every input.
    """

    name: str
    title: str
    batches: tuple[int, ...]
    quick_batches: tuple[int, ...]
    batched: tuple[str, ...]
    make_inputs: Callable[[int, np.random.Generator], Inputs]
    program: Callable[[], Any]
    sizes: dict[str, int] = field(default_factory=dict)
    family: str = ""
    reference: str = "lad"
    arrays: bool = False
    wrt: tuple[str, ...] | None = None

    @property
    def kind(self) -> str:
        """The key of the ``BUILDERS`` tables."""
        return self.family or self.name

    @property
    def key(self) -> tuple:
        """Identifies the problem and its sizes (for caching its program)."""
        return (self.name, *sorted(self.sizes.items()))

    def inputs(self, batch: int, seed: int = 0) -> Inputs:
        """Seeded inputs for a batch (batch 1: one sample, no batch axis)."""
        return self.make_inputs(batch, np.random.default_rng(seed))


def _lead(batch: int) -> tuple[int, ...]:
    return () if batch == 1 else (batch,)


# --------------------------------------------------------------------------- blog


def blog() -> Problem:
    """The blog's six scalar operations, with a batched x."""

    def make_inputs(batch: int, rng: np.random.Generator) -> Inputs:
        return {"x": rng.uniform(-1.0, 0.5, size=_lead(batch))}

    def program():
        from lagrangian_ad.using._demo import blog_program

        return blog_program()

    return Problem(
        name="blog",
        title="blog (6 scalar ops)",
        batches=(1, 1_000, 100_000),
        quick_batches=(1, 1_000),
        batched=("x",),
        make_inputs=make_inputs,
        program=program,
    )


# --------------------------------------------------------------------------- MLP


def mlp(n_in: int = 8, n_hidden: int = 16) -> Problem:
    """An n_in-n_hidden-1 tanh network as scalar constraints; squared error to a target."""

    def make_inputs(batch: int, rng: np.random.Generator) -> Inputs:
        lead = _lead(batch)
        return {
            "x": rng.standard_normal((*lead, n_in)),
            "t": rng.standard_normal(lead),
            "W1": rng.standard_normal((n_hidden, n_in)) / np.sqrt(n_in),
            "b1": 0.1 * rng.standard_normal(n_hidden),
            "w2": rng.standard_normal(n_hidden) / np.sqrt(n_hidden),
            "b2": np.array(0.1),
        }

    def program():
        import lagrangian_ad as lad

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

    ops = n_hidden * (2 * n_in - 1) + n_hidden + n_hidden + (2 * n_hidden - 1) + 1 + 2
    return Problem(
        name="mlp",
        title=f"MLP {n_in}-{n_hidden}-1 as {ops} scalar ops",
        batches=(1, 1_000, 100_000),
        quick_batches=(1, 1_000),
        batched=("x", "t"),
        make_inputs=make_inputs,
        program=program,
        sizes={"n_in": n_in, "n_hidden": n_hidden, "ops": ops},
    )


# --------------------------------------------------------------------------- chain


def chain(steps: int = 1_000) -> Problem:
    """z_0 = x, z_k = sin(z_{k−1} + x): a long chain of scalar steps."""

    def make_inputs(batch: int, rng: np.random.Generator) -> Inputs:
        return {"x": rng.uniform(-1.0, 1.0, size=_lead(batch))}

    def program():
        import lagrangian_ad as lad

        prog = lad.Program()
        x = prog.input("x")
        z = x
        for k in range(1, steps + 1):
            z = prog.define(f"z{k}", sp.sin(z + x))
        return prog

    return Problem(
        name="chain",
        title=f"{steps:,}-step scalar chain",
        batches=(1, 1_000),
        quick_batches=(1, 1_000),
        batched=("x",),
        make_inputs=make_inputs,
        program=program,
        sizes={"steps": steps},
    )


# --------------------------------------------------------------------------- equilibrium


def equilibrium(n: int = 200, d: int = 20, unroll: int = 20) -> Problem:
    """h = tanh(W h + U x + b) with ‖W‖₂ = 0.5; output Σ h. Cyclic (a fixed point)."""

    def make_inputs(batch: int, rng: np.random.Generator) -> Inputs:
        W = rng.standard_normal((n, n))
        W *= 0.5 / np.linalg.norm(W, 2)
        return {
            "W": W,
            "U": rng.standard_normal((n, d)) / np.sqrt(d),
            "b": 0.1 * rng.standard_normal(n),
            "x": rng.standard_normal((*_lead(batch), d)),
        }

    def program():
        import lagrangian_ad as lad

        prog = lad.Program()
        W = prog.input("W", shape=(n, n))
        U = prog.input("U", shape=(n, d))
        b = prog.input("b", shape=(n,))
        x = prog.input("x", shape=(d,))
        h = prog.var("h", shape=(n,))
        # Rows built as flat sums and tanh left unevaluated: SymPy's Matrix product and
        # tanh's automatic simplification of a 220-term argument cost tens of seconds.
        rows = [
            sp.tanh(
                sp.Add(*(W[i, j] * h[j] for j in range(n)), *(U[i, k] * x[k] for k in range(d)))
                + b[i],
                evaluate=False,
            )
            for i in range(n)
        ]
        prog.define(h, sp.Matrix(rows))
        prog.define("loss", sp.Add(*h))
        return prog

    return Problem(
        name="equilibrium",
        title=f"equilibrium h = tanh(Wh+Ux+b), n={n}",
        batches=(1_000,),
        quick_batches=(10,),
        batched=("x",),
        make_inputs=make_inputs,
        program=program,
        sizes={"n": n, "d": d, "unroll": unroll},
    )


# --------------------------------------------------------------------------- array MLP


def mlp784(n_in: int = 784, hidden: int = 256, classes: int = 10) -> Problem:
    """n_in-hidden-hidden-classes, tanh, softmax cross-entropy, as an array program."""

    def make_inputs(batch: int, rng: np.random.Generator) -> Inputs:
        lead = _lead(batch)
        labels = rng.integers(0, classes, size=lead)
        return {
            "x": rng.uniform(0.0, 1.0, size=(*lead, n_in)),  # pixel intensities
            "t": np.eye(classes)[labels],  # one-hot targets
            "W1": rng.standard_normal((hidden, n_in)) / np.sqrt(n_in),
            "b1": 0.1 * rng.standard_normal(hidden),
            "W2": rng.standard_normal((hidden, hidden)) / np.sqrt(hidden),
            "b2": 0.1 * rng.standard_normal(hidden),
            "W3": rng.standard_normal((classes, hidden)) / np.sqrt(hidden),
            "b3": 0.1 * rng.standard_normal(classes),
        }

    def program():
        import lagrangian_ad as lad

        prog = lad.Program()
        x = prog.input("x", shape=(n_in,), array=True)
        t = prog.input("t", shape=(classes,), array=True)
        W1 = prog.input("W1", shape=(hidden, n_in), array=True)
        b1 = prog.input("b1", shape=(hidden,), array=True)
        W2 = prog.input("W2", shape=(hidden, hidden), array=True)
        b2 = prog.input("b2", shape=(hidden,), array=True)
        W3 = prog.input("W3", shape=(classes, hidden), array=True)
        b3 = prog.input("b3", shape=(classes,), array=True)
        h1 = prog.define("h1", lad.tanh(W1 @ x + b1))
        h2 = prog.define("h2", lad.tanh(W2 @ h1 + b2))
        y = prog.define("y", W3 @ h2 + b3)
        lse = prog.define("lse", sp.log(lad.sum(lad.exp(y))))
        prog.define("loss", lse - lad.sum(lad.mul(t, y)))
        return prog

    weights = hidden * n_in + hidden + hidden * hidden + hidden + classes * hidden + classes
    return Problem(
        name="mlp784",
        title=f"MLP {n_in}-{hidden}-{hidden}-{classes} softmax CE (arrays)",
        batches=(1, 128, 10_000),
        quick_batches=(1, 128),
        batched=("x", "t"),
        make_inputs=make_inputs,
        program=program,
        sizes={"n_in": n_in, "hidden": hidden, "classes": classes, "weights": weights},
        arrays=True,
        wrt=("W1", "b1", "W2", "b2", "W3", "b3"),  # the weights, as in training
    )


# --------------------------------------------------------------------------- array DEQ


def deq(n: int = 1_000, d: int = 50, norm: float = 0.9, batch: int = 100) -> Problem:
    """h = tanh(W h + U x + b) as one array constraint, ‖W‖₂ = norm; output cᵀh."""

    def make_inputs(batch: int, rng: np.random.Generator) -> Inputs:
        W = rng.standard_normal((n, n))
        W *= norm / np.linalg.norm(W, 2)
        return {
            "W": W,
            "U": rng.standard_normal((n, d)) / np.sqrt(d),
            "b": 0.1 * rng.standard_normal(n),
            "c": rng.standard_normal(n) / np.sqrt(n),
            "x": rng.standard_normal((*_lead(batch), d)),
        }

    def program():
        import lagrangian_ad as lad

        prog = lad.Program()
        W = prog.input("W", shape=(n, n), array=True)
        U = prog.input("U", shape=(n, d), array=True)
        b = prog.input("b", shape=(n,), array=True)
        c = prog.input("c", shape=(n,), array=True)
        x = prog.input("x", shape=(d,), array=True)
        h = prog.var("h", shape=(n,), array=True)
        prog.define(h, lad.tanh(W @ h + U @ x + b))
        prog.define("loss", lad.sum(lad.mul(c, h)))
        return prog

    return Problem(
        name=f"deq{n}",
        title=f"equilibrium h = tanh(Wh+Ux+b) as one array constraint, n={n:,}",
        batches=(batch,),
        quick_batches=(10,),
        batched=("x",),
        make_inputs=make_inputs,
        program=program,
        sizes={"n": n, "d": d},
        family="deq",
        reference="numpy",
        arrays=True,
        wrt=("W", "U", "b", "c"),  # the parameters, as in training
    )


def deq_steps(inputs: Inputs, tol: float = DEQ_TOL, max_steps: int = 10_000) -> int:
    """Iterations of h ← tanh(W h + U x + b) from h = 0 until the residual is ≤ tol.

    The number of unrolled steps the peers that backprop through the iteration take, so
    that their forward pass reaches the same tolerance as the implicit solvers.
    """
    W, U, b = inputs["W"], inputs["U"], inputs["b"]
    C = np.atleast_2d(inputs["x"]) @ U.T + b
    H = np.zeros_like(C)
    for k in range(max_steps):
        new = np.tanh(H @ W.T + C)
        if np.max(np.abs(new - H)) <= tol:
            return k + 1
        H = new
    raise RuntimeError(f"the fixed-point iteration did not reach {tol:g} in {max_steps} steps")


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "blog": blog,
    "mlp": mlp,
    "chain": chain,
    "equilibrium": equilibrium,
    "mlp784": mlp784,
    "deq100": lambda: deq(100),
    "deq500": lambda: deq(500),
    "deq1000": lambda: deq(1_000),
}

# Names that stand for several problems on the command line (``--problems arrays``).
GROUPS: dict[str, tuple[str, ...]] = {
    "deq": ("deq100", "deq500", "deq1000"),
    "arrays": ("mlp784", "deq100", "deq500", "deq1000"),
    "scalar": ("blog", "mlp", "chain", "equilibrium"),
}


def names(selection: list[str]) -> list[str]:
    """Problem names with groups expanded, in order, each once; ValueError if unknown."""
    out: list[str] = []
    for name in selection:
        if name not in PROBLEMS and name not in GROUPS:
            known = ", ".join([*PROBLEMS, *GROUPS])
            raise ValueError(f"unknown problem {name!r} (problems and groups: {known})")
        out.extend(GROUPS.get(name, (name,)))
    return list(dict.fromkeys(out))


def get(name: str) -> Problem:
    """The problem called ``name`` at its benchmark size."""
    try:
        return PROBLEMS[name]()
    except KeyError:
        known = ", ".join(PROBLEMS)
        raise ValueError(f"unknown problem {name!r} (problems: {known})") from None
