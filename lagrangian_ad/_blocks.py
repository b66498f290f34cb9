"""Solving a cyclic block: Newton (or fixed-point) forward, transposed solve for λ.

A block is a square system r(z_B; z_ext) = 0 in its unknowns z_B, with the residuals
r_e = z_e − f_e(…) of explicit constraints and r_e = c_e(…) of implicit ones. With
J = ∂r/∂z_B (for explicit constraints J = I − ∂f/∂z_B):

* forward: Newton steps J Δ = −r with a backtracking line search on ½‖r‖², per sample,
  from ``init`` or zeros; or fixed-point iteration z ← f(z) for blocks of explicit
  constraints. Converged when ‖r‖∞ and the last step are both within tolerance.
* adjoint: the block's part of ∂L/∂z = 0 is Jᵀ λ_B = g_B, where g_B collects the output
  seed and the contributions of the constraints downstream. J at the solution is
  factorized by LU (dense: LAPACK's, stacked over the batch; sparse: one SuperLU per
  sample), and the adjoint is the transposed solve with it.

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

from ._errors import ConvergenceError, SingularSystemError

__all__ = ["BlockReport", "BlockSolver", "SolveOptions"]

DENSE_MAX = 100  # blocks up to this many unknowns use stacked dense linear algebra
SINGULAR = 1e13  # condition (or ‖J⁻¹‖) beyond which the gradient is not trusted
ANDERSON_MEMORY = 5  # iterates combined by Anderson acceleration
POLISH = 3  # extra Anderson iterations past the tolerance, while they still gain
PLAIN_RATE = 0.3  # plain fixed-point steps while each cuts the residual at least this much
METHODS = ("auto", "newton", "inexact-newton", "fixed-point", "anderson")


@dataclass(frozen=True)
class SolveOptions:
    """Options of the forward solve of cyclic blocks.

    method : "auto", "newton", "inexact-newton", "fixed-point" or "anderson"
        "auto" is Newton, except that the grouped engine (`_grouped`) solves a block of
        more than DENSE_MAX explicit constraints z = f(z) by inexact Newton (Newton
        steps found by iterating on Jacobian-vector products: no n × n matrix per
        sample), falling back to Newton when that does not converge. "inexact-newton"
        and "anderson" need the grouped engine; elsewhere "inexact-newton" is Newton.
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

    ``method`` is the one that solved it ("newton", "inexact-newton", "fixed-point" or
    "anderson"); with "auto", a block inexact Newton could not solve reports "newton".
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
    """

    def __init__(self, J: np.ndarray | list, dense: bool, names: str):
        self.dense = dense
        if dense:
            self.J = np.asarray(J)
            try:
                inv = np.linalg.solve(self.J, np.broadcast_to(np.eye(J.shape[-1]), J.shape))
            except np.linalg.LinAlgError:
                raise SingularSystemError(
                    f"I − J is singular at the solution of the block {names}: "
                    "the gradient is not defined there"
                ) from None
            norm = np.abs(J).sum(axis=-2).max(axis=-1)
            inv_norm = np.abs(inv).sum(axis=-2).max(axis=-1)
            self.condition = float(np.max(norm * inv_norm))
            self.inv_norm = float(np.max(inv_norm))
        else:
            self.lus = []
            cond, inv_norm = 0.0, 0.0
            for Jb in J:
                try:
                    lu = spla.splu(Jb.tocsc())
                except RuntimeError:
                    raise SingularSystemError(
                        f"I − J is singular at the solution of the block {names}: "
                        "the gradient is not defined there"
                    ) from None
                n = Jb.shape[0]
                op = spla.LinearOperator(
                    (n, n), matvec=lu.solve, rmatvec=lambda v, lu=lu: lu.solve(v, trans="T")
                )
                est = spla.onenormest(op)
                inv_norm = max(inv_norm, est)
                cond = max(cond, est * spla.norm(Jb, 1))
                self.lus.append(lu)
            self.condition, self.inv_norm = float(cond), float(inv_norm)
        if not np.isfinite(self.condition) or max(self.condition, self.inv_norm) > SINGULAR:
            raise SingularSystemError(
                f"I − J is singular at the solution of the block {names} (condition "
                f"estimate {self.condition:.2e}, ‖J⁻¹‖ ≈ {self.inv_norm:.2e}): the forward "
                "solution is not locally unique, so the gradient is not defined there"
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
        # Inexact Newton needs the grouped engine's Jacobian-vector products; here it is
        # Newton with the factorization, which it approximates.
        method = "newton" if opts.method in ("auto", "inexact-newton") else opts.method
        if method in ("fixed-point", "anderson"):
            if self.fixed_map is None:
                raise ConvergenceError(
                    f"{opts.method} iteration needs explicit constraints z = f(z); the block "
                    f"{self.label} has implicit equations: use method='newton'"
                )
            if opts.method == "anderson":
                Z, it, res = self._anderson(Z, ext, opts)
            else:
                Z, it, res = self._fixed_point(Z, ext, opts)
        else:
            Z, it, res = self._newton(Z, ext, opts)
        fact = _Factorized(self._jacobian_matrix(Z, ext), self.dense, self.label)
        ctx.blocks[self.index] = (fact, BlockReport(self.names, it, res, fact.condition, method))
        ctx.batches[self.index] = Z.shape[:-1]
        return Z

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
                return Z + step, it, float(np.max(np.abs(self._residual(Z + step, ext))))
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
            Z, R = Zt, Rt
        raise ConvergenceError(
            f"Newton's method did not converge in the block {self.label}: max residual "
            f"{float(np.max(np.abs(R))):.3e} after {opts.maxiter} iterations (tol {opts.tol}); "
            "try a better init= or more maxiter"
        )

    def _fixed_point(self, Z: np.ndarray, ext: tuple, opts: SolveOptions):
        F = np.empty_like(Z)
        for it in range(1, opts.maxiter + 1):
            self.fixed_map(F, Z, ext)
            change = np.abs(F - Z).max(axis=-1)
            Z, F = F, Z
            if not np.all(np.isfinite(Z)):
                break
            if np.all(change <= opts.tol * np.maximum(1.0, np.abs(Z).max(axis=-1))):
                # The iteration's error is about change·q/(1 − q) for a contraction rate q;
                # one Newton step from here brings it to rounding level.
                R = self._residual(Z, ext)
                step = self._step(Z, R, ext)
                if np.all(np.isfinite(step)):
                    Z = Z + step
                return Z, it, float(np.max(np.abs(self._residual(Z, ext))))
        raise ConvergenceError(
            f"fixed-point iteration did not converge in the block {self.label}: last change "
            f"{float(np.max(change)):.3e} after {opts.maxiter} iterations (tol {opts.tol}); "
            "the map may not be contractive: try method='newton'"
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
        Z = np.ascontiguousarray(np.moveaxis(Zt, 0, -1))
        return Z, it, float(np.max(np.abs(self._residual(Z, ext)), initial=0.0))

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
