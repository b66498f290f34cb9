"""Gradient estimators for cyclic programs: other multipliers than the exact ones.

A cyclic block B of definitions z = F(z, e) (unknowns z, known values e) has exact
multipliers from the transposed linear system of the implicit function theorem,

    (I − J)ᵀ λ = g,   J = ∂F/∂z at the fixed point z*,

where g gathers the output seed and what the constraints downstream contribute; the
block then passes (∂F/∂e)ᵀ λ on to e. The deep-equilibrium literature replaces that
solve by cheaper λ, each an `Estimator` chosen per call
(``fn.value_and_grad(inputs, adjoint=…, steps=K, damping=α)``):

``"exact"``
    the solve above (the default; the engine's own path, untouched).
``"unrolled"``
    backprop through K plain iterations z_{t+1} = F(z_t, e) from z_0 = ``init``
    (default zeros): the value returned is the output of that K-step program, and the
    gradient is its gradient, Σ_t (∂F/∂e at z_t)ᵀ a_{t+1} with a_K = g and
    a_t = (∂F/∂z at z_t)ᵀ a_{t+1}; z_0 is a constant. As K grows it tends to the
    exact gradient geometrically for a contraction (rate: the contraction factor).
    No solve runs, so ``method``, ``tol`` and ``maxiter`` do not apply to it.
``"jfb"``
    Jacobian-free backprop (Fung, Heaton, Li, McKenzie, Osher, Yin, "JFB: Jacobian-free
    backpropagation for implicit networks", AAAI 2022): at the exact fixed point, λ = g
    (the Neumann series (I − J)⁻ᵀ g = Σ_k (Jᵀ)^k g cut after its first term).
``"phantom"``
    phantom gradients (Geng, Zhang, Bai, Wang, Lin, "On training implicit models",
    NeurIPS 2021): at the exact fixed point, K damped steps
    λ ← (1 − α) λ + α (g + Jᵀ λ) from λ = g. With α = 1 they are the first K + 1 terms
    of the Neumann series, so a contraction's phantom gradient tends to the exact one
    as K grows.

All of them run the generated code of the array engine unchanged: the forward and
adjoint passes call ``_ctx.solve``, ``_ctx.nodes`` and ``_ctx.adjoint`` for each block,
and the estimators are a per-call context (`_EstimatorContext`) that answers those
calls differently. λ ← g + Jᵀ λ is the block's generated vector-Jacobian product
(``vjp_k``); the unrolled one keeps the K points z_0 … z_{K−1} and hands the adjoint
their node values stacked along a new leading axis, with the K multipliers a_1 … a_K
stacked the same way: the generated (∂F/∂e)ᵀ λ then forms every term of the sum at
once, and each vector-Jacobian rule sums the extra axis out where its operand has none
(``_rt.sum_to``), as it sums a batch. Nothing walks SymPy.

An acyclic program has no block: every estimator is the exact gradient there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core._errors import ProgramError
from ..solving._values import _all_finite
from ._array_engine import ArrayProgram, _Context, _rt

__all__ = ["ADJOINTS", "Estimator", "estimate", "forward_values", "is_positive"]

ADJOINTS = ("exact", "unrolled", "jfb", "phantom")
DEFAULT_STEPS = 5  # K of "unrolled" and "phantom"
DEFAULT_DAMPING = 0.5  # α of "phantom"


@dataclass(frozen=True)
class Estimator:
    """An estimator of a cyclic block's multipliers (see the module docstring).

    Attributes
    ----------
    adjoint : {"exact", "unrolled", "jfb", "phantom"}
    steps : int or None
        K, for "unrolled" and "phantom".
    damping : float or None
        α in (0, 1], for "phantom".
    """

    adjoint: str = "exact"
    steps: int | None = None
    damping: float | None = None

    @classmethod
    def checked(cls, adjoint: Any, steps: Any = None, damping: Any = None) -> Estimator:
        """The estimator these options ask for, with its defaults; a `ProgramError`
        naming the option for an unknown ``adjoint``, ``steps`` < 1 or not an integer,
        ``damping`` outside (0, 1], or an option the estimator does not take."""
        if not isinstance(adjoint, str) or adjoint not in ADJOINTS:
            extra = (
                " (equilibrium propagation, 'ep', is an estimator of energy programs: "
                "lad.energy_program)"
                if adjoint == "ep"
                else ""
            )
            raise ProgramError(
                f"unknown adjoint {adjoint!r}: use one of {', '.join(map(repr, ADJOINTS))}" + extra
            )
        takes_steps = adjoint in ("unrolled", "phantom")
        if steps is not None and not takes_steps:
            raise ProgramError(
                f"steps: adjoint={adjoint!r} takes no steps (only 'unrolled' and 'phantom')"
            )
        if damping is not None and adjoint != "phantom":
            raise ProgramError(f"damping: adjoint={adjoint!r} takes no damping (only 'phantom')")
        if takes_steps:
            steps = DEFAULT_STEPS if steps is None else steps
            if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
                raise ProgramError(f"steps must be a positive integer, not {steps!r}")
            steps = int(steps)
        if adjoint == "phantom":
            damping = DEFAULT_DAMPING if damping is None else damping
            if not (is_positive(damping) and damping <= 1):
                raise ProgramError(f"damping must be a number in (0, 1], not {damping!r}")
            damping = float(damping)
        return cls(adjoint, steps, damping)


def is_positive(value: Any) -> bool:
    """Whether ``value`` is a finite positive real number (not a bool)."""
    real = isinstance(value, (int, float, np.integer, np.floating))
    return real and not isinstance(value, bool) and math.isfinite(value) and value > 0


def estimate(
    fn: Any,
    inputs: Mapping[Any, Any],
    check_finite: bool,
    wrt: Any,
    est: Estimator,
    options: dict,
) -> tuple[Any, dict[str, Any]]:
    """``fn.value_and_grad`` with the multipliers of ``est`` (not "exact")."""
    if not fn._has_cycles:  # no block: every estimator is the exact gradient
        return fn._eager_value_and_grad(inputs, check_finite, wrt, options)
    # the array engine: the program's own, or an entry-wise program lowered by groups
    # (`_grouping`, which runs every call of a cyclic one where it exists)
    engine = fn if isinstance(fn, ArrayProgram) else fn.__dict__.get("_lowered")
    if engine is None:
        raise ProgramError(
            f"adjoint={est.adjoint!r}: gradient estimators run on the array engine, and "
            f"this cyclic program runs on the {fn.engine!r} engine; compile it with "
            "prog.compile(engine='arrays')"
        )
    implicit = [s.code.label for s in engine._solvers.values() if not s.code.all_explicit]
    if implicit:
        raise ProgramError(
            f"adjoint={est.adjoint!r} needs cyclic blocks of definitions z = f(z); the block "
            f"{implicit[0]} has implicit equations (no fixed-point map): use adjoint='exact'"
        )
    wanted = None if wrt is None else frozenset(fn._input_name(k) for k in wrt)
    arrays, leads, batch = fn._check(inputs, check_finite)
    ctx = _EstimatorContext(engine, engine._solve_options(options, batch), est)
    with np.errstate(all="ignore"):  # non-finite values are reported below
        values, saved = engine._functions["forward"](ctx, *engine._inputs_internal(arrays))
        lam, proved = engine._adjoint_function(wanted)(ctx, batch, *values, *saved)
        value = engine._output_value(values, batch)
        grad = engine._grads(lam, arrays, leads, batch, wanted)
        if engine is fn:
            finite = fn._all_finite(value, grad, lam, leads, proved)
        else:
            finite = _all_finite(value, grad)
    if not finite and engine is fn:
        fn._warn(values, lam, batch, stacklevel=4, grad=grad)
    elif not finite:  # where, as the exact call reports it
        fn._warn_non_finite(arrays, leads, batch, options, adjoint=True, stacklevel=4)
    return value, grad


def forward_values(fn: ArrayProgram, inputs: Mapping[Any, Any], names: list[str], **options):
    """The forward values of the intermediates ``names`` (batch + their shapes) and the
    output, by the forward pass alone (no multipliers): (output, {name: value})."""
    arrays, _leads, batch = fn._check(inputs, True)
    values, _saved, _ctx = fn._forward(arrays, batch, options)
    out = {name: fn._user_value(fn._intermediates[name], values, batch) for name in names}
    return fn._output_value(values, batch), out


class _EstimatorContext(_Context):
    """The per-call context of the generated code that answers each block's solve and
    adjoint by the estimator's rule (see the module docstring)."""

    def __init__(self, program: ArrayProgram, options: Any, est: Estimator):
        super().__init__(program, options)
        self.est = est
        self.points: dict[int, Any] = {}  # block -> its point(s): the linearizations used

    def solve(self, k: int, ext: tuple) -> tuple:
        solver = self.program._solvers[k]
        code = solver.code
        if self.est.adjoint != "unrolled":
            parts = solver.solve(self, ext)  # the exact fixed point, nodes recorded
            lead = np.broadcast_shapes(*(np.shape(p)[:-2] for p in parts))
            self.points[k] = code.at(code.join(parts, lead), code.prepare(ext))
            return parts
        inits = [self.options.init.get(v) for v in solver.variables]
        lead = np.broadcast_shapes(
            *(np.shape(e)[:-2] for e in ext), *(np.shape(v) for v in inits if v is not None)
        )
        Z = np.zeros((*lead, code.n))
        for j, v in enumerate(inits):
            if v is not None:
                Z[..., j] = v
        ext = code.prepare(ext)
        points = []
        for _ in range(self.est.steps):  # z_{t+1} = F(z_t): the nodes at z_t kept
            p = code.at(Z, ext)
            points.append(p)
            Z = p.F
        self.points[k] = points
        # the nodes that depend on z, at z_0 … z_{K−1}, stacked on a new leading axis
        stacked = tuple(
            np.stack([np.broadcast_to(p.nodes[i], (*lead, *np.shape(v)[-2:])) for p in points])
            for i, v in enumerate(points[0].nodes)
        )
        self.values[k] = (ext[code.n_ext :], stacked)
        return tuple(code.split(Z))

    def unknowns(self, k: int, z: tuple) -> tuple:
        points = self.points[k]
        if not isinstance(points, list):
            return z
        code = self.program._solvers[k].code  # unrolled: z_0 … z_{K−1}, stacked
        lead = points[-1].Z.shape[:-1]
        return tuple(code.split(np.stack([np.broadcast_to(p.Z, (*lead, code.n)) for p in points])))

    def adjoint(self, k: int, g: tuple) -> tuple:
        code = self.program._solvers[k].code
        point = self.points[k]
        Z = (point[0] if isinstance(point, list) else point).Z
        lead = Z.shape[:-1]
        # g summed over any axes the block's point does not vary along (a batch over a
        # block of parameters only, the steps of an unrolled block downstream): the
        # products below are linear in g, so the gradients are the same, for less work
        G = code.join(
            [
                np.zeros(lead + shape) if x is None else _rt.sum_to(x, lead + shape)
                for x, shape in zip(g, code.shapes, strict=True)
            ],
            lead,
        )
        if self.est.adjoint == "jfb":  # λ = g
            return tuple(code.split(G))
        if self.est.adjoint == "phantom":  # λ ← (1 − α) λ + α (g + Jᵀ λ), from λ = g
            a, lam = self.est.damping, G
            for _ in range(self.est.steps):
                lam = (1 - a) * lam + a * (G + code.KTv(point, lam))
            return tuple(code.split(lam))
        # unrolled: a_K = g, a_t = (∂F/∂z at z_t)ᵀ a_{t+1}; λ_t = a_{t+1} pairs with z_t
        lams = [G]
        for p in reversed(point[1:]):
            lams.append(code.KTv(p, lams[-1]))
        return tuple(code.split(np.stack(lams[::-1])))
