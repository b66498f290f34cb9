"""Using: training methods on the lifted Lagrangian of a program.

Notation of docs/design.md and of `lagrangian_ad.using._optimize`. Lifting a program
makes every intermediate of every sample b an unknown z^(b), beside the optimized inputs
θ (the weights); the constraint residuals c_i^(b)(θ, z) = z_i − f_i (or c_i for an
implicit equation) hold only at convergence. With s = +1 (`minimize`) or −1
(`maximize`), multipliers μ (one per constraint and sample) and a penalty ρ ≥ 0, the
augmented Lagrangian of the full-space methods is

    L_A(θ, z; μ, ρ) = s Σ_b z_N^(b) + Σ_{b,i} ⟨μ_i^(b), c_i^(b)⟩ + (ρ/2) Σ_{b,i} ‖c_i^(b)‖²,

and its exact gradient in (θ, z), with c itself as its gradient in μ, comes from one
compiled auxiliary program (`_optimize._AugmentedProgram`, the one that
``"augmented-lagrangian"`` minimizes). The program's multipliers of docs/design.md are
λ = −s μ. No forward pass of the program runs during the iterations: one at the start
gives z (and λ), one at the end gives ``fun`` and ``jac``.

* ``"penalty"``, the quadratic-penalty method of auxiliary coordinates (Carreira-Perpiñán
  and Wang 2014, "Distributed optimization of deeply nested systems"): minimize
  Q(θ, z; ρ_k) = L_A(θ, z; 0, ρ_k) for an increasing schedule ρ_k = ρ_0 γ^k by
  alternating a θ-step (z fixed: each constraint reads its own layer's weights, so
  Q is a sum of independent per-layer fits Σ_b ‖z_i − f_i(θ_i, z_Pa(i))‖²) and a z-step
  (θ fixed: Q is a sum over the samples, each sample's z independent of the others'),
  each solved by L-BFGS with the exact gradient of Q (one L-BFGS over the whole block:
  the sum is separable, so its minimizer is that of each part). As ρ → ∞ the
  minimizers of Q approach a minimizer of F(θ) = Σ_b z_N^(b)(θ): max|c| = O(1/ρ),
  ∇F(θ) = O(1/ρ), and μ ≈ ρ c estimates the multipliers (λ ≈ −s ρ c). The alternation
  alone is block coordinate descent on a Q whose conditioning grows with ρ: once ρ is
  large it moves θ by O(1/ρ) per round (measured on a 1-2-1 regression: 200 rounds at
  ρ = 27 left ∇Q at 0.3), so by default (``joint=True``) each subproblem is finished by
  one L-BFGS over (θ, z) together, from the alternation's point.
* ``"descent-ascent"``, local propagation on the Lagrangian (Marra, Tiezzi, Melacci,
  Betti, Maggini and Gori 2020, "Local propagation in constraint-based neural
  networks"): simultaneous gradient steps, descent in (θ, z) and ascent in μ,

      (θ, z) ← (θ, z) − η ∇_{θ,z} L_A(θ, z; μ, ρ),     μ ← μ + η_μ c(θ, z),

  every step local to one constraint (the gradient of L_A in z_i reads only the
  constraints that z_i enters). ρ = 0 is the plain Lagrangian; ρ > 0 augments it,
  which makes the saddle point an attractor when the loss is not convex. It stops when
  max|c| ≤ ctol and ‖∇_{θ,z} L_A‖_∞ ≤ gtol (at c = 0 the gradient of L_A is that of the
  Lagrangian, so then z is the forward pass, μ its adjoints and θ stationary for F).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize

from ..core._errors import ProgramError
from ._interior import CONVERGED, FAILED, MAXITER, STOPPED

__all__ = ["TRAINING", "Lifted"]


@dataclass(frozen=True)
class Lifted:
    """A problem lifted to the full space, as the training methods see it.

    ``problem`` is the optimizer's `_Problem` (θ as one flat vector, the data, the
    evaluation counts), ``space`` its `_Space` (the layout of z and μ, batch + (n_z,)
    and batch + (m,)), ``aug`` the compiled `_AugmentedProgram` and ``finish`` the
    optimizer's `_finish_lifted` (the result, with one exact pass at the final θ).
    """

    problem: Any
    space: Any
    aug: Any
    finish: Callable[..., Any]

    def evaluate(
        self, theta: np.ndarray, Z: np.ndarray, mu: np.ndarray, rho: float
    ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """L_A, its gradient in θ (flat) and in z (batch + (n_z,)), and c (batch + (m,))."""
        p, space, aug = self.problem, self.space, self.aug
        inputs = {
            **p.unpack(theta),
            **p.fixed,
            **space.split(Z),
            **aug.multipliers(mu),
            aug.rho: rho,
        }
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            value, grad = aug.fn.value_and_grad(inputs)
        p.nfev += 1
        p.njev += 1
        c = aug.residuals(grad, space.batch, space.m)
        return float(np.sum(value)), p.pack(grad), space.join(grad), c

    def start(self, z0: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """θ from x0, and z with the DESIGN multipliers λ from ``z0`` (see `_Space.initial`)."""
        theta = self.problem.pack(self.problem.x0)
        Z, lam = self.space.initial(self.problem, z0, theta)
        return theta, Z, lam


def _positive(opts: dict, *names: str) -> None:
    for name in names:
        value = opts[name]
        if not (isinstance(value, (int, float, np.floating, np.integer)) and value > 0):
            raise ProgramError(f"option {name!r} must be a positive number, not {value!r}")


def _count(opts: dict, *names: str) -> None:
    for name in names:
        value = opts[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ProgramError(f"option {name!r} must be a positive integer, not {value!r}")


def _max_abs(a: np.ndarray) -> float:
    return float(np.max(np.abs(a), initial=0.0))


# --------------------------------------------------------------------------- penalty

PENALTY = {
    "maxiter": 30,
    "mu0": 1.0,
    "growth": 10.0,
    "mu_max": 1e6,
    "ctol": 1e-6,
    "gtol": 1e-5,
    "inner_maxiter": 50,
    "inner_tol": 1e-5,
    "step_maxiter": 200,
    "maxcor": 20,
    "joint": True,
    "joint_maxiter": 2000,
    "z0": "forward",
}


def _block(lifted: Lifted, which: str, other: np.ndarray, rho: float):
    """Q(θ, z; ρ) = L_A(θ, z; 0, ρ) as a function of one block, the other held."""
    zero = np.zeros((*lifted.space.batch, lifted.space.m))
    if which == "both":
        n = lifted.problem.n

        def q(w: np.ndarray) -> tuple[float, np.ndarray]:
            Z = w[n:].reshape((*lifted.space.batch, -1))
            Q, g_theta, g_z, _ = lifted.evaluate(w[:n], Z, zero, rho)
            return Q, np.concatenate([g_theta, g_z.ravel()])

        return q
    if which == "theta":

        def q_theta(w: np.ndarray) -> tuple[float, np.ndarray]:
            Q, g, _, _ = lifted.evaluate(w, other, zero, rho)
            return Q, g

        return q_theta

    def q_z(w: np.ndarray) -> tuple[float, np.ndarray]:
        Q, _, g, _ = lifted.evaluate(other, w.reshape((*lifted.space.batch, -1)), zero, rho)
        return Q, g.ravel()

    return q_z


def _lbfgs(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    w0,
    gtol: float,
    opts: dict,
    maxiter: int | None = None,
):
    """One block step: L-BFGS-B to ``gtol`` or ``step_maxiter`` iterations."""
    return scipy.optimize.minimize(
        fun,
        w0,
        jac=True,
        method="L-BFGS-B",
        options={
            "gtol": gtol,
            "ftol": 0.0,
            "maxiter": int(opts["step_maxiter"]) if maxiter is None else maxiter,
            "maxcor": int(opts["maxcor"]),
        },
    )


def penalty(lifted: Lifted, opts: dict, monitor: Any) -> Any:
    """The quadratic-penalty method of auxiliary coordinates (see the module docstring).

    Outer iteration k holds the penalty ρ_k (``mu0``, times ``growth`` each iteration up to
    ``mu_max``) and alternates, at most ``inner_maxiter`` times, a θ-step and a z-step,
    each an L-BFGS minimization of Q(θ, z; ρ_k) over its block (``step_maxiter``
    iterations, gradient tolerance ``inner_tol``, history ``maxcor``), from
    the last point. The alternation stops when, after a z-step, the gradient of Q in θ is
    below that tolerance too (both blocks stationary); if it is not, ``joint`` (True)
    finishes the subproblem with one L-BFGS over (θ, z) (``joint_maxiter`` iterations).
    The history records ``penalty`` ρ_k, ``inner_iterations`` (rounds of alternation)
    and ``joint_iterations``. The method stops when
    max|c| ≤ ``ctol`` and ‖∇_{θ,z} ℒ‖_∞ ≤ ``gtol`` at the multiplier estimate μ = ρ c
    (the gradient of Q itself, which is that of ℒ at μ = ρ c); status 1 when ``maxiter``
    outer iterations or ρ = ``mu_max`` end it first.
    """
    _positive(opts, "mu0", "mu_max", "ctol", "gtol", "inner_tol")
    _count(opts, "maxiter", "inner_maxiter", "step_maxiter", "maxcor")
    if not (isinstance(opts["growth"], (int, float)) and opts["growth"] > 1):
        raise ProgramError(
            f"option 'growth' must be a number > 1 (the penalty must increase), not "
            f"{opts['growth']!r}"
        )
    p, space = lifted.problem, lifted.space
    theta, Z, _ = lifted.start(opts["z0"])
    zero = np.zeros((*space.batch, space.m))
    shape = Z.shape
    rho = float(opts["mu0"])
    status, message = MAXITER, "Maximum number of outer iterations reached"
    nit = inner_total = 0
    c = zero
    for k in range(1, int(opts["maxiter"]) + 1):
        tol = float(opts["inner_tol"])
        steps = 0
        for _ in range(int(opts["inner_maxiter"])):
            theta = _lbfgs(_block(lifted, "theta", Z, rho), theta, tol, opts).x
            Z = _lbfgs(_block(lifted, "z", theta, rho), Z.ravel(), tol, opts).x.reshape(shape)
            steps += 1
            Q, g_theta, g_z, c = lifted.evaluate(theta, Z, zero, rho)
            if _max_abs(g_theta) <= tol and _max_abs(g_z) <= tol:
                break
        joint_nit = 0
        if opts["joint"] and max(_max_abs(g_theta), _max_abs(g_z)) > tol:
            n = theta.size
            step = _lbfgs(
                _block(lifted, "both", None, rho),
                np.concatenate([theta, Z.ravel()]),
                tol,
                opts,
                maxiter=int(opts["joint_maxiter"]),
            )
            theta, Z, joint_nit = step.x[:n], step.x[n:].reshape(shape), int(step.nit)
            Q, g_theta, g_z, c = lifted.evaluate(theta, Z, zero, rho)
        inner_total += steps
        nit = k
        cv, gnorm = _max_abs(c), max(_max_abs(g_theta), _max_abs(g_z))
        if not (np.isfinite(Q) and np.isfinite(cv) and np.isfinite(gnorm)):
            status, message = FAILED, "The penalty function is not finite"
            break
        entry = {
            "iteration": k,
            "fun": space.model_value(Z),
            "grad_norm": gnorm,
            "constraint_violation": cv,
            "penalty": rho,
            "inner_iterations": steps,
            "joint_iterations": joint_nit,
            "nfev": p.nfev,
        }
        stop = monitor.record(entry, p.user_x(theta))
        if cv <= opts["ctol"] and gnorm <= opts["gtol"]:
            status, message = CONVERGED, "Converged: max |c| <= ctol and ‖∇ℒ‖ <= gtol at μ = ρc"
            break
        if stop:
            status, message = STOPPED, "Stopped by the callback"
            break
        if rho >= opts["mu_max"]:
            message = "The penalty reached mu_max before max |c| <= ctol"
            break
        rho = min(rho * float(opts["growth"]), float(opts["mu_max"]))
    return lifted.finish(
        p,
        space,
        theta,
        Z.ravel(),
        -p.sign * rho * c,
        status=status,
        message=message,
        nit=nit,
        inner_nit=inner_total,
        history=monitor.history,
        maxcv=_max_abs(c),
        penalty=rho,
    )


# --------------------------------------------------------------------------- descent-ascent

DESCENT_ASCENT = {
    "maxiter": 20000,
    "step": 0.05,
    "dual_step": 0.05,
    "rho": 1.0,
    "ctol": 1e-6,
    "gtol": 1e-6,
    "z0": "forward",
    "multipliers0": "forward",
}


def descent_ascent(lifted: Lifted, opts: dict, monitor: Any) -> Any:
    """Gradient descent in (θ, z), ascent in μ, on the (augmented) Lagrangian.

    Each iteration is one evaluation of L_A and its exact gradient (``step`` η for the
    descent, ``dual_step`` η_μ for the ascent, ``rho`` the augmentation, 0 for the plain
    Lagrangian). z starts from the forward pass at x0 (``z0="forward"``), zeros or a
    given dict; μ from the forward pass's adjoints (``multipliers0="forward"``, with
    ``z0="forward"`` only) or zeros (``"zeros"``). The method stops when max|c| ≤
    ``ctol`` and ‖∇_{θ,z} L_A‖_∞ ≤ ``gtol``; status 1 after ``maxiter`` iterations,
    4 when the iterates blow up (η or η_μ too large).
    """
    _positive(opts, "step", "dual_step", "ctol", "gtol")
    _count(opts, "maxiter")
    if not (isinstance(opts["rho"], (int, float)) and opts["rho"] >= 0):
        raise ProgramError(f"option 'rho' must be a number >= 0, not {opts['rho']!r}")
    if opts["multipliers0"] not in ("forward", "zeros"):
        raise ProgramError(
            f"option 'multipliers0' must be 'forward' or 'zeros', not {opts['multipliers0']!r}"
        )
    if opts["multipliers0"] == "forward" and opts["z0"] != "forward":
        raise ProgramError("option multipliers0='forward' needs z0='forward' (the same pass)")
    p, space = lifted.problem, lifted.space
    theta, Z, lam = lifted.start(opts["z0"])
    mu = -p.sign * lam if opts["multipliers0"] == "forward" else np.zeros_like(lam)
    eta, eta_mu, rho = float(opts["step"]), float(opts["dual_step"]), float(opts["rho"])
    status, message = MAXITER, "Maximum number of iterations reached"
    nit = 0
    for k in range(int(opts["maxiter"]) + 1):
        L, g_theta, g_z, c = lifted.evaluate(theta, Z, mu, rho)
        cv, gnorm = _max_abs(c), max(_max_abs(g_theta), _max_abs(g_z))
        if not (np.isfinite(L) and np.isfinite(cv) and np.isfinite(gnorm)):
            status, message = FAILED, "The Lagrangian is not finite: try smaller steps"
            break
        if cv <= opts["ctol"] and gnorm <= opts["gtol"]:
            status, message = CONVERGED, "Converged: max |c| <= ctol and ‖∇ℒ‖ <= gtol"
            break
        if k == int(opts["maxiter"]):
            break
        theta = theta - eta * g_theta
        Z = Z - eta * g_z
        mu = mu + eta_mu * c
        nit = k + 1
        entry = {
            "iteration": nit,
            "fun": space.model_value(Z),
            "grad_norm": gnorm,
            "constraint_violation": cv,
            "nfev": p.nfev,
        }
        if monitor.record(entry, p.user_x(theta)):
            status, message = STOPPED, "Stopped by the callback"
            break
    return lifted.finish(
        p,
        space,
        theta,
        Z.ravel(),
        -p.sign * mu,
        status=status,
        message=message,
        nit=nit,
        history=monitor.history,
        maxcv=cv,
        penalty=rho,
    )


# name -> (default options, the method, the options that ``tol`` sets)
TRAINING = {
    "penalty": (PENALTY, penalty, ("ctol", "gtol")),
    "descent-ascent": (DESCENT_ASCENT, descent_ascent, ("ctol", "gtol")),
}
