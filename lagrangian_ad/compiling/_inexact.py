"""Inexact Newton for large cyclic blocks of definitions z = F(z), matrix-free.

Each Newton step δ = (I − K)⁻¹ (F(z) − z), K = ∂F/∂z, comes from the iteration
δ ← r + K δ on the block's Jacobian-vector products (the rules of the array engine's
generated ``jvp_k``), which cost a matrix product and no transcendental function; the
multipliers solve λ = g + Kᵀ λ by the same kind of iteration on the vector-Jacobian
products. No batch × n² Jacobian is formed. The iterations run in single precision
where that is enough, refined in double (`_mixed_richardson`): half the memory traffic,
a matrix product at twice the speed. Inexact Newton has converged where the residual is
within tolerance and so is the Newton correction there, solved to a tenth of itself (the
forward-error test of `_blocks`; an inner iteration that converges also shows the map
contractive, so I − K regular, at the point); Anderson's point is certified by the same
inexact Newton. A block the iteration does not solve (not contractive, or too slow for
"auto") goes to the array engine's own matrix-free solver (`_Krylov`: Anderson or
Newton-Krylov, GMRES), and so do the multipliers where their iteration fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core._errors import ConvergenceError
from ..solving._blocks import BlockReport, _Factorized
from ._array_engine import _Context, _Dense, _Krylov, _SubContext

__all__ = ["InexactNewton"]

INNER_MAX = 100  # "auto": Jacobian-vector products an inner solve may take before the
# block goes to Newton-Krylov (GMRES finds a slow contraction's step in fewer)
DENSE_NEWTON_MAX = 2**20  # Newton with the Jacobian for blocks with n² · batch up to this
CONDITION_MAX = 2**22  # `solve` reports the condition of blocks with up to n² · batch this


class _Cast:
    """A linearization (`_Point`) in single precision: its products' arguments rounded."""

    __slots__ = ("Z", "_args")

    def __init__(self, point: Any):
        self.Z = point.Z
        self._args = tuple(_single(a) for a in point.products())

    def products(self) -> tuple:
        return self._args


class InexactNewton(_Krylov):
    """A large block: inexact Newton with mixed-precision inner solves for "auto",
    "inexact-newton" and (certifying its point) "anderson" on definitions z = F(z).
    "newton" and "fixed-point", implicit equations, and "auto" where inexact Newton
    fails go to Newton's method with the block's Jacobian (`_Dense`: the factorization
    serves the multipliers) where n² · batch is at most DENSE_NEWTON_MAX, and to the
    array engine's matrix-free solver (`_Krylov`) beyond."""

    def __init__(self, code: Any, first_index: int):
        super().__init__(code, first_index)
        self.dense = _Dense(code, first_index)

    def solve(self, ctx: _Context, ext: tuple) -> tuple:
        opts, code = ctx.options, self.code
        method = opts.method
        known = ext
        inits = [opts.init.get(v) for v in self.variables]
        lead = np.broadcast_shapes(
            *(np.shape(e)[:-2] for e in ext), *(np.shape(v) for v in inits if v is not None)
        )
        newton = self.dense if code.n**2 * math.prod(lead) <= DENSE_NEWTON_MAX else None
        if not code.all_explicit or method not in ("auto", "inexact-newton", "anderson"):
            if newton is not None and method in ("auto", "newton", "fixed-point"):
                return newton.solve(ctx, ext)
            return super().solve(ctx, ext)
        Z = np.zeros((*lead, code.n))
        for j, v in enumerate(inits):
            if v is not None:
                Z[..., j] = v
        ext = code.prepare(ext)
        ext32 = tuple(_single(e) for e in ext)
        it = 0
        if method == "anderson":  # (`_Krylov`'s), its point certified below
            start, it, res, _ = self._iterate(Z, ext, opts, anderson=True)
            if start is None:
                raise ConvergenceError(
                    f"Anderson-accelerated fixed-point iteration did not converge in the block "
                    f"{code.label}: max |f(z) − z| = {res:.3e} after {it} evaluations of the "
                    f"map (tol {opts.tol}): the map may not be contractive: try method='newton'"
                )
            Z = start.Z
        budget = 2 * opts.maxiter if method != "auto" else min(2 * opts.maxiter, INNER_MAX)
        found, k, res, inner, point, why = _inexact_newton(
            code, Z, ext, ext32, opts, budget, single=method != "anderson"
        )
        it += k
        if found is None:
            if method == "auto":
                return (newton or super()).solve(ctx, known)
            what = "Newton's method with iterative linear solves"
            if method == "anderson":
                what = "Anderson-accelerated fixed-point iteration (certified by Newton's steps)"
            raise ConvergenceError(
                f"{what} did not converge in the block {code.label}: {why} (max "
                f"|f(z) − z| = {res:.3e} after {it} evaluations of the map, tol "
                f"{opts.tol}): try method='newton'"
            )
        code.keep(ctx, ext, point)
        ctx.blocks[code.block.index] = (point, ext, math.nan)
        ctx.reports[code.block.index] = BlockReport(
            tuple(u.label for u in code.block.units),
            it,
            res,
            math.nan,
            "anderson" if method == "anderson" else "inexact-newton",
            inner,
        )
        return tuple(code.split(found))

    def adjoint(self, ctx: _Context, g: tuple) -> tuple:
        """λ = g + Kᵀ λ by mixed-precision iteration, to 1/100 of the forward tolerance
        (relative to λ's size): the gradient then matches a factorization's to
        rounding; GMRES (`_Krylov`) where it does not converge."""
        code, k = self.code, self.code.block.index
        if isinstance(ctx.blocks[k][0], _SubContext):  # solved by `_Dense`
            return self.dense.adjoint(ctx, g)
        if ctx.reports[k].method not in ("inexact-newton", "anderson"):
            return super().adjoint(ctx, g)
        point, _, _ = ctx.blocks[k]
        G = code.join([0.0 if x is None else x for x in g], point.Z.shape[:-1])
        if G.shape != point.Z.shape:  # several right-hand sides a sample
            return super().adjoint(ctx, g)
        scale = max(1.0, float(np.abs(G).max(initial=0.0)))
        low = _Cast(point)
        lam, _ = _mixed_richardson(
            lambda L: code.KTv(point, L),
            lambda L: code.KTv(low, L),
            G,
            ctx.options.tol / 100 * scale,
            2 * ctx.options.maxiter,
        )
        if lam is None:
            return super().adjoint(ctx, g)
        return tuple(code.split(lam))

    def tangent(self, ctx: _Context, rhs: tuple) -> tuple:
        if isinstance(ctx.blocks[self.code.block.index][0], _SubContext):
            return self.dense.tangent(ctx, rhs)
        return super().tangent(ctx, rhs)

    def condition(self, ctx: _Context) -> float:
        """The condition estimate of I − K at the solution (`_blocks._Factorized`), from
        the dense Jacobian built column by column (NaN for a block too large to form);
        `SingularSystemError` where it is singular to working precision."""
        point, _, _ = ctx.blocks[self.code.block.index]
        if isinstance(point, _SubContext):  # (`_Dense` reported it)
            return ctx.reports[self.code.block.index].condition
        n, lead = self.code.n, point.Z.shape[:-1]
        if n * n * math.prod(lead) > CONDITION_MAX:
            return math.nan
        eye = np.eye(n).reshape((n,) + (1,) * len(lead) + (n,))
        J = np.moveaxis(self.code.Jv(point, eye), 0, -1)  # (batch…, i, j)
        fact = _Factorized(np.broadcast_to(J, (*lead, n, n)), True, self.code.label)
        fact.check()
        return fact.condition


def _inexact_newton(code, Z, ext, ext32, opts, budget, single=True):
    """z = F(z) by Newton's method, each step δ = (I − K)⁻¹ (F(z) − z) found by the
    iteration δ ← r + K δ on the block's Jacobian-vector products (no n × n matrix).

    A Jacobian-vector product costs a fraction of an evaluation of F (no
    transcendental functions, one matrix product per contraction), so this reaches
    the tolerance in a few evaluations where the plain iteration needs one per
    digit-and-a-half. Each inner solve stops at an accuracy that keeps Newton's
    quadratic rate without oversolving: min(res/10, res²), and tol/100 for the last.
    The inner iterations run in single precision (`_mixed_richardson`), and so does F
    while the residual is above LOW_EVAL (the solution is always checked in double).
    A step that does not lower a sample's residual is halved for that sample (up to
    ten times). Converged where the residual is within tolerance and so is the
    Newton correction there (solved to a tenth of itself: a small residual alone
    may only mean that F − z flattens out, as on the way to infinity). Returns (Z,
    evaluations of F, residual, inner iterations, the linearization at Z, None), or
    Z = None and the reason when that fails or an inner iteration does not converge
    within ``budget`` (not contractive, or not enough for the cost allowed).
    ``single=False`` skips the single-precision evaluations (a start already near the
    solution: Anderson's).
    """
    tol, maxiter = opts.tol, opts.maxiter
    inner = 0
    base = step = best = alpha = None  # last accepted point, its step and residuals
    best_low = False  # whether those residuals were evaluated in float32
    target = np.inf
    res = np.inf
    halved = "a step did not lower the residual after ten halvings"
    not_contractive = "the map is not contractive there (δ ← r + K δ does not converge)"
    for it in range(1, maxiter + 1):
        low = single and target > LOW_EVAL
        point = code.at(Z.astype(np.float32), ext32) if low else code.at(Z, ext)
        R = point.F - Z
        per_sample = np.abs(R).max(axis=-1, initial=0.0)
        res = float(per_sample.max(initial=0.0))
        if low and not np.isfinite(res):  # beyond float32's range: in double, then
            single = False
            continue
        scale = np.maximum(1.0, np.abs(Z).max(axis=-1, initial=0.0))
        converged = not low and bool(np.all(per_sample <= tol * scale))  # (not NaN)
        if best is not None and not converged:
            # Backtracking, sample by sample: far from the solution a full Newton step
            # (or one solved loosely) can overshoot; halve it where the residual rose.
            # (a residual evaluated in float32 is known to its rounding only)
            slack = FLOOR_ULPS * EPS32 * scale if best_low else 0.0
            bad = ~(per_sample < best + slack)  # NaN counts as bad
            if np.any(bad):
                if np.min(alpha[bad]) < 1 / 1024:
                    return None, it, res, inner, None, halved
                alpha = np.where(bad, alpha / 2, alpha)
                Z = base + alpha[..., None] * step
                continue
        if not np.isfinite(res):
            return None, it, res, inner, None, "the residual is not finite"
        # Inexact Newton's forcing: enough for the quadratic rate, no more; the step
        # expected to be the last (res² below tol) goes to tol/100, so the solution
        # comes out near rounding level rather than just inside the tolerance.
        if converged:
            target = 0.1 * res
        else:
            target = tol / 100 if res * res <= tol else min(0.1 * res, res * res)
        fast = point if low else _Cast(point)
        step, k = _mixed_richardson(
            lambda D, p=point: code.Kv(p, D),
            lambda D, p=fast: code.Kv(p, D),
            R,
            target,
            budget,
            verify=False,  # the next Newton iteration checks the step
        )
        inner += k
        if step is None:
            return None, it, res, inner, None, not_contractive
        if converged and np.all(np.abs(step).max(axis=-1, initial=0.0) <= tol * scale):
            # Z, whose residual was just checked, rather than Z + δ: the multipliers
            # reuse its linearization
            return Z, it, res, inner, point, None
        base, best, alpha, best_low = Z, per_sample, np.ones_like(per_sample), low
        Z = Z + step
        del R, point, fast  # not kept alive through the next linearization
    return None, maxiter, res, inner, None, f"{maxiter} iterations were not enough"


def _single(x: Any) -> Any:
    """x rounded to float32 (a number stays a Python float: a NumPy float64 scalar
    would turn float32 arrays back into float64)."""
    if x is None or isinstance(x, float):
        return x
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == np.float64 else x


LOW_GAIN = 1e-5  # a single-precision inner solve is asked for this much of its residual
LOW_EVAL = 1e-5  # inexact Newton evaluates f in single precision above this residual
FLOOR_ULPS = 4  # an iteration whose steps are this many ulps of its iterate has stalled
EPS32 = float(np.finfo(np.float32).eps)


def _mixed_richardson(
    apply: Callable, apply_low: Callable, rhs: np.ndarray, tol: float, maxiter: int, verify=True
):
    """`_richardson`'s x = rhs + A x by mixed-precision iterative refinement.

    Each round computes the residual r = rhs + A x − x in float64 and solves for the
    correction e = r + A e in float32 with A rounded to single precision
    (``apply_low``: half the memory traffic, a matrix product at twice the speed), to
    LOW_GAIN of r or as far as float32 resolves e (`_richardson` stops at its rounding
    floor), the last round to tol (tol/2 when the rounding of x + e adds to it). A
    round that does not halve the float64 residual — the rounding of A and of e limit a
    float32 round to a gain of about ε₃₂·cond(I − A) — hands over to rounds in float64,
    as do values outside float32's range; the refined x is kept, not recomputed.
    Returns (x, iterations) with max |rhs + A x − x| ≤ ``tol``, or (None, iterations)
    when that cannot be reached within ``maxiter`` iterations in all. ``verify=False``
    skips the last float64 residual when a round already meets ``tol`` (Newton's
    steps: the next iteration checks them).
    """
    x, r, total = None, rhs, 0
    size = float(np.max(np.abs(r), initial=0.0))
    low = True
    while np.isfinite(size):
        if size <= tol:
            return (rhs.copy() if x is None else x), total
        if total >= maxiter:
            break
        low = low and size <= 1e30
        # A round that is to end it aims at tol, or at tol/2 where the rounding of x + e
        # adds to the residual.
        last_goal = tol if x is None else tol / 2
        inner = max(last_goal, LOW_GAIN * size) if low else last_goal
        e, k, last = _richardson(
            apply_low if low else apply, r.astype(np.float32) if low else r, inner, maxiter - total
        )
        total += k
        if e is None:
            if not low:
                break
            low = False  # e.g. a rate too close to 1 for float32's rounding
            continue
        x = e.astype(np.float64) if x is None else x + e
        if inner == last_goal and last <= inner and not verify:
            return x, total
        r = rhs + apply(x) - x
        total += 1
        new = float(np.max(np.abs(r), initial=0.0))
        if new > tol and not new <= 0.5 * size:  # no gain from this round (NaN included)
            if not low:
                break
            low = False
        size = new
    return None, total


def _richardson(apply: Callable, rhs: np.ndarray, tol: float, maxiter: int):
    """x = rhs + apply(x) for a linear ``apply`` of spectral radius below 1, by the plain
    iteration x ← rhs + apply(x) from x = rhs.

    The step from an iterate x is its residual rhs + apply(x) − x; the iteration stops
    at the first step within ``tol`` in every entry — or within FLOOR_ULPS ulps of x,
    where it has reached its rounding floor in the working precision (x's dtype) and can
    gain nothing more — and returns the iterate that step reached, one contraction past
    the measured residual (its own is apply(step), which may exceed ``tol`` where
    ‖apply‖∞ > 1: `_mixed_richardson` checks it in float64). Returns (x, iterations,
    the size of that last step), or (None, iterations, …) when it cannot get there: a
    non-finite step, or a rate that will not reach ``tol`` within ``maxiter``.
    """
    x = rhs
    floor = FLOOR_ULPS * np.finfo(rhs.dtype).eps
    steps = []
    head = 0.0  # the largest step of the first half, max(steps[: k // 2])
    for k in range(1, maxiter + 1):
        new = rhs + apply(x)
        step = float(np.max(np.abs(new - x), initial=0.0))
        if step <= tol or step <= floor * float(np.max(np.abs(x), initial=0.0)):
            return new, k, step
        x = new
        if not np.isfinite(step):
            return None, k, step
        steps.append(step)
        if k % 2 == 0:
            head = max(head, steps[k // 2 - 1])
        if k >= 16:  # the rate against the largest step of the first half: steps may
            # grow at first (a non-normal A) or oscillate (complex eigenvalues)
            rate = (step / head) ** (1 / (k - k // 2))
            if rate >= 1 or k + np.log(tol / step) / np.log(rate) > maxiter:
                return None, k, step
    return None, maxiter, np.inf
