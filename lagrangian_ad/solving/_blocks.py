"""Solving a cyclic block: Newton (or fixed-point) forward, transposed solve for λ.

A block is a square system r(z_B; z_ext) = 0 in its unknowns z_B, with the residuals
r_e = z_e − f_e(…) of explicit constraints and r_e = c_e(…) of implicit ones. With
J = ∂r/∂z_B (for explicit constraints J = I − ∂f/∂z_B):

* forward: Newton steps J Δ = −r with a backtracking line search on ½‖r‖², per sample,
  from ``init`` or zeros; or fixed-point iteration z ← f(z) (plain or Anderson-
  accelerated) for blocks of explicit constraints, followed by one Newton step. Newton
  has converged when ‖r‖∞ and the last step are both within tolerance, tol·max(1, |z|)
  per sample; where no step along J⁻¹ r lowers ‖r‖ it stops early: at a local minimum
  of ‖r‖ that is not a root (ConvergenceError), or with r at rounding level while the
  step is still above the tolerance (then the tests below judge the point: the step may
  be rounding in an ill-conditioned block, or a sign of a singular one).
* adjoint: the block's part of ∂L/∂z = 0 is Jᵀ λ_B = g_B, where g_B collects the output
  seed and the contributions of the constraints downstream. J at the solution is
  factorized by LU (dense: LAPACK's, stacked over the batch; sparse: one SuperLU per
  sample), and the adjoint is the transposed solve with it.

Accepting a solution. A small residual is not enough: near a fold, a tangency or a
double root Newton converges only linearly to a point where J is singular, and a map
with no fixed point can drive ‖r‖ down by running off to where r flattens out (h = h −
g(h) with g → 0 at infinity). Every method therefore ends at z* = z + Δ, after a last
Newton step Δ from the point z where it converged, and the factorization of J(z*) then
decides, per sample, with s = max(1, |z*|):

1. forward error: the Newton correction J(z*)⁻¹ r(z*) is within FORWARD·tol·s, or
   within the rounding ρ·s to which the rounded equations fix z at all, ρ =
   NOISE·ε·κ (else ConvergenceError: the residual is small without a root nearby);
2. conditioning: the condition estimate κ = ‖J⁻¹‖₁·max(1, ‖J‖₁), in the units of the
   tolerance (so a 1×1 block's is 1/|J| when |J| < 1, not always 1), is at most
   SINGULAR (else SingularSystemError);
3. a regular root at the scale to which z is known: moved by δ = max(DISPLACE·tol, ρ)·s
   along a fixed direction, the Newton correction J(z*)⁻¹ r(z* + δ) must bring z back
   to within LINEAR·|δ|. Near a singular root the curvature over δ outweighs J δ; where
   J is at the level of the rounding of r's terms, rounding rather than the equations
   fixes the root, and δ = ρ·s is then far enough for the curvature to show: both are
   SingularSystemError. A linear block passes at any κ ≤ SINGULAR; a nonlinear one
   fails once the curvature along its near-null direction changes J by half over δ —
   its gradient would have no correct digit. (In these units the test also calls
   singular a root closer to a fold than about max(tol, ρ)·s.)

Every sample of a batch has its own fixed point; small blocks are solved for the whole
batch at once with stacked dense linear algebra, large ones sample by sample with sparse
LU, never as one giant block-diagonal system.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sps
import scipy.sparse.linalg as spla

from ..core._errors import ConvergenceError, SingularSystemError

__all__ = ["BlockReport", "BlockSolver", "SolveOptions"]

DENSE_MAX = 100  # blocks up to this many unknowns use stacked dense linear algebra
SINGULAR = 1e13  # condition beyond which the gradient is not trusted
FORWARD = 10  # a solution's Newton correction is within this many tolerances (rounding)
DISPLACE = 10  # tolerances by which the solution is moved to see that J resolves r there
LINEAR = 0.5  # J mispredicting r's change over that move by more: a singular root
NOISE = 64  # ulps of r (times the condition) to which the rounded equations fix z
EPS = float(np.finfo(np.float64).eps)
ANDERSON_MEMORY = 5  # iterates combined by Anderson acceleration
POLISH = 3  # extra Anderson iterations past the tolerance, while they still gain
PLAIN_RATE = 0.3  # plain fixed-point steps while each cuts the residual at least this much
METHODS = ("auto", "newton", "inexact-newton", "fixed-point", "anderson")


@dataclass(frozen=True)
class SolveOptions:
    """Options of the forward solve of cyclic blocks.

    method : "auto", "newton", "inexact-newton", "fixed-point" or "anderson"
        "auto" is Newton, except on the large blocks of the array engine: a block of
        explicit constraints z = f(z) of an entry-wise program lowered by groups starts
        with inexact Newton (`_inexact`: Newton steps found by iterating on
        Jacobian-vector products, no n × n matrix per sample) and hands over to the
        array engine's matrix-free solver where the measured rate predicts too many
        products; an array program's with a plain iteration while it contracts fast.
        Where there are no Jacobian-vector products to iterate with (blocks solved
        here), "inexact-newton" is Newton (and reported as such).
    tol : float
        Converged when max |r| ≤ tol·max(1, max |z|) and the last step is as small.
    maxiter : int
    init : dict
        Variable index -> starting value (broadcastable to the batch).
    """

    method: str = "auto"
    tol: float = 1e-12
    maxiter: int = 100
    init: dict[int, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BlockReport:
    """Diagnostics of one cyclic block at the solution (worst sample of the batch).

    ``method`` is the one that solved it ("newton", "inexact-newton", "fixed-point",
    "anderson", or for the array engine's large blocks "newton-krylov"): with "auto", a
    block inexact Newton could not solve (or not within its budget of products) reports
    the method that then did, and "inexact-newton" where there are no Jacobian-vector
    products to iterate with (one sample, or a block solved by `BlockSolver`) reports
    "newton".
    ``iterations`` counts evaluations of the map (Newton steps for the Newton methods);
    ``inner_iterations`` the Jacobian-vector products of inexact Newton's linear solves.
    """

    variables: tuple[str, ...]
    iterations: int
    residual: float
    condition: float
    method: str = "newton"
    inner_iterations: int = 0


class _Factorized:
    """J at the solution, factorized once; solves J x = g and Jᵀ λ = g with it.

    Dense blocks (up to DENSE_MAX unknowns, stacked over the batch): LAPACK's LU with
    partial pivoting (gesv, through `numpy.linalg.solve`), every sample of the batch in
    one call. J is kept and each solve factorizes it again in that call: one Python
    call per sample to hold the factors (`scipy.linalg.lu_factor` batches by a loop)
    costs more than the factorization itself for the small blocks of this path (a
    batch of 10⁵ 1×1 blocks: 1.2 s for lu_factor and gecon per sample, 13 ms for
    one stacked solve). ‖J⁻¹‖₁ comes from the same LU solved against the identity.
    Sparse blocks: one SuperLU per sample, ‖J⁻¹‖₁ estimated by `onenormest`.

    ``conditions`` (per sample, flat for sparse blocks) is ‖J⁻¹‖₁ · max(1, ‖J‖₁): the
    usual κ₁ where ‖J‖₁ ≥ 1, and otherwise the factor by which J turns a residual into
    a change of the solution, in the units of the tolerance (both relative to
    max(1, |z|)), so that it means something for a 1×1 block too. ``rhs`` (k, batch…,
    n) are solved as the factorization is made: ``solved`` = J⁻¹ rhs.
    """

    def __init__(
        self, J: np.ndarray | list, dense: bool, names: str, rhs: np.ndarray | None = None
    ):
        self.dense, self.names = dense, names
        self.solved = None
        singular = SingularSystemError(
            f"I − J is singular at the solution of the block {names}: "
            "the gradient is not defined there"
        )
        if dense:
            self.J = np.asarray(J)
            n = self.J.shape[-1]
            cols = np.broadcast_to(np.eye(n), self.J.shape)
            if rhs is not None:
                cols = np.concatenate([cols, np.moveaxis(rhs, 0, -1)], axis=-1)
            try:
                X = np.linalg.solve(self.J, cols)
            except np.linalg.LinAlgError:
                raise singular from None
            norm = np.abs(self.J).sum(axis=-2).max(axis=-1)
            inv_norm = np.abs(X[..., :n]).sum(axis=-2).max(axis=-1)
            if rhs is not None:
                self.solved = np.moveaxis(X[..., n:], -1, 0)
        else:
            self.lus = []
            norm, inv_norm, solved = [], [], []
            flat = None if rhs is None else rhs.reshape(len(rhs), -1, rhs.shape[-1])
            for b, Jb in enumerate(J):
                try:
                    lu = spla.splu(Jb.tocsc())
                except RuntimeError:
                    raise singular from None
                n = Jb.shape[0]
                op = spla.LinearOperator(
                    (n, n), matvec=lu.solve, rmatvec=lambda v, lu=lu: lu.solve(v, trans="T")
                )
                inv_norm.append(spla.onenormest(op))
                norm.append(spla.norm(Jb, 1))
                if flat is not None:
                    solved.append(lu.solve(np.ascontiguousarray(flat[:, b].T)).T)
                self.lus.append(lu)
            norm, inv_norm = np.array(norm), np.array(inv_norm)
            if rhs is not None:
                self.solved = np.stack(solved, axis=1).reshape(rhs.shape)
        self.conditions = inv_norm * np.maximum(1.0, norm)
        self.condition = float(np.max(self.conditions, initial=0.0))
        if np.isnan(self.condition):
            raise singular

    def check(self) -> None:
        """SingularSystemError when J is singular to working precision (condition
        beyond SINGULAR: the gradient would carry no correct digit)."""
        if not self.condition <= SINGULAR:
            raise SingularSystemError(
                f"I − J is singular at the solution of the block {self.names} (condition "
                f"estimate {self.condition:.2e}): the forward solution is not locally "
                "unique, so the gradient is not defined there"
            )

    def solve(self, g: np.ndarray, transposed: bool) -> np.ndarray:
        """J⁻¹ g, or J⁻ᵀ g when ``transposed``, with the factorization at the solution.

        ``g`` has shape (…, batch…, n): leading axes (several right-hand sides per sample,
        e.g. the directions of a Hessian) broadcast against the batch.
        """
        g = np.asarray(g)
        if self.dense:
            J = np.swapaxes(self.J, -1, -2) if transposed else self.J
            lead = g.shape[: max(g.ndim - (J.ndim - 1), 0)]
            # the leading axes become columns: one factorization per sample for all of them
            G = np.moveaxis(g.reshape(-1, *g.shape[len(lead) :]), 0, -1)
            X = np.moveaxis(np.linalg.solve(J, G), -1, 0)
            return X.reshape(*lead, *X.shape[1:])
        n, nb = g.shape[-1], len(self.lus)
        flat = np.broadcast_to(g, (*g.shape[:-1], n)).reshape(-1, nb, n)
        out = np.empty_like(flat)
        for b, lu in enumerate(self.lus):
            out[:, b] = lu.solve(
                np.ascontiguousarray(flat[:, b].T), trans="T" if transposed else "N"
            ).T
        return out.reshape(g.shape)


class BlockSolver:
    """Forward solve and adjoint of one cyclic block, over generated code.

    Parameters
    ----------
    index : int
    names : tuple of str
        The unknowns, in the order of the block's residuals.
    variables : tuple of int
        Their variable indices (to look up ``init``).
    residual : callable ``(R, Z, X)``
        Writes r(Z; X) into ``R[..., :]``.
    jacobian : callable ``(D, Z, X)``
        Writes the nonzero entries of J into ``D[..., :]`` (pattern ``rows``, ``cols``).
    fixed_map : callable ``(F, Z, X)`` or None
        Writes f(Z; X) into ``F`` for blocks of explicit constraints.
    """

    def __init__(
        self,
        index: int,
        names: tuple[str, ...],
        variables: tuple[int, ...],
        residual: Callable,
        jacobian: Callable,
        fixed_map: Callable | None,
        rows: np.ndarray,
        cols: np.ndarray,
    ):
        self.index = index
        self.names = names
        self.variables = variables
        self.n = len(names)
        self.residual = residual
        self.jacobian = jacobian
        self.fixed_map = fixed_map
        self.rows, self.cols = rows, cols
        self.dense = self.n <= DENSE_MAX
        self.label = ", ".join(names) if self.n <= 6 else f"{', '.join(names[:5])}, … ({self.n})"
        rng = np.random.default_rng(0)  # a fixed direction: results do not vary by call
        self.probe = rng.uniform(0.5, 1.0, self.n) * rng.choice([-1.0, 1.0], self.n)

    # ----------------------------------------------------------------- forward

    def solve(self, ctx: Any, ext: tuple) -> np.ndarray:
        """The block's unknowns (batch + (n,)) for the known values ``ext``."""
        opts: SolveOptions = ctx.options
        shapes = [np.shape(v) for v in ext]
        inits = [opts.init.get(v, 0.0) for v in self.variables]
        batch = np.broadcast_shapes(*shapes, *(np.shape(v) for v in inits))
        Z = np.empty((*batch, self.n))
        for j, v in enumerate(inits):
            Z[..., j] = v
        # Inexact Newton needs the array engine's Jacobian-vector products (`_inexact`);
        # here it is Newton with the factorization, which it approximates.
        method = "newton" if opts.method in ("auto", "inexact-newton") else opts.method
        if method in ("fixed-point", "anderson"):
            if self.fixed_map is None:
                raise ConvergenceError(
                    f"{opts.method} iteration needs explicit constraints z = f(z); the block "
                    f"{self.label} has implicit equations: use method='newton'"
                )
            if opts.method == "anderson":
                Z, it = self._anderson(Z, ext, opts)
                what = "Anderson-accelerated fixed-point iteration"
            else:
                Z, it = self._fixed_point(Z, ext, opts)
                what = "fixed-point iteration"
            # One Newton step from the iteration's point: its error is about
            # change·q/(1 − q) for a contraction rate q, the step brings it to rounding.
            R = self._residual(Z, ext)
            step = self._step(Z, R, ext)
        else:
            Z, R, step, it = self._newton(Z, ext, opts)
            what = "Newton's method"
        Z, fact, res = self._certified(Z, R, step, ext, opts, what)
        ctx.blocks[self.index] = (fact, BlockReport(self.names, it, res, fact.condition, method))
        ctx.batches[self.index] = Z.shape[:-1]
        return Z

    def _certified(self, Z, R, step, ext: tuple, opts: SolveOptions, what: str):
        """Z + step, the last Newton step from the point Z where the method converged
        (residual R), once it passes the tests of the module docstring; returns it with
        the factorization of J there and its max residual."""
        if not np.all(np.isfinite(step)):
            raise SingularSystemError(
                f"I − J is singular at the solution of the block {self.label} ({what} "
                "converged to a point where J has no inverse): the forward solution is not "
                "locally unique, so the gradient is not defined"
            )
        Zs = Z + step
        scale = np.maximum(1.0, np.abs(Zs).max(axis=-1))
        Rs = self._residual(Zs, ext)
        fact = _Factorized(self._jacobian_matrix(Zs, ext), self.dense, self.label, rhs=Rs[None])
        correction = -fact.solved[0]
        # How well the rounded equations fix z at all: NOISE ulps of r, through J⁻¹ (a
        # condition beyond SINGULAR is rejected below, whatever the point).
        kappa = np.minimum(np.reshape(fact.conditions, scale.shape), SINGULAR)
        rounding = NOISE * EPS * kappa
        # Forward error: near a solution the Newton correction J⁻¹ r is within tolerance
        # (or within that rounding).
        size = np.abs(correction).max(axis=-1)
        allowed = np.maximum(FORWARD * opts.tol, rounding) * scale
        if not np.all(size <= allowed):  # (NaN fails)
            k = np.unravel_index(np.argmax(np.where(size <= allowed, 0.0, size)), size.shape)
            raise ConvergenceError(
                f"{what} did not find a solution in the block {self.label}: the residual "
                f"({float(np.max(np.abs(Rs))):.3e}) is within tolerance, but the Newton "
                f"correction J⁻¹ r there is {float(size[k]):.3e} (allowed "
                f"{float(allowed[k]):.3e} at |z| = {scale[k]:.3g}): r is small only because "
                "it flattens out there (as on the way to infinity), not near a root"
            )
        fact.check()
        # A regular root: moved by the larger of DISPLACE tolerances and that rounding,
        # along a fixed direction of no particular structure (a structured one may miss
        # the singular direction), the Newton correction takes z back to within LINEAR of
        # the move: J predicts r there. Near a singular root (double root, fold) J is
        # smaller than the curvature over that distance, and where rounding rather than
        # the equations fixes a root (J at the level of the rounding of r's terms) that
        # distance is itself large: both fail.
        reach = np.maximum(DISPLACE * opts.tol, rounding) * scale
        moved = reach[..., None] * self.probe
        displaced = -fact.solve(self._residual(Zs + moved, ext), transposed=False)
        rho = np.abs(displaced + moved - correction).max(axis=-1) / reach
        if not np.all(rho <= LINEAR):
            k = np.unravel_index(np.argmax(np.where(rho <= LINEAR, 0.0, rho)), rho.shape)
            raise SingularSystemError(
                f"I − J is singular at the solution of the block {self.label} to within the "
                f"tolerance: moved by {float(reach[k]):.2e}, the Newton correction misses "
                f"the way back by {float(rho[k]):.0%} of the move (J does not resolve r at "
                "the scale to which the solution is known, as at a double root or a fold), "
                "so the forward solution is not locally unique and the gradient is not "
                "defined"
            )
        return Zs, fact, float(np.max(np.abs(Rs), initial=0.0))

    def _residual(self, Z: np.ndarray, ext: tuple) -> np.ndarray:
        R = np.empty_like(Z)
        self.residual(R, Z, ext)
        return R

    def _jacobian_matrix(self, Z: np.ndarray, ext: tuple):
        D = np.empty((*Z.shape[:-1], len(self.rows)))
        self.jacobian(D, Z, ext)
        if self.dense:
            J = np.zeros((*Z.shape[:-1], self.n, self.n))
            J[..., self.rows, self.cols] = D
            return J
        flat = D.reshape(-1, len(self.rows))
        return [sps.csr_matrix((d, (self.rows, self.cols)), shape=(self.n, self.n)) for d in flat]

    def _step(self, Z: np.ndarray, R: np.ndarray, ext: tuple) -> np.ndarray:
        J = self._jacobian_matrix(Z, ext)
        try:
            if self.dense:
                return -np.linalg.solve(J, R[..., None])[..., 0]
            flat_R = R.reshape(-1, self.n)
            return -np.stack(
                [spla.spsolve(Jb.tocsc(), r) for Jb, r in zip(J, flat_R, strict=True)]
            ).reshape(R.shape)
        except (np.linalg.LinAlgError, RuntimeError):
            return np.full_like(R, np.nan)

    def _newton(self, Z: np.ndarray, ext: tuple, opts: SolveOptions):
        R = self._residual(Z, ext)
        for it in range(opts.maxiter + 1):
            scale = np.maximum(1.0, np.abs(Z).max(axis=-1))
            rnorm = np.abs(R).max(axis=-1)
            if it == opts.maxiter:
                break
            step = self._step(Z, R, ext)
            if not np.all(np.isfinite(step)) and np.all(rnorm <= opts.tol * scale):
                raise SingularSystemError(
                    f"I − J is singular at the solution of the block {self.label}: the "
                    "forward solution is not locally unique, so the gradient is not defined"
                )
            if not np.all(np.isfinite(step)):
                raise ConvergenceError(
                    f"Newton's method stalled at a singular Jacobian in the block "
                    f"{self.label} after {it} iterations (max residual {np.max(rnorm):.3e})"
                )
            if np.all(rnorm <= opts.tol * scale) and np.all(
                np.abs(step).max(axis=-1) <= opts.tol * scale
            ):
                return Z, R, step, it
            # Backtracking line search on ½‖r‖², sample by sample (Armijo).
            t = np.ones(Z.shape[:-1])
            merit = 0.5 * np.sum(R * R, axis=-1)
            for _ in range(40):
                Zt = Z + t[..., None] * step
                Rt = self._residual(Zt, ext)
                new = 0.5 * np.sum(Rt * Rt, axis=-1)
                bad = ~(new <= (1 - 1e-4 * t) * merit)  # NaN counts as bad
                if not np.any(bad):
                    break
                t = np.where(bad, 0.5 * t, t)
            else:  # no step length along J⁻¹ r lowers ½‖r‖² where r is not yet small
                small = rnorm <= opts.tol * scale
                if np.any(bad & ~small):
                    raise ConvergenceError(
                        f"Newton's method stalled in the block {self.label} after {it} "
                        f"iterations: no step lowers the residual (max "
                        f"{float(np.max(rnorm[bad & ~small])):.3e}), a local minimum of |r| "
                        "that is not a root: there may be no solution; try another init="
                    )
                if np.all(small):  # r at rounding level and no step lowers it: as far
                    return Z, R, step, it  # as Newton gets; `_certified` judges the point
            Z, R = Zt, Rt
        raise ConvergenceError(
            f"Newton's method did not converge in the block {self.label}: max residual "
            f"{float(np.max(np.abs(R))):.3e} after {opts.maxiter} iterations (tol {opts.tol}); "
            "try a better init= or more maxiter"
        )

    def _fixed_point(self, Z: np.ndarray, ext: tuple, opts: SolveOptions):
        F = np.empty_like(Z)
        changes = []  # max |f(z) − z| per sample, every iteration
        for it in range(1, opts.maxiter + 1):
            self.fixed_map(F, Z, ext)
            change = np.abs(F - Z).max(axis=-1)
            changes.append(change)
            Z, F = F, Z
            if not np.all(np.isfinite(Z)):
                raise ConvergenceError(
                    f"fixed-point iteration diverged in the block {self.label}: z is not "
                    f"finite after {it} iterations; the map is not contractive: try "
                    "method='newton'"
                )
            goal = opts.tol * np.maximum(1.0, np.abs(Z).max(axis=-1))
            if np.all(change <= goal):
                return Z, it
        raise ConvergenceError(
            f"fixed-point iteration did not converge in the block {self.label}: last change "
            f"{float(np.max(change)):.3e} after {opts.maxiter} iterations (tol {opts.tol}); "
            + _rate_advice(changes, goal)
        )

    def _anderson(self, Z: np.ndarray, ext: tuple, opts: SolveOptions):
        def F(Zt: np.ndarray) -> np.ndarray:  # _anderson keeps the unknowns on axis 0
            out = np.empty(Zt.shape[1:] + Zt.shape[:1])
            self.fixed_map(out, np.moveaxis(Zt, 0, -1), ext)
            return np.moveaxis(out, -1, 0)

        Zt, it, res = _anderson(F, np.moveaxis(Z, -1, 0), opts.tol, opts.maxiter)
        if Zt is None:
            raise ConvergenceError(
                f"Anderson-accelerated fixed-point iteration did not converge in the block "
                f"{self.label}: max |f(z) − z| = {res:.3e} after {opts.maxiter} iterations "
                f"(tol {opts.tol}); the map may not be contractive: try method='newton'"
            )
        return np.ascontiguousarray(np.moveaxis(Zt, 0, -1)), it

    # ----------------------------------------------------------------- adjoint

    def adjoint(self, ctx: Any, g: list) -> np.ndarray:
        """λ of the block's constraints from Jᵀ λ = g (g: seeds of the block's unknowns)."""
        return self._solve(ctx, g, transposed=True)

    def tangent(self, ctx: Any, rhs: list) -> np.ndarray:
        """ż of the block's unknowns from J ż = rhs (forward mode)."""
        return self._solve(ctx, rhs, transposed=False)

    def _solve(self, ctx: Any, parts: list, transposed: bool) -> np.ndarray:
        fact, _ = ctx.blocks[self.index]
        shape = np.broadcast_shapes(ctx.batches[self.index], *(np.shape(p) for p in parts))
        G = np.empty((*shape, self.n))
        for j, gj in enumerate(parts):
            G[..., j] = gj
        return fact.solve(G, transposed)


def _rate_advice(changes: list[np.ndarray], goal: np.ndarray) -> str:
    """What the changes |f(z) − z| of a fixed-point iteration that ran out of iterations
    say: the contraction rate q measured over the second half of the run (per sample,
    the worst reported) and the iterations the run would need in all, k + log(goal /
    change) / log q, or that the changes do not shrink."""
    k = len(changes)
    if k < 4:
        return "too few iterations to measure a contraction rate: raise maxiter"
    first, last = changes[k // 2], changes[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = (last / first) ** (1.0 / (k - 1 - k // 2))
        needed = np.where(last <= goal, k, k + np.log(goal / last) / np.log(rate))
    open_ = last > goal
    if not np.all(rate[open_] < 1):
        worst = float(np.nanmax(np.where(open_, rate, -np.inf)))
        return (
            f"the changes do not shrink (measured rate {worst:.3g} per iteration): the map "
            "is not contractive here; try method='newton'"
        )
    j = np.unravel_index(np.argmax(np.where(open_, needed, -np.inf)), needed.shape)
    total = int(np.ceil(needed[j]))
    return (
        f"it contracts at a measured rate of {float(rate[j]):.3g} per iteration, which, "
        f"if it holds, needs about {total} iterations in all: pass maxiter={total} or use "
        "method='newton' or 'anderson'"
    )


def _anderson(G: Callable, x: np.ndarray, tol: float, maxiter: int, m: int = ANDERSON_MEMORY):
    """Fixed point x = G(x) for x of shape (n, batch…), every sample at once.

    Anderson acceleration (type II, memory ``m``): each sample's next iterate combines
    its last ``m`` map values with the weights that best cancel their residuals (a small
    regularized least-squares problem per sample, solved for the whole batch together).
    While plain steps x ← G(x) cut the residual by PLAIN_RATE or better they are taken
    as they are: mixing costs several passes over the iterates and gains nothing on a
    strongly contractive map.
    Returns (x, iterations, max residual), or (None, iterations, residual) when it did
    not converge. Converged when max |G(x) − x| ≤ tol·max(1, max |x|) in every sample.
    """
    shape = x.shape
    n = shape[0]
    x = x.reshape(n, -1)
    g = G(x.reshape(shape)).reshape(n, -1)
    f = g - x
    # The last m differences of residuals dF_i, the sums dX_i + dF_i of the differences
    # of iterates and residuals (all the update needs), and the Gram products of the dF.
    dF: list[np.ndarray] = []
    dS: list[np.ndarray] = []
    gram: list[list[np.ndarray]] = []  # gram[i][j] = ⟨dF_i, dF_j⟩ per sample
    # Once within tolerance, up to POLISH more iterations while the residual still falls
    # by half or more (to at most 1/1000 of where it was): near rounding level for
    # little cost, as Newton's last step gives. The best iterate is returned.
    best = None
    first = best_start = last = np.inf
    polished = 0
    mixing = False
    for it in itertools.count(1):
        r = np.abs(f).max(axis=0, initial=0.0)
        res = float(np.max(r, initial=0.0))
        if best is None and (not np.isfinite(res) or it > maxiter):
            return None, it - 1, res
        if it == 1:
            first = res
        elif best is None and it >= 12 and 0 < first < np.inf and res > 0:
            # Give up early when the rate so far says maxiter will not be enough (a
            # spectrum that acceleration cannot help, e.g. spread around a circle).
            rate = (res / first) ** (1 / (it - 1))
            if rate >= 1 or np.log(tol / first) / np.log(rate) > 1.5 * maxiter:
                return None, it - 1, res
        if best is not None and (not np.isfinite(res) or it > maxiter + POLISH):
            return best[0].reshape(shape), best[1], best[2]
        if best is not None:  # polishing: keep going while the residual still drops fast
            if res < best[2]:
                best = (g, it, res)
            if res > best_start / 1000 and polished < POLISH and res < 0.5 * last:
                polished += 1
                last = res
            else:
                return best[0].reshape(shape), best[1], best[2]
        elif res <= tol or np.all(r <= tol * np.maximum(1.0, np.abs(x).max(axis=0, initial=0.0))):
            if not POLISH:
                return g.reshape(shape), it, res
            best, best_start, last, polished = (g, it, res), res, res, 0
        x_new = g
        if dF:
            k = len(dF)
            A = np.empty((x.shape[1], k, k))
            for i in range(k):
                for j in range(k):
                    A[:, i, j] = gram[i][j]
            A += (1e-13 * np.trace(A, axis1=1, axis2=2) + 1e-300)[:, None, None] * np.eye(k)
            rhs = np.stack([np.einsum("nb,nb->b", d, f) for d in dF], axis=-1)
            gamma = np.linalg.solve(A, rhs[..., None])[..., 0]  # (nb, k)
            x_new = g - gamma[:, 0] * dS[0]
            for i in range(1, k):
                x_new -= gamma[:, i] * dS[i]
        g_new = G(x_new.reshape(shape)).reshape(n, -1)
        f_new = g_new - x_new
        if not mixing:  # plain steps while they contract fast; mix once they slow down
            # (the first steps from a cold start are judged leniently)
            if it <= 2 or np.abs(f_new).max(initial=0.0) <= PLAIN_RATE * res:
                x, g, f = x_new, g_new, f_new
                continue
            mixing = True
        if len(dF) == m:  # forget the oldest
            del dF[0], dS[0], gram[0]
            for row in gram:
                del row[0]
        d = f_new - f
        dots = [np.einsum("nb,nb->b", old, d) for old in dF]
        for row, v in zip(gram, dots, strict=True):
            row.append(v)
        gram.append([*dots, np.einsum("nb,nb->b", d, d)])
        dF.append(d)
        dS.append((x_new - x) + d)
        x, g, f = x_new, g_new, f_new
    raise AssertionError("unreachable")
