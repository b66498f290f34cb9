"""A primal-dual interior-point method for smooth nonlinear programs.

The problem, over x ∈ Rⁿ,

    minimize f(x)   subject to   c_i(x) = 0  (i ∈ E),   c_i(x) ≤ 0  (i ∈ I),

is solved as in IPOPT (Wächter & Biegler, Math. Program. 106, 2006) with slacks
s > 0 for the inequalities, c_I(x) + s = 0, and the barrier problem

    minimize f(x) − μ Σ_i log s_i   subject to   c_E(x) = 0,  c_I(x) + s = 0

for a decreasing sequence of barrier parameters μ (monotone Fiacco–McCormick:
μ ← max(tol/10, min(κ_μ μ, μ^θ_μ)) once the barrier problem's error is below κ_ε μ).
With multipliers y for the equalities and z ≥ 0 for the inequalities (the
multiplier of c_I + s = 0 equals the slack's bound multiplier: both are z), the
primal-dual equations are

    ∇f + J_Eᵀ y + J_Iᵀ z = 0,   c_E = 0,   c_I + s = 0,   S z = μ e,

and the Newton step, with Δs eliminated (Δs = μ/z − s − (s/z) Δz), solves the
symmetric system

    [ W + δ_w I   J_Eᵀ       J_Iᵀ            ] [ Δx ]     [ ∇f + J_Eᵀ y + J_Iᵀ z ]
    [ J_E         −δ_c I     0               ] [ Δy ] = − [ c_E                   ]
    [ J_I         0          −S Z⁻¹ − δ_c I  ] [ Δz ]     [ c_I + μ/z             ]

with W = ∇²(f + yᵀc_E + zᵀc_I) exact. Inertia correction: the step is a descent step
for the barrier problem when the inertia of the matrix is (n, |E| + |I|, 0), and δ_w
grows (IPOPT's rule: 1e-4 first, then ×8, starting from a third of the last δ_w) until
it is; δ_c = 1e-8 μ^¼ when the matrix is singular (rank-deficient Jacobian).

The linear solver (``linear_solver``) is one of two objects with ``factor`` (returns
the inertia) and ``solve``:

* `DenseKKT`: the matrix as one array, LAPACK's Bunch–Kaufman LDLᵀ
  (`scipy.linalg.ldl`), whose 1×1 and 2×2 blocks give the inertia. For the small
  problems (the Hock–Schittkowski suite: n + m ≤ 30) it is the fastest.
* `SparseKKT`: the matrix assembled in ``scipy.sparse`` and factorized by SuperLU as
  an LDLᵀ with 1×1 pivots in a symmetric order of our choosing, the diagonal blocks
  (slacks, then equalities, regularized by 1e-8) eliminated first, so that the pivots
  left are those of the condensed Hessian W + δ_w I + J_Iᵀ Σ J_I + J_Eᵀ J_E / δ_c, and
  their signs are the inertia (Sylvester). How, and why not the alternatives, is in
  its docstring. With batched data the constraints number one per sample and the
  Jacobian is sparse (a row reads the shared parameters and its own sample's entries);
  so is W when the optimized inputs carry the batch axes (block diagonal): the
  factorization costs about O(m n_θ² + n_θ³) instead of the dense O((n + m)³).

``"auto"`` takes the sparse one when n + m > ``sparse_threshold`` (100), measured in
``benchmarks/KKT.md``: on a small network with a bound at every data point the dense
one is faster at a KKT dimension of 60 and the sparse one 2× faster at 110, 18× at 410.

Why the reduced space, with a sparse system, and not the lifted one: the definitions
z_i = f_i could be equality constraints of the same KKT system (every sample's z as
unknowns, as ``newton-kkt`` does), which is sparser still, but then every iterate
violates the program and the line search judges points the program never computes,
and the system grows with every intermediate of every sample. Eliminating the
definitions by the forward pass (exact at every iterate) keeps the unknowns to the
optimized inputs and the constraints to those of `Program.subject_to`; the
per-sample structure that remains is what the sparse factorization exploits.

Globalization: an ℓ1 exact-penalty merit function

    φ_ν(x, s) = f(x) − μ Σ log s + ν (‖c_E(x)‖₁ + ‖c_I(x) + s‖₁),

with ν raised (never lowered) so that the step is a descent direction (Nocedal &
Wright, 19.3, eq. 18.36), backtracking from the largest step that keeps s and z at a
fraction τ = max(0.99, 1 − μ) of their distance to the boundary; one second-order
correction for the constraints is tried when the full step is rejected; then the
slacks are reset to max(s, −c_I(x)), which lowers φ_ν. The bound multipliers are kept
within [μ/(κ_Σ s), κ_Σ μ/s] (κ_Σ = 1e10), as in IPOPT.

When the line search fails: at a feasible point (violation ≤ ``constr_viol_tol``),
where a restoration of feasibility has nothing to do, the filter is reset and the step
recomputed with δ_w raised (max(δ_w0, 100 δ_w), up to ``feasible_retries`` times): a
shorter step, nearer the steepest descent of the barrier function, along which a small
enough step decreases it. Otherwise, and if that fails too, the feasibility
restoration: Levenberg–Marquardt steps on ½‖(c_E, max(c_I, 0))‖² until the filter
accepts a point that lowers θ by a tenth (or the violation is stationary: infeasible).

Scaling, as IPOPT's gradient-based scaling: f and each c_i are multiplied by
min(1, 100/‖∇·(x0)‖∞); results are unscaled.

Stopping: converged when the scaled optimality error max(‖∇ℒ‖∞/s_d, θ, ‖Sz‖∞/s_c) ≤
``tol`` (θ the constraint violation, s_d, s_c IPOPT's multiplier scalings), and the
unscaled constraint violation is ≤ ``constr_viol_tol``. Infeasible: the violation θ
stays above ``constr_viol_tol`` while the iterates are stationary for the violation
itself (‖∇(½‖c_E‖² + ½‖max(c_I, 0)‖²)‖∞ ≤ ``infeasibility_tol`` · max(1, θ)) over
``infeasible_iterations`` iterations, or the line search fails there. Unbounded: a
(nearly) feasible iterate with f below −``unbounded`` or with ‖x‖∞ above it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sps
import scipy.sparse.csgraph
import scipy.sparse.linalg as spla

from ..core._errors import ProgramError

__all__ = ["IP_OPTIONS", "IPResult", "interior_point"]

CONVERGED, MAXITER, STALLED, STOPPED, FAILED, INFEASIBLE, UNBOUNDED = range(7)

IP_OPTIONS = {
    "maxiter": 3000,
    "tol": 1e-8,
    "constr_viol_tol": 1e-8,
    "mu_init": 0.1,
    "kappa_mu": 0.2,
    "theta_mu": 1.5,
    "kappa_eps": 10.0,
    "tau_min": 0.99,
    "bound_push": 1e-2,
    "eta": 1e-8,
    "max_backtracks": 40,
    "soc": True,
    "scaling": True,
    "delta_w0": 1e-4,
    "delta_w_max": 1e40,
    "unbounded": 1e20,
    "infeasibility_tol": 1e-8,
    "infeasible_iterations": 5,
    "restoration_maxiter": 200,
    "feasible_retries": 3,
    "linear_solver": "auto",
    "sparse_threshold": 100,
}

LINEAR_SOLVERS = ("auto", "dense", "sparse")


@dataclass
class IPResult:
    """What `interior_point` returns (unscaled).

    ``y`` are the multipliers of every constraint c_i (≥ 0 for the inequalities), with
    ∇f + Σ_i y_i ∇c_i = 0 at a solution; ``kkt`` holds the final stationarity,
    feasibility and complementarity residuals (max norms).
    """

    x: np.ndarray
    f: float
    c: np.ndarray
    y: np.ndarray
    status: int
    message: str
    nit: int
    nfev: int
    njev: int
    nhev: int
    kkt: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)


def _row_max(J) -> np.ndarray:
    """max_j |J_ij| per row, dense or sparse J."""
    if sps.issparse(J):
        return np.asarray(abs(J).max(axis=1).todense()).ravel() if J.shape[0] else np.zeros(0)
    return np.max(np.abs(J), axis=1, initial=0.0) if J.shape[0] else np.zeros(0)


def _finite(J) -> bool:
    return bool(np.all(np.isfinite(J.data if sps.issparse(J) else J)))


class _Scaled:
    """f and c multiplied by the gradient-based scale factors; evaluations counted.

    With ``sparse``, J and W come back as CSR matrices (converted if the problem gives
    arrays); otherwise as arrays.
    """

    def __init__(self, fun, jac, hess, is_eq, x0, scaling, sparse=False):
        self.fun_, self.jac_, self.hess_ = fun, jac, hess
        self.sparse = sparse
        self.nfev = self.njev = self.nhev = 0
        _, g, c, J = self.raw_jac(x0)
        m = len(c)
        self.sf = min(1.0, 100.0 / max(np.max(np.abs(g), initial=0.0), 1e-300))
        rows = _row_max(J) if m else np.zeros(0)
        self.sc = np.minimum(1.0, 100.0 / np.maximum(rows, 1e-300))
        if not scaling or not np.isfinite(self.sf):
            self.sf, self.sc = 1.0, np.ones(m)
        self.is_eq = is_eq

    def raw_jac(self, x):
        self.njev += 1
        f, g, c, J = self.jac_(x)
        if self.sparse:
            J = sps.csr_matrix(J)
        elif sps.issparse(J):
            J = J.toarray()
        return f, g, c, J

    def fun(self, x):
        self.nfev += 1
        f, c = self.fun_(x)
        return self.sf * f, self.sc * c

    def jac(self, x):
        f, g, c, J = self.raw_jac(x)
        J = (sps.diags(self.sc) @ J).tocsr() if self.sparse else self.sc[:, None] * J
        return self.sf * f, self.sf * g, self.sc * c, J

    def hess(self, x, y):
        self.nhev += 1
        W = self.hess_(x, self.sf, self.sc * y)
        if self.sparse:
            return sps.csr_matrix(W)
        return W.toarray() if sps.issparse(W) else W


def _inertia(K: np.ndarray) -> tuple[int, int, int, Any]:
    """(positive, negative, zero) eigenvalues of symmetric K and its factorization.

    K is first equilibrated, S K S with S = diag(1/√max_j |K_ij|): by Sylvester's law of
    inertia that changes no sign, and it makes "zero" a relative notion per row (the
    slack block S Z⁻¹ spans many orders of magnitude). Then LDLᵀ (Bunch–Kaufman); D has
    1×1 and 2×2 blocks, whose eigenvalues are counted.
    """
    rows = np.max(np.abs(K), axis=1, initial=0.0)
    S = 1 / np.sqrt(np.where(rows > 0, rows, 1.0))
    lu, d, perm = scipy.linalg.ldl(S[:, None] * K * S[None, :], lower=True)
    eig = np.linalg.eigvalsh(d) if d.size else np.zeros(0)
    tiny = d.shape[0] * np.finfo(float).eps * max(1.0, float(np.max(np.abs(eig), initial=0.0)))
    return (
        int(np.sum(eig > tiny)),
        int(np.sum(eig < -tiny)),
        int(np.sum(np.abs(eig) <= tiny)),
        (lu, d, perm, S),
    )


def _ldl_solve(factors, b: np.ndarray) -> np.ndarray:
    """K⁻¹ b = S (S K S)⁻¹ S b from the factors of `_inertia`."""
    lu, d, perm, S = factors
    L = lu[perm]
    w = scipy.linalg.solve_triangular(L, (S * b)[perm], lower=True, unit_diagonal=True)
    w = scipy.linalg.solve(d, w, assume_a="sym")
    v = scipy.linalg.solve_triangular(L.T, w, lower=False, unit_diagonal=True)
    out = np.empty_like(v)
    out[perm] = v
    return S * out


class DenseKKT:
    """The KKT matrix of the module docstring as one dense array, LDLᵀ (Bunch–Kaufman).

    ``factor`` builds K (rows x, then E, then I) and returns its inertia; ``solve``
    applies K⁻¹ with the last factorization.
    """

    name = "dense"

    def factor(self, W, J_E, J_I, sigma_inv, delta_w, delta_c) -> tuple[int, int, int]:
        n, mE, mI = W.shape[0], J_E.shape[0], J_I.shape[0]
        K = np.zeros((n + mE + mI, n + mE + mI))
        K[:n, :n] = W + delta_w * np.eye(n)
        K[n : n + mE, :n] = J_E
        K[n + mE :, :n] = J_I
        K[:n, n:] = K[n:, :n].T
        K[n : n + mE, n : n + mE] = -delta_c * np.eye(mE)
        K[n + mE :, n + mE :] = -np.diag(sigma_inv + delta_c)
        pos, neg, zero, self._factors = _inertia(K)
        return pos, neg, zero

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        return _ldl_solve(self._factors, rhs)


class SparseKKT:
    """The same KKT matrix as `DenseKKT`, assembled sparse (``scipy.sparse``) and
    factorized by SuperLU as an LDLᵀ whose pivots give the inertia.

    SciPy has no sparse symmetric-indefinite factorization that reports its inertia
    (IPOPT gets it from MA27/MA57/MUMPS). But an LU without row interchanges of a
    symmetric matrix taken in a symmetric order P K Pᵀ is an LDLᵀ (U = D Lᵀ), so the
    pivots diag(U) are D and, by Sylvester's law of inertia, count the signs of K's
    eigenvalues. SuperLU computes exactly that when it is given the order
    (``permc_spec="NATURAL"`` on the permuted matrix) with ``diag_pivot_thresh=0`` and
    ``SymmetricMode``; that its row order stayed the identity is checked.

    With 1×1 pivots only, the order must not meet a zero pivot where K is nonsingular
    (a singular W with equality constraints, HS28). So the diagonal blocks go first:
    the inequalities, −(S Z⁻¹ + δ_c), and the equalities, −δ_c with δ_c raised to
    ``reg`` (relative, after equilibration) in the matrix that is factorized. Their
    pivots are exact and negative; what is left is the condensed primal-dual Hessian

        A = W + δ_w I + J_Iᵀ (S Z⁻¹ + δ_c)⁻¹ J_I + J_Eᵀ J_E / δ_c     (n × n),

    taken in reverse Cuthill–McKee order of its pattern, whose pivots are all positive
    iff A ≻ 0, i.e. (for δ_c small: Finsler's lemma) iff W + δ_w I + J_Iᵀ Σ J_I is
    positive definite on the null space of J_E — the inertia (n, m, 0) that IPOPT asks
    for. The regularized factorization then serves as a preconditioner: the step is
    refined (up to ``refine`` steps) against the matrix the caller asked for, and a
    solve whose residual stays above ``residual_tol`` is reported (`accurate`) so that
    the caller regularizes more, as IPOPT does when its solver is inaccurate. The
    matrix is equilibrated (S K S, as `_inertia`) first; "zero" pivots are relative.

    Not chosen: SuperLU with its own threshold pivoting (``spsolve``) solves K but its
    row interchanges destroy the symmetry, so its pivots say nothing of the inertia; a
    sparse Cholesky of the condensed matrix is the same test, but SciPy has none; an
    inertia-free test (IPOPT's ``neg_curv_test_tol``, Chiang & Zavala 2016: accept δ_w
    when the step has positive curvature) is a heuristic where this is exact; the
    equalities last (x pivots first) meets zero pivots whenever W is singular, even
    where K is not (HS28). The cost of eliminating the diagonal blocks first is fill:
    the condensed x block is dense in the shared parameters, which is the structure
    of batched data anyway (a per-sample constraint reads every parameter).
    """

    name = "sparse"

    def __init__(self, reg: float = 1e-8, refine: int = 5, residual_tol: float = 1e-10):
        self.reg, self.refine, self.residual_tol = reg, refine, residual_tol
        self._order: np.ndarray | None = None
        self._key: tuple | None = None

    def _ordering(self, W, J_E, J_I, n: int, mE: int, mI: int) -> np.ndarray:
        pattern = abs(W) + abs(J_I).T @ abs(J_I) + abs(J_E).T @ abs(J_E)
        pattern = sps.csr_matrix((pattern + sps.identity(n)) != 0, dtype=np.int8)
        rcm = scipy.sparse.csgraph.reverse_cuthill_mckee(pattern, symmetric_mode=True)
        return np.concatenate([n + mE + np.arange(mI), n + np.arange(mE), rcm])

    def factor(self, W, J_E, J_I, sigma_inv, delta_w, delta_c) -> tuple[int, int, int]:
        W, J_E, J_I = (sps.csr_matrix(a) for a in (W, J_E, J_I))
        n, mE, mI = W.shape[0], J_E.shape[0], J_I.shape[0]
        N = n + mE + mI
        key = (n, mE, mI, W.nnz, J_E.nnz, J_I.nnz)
        if self._order is None or key != self._key:  # the pattern is the problem's
            self._order, self._key = self._ordering(W, J_E, J_I, n, mE, mI), key
        K = sps.bmat(
            [
                [W + delta_w * sps.identity(n), J_E.T, J_I.T],
                [J_E, -delta_c * sps.identity(mE), None],
                [J_I, None, sps.diags(-(sigma_inv + delta_c))],
            ],
            format="csr",
        )
        rows = _row_max(K)
        S = 1 / np.sqrt(np.where(rows > 0, rows, 1.0))
        Ks = (sps.diags(S) @ K @ sps.diags(S)).tolil()
        for i in range(n, n + mE):  # −δ_c raised to −reg: the equality pivots
            Ks[i, i] = min(Ks[i, i], -self.reg)
        p = self._order
        Ks = Ks.tocsr()[p][:, p].tocsc()
        self._K, self._S, self._lu = K, S, None
        try:
            lu = spla.splu(
                Ks, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
            )
        except RuntimeError:  # exactly singular
            return 0, 0, N
        d = lu.U.diagonal()
        if not (np.array_equal(lu.perm_r, np.arange(N)) and np.all(np.isfinite(d))):
            return 0, 0, N
        self._lu = lu
        # the diagonal blocks' pivots are their (negative) entries; the condensed x
        # block's are zero relative to its largest
        dx = d[mE + mI :]
        tiny = N * np.finfo(float).eps * max(1.0, float(np.max(np.abs(dx), initial=0.0)))
        neg = int(np.sum(d[: mE + mI] < 0)) + int(np.sum(dx < -tiny))
        return int(np.sum(dx > tiny)), neg, int(np.sum(np.abs(dx) <= tiny))

    def _apply(self, b: np.ndarray) -> np.ndarray:
        p, S = self._order, self._S
        out = np.empty_like(b)
        out[p] = self._lu.solve((S * b)[p])
        return S * out

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        d = self._apply(rhs)
        scale = np.max(np.abs(rhs), initial=0.0) + 1e-300
        for _ in range(self.refine):
            r = rhs - self._K @ d
            if not np.max(np.abs(r), initial=0.0) > self.residual_tol * scale:
                break
            d = d + self._apply(r)
        return d

    def accurate(self, rhs: np.ndarray, d: np.ndarray) -> bool:
        """Whether K d = rhs to ``residual_tol`` relative to ‖rhs‖∞ (K unregularized)."""
        r = rhs - self._K @ d
        scale = np.max(np.abs(rhs), initial=0.0) + 1e-300
        return bool(np.max(np.abs(r), initial=0.0) <= 1e3 * self.residual_tol * scale)


GAMMA_THETA, GAMMA_PHI = 1e-5, 1e-8  # the filter's margins
S_THETA, S_PHI, DELTA = 1.1, 2.3, 1.0  # the switching condition
GAMMA_ALPHA = 0.05


def _alpha_min(theta: float, gphi_d: float, theta_min: float) -> float:
    """The smallest step the filter line search tries (IPOPT's α_min, eq. 23)."""
    if gphi_d < 0 and theta <= theta_min:
        return GAMMA_ALPHA * min(
            GAMMA_THETA, GAMMA_PHI * theta / -gphi_d, DELTA * theta**S_THETA / (-gphi_d) ** S_PHI
        )
    if gphi_d < 0:
        return GAMMA_ALPHA * min(GAMMA_THETA, GAMMA_PHI * theta / -gphi_d)
    return GAMMA_ALPHA * GAMMA_THETA


def _second_order_corrections(
    P, factors, x, s, z, yd, c, c_t, s_t, rd, mu, tau, alpha, n, mE, eq, ineq, acceptable, infeas
):
    """Up to four second-order corrections of a rejected full step (IPOPT's A-5.5–5.10).

    The same factorization, with the constraint part of the right-hand side replaced by
    c_soc = α c(x) + c(x + αΔx) (c = (c_E, c_I + s)), accumulated while the violation
    keeps falling by the factor 0.99. Returns (x, s, f, c, f_type) or None.
    """
    sigma_inv = s / z
    c_soc = np.concatenate([alpha * c[eq] + c_t[eq], alpha * (c[ineq] + s) + c_t[ineq] + s_t])
    theta_old = infeas(c_t, s_t)
    for _ in range(4):
        rhs = -np.concatenate([rd, c_soc[:mE], c_soc[mE:] + mu / z - sigma_inv * yd])
        d = factors.solve(rhs)
        if not np.all(np.isfinite(d)):
            return None
        dx, dyd = d[:n], d[n + mE :]
        ds = mu / z - sigma_inv * (yd + dyd)
        a = _fraction_to_boundary(s, ds, tau) if s.size else 1.0
        x_s, s_s = x + a * dx, s + a * ds
        with np.errstate(all="ignore"):
            f_s, c_s = P.fun(x_s)
        verdict = acceptable(f_s, c_s, s_s)
        if verdict is not None:
            return x_s, s_s, f_s, c_s, verdict
        theta_s = infeas(c_s, s_s)
        if not np.isfinite(theta_s) or theta_s > 0.99 * theta_old:
            return None
        theta_old = theta_s
        c_soc = a * c_soc + np.concatenate([c_s[eq], c_s[ineq] + s_s])
    return None


def _fraction_to_boundary(v: np.ndarray, dv: np.ndarray, tau: float) -> float:
    """Largest α ∈ (0, 1] with v + α dv ≥ (1 − τ) v (v > 0)."""
    neg = dv < 0
    if not np.any(neg):
        return 1.0
    return float(min(1.0, np.min(-tau * v[neg] / dv[neg])))


def interior_point(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    jac: Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray, np.ndarray]],
    hess: Callable[[np.ndarray, float, np.ndarray], np.ndarray],
    x0: np.ndarray,
    is_eq: np.ndarray,
    options: dict[str, Any],
    record: Callable[[dict[str, Any], np.ndarray], bool] | None = None,
    is_bound: np.ndarray | None = None,
    scale_at: np.ndarray | None = None,
) -> IPResult:
    """Minimize f(x) subject to c_E(x) = 0 and c_I(x) ≤ 0 (see the module docstring).

    Parameters
    ----------
    fun : callable
        ``fun(x) -> (f, c)``: the objective and the m constraint values.
    jac : callable
        ``jac(x) -> (f, ∇f, c, J)`` with J = ∂c/∂x of shape (m, n).
    hess : callable
        ``hess(x, σ, y) -> W``: the (n, n) Hessian of σ f + Σ_i y_i c_i.
    x0 : ndarray
        The start (need not be feasible).
    is_eq : ndarray of bool
        Which of the m constraints are equalities (the others are c_i ≤ 0).
    options : dict
        The entries of `IP_OPTIONS`.
    record : callable, optional
        ``record(entry, x) -> stop``, called after every iteration.
    is_bound : ndarray of bool, optional
        Which inequalities are bounds x_k ≤ u or x_k ≥ l: their multipliers start at 1
        (the others by least squares).
    scale_at : ndarray, optional
        Where the gradient-based scale factors are computed (default x0; IPOPT uses the
        user's start before it is pushed inside the bounds).

    Returns
    -------
    IPResult
    """
    o = {**IP_OPTIONS, **options}
    x = np.array(x0, dtype=np.float64)
    n = x.size
    is_eq = np.asarray(is_eq, dtype=bool)
    eq, ineq = np.flatnonzero(is_eq), np.flatnonzero(~is_eq)
    mE, mI = eq.size, ineq.size
    if o["linear_solver"] not in LINEAR_SOLVERS:
        raise ProgramError(
            f"option 'linear_solver' must be one of {', '.join(LINEAR_SOLVERS)}, "
            f"not {o['linear_solver']!r}"
        )
    sparse = o["linear_solver"] == "sparse" or (
        o["linear_solver"] == "auto" and n + mE + mI > int(o["sparse_threshold"])
    )
    kkt_solver = SparseKKT() if sparse else DenseKKT()
    P = _Scaled(
        fun, jac, hess, is_eq, x if scale_at is None else scale_at, o["scaling"], sparse=sparse
    )
    f, g, c, J = P.jac(x)
    mu = float(o["mu_init"])
    s = np.maximum(-c[ineq], o["bound_push"] * np.maximum(1.0, np.abs(c[ineq])))
    z = np.ones(mI)  # the slacks' bound multipliers
    y = np.zeros(mE + mI)  # the constraints' multipliers (y_c, y_d of IPOPT)
    bound_rows = np.zeros(mE + mI, dtype=bool) if is_bound is None else np.asarray(is_bound)
    y[bound_rows] = 1.0  # bounds: y = z = 1 (IPOPT's bound_mult_init_val)
    general = np.flatnonzero(~bound_rows)
    finite_start = _finite(J) and bool(np.all(np.isfinite(g)))
    if general.size and finite_start:  # least squares from ∇f + Jᵀy = 0, dropped if
        # large (as IPOPT); a start that is not finite fails at the first iteration
        r = g + J[bound_rows].T @ y[bound_rows]
        if sparse:
            A = J[general].T
            y_ls = spla.lsmr(A, -r, atol=1e-14, btol=1e-14, maxiter=10 * sum(A.shape))[0]
        else:
            y_ls = np.linalg.lstsq(J[general].T, -r, rcond=None)[0]
        if np.max(np.abs(y_ls), initial=0.0) <= 1e3:
            y[general] = y_ls
    delta_last = 0.0
    history: list[dict[str, Any]] = []
    status, message = MAXITER, "Maximum number of iterations reached"
    stationary_infeasible = 0
    nit = 0
    s_max = 100.0

    def violation(c_: np.ndarray) -> float:
        """The unscaled violation max(|c_E|, max(c_I, 0))."""
        raw = c_ / P.sc
        return float(
            max(
                np.max(np.abs(raw[eq]), initial=0.0),
                np.max(np.maximum(raw[ineq], 0.0), initial=0.0),
            )
        )

    def errors(g_, c_, J_, y_, z_, s_, mu_):
        m_all = mE + 2 * mI
        s_d = max(s_max, (np.sum(np.abs(y_)) + np.sum(np.abs(z_))) / max(m_all, 1)) / s_max
        s_c = max(s_max, np.sum(np.abs(z_)) / max(mI, 1)) / s_max
        stat = float(
            max(
                np.max(np.abs(g_ + J_.T @ y_), initial=0.0),  # ∂ℒ/∂x
                np.max(np.abs(y_[ineq] - z_), initial=0.0),  # ∂ℒ/∂s
            )
        )
        feas = float(
            max(
                np.max(np.abs(c_[eq]), initial=0.0),
                np.max(np.abs(c_[ineq] + s_), initial=0.0),
            )
        )
        comp = float(np.max(np.abs(s_ * z_ - mu_), initial=0.0))
        return max(stat / s_d, feas, comp / s_c), stat, feas, comp

    def infeas(c_: np.ndarray, s_: np.ndarray) -> float:
        """θ = ‖c_E‖₁ + ‖c_I + s‖₁ (scaled)."""
        return float(np.sum(np.abs(c_[eq])) + np.sum(np.abs(c_[ineq] + s_)))

    def barrier(f_: float, s_: np.ndarray) -> float:
        if np.any(s_ <= 0) or not np.isfinite(f_):
            return np.inf
        return float(f_ - mu * np.sum(np.log(s_))) if mI else float(f_)

    filter_: list[tuple[float, float]] = []
    theta_start = infeas(c, s)
    theta_max = 1e4 * max(1.0, theta_start)
    theta_min = 1e-4 * max(1.0, theta_start)

    def acceptable(f_t, c_t, s_t, theta0, phi0, gphi_d, alpha) -> bool | None:
        """None if the filter rejects the trial point; else whether it is an f-type step
        (Armijo on the barrier objective, the filter unchanged)."""
        theta_t, phi_t = infeas(c_t, s_t), barrier(f_t, s_t)
        if not (np.isfinite(theta_t) and np.isfinite(phi_t)) or theta_t >= theta_max:
            return None
        if any(theta_t >= th and phi_t >= ph for th, ph in filter_):
            return None
        slack = 10 * np.finfo(float).eps * max(1.0, abs(phi0))
        switching = gphi_d < 0 and alpha * (-gphi_d) ** S_PHI > DELTA * theta0**S_THETA
        if theta0 <= theta_min and switching:
            return True if phi_t <= phi0 + o["eta"] * alpha * gphi_d + slack else None
        if theta_t <= (1 - GAMMA_THETA) * theta0 or phi_t <= phi0 - GAMMA_PHI * theta0 + slack:
            return False
        return None

    nit_restoration = 0

    def log(entry: dict[str, Any], x_: np.ndarray) -> bool:
        history.append(entry)
        return record is not None and bool(record(entry, x_))

    def restore(x_r: np.ndarray, theta_r: float, k0: int):
        """(x, s, f, c, iterations) of an acceptable point, or (status, message, x,
        iterations) where it failed."""
        lam = 1e-4
        x_, its = x_r.copy(), 0
        _, _, c_, J_ = P.jac(x_)
        while its < int(o["restoration_maxiter"]):
            active = c_[ineq] > 0
            r = np.concatenate([c_[eq], np.where(active, c_[ineq], 0.0)])
            if sparse:
                Jr = sps.vstack([J_[eq], sps.diags(active.astype(float)) @ J_[ineq]]).tocsr()
                JtJ = (Jr.T @ Jr).tocsc()
            else:
                Jr = np.vstack([J_[eq], J_[ineq] * active[:, None]])
                JtJ = Jr.T @ Jr
            grad = Jr.T @ r
            size = float(r @ r) / 2
            if np.max(np.abs(grad), initial=0.0) <= o["infeasibility_tol"] * max(1.0, size):
                theta = violation(c_)
                if theta > o["constr_viol_tol"]:
                    return (
                        INFEASIBLE,
                        (
                            f"Infeasible: the constraint violation stays at {theta:.3g} at a "
                            "point where it is stationary (a local minimizer of the violation)"
                        ),
                        x_,
                        its,
                    )
                break
            while lam < 1e20:
                if sparse:
                    d = spla.spsolve((JtJ + lam * sps.identity(n)).tocsc(), -grad)
                else:
                    d = np.linalg.solve(JtJ + lam * np.eye(n), -grad)
                with np.errstate(all="ignore"):
                    _, c_t = P.fun(x_ + d)
                act_t = c_t[ineq] > 0
                r_t = np.concatenate([c_t[eq], np.where(act_t, c_t[ineq], 0.0)])
                if np.all(np.isfinite(r_t)) and float(r_t @ r_t) / 2 < size:
                    break
                lam *= 10
            else:
                message = "Feasibility restoration failed: no step lowered the violation"
                return STALLED, message, x_, its
            lam = max(lam / 10, 1e-12)
            x_ = x_ + d
            its += 1
            f_, _, c_, J_ = P.jac(x_)
            s_ = np.maximum(-c_[ineq], np.minimum(mu, 1e-2))
            theta_, phi_ = infeas(c_, s_), barrier(f_, s_)
            log(
                {
                    "iteration": k0 + nit_restoration + its,
                    "fun": f_ / P.sf,
                    "grad_norm": np.nan,
                    "constraint_violation": violation(c_),
                    "kkt_residual": np.nan,
                    "mu": mu,
                    "step": 1.0,
                    "backtracks": 0,
                    "soc": False,
                    "delta": lam,
                    "restoration": True,
                },
                x_,
            )
            if theta_ <= 0.9 * theta_r and not any(
                theta_ >= th and phi_ >= ph for th, ph in filter_
            ):
                return x_, s_, f_, c_, its
        return (
            STALLED,
            (
                "Feasibility restoration failed to find a point acceptable to the filter "
                f"(constraint violation {violation(c_):.3g})"
            ),
            x_,
            its,
        )

    W = None
    for k in range(int(o["maxiter"]) + 1):
        if not (np.isfinite(f) and np.all(np.isfinite(g)) and _finite(J)):
            status, message = FAILED, "The objective or a constraint is not finite"
            break
        theta = violation(c)
        E0, _, _, _ = errors(g, c, J, y, z, s, 0.0)
        if E0 <= o["tol"] and theta <= o["constr_viol_tol"]:
            status, message = CONVERGED, "Optimal: KKT conditions satisfied to tol"
            break
        if theta <= max(o["constr_viol_tol"], 1e-6) and (
            f / P.sf < -o["unbounded"] or np.max(np.abs(x)) > o["unbounded"]
        ):
            status, message = (
                UNBOUNDED,
                f"Unbounded: a feasible point with objective {f / P.sf:.3g} (below "
                f"-{o['unbounded']:.0e}) or |x| above {o['unbounded']:.0e}",
            )
            break
        # Infeasibility: stationary for the violation while the violation stays.
        if theta > o["constr_viol_tol"]:
            raw = c / P.sc
            viol = np.where(is_eq, raw, np.maximum(raw, 0.0))
            g_feas = J.T @ (viol / P.sc) if sparse else (J / P.sc[:, None]).T @ viol
            if np.max(np.abs(g_feas), initial=0.0) <= o["infeasibility_tol"] * max(1.0, theta):
                stationary_infeasible += 1
            else:
                stationary_infeasible = 0
            if stationary_infeasible >= int(o["infeasible_iterations"]):
                status, message = (
                    INFEASIBLE,
                    f"Infeasible: the constraint violation stays at {theta:.3g} at a point "
                    "where it is stationary (a local minimizer of the violation)",
                )
                break
        if k == int(o["maxiter"]):
            break
        # ---- barrier parameter update (monotone), possibly several times
        while mI and errors(g, c, J, y, z, s, mu)[0] <= o["kappa_eps"] * mu and mu > o["tol"] / 10:
            mu = max(o["tol"] / 10, min(o["kappa_mu"] * mu, mu ** o["theta_mu"]))
            filter_.clear()  # a new barrier problem: a new filter
        tau = max(o["tau_min"], 1 - mu)
        # ---- the Newton step with inertia correction
        W = P.hess(x, y)
        rd = g + J.T @ y
        sigma_inv = s / z
        rhs = -np.concatenate([rd, c[eq], c[ineq] + s + mu / z - sigma_inv * y[ineq]])
        # A line search that fails at a feasible point has nothing to restore: the
        # filter is reset and the step recomputed with δ_w raised (×100 each time, a
        # shorter step nearer the barrier function's steepest descent, where a small
        # enough step decreases it), up to ``feasible_retries`` times; then, as for an
        # infeasible point, the restoration below.
        failed, forced_w, retries = False, 0.0, 0
        while True:
            delta_w, delta_c = forced_w, 0.0
            first = forced_w == 0.0
            factors = None
            J_E, J_I = J[eq], J[ineq]
            while True:
                pos, negv, zero = kkt_solver.factor(W, J_E, J_I, sigma_inv, delta_w, delta_c)
                if pos == n and negv == mE + mI and zero == 0:
                    factors = kkt_solver
                    d = kkt_solver.solve(rhs)
                    if not sparse or kkt_solver.accurate(rhs, d):
                        break
                    zero = 1  # an inaccurate solve: regularize as for a singular matrix
                if zero and delta_c == 0.0:
                    delta_c = 1e-8 * mu**0.25
                if first:
                    delta_w = o["delta_w0"] if delta_last == 0 else max(1e-20, delta_last / 3)
                    first = False
                else:
                    delta_w *= 8 if delta_last else 100
                if delta_w > o["delta_w_max"]:
                    factors = None
                    break
            if factors is None:
                status, message = FAILED, "No inertia correction made the KKT matrix nonsingular"
                failed = True
                break
            if delta_w:
                delta_last = delta_w
            if not np.all(np.isfinite(d)):
                status, message = FAILED, "The Newton step is not finite"
                failed = True
                break
            dx, dy = d[:n], np.empty(mE + mI)
            dy[eq], dy[ineq] = d[n : n + mE], d[n + mE :]  # the rows are (E, I): back in order
            ds = mu / z - sigma_inv * (y[ineq] + dy[ineq])
            dz = mu / s - z - z / s * ds
            alpha_max = _fraction_to_boundary(s, ds, tau) if mI else 1.0
            alpha_z = _fraction_to_boundary(z, dz, tau) if mI else 1.0
            # ---- filter line search (Wächter & Biegler 2006, section 2.3)
            theta0 = infeas(c, s)
            phi0 = barrier(f, s)
            gphi_d = float(g @ dx - mu * np.sum(ds / s)) if mI else float(g @ dx)
            alpha, accepted, soc_used, f_type = alpha_max, False, False, False
            alpha_min = _alpha_min(theta0, gphi_d, theta_min)
            for backtracks in range(int(o["max_backtracks"]) + 1):
                x_t, s_t = x + alpha * dx, s + alpha * ds
                with np.errstate(all="ignore"):
                    f_t, c_t = P.fun(x_t)
                verdict = acceptable(f_t, c_t, s_t, theta0, phi0, gphi_d, alpha)
                if verdict is not None:
                    accepted, f_type = True, verdict
                    break
                if backtracks == 0 and o["soc"] and (mE + mI) and infeas(c_t, s_t) >= theta0:
                    found = _second_order_corrections(
                        P,
                        factors,
                        x,
                        s,
                        z,
                        y[ineq],
                        c,
                        c_t,
                        s_t,
                        rd,
                        mu,
                        tau,
                        alpha,
                        n,
                        mE,
                        eq,
                        ineq,
                        functools.partial(
                            acceptable, theta0=theta0, phi0=phi0, gphi_d=gphi_d, alpha=alpha
                        ),
                        infeas,
                    )
                    if found is not None:
                        x_t, s_t, f_t, c_t, f_type = found
                        accepted = soc_used = True
                        break
                alpha /= 2
                if alpha < alpha_min:
                    break
            if (
                accepted
                or retries >= int(o["feasible_retries"])
                or violation(c) > o["constr_viol_tol"]
            ):
                break
            retries += 1
            filter_.clear()
            forced_w = max(o["delta_w0"], 100 * delta_w)
        if failed:
            break
        if not accepted:
            # feasibility restoration: the filter takes the current point, then
            # Levenberg–Marquardt steps on ½‖(c_E, max(c_I, 0))‖² until the filter
            # accepts a point that lowers the violation θ by a tenth.
            filter_.append(((1 - GAMMA_THETA) * theta0, phi0 - GAMMA_PHI * theta0))
            restored = restore(x, theta0, k)
            if len(restored) == 4:  # failed: the restoration's last point is the result
                status, message, x, used = restored
                nit = k + nit_restoration + used
                f, g, c, J = P.jac(x)
                break
            x_t, s_t, f_t, c_t, used = restored
            nit_restoration += used
            alpha, dy, dz, f_type, backtracks = 1.0, np.zeros(mE + mI), np.zeros(mI), True, 0
            alpha_z = 0.0
        if not f_type:  # an h-type step: the filter grows
            filter_.append(((1 - GAMMA_THETA) * theta0, phi0 - GAMMA_PHI * theta0))
        x, s = x_t, s_t
        y = y + alpha * dy
        z = z + alpha_z * dz
        f, g, c, J = P.jac(x)
        if mI:
            s = np.maximum(s, -c[ineq])  # slack reset: lowers the merit function
            kappa = 1e10
            z = np.clip(z, mu / (kappa * s), kappa * mu / s)
        nit = k + 1 + nit_restoration
        E0, stat, _, _ = errors(g, c, J, y, z, s, 0.0)
        entry = {
            "iteration": nit,
            "fun": f / P.sf,
            "grad_norm": stat / P.sf,
            "constraint_violation": violation(c),
            "kkt_residual": E0,
            "mu": mu,
            "step": alpha,
            "backtracks": backtracks,
            "soc": soc_used,
            "delta": delta_w,
        }
        if log(entry, x):
            status, message = STOPPED, "Stopped by the callback"
            break
    yz = y.copy()
    yz[ineq] = z  # = y_d at a solution (∂ℒ/∂s = y_d − z = 0), and ≥ 0
    mult = yz * P.sc / P.sf
    f_raw, c_raw = f / P.sf, c / P.sc
    g_raw = g / P.sf
    JT_mult = J.T @ (mult / P.sc) if sparse else (J / P.sc[:, None]).T @ mult
    stat = float(np.max(np.abs(g_raw + JT_mult), initial=0.0))
    comp = float(np.max(np.abs(mult[ineq] * c_raw[ineq]), initial=0.0))
    kkt = {"stationarity": stat, "feasibility": violation(c), "complementarity": comp}
    if status == CONVERGED and kkt["feasibility"] > max(o["constr_viol_tol"], 1e-6):
        status, message = STALLED, "Converged in the scaled problem, but a constraint is violated"
    return IPResult(
        x=x,
        f=float(f_raw),
        c=c_raw,
        y=mult,
        status=status,
        message=message,
        nit=nit,
        nfev=P.nfev,
        njev=P.njev,
        nhev=P.nhev,
        kkt=kkt,
        history=history,
    )
