"""Using: optimizers built on the Lagrangian of a program.

Notation of docs/design.md. A program has inputs x, intermediates z_i = f_i(z_Pa(i)) (or
implicit equations c_i(z) = 0) and a scalar output z_N per sample b of the batch. Its
constraint residuals are c_i = z_i − f_i (explicit) or c_i (implicit). Some inputs are
optimized (given in ``x0``), the others are data (given in ``fixed``, possibly batched).
The objective is the batch sum of the output at the forward solution z(x),

    F(x) = Σ_b z_N^(b)(x),

and every method minimizes φ = s·F with s = +1 (`minimize`) or s = −1 (`maximize`).
Everything reported (``fun``, ``jac``, the history) is about F itself: the maximum, not
its negation.

Reduced-space methods run the exact forward pass at every iterate and take ∇F from the
multipliers (``value_and_grad``): ∂F/∂x_k = Σ_i λ_i ∂f_i/∂x_k.

* ``"gradient"``: x ← x − t s∇F(x), the blog's gradient ascent (for `maximize`), with a
  backtracking Armijo line search on t.
* ``"lbfgs"``: SciPy's L-BFGS-B on φ(x), fed by the multipliers; box bounds accepted.

Full-space methods treat x and every z (one copy per sample) as unknowns; the constraints
c(x, z) = 0 hold only at convergence, and no forward pass is run during the iterations.
With multipliers μ (one per constraint and sample) and the Lagrangian in the convention
of constrained optimization,

    ℒ(x, z, μ) = s·Σ_b z_N^(b) + Σ_{b,i} μ_i^(b) c_i^(b)(x, z),

the program's multipliers of docs/design.md (L = z_N − Σ λ_i c_i, λ_i = ∂z_N/∂z_i) are
λ = −s·μ; results report λ.

* ``"augmented-lagrangian"``: the method of multipliers on
  L_A = ℒ + (ρ/2) Σ_{b,i} (c_i^(b))², minimized over (x, z) by L-BFGS with exact gradients,
  then μ ← μ + ρ c.
* ``"newton-kkt"``: Newton's method on ∇ℒ = 0 in (x, z, μ) with the exact sparse KKT
  matrix, an ℓ1 merit function, backtracking, a second-order correction and inertia
  correction.

Constrained problems (`Program.subject_to`: g_j(x, z) ≤ 0 or = 0 over inputs and
intermediates):

* ``"interior-point"``: a primal-dual interior-point method (IPOPT's algorithm) in the
  reduced space: the forward pass eliminates the definitions, so the unknowns are the
  optimized inputs and every g_j is a function of them, with its gradient by the
  program's adjoint and the exact Hessian of the Lagrangian by second-order adjoints
  (one auxiliary program, `_ConstraintProgram`). With batched data a constraint over a
  per-sample quantity is one constraint per sample, g_j^(b) ≤ 0 (`_ReducedNLP`); its
  Jacobian is sparse (a row reads the shared inputs and its own sample's), and so is
  the KKT system then solved (`lagrangian_ad._interior.SparseKKT`). See
  `_interior_point`.
"""

from __future__ import annotations

import contextlib
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse as sps
import scipy.sparse.linalg as spla
import sympy as sp

from ..building._program import Program
from ..compiling._compiled import CompiledProgram
from ..core._arrays import mul as lad_mul
from ..core._arrays import sum as lad_sum
from ..core._errors import ConvergenceError, NonFiniteWarning, ProgramError, SingularSystemError
from ..core._ir import ProgramIR, Variable
from ._interior import IP_OPTIONS, interior_point
from ._training import TRAINING, Lifted

__all__ = ["METHODS", "OptimizeResult", "maximize", "minimize"]

METHODS = (
    "gradient",
    "lbfgs",
    "augmented-lagrangian",
    "newton-kkt",
    "interior-point",
    "penalty",
    "descent-ascent",
)

# Status codes, shared by every method.
CONVERGED = 0  # the tolerance was met
MAXITER = 1  # the iteration (or evaluation) limit was reached
STALLED = 2  # no acceptable step: line search or inner solver failed
STOPPED = 3  # the callback asked to stop
FAILED = 4  # a numerical failure (non-finite values, singular KKT matrix)
# From the interior-point method: INFEASIBLE = 5 (no feasible point found: stationary
# for the constraint violation), UNBOUNDED = 6 (the objective decreases without bound).

# Failures of a forward solve at a trial point: a line search rejects the point.
_SOLVE_FAILURES = (ConvergenceError, SingularSystemError, FloatingPointError)


class OptimizeResult(scipy.optimize.OptimizeResult):
    """The result of `minimize` or `maximize` (a `scipy.optimize.OptimizeResult`).

    Attributes
    ----------
    x : dict
        Input name -> optimized value, with the shape given in ``x0`` (a float for a
        scalar).
    fun : float
        F(x) = Σ_batch z_N at ``x`` (for `maximize` the maximum itself, not negated).
        The full-space methods compute it with one exact forward pass at the final x.
    jac : dict
        Input name -> ∂F/∂x at ``x`` (the gradient of F, whatever the sense).
    success : bool
        Whether the method's tolerance was met.
    status : int
        0 converged, 1 iteration limit, 2 no acceptable step (line search or inner
        solver failed), 3 stopped by the callback, 4 numerical failure; from
        ``"interior-point"`` also 5 infeasible (the constraint violation stays positive
        where it is stationary: a local minimizer of the violation) and 6 unbounded (a
        feasible point with the objective below −1e20, or ``|x|`` above 1e20).
    message : str
        Why the method stopped.
    nit : int
        Iterations (outer iterations for ``"augmented-lagrangian"``).
    nfev, njev : int
        Evaluations of the objective and of its gradient. For ``"gradient"`` and
        ``"lbfgs"`` each is one forward and one adjoint pass. For
        ``"augmented-lagrangian"``, evaluations of L_A and ∇L_A plus the exact passes at
        the start and the end. For ``"newton-kkt"``, evaluations of the residuals c
        (``nfev``) and of their first and second derivatives (``njev``), plus the exact
        passes.
    history : list of dict
        One record per iteration: ``iteration``, ``fun`` (F, or for the full-space
        methods Σ z_N read from the current z), ``grad_norm`` (∞-norm of the projected
        gradient of φ, or of ∇_{x,z} of the Lagrangian), ``nfev`` and ``time`` (seconds
        since the start), plus the method's own entries (``step``, ``backtracks``,
        ``penalty``, ``constraint_violation``, ``kkt_residual``, ``delta``, …).
    maxcv, fun_model, multipliers, z : optional
        Full-space methods only: the final max ``|c_i|`` over the batch, Σ z_N read from the
        optimizer's own z, the multipliers λ = ∂z_N/∂z_i in the convention of docs/design.md
        (by intermediate name, and by equation name for implicit equations; batch shape
        + own shape, like `Solution.multipliers`), and the optimizer's z by intermediate
        name (batch shape + own shape). ``"augmented-lagrangian"`` adds ``penalty`` (the
        final ρ) and ``inner_nit`` (all L-BFGS iterations); ``"newton-kkt"`` adds
        ``kkt_residual``.
    multipliers, kkt, sensitivity, constraints, maxcv, nhev : ``"interior-point"``
        ``multipliers``: constraint name (of `Program.subject_to`) -> μ, with
        ∇F + Σ_j μ_j ∇g_j = 0 for `minimize` and ∇F = Σ_j μ_j ∇g_j for `maximize` (g_j
        written g_j ≤ 0 or g_j = 0; μ_j ≥ 0 for inequalities either way: the μ of
        `Program.lagrangian`); a float, or for a constraint over batched data an array
        with the batch shape (one multiplier per sample, the sum running over them).
        ``kkt``: ``stationarity``, ``feasibility`` and ``complementarity``, the max
        residuals at ``x``. ``sensitivity``: data input name -> ∂fun/∂p, with p's
        shape, by the envelope theorem (the gradient of F + s Σ_j μ_j g_j with respect
        to the data at the optimum; empty unless converged). ``constraints``: name ->
        g_j at ``x`` (with the batch shape, as ``multipliers``). ``maxcv``: the largest
        violation. ``nhev``: Hessian evaluations. ``bound_multipliers`` (with
        ``bounds``): name -> (μ of the lower, μ of the upper bounds), x's shape.
    """

    def __repr__(self) -> str:
        # (SciPy's formatter fails on an empty dict, e.g. ``sensitivity`` of a failed run)
        shown = scipy.optimize.OptimizeResult(
            {k: "{}" if v == {} else v for k, v in self.items() if k != "history"}
        )
        return f"{shown!r}\n history: <{len(self.get('history', ()))} records>"


# --------------------------------------------------------------------------- public API


def minimize(
    prog: Program | CompiledProgram,
    x0: Mapping[Any, Any],
    fixed: Mapping[Any, Any] | None = None,
    method: str | None = None,
    tol: float | None = None,
    callback: Callable[[OptimizeResult], Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> OptimizeResult:
    """Minimize F(x) = Σ_batch z_N over the inputs in ``x0``.

    Parameters
    ----------
    prog : Program or CompiledProgram
    x0 : dict
        Input name (or Symbol) -> starting value of each input to optimize. A value may
        carry batch axes (one variable per sample).
    fixed : dict, optional
        Input name -> value of each input that is data, not a variable; may be batched.
        Every input of the program must be in exactly one of ``x0`` and ``fixed``.
    method : str
        One of "gradient", "lbfgs", "augmented-lagrangian", "newton-kkt",
        "interior-point", "penalty", "descent-ascent". See the module docstring,
        `lagrangian_ad.using._training` for the last two, and the option lists below.
        Default: "interior-point" for a program with constraints of
        `Program.subject_to` (the only method that holds them; the others refuse such
        programs), "lbfgs" otherwise.
    tol : float, optional
        Sets the method's main tolerances: ``gtol`` for ``"gradient"``; ``ftol`` and
        ``gtol`` for ``"lbfgs"``; ``ctol`` and ``gtol`` for ``"augmented-lagrangian"``;
        ``tol`` (the KKT residual) for ``"newton-kkt"``; ``ctol`` and ``gtol`` for
        ``"penalty"`` and ``"descent-ascent"``.
    callback : callable, optional
        ``callback(intermediate_result)`` after each iteration, with an
        `OptimizeResult` holding ``x`` (dict), ``fun``, ``nit`` and the iteration's
        history record. Returning True or raising StopIteration stops the method
        (status 3).
    options : dict, optional
        Common to all methods: ``maxiter``, and ``solve`` (a dict of options for the
        forward solves of cyclic blocks: ``init``, ``method``, ``tol``, ``maxiter``).

        ``"gradient"``: ``gtol`` (1e-5; stop when the ∞-norm of the projected gradient
        is below), ``ftol`` (0: off; stop when the relative decrease of φ is below),
        ``maxiter`` (20000), ``step`` (1.0: the first trial step t), ``initial``
        (``"bb"``: each trial step starts at the Barzilai–Borwein length
        sᵀs/sᵀy of the last step, or ``"grow"``: at ``grow`` times the last accepted
        step), ``grow`` (2.0), ``c1`` (1e-4: Armijo constant), ``shrink`` (0.5),
        ``max_backtracks`` (60), ``bounds``.

        ``"lbfgs"``: ``maxiter`` (15000), ``maxfun`` (15000), ``gtol`` (1e-5),
        ``ftol`` (2.2e-9), ``maxcor`` (10), ``maxls`` (20), ``bounds``; the meanings of
        `scipy.optimize.minimize` with ``method="L-BFGS-B"``.

        ``bounds`` (``"gradient"``, ``"lbfgs"``, ``"augmented-lagrangian"``):
        ``{name: (lo, hi)}``, each a scalar or an array broadcast to the shape of
        ``x0[name]``; None for no bound. The gradient method projects on the box.

        ``"augmented-lagrangian"``: ``maxiter`` (50 outer iterations), ``ctol`` (1e-8:
        max ``|c_i|``), ``gtol`` (1e-6: ∞-norm of ∇_{x,z} ℒ), ``rho`` (10: initial
        penalty), ``rho_factor`` (10), ``rho_max`` (1e10), ``shrink`` (0.25: ρ grows
        when max ``|c|`` did not shrink by this factor), ``inner_gtol`` (1e-3: first inner
        tolerance, divided by ``inner_factor`` = 10 each outer iteration down to
        ``gtol``), ``inner_maxiter`` (500), ``maxcor`` (20), ``z0`` (``"forward"``:
        start z from one forward pass at x0; ``"zeros"``; or a dict name -> array).

        ``"newton-kkt"``: ``maxiter`` (100), ``tol`` (1e-9: max of ``|∇_{x,z} ℒ|`` and
        ``|c|``), ``init`` (``"forward"``: z and μ from one exact solve at x0, or
        ``"zeros"``), ``c1`` (1e-4), ``max_backtracks`` (40), ``soc`` (True: try a
        second-order correction when the full step is rejected), ``inertia``
        (``"reduced"``: exact test on the reduced Hessian, or ``"descent"``),
        ``max_reduced`` (500: above this many optimized entries ``"descent"`` is used),
        ``delta_min`` (1e-8), ``delta_max`` (1e20), ``damping`` (1e-3: the smallest
        proximal term added after a shortened step).

        ``"interior-point"`` (see `lagrangian_ad.using._interior`): ``maxiter`` (3000),
        ``tol`` (1e-8: the scaled KKT error), ``constr_viol_tol`` (1e-8), ``mu_init``
        (0.1), ``kappa_mu`` (0.2), ``theta_mu`` (1.5), ``kappa_eps`` (10),
        ``tau_min`` (0.99), ``bound_push`` (1e-2), ``eta`` (1e-8: Armijo constant),
        ``max_backtracks`` (40), ``soc`` (True), ``scaling`` (True: gradient-based, as
        IPOPT), ``delta_w0`` (1e-4), ``delta_w_max`` (1e40), ``unbounded`` (1e20),
        ``infeasibility_tol`` (1e-8), ``infeasible_iterations`` (5),
        ``restoration_maxiter`` (200), ``feasible_retries`` (3: a line search that
        fails at a feasible point is retried with the filter reset and a more
        regularized step), ``linear_solver`` (``"auto"``: ``"sparse"``
        when the KKT system has more than ``sparse_threshold`` (100) rows, else
        ``"dense"``), ``bounds`` (the same format as above: each finite bound becomes an
        inequality of the method, and x0 is pushed inside).

        ``"penalty"`` (see `lagrangian_ad.using._training`): ``maxiter`` (30 values of
        the penalty ρ), ``mu0`` (1: the first ρ), ``growth`` (10: ρ's factor, > 1),
        ``mu_max`` (1e6), ``ctol`` (1e-6: max ``|c|``), ``gtol`` (1e-5: ∞-norm of ∇ℒ at
        μ = ρc), ``inner_maxiter`` (50 rounds of θ- and z-steps per ρ), ``inner_tol``
        (1e-5: each step's gradient tolerance), ``step_maxiter`` (200 L-BFGS iterations
        per step), ``maxcor`` (20), ``joint`` (True: finish each ρ by one L-BFGS over
        (θ, z)), ``joint_maxiter`` (2000), ``z0`` (as for ``"augmented-lagrangian"``).

        ``"descent-ascent"``: ``maxiter`` (20000), ``step`` (0.05: η of the descent in
        (θ, z)), ``dual_step`` (0.05: η_μ of the ascent in μ), ``rho`` (1: the
        augmentation, 0 for the plain Lagrangian), ``ctol`` (1e-6), ``gtol`` (1e-6),
        ``z0`` (``"forward"``), ``multipliers0`` (``"forward"``: the adjoints of the
        start's forward pass, or ``"zeros"``).

        Batched data: a constraint that reads (through the definitions) an input with
        batch axes, batched data in ``fixed`` or an optimized input given with batch
        axes, holds at every sample: it is one constraint per sample, and its entries
        of ``multipliers`` and ``constraints`` are arrays with the batch shape of the
        inputs it reads (messages name a sample's constraint ``g1[3]``). A constraint
        that reads no batched input (one on the parameters alone) stays one constraint
        with a float multiplier.

    Returns
    -------
    OptimizeResult

    Raises
    ------
    ValueError
        Unknown method or option.
    ProgramError
        An input in both or neither of ``x0`` and ``fixed``, an unknown input, a wrong
        shape.

    Examples
    --------
    >>> import sympy as sp, lagrangian_ad as lad
    >>> prog = lad.Program()
    >>> x, y = prog.input("x"), prog.input("y")
    >>> f = prog.define("f", (1 - x) ** 2 + 100 * (y - x**2) ** 2)
    >>> res = lad.minimize(prog, {"x": -1.2, "y": 1.0})
    >>> bool(res.success), round(res.x["x"], 4), round(res.x["y"], 4)
    (True, 1.0, 1.0)
    """
    return _optimize("min", prog, x0, fixed, method, tol, callback, options)


def maximize(
    prog: Program | CompiledProgram,
    x0: Mapping[Any, Any],
    fixed: Mapping[Any, Any] | None = None,
    method: str | None = None,
    tol: float | None = None,
    callback: Callable[[OptimizeResult], Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> OptimizeResult:
    """Maximize F(x) = Σ_batch z_N over the inputs in ``x0``; ``fun`` is the maximum.

    The same parameters, options and result as `minimize` (which see), with s = −1:
    the methods minimize −F, and report F.

    Examples
    --------
    >>> import sympy as sp, lagrangian_ad as lad
    >>> prog = lad.Program()
    >>> x = prog.input("x")
    >>> f = prog.define("f", sp.sin(x) - x**2 / 4)
    >>> res = lad.maximize(prog, {"x": 0.0}, method="gradient")
    >>> round(res.x["x"], 5), round(res.fun, 5)
    (1.02987, 0.59207)
    """
    return _optimize("max", prog, x0, fixed, method, tol, callback, options)


def _optimize(sense, prog, x0, fixed, method, tol, callback, options) -> OptimizeResult:
    constrained = bool(_compiled(prog).ir.subject_to)
    if method is None:
        method = "interior-point" if constrained else "lbfgs"
    if method not in _METHODS:
        raise ProgramError(f"Unknown method {method!r}; methods: {', '.join(METHODS)}")
    if constrained and method != "interior-point":
        names = ", ".join(g.label for g in _compiled(prog).ir.subject_to)
        raise ProgramError(
            f"method {method!r} cannot hold the program's constraints ({names}, from "
            "subject_to); use method='interior-point' (the default for such programs)"
        )
    defaults, run = _METHODS[method]
    opts = _options(method, defaults, options)
    if tol is not None:
        for key in _TOL_KEYS[method]:
            opts[key] = float(tol)
    problem = _Problem(prog, x0, fixed, sense, opts.pop("solve") or {})
    return run(problem, opts, _Monitor(callback))


def _options(method: str, defaults: dict, options: Mapping[str, Any] | None) -> dict:
    opts = dict(defaults)
    if options is None:
        return opts
    if not isinstance(options, Mapping):
        raise ProgramError(f"options must be a dict, not {type(options).__name__}")
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ProgramError(
            f"Unknown option {unknown[0]!r} for method {method!r}; "
            f"options: {', '.join(sorted(defaults))}"
        )
    opts.update(options)
    return opts


# --------------------------------------------------------------------------- the problem


def _compiled(prog: Any) -> CompiledProgram:
    if isinstance(prog, CompiledProgram):
        return prog
    if isinstance(prog, Program):
        return prog.compile()
    raise ProgramError(f"expected a Program or CompiledProgram, not {type(prog).__name__}")


class _Problem:
    """The optimized inputs as one flat vector, the data, and F(x) with its gradient."""

    def __init__(self, prog: Any, x0: Any, fixed: Any, sense: str, solve: Mapping):
        fn = _compiled(prog)
        self.fn, self.ir = fn, fn.ir
        self.sign = 1.0 if sense == "min" else -1.0
        given = fn._named(x0, "x0")
        data = fn._named({} if fixed is None else fixed, "fixed")
        if not given:
            raise ProgramError("x0 is empty: give a starting value for each input to optimize")
        both = [n for n in given if n in data]
        if both:
            raise ProgramError(
                f"input {both[0]!r} is in both x0 and fixed; an input is either optimized "
                "(x0) or data (fixed)"
            )
        missing = [v.name for v in self.ir.inputs if v.name not in given and v.name not in data]
        if missing:
            raise ProgramError(
                f"input {', '.join(map(repr, missing))} is in neither x0 nor fixed; give a "
                "starting value in x0 or its data in fixed"
            )
        if not isinstance(solve, Mapping):
            raise ProgramError("option 'solve' must be a dict of forward-solve options")
        self.solve_options = dict(solve)
        _, arrays, _, batch = fn._prepare({**given, **data})
        self.names = [v.name for v in self.ir.inputs if v.name in given]
        self.x0 = {n: np.array(arrays[n], dtype=np.float64) for n in self.names}
        self.fixed = {n: arrays[n] for n in data}
        self.batch = batch
        self.shapes = {n: self.x0[n].shape for n in self.names}
        self.ir_shapes = {v.name: v.shape for v in self.ir.inputs}
        sizes = [self.x0[n].size for n in self.names]
        self.offsets = dict(zip(self.names, np.cumsum([0, *sizes[:-1]]).tolist(), strict=True))
        self.n = int(sum(sizes))
        self.nfev = 0
        self.njev = 0

    def pack(self, d: Mapping[str, Any]) -> np.ndarray:
        return np.concatenate([np.ravel(np.asarray(d[n], dtype=np.float64)) for n in self.names])

    def unpack(self, v: np.ndarray) -> dict[str, np.ndarray]:
        return {
            n: v[self.offsets[n] : self.offsets[n] + self.x0[n].size].reshape(self.shapes[n])
            for n in self.names
        }

    def user_x(self, v: np.ndarray) -> dict[str, Any]:
        return {n: _user(a) for n, a in self.unpack(v).items()}

    def inputs(self, v: np.ndarray) -> dict[str, Any]:
        x = {n: float(a) if a.ndim == 0 else a for n, a in self.unpack(v).items()}
        return {**x, **self.fixed}

    def evaluate(self, v: np.ndarray) -> tuple[float, np.ndarray]:
        """F(x) and ∇F(x) as a flat vector: one forward and one adjoint pass."""
        value, grad = self.fn.value_and_grad(self.inputs(v), **self.solve_options)
        self.nfev += 1
        self.njev += 1
        return float(np.sum(value)), self.pack(grad)

    def finish(self, v: np.ndarray, F: float, G: np.ndarray, **fields: Any) -> OptimizeResult:
        fields.setdefault("success", fields["status"] == CONVERGED)
        return OptimizeResult(
            x=self.user_x(v),
            fun=float(F),
            jac={n: _user(g) for n, g in self.unpack(G).items()},
            nfev=self.nfev,
            njev=self.njev,
            **fields,
        )


def _user(a: Any) -> Any:
    a = np.asarray(a, dtype=np.float64)
    return float(a) if a.ndim == 0 else a.copy()


class _Monitor:
    """The history, the clock and the user's callback."""

    def __init__(self, callback: Callable[[OptimizeResult], Any] | None):
        if callback is not None and not callable(callback):
            raise ProgramError("callback must be callable")
        self.callback = callback
        self.start = time.perf_counter()
        self.history: list[dict[str, Any]] = []

    def record(self, entry: dict[str, Any], x: dict[str, Any]) -> bool:
        """Append ``entry``; call the callback; True if it asks to stop."""
        entry["time"] = time.perf_counter() - self.start
        self.history.append(entry)
        if self.callback is None:
            return False
        info = OptimizeResult(x=x, nit=entry["iteration"], **entry)
        try:
            stop = self.callback(info)
        except StopIteration:
            return True
        return stop is not None and bool(stop)


def _bounds(problem: _Problem, bounds: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``{name: (lo, hi)}`` -> flat lower and upper bounds (±inf where unbounded)."""
    if bounds is None:
        return None
    if not isinstance(bounds, Mapping):
        raise ProgramError("option 'bounds' must be a dict name -> (lo, hi)")
    lo = np.full(problem.n, -np.inf)
    hi = np.full(problem.n, np.inf)
    for key, pair in bounds.items():
        name = problem.fn._input_name(key)
        if name not in problem.shapes:
            raise ProgramError(f"bounds: input {name!r} is not optimized (it is not in x0)")
        try:
            low, high = pair
        except (TypeError, ValueError):
            raise ProgramError(f"bounds[{name!r}] must be a pair (lo, hi)") from None
        sl = slice(problem.offsets[name], problem.offsets[name] + problem.x0[name].size)
        for target, value, fill in ((lo, low, -np.inf), (hi, high, np.inf)):
            arr = np.asarray(fill if value is None else value, dtype=np.float64)
            try:
                target[sl] = np.broadcast_to(arr, problem.shapes[name]).ravel()
            except ValueError:
                raise ProgramError(
                    f"bounds[{name!r}]: shape {arr.shape} does not broadcast to the shape "
                    f"{problem.shapes[name]} of x0[{name!r}]"
                ) from None
    if np.any(lo > hi):
        raise ProgramError("bounds: a lower bound exceeds its upper bound")
    return lo, hi


def _projected_gradient(v: np.ndarray, g: np.ndarray, box) -> float:
    """∞-norm of P(v − g) − v: the gradient itself when there are no bounds."""
    if box is None:
        return float(np.max(np.abs(g), initial=0.0))
    return float(np.max(np.abs(np.clip(v - g, *box) - v), initial=0.0))


# --------------------------------------------------------------------------- gradient

_GRADIENT = {
    "maxiter": 20000,
    "gtol": 1e-5,
    "ftol": 0.0,
    "step": 1.0,
    "initial": "bb",
    "grow": 2.0,
    "c1": 1e-4,
    "shrink": 0.5,
    "max_backtracks": 60,
    "bounds": None,
    "solve": None,
}


def _gradient(problem: _Problem, opts: dict, monitor: _Monitor) -> OptimizeResult:
    """Gradient steps from the multipliers, with a backtracking Armijo line search.

    With g = s∇F(x) = s Σ_i λ_i ∂f_i/∂x (one forward and one adjoint pass) and P the
    projection on the bounds (identity without), each iteration takes

        x⁺ = P(x − t g),   accepted when   φ(x⁺) ≤ φ(x) + c1 gᵀ(x⁺ − x),

    halving t until it is. The first trial t is the Barzilai–Borwein length
    sᵀs / sᵀy of the previous step (s = Δx, y = Δg), or the last accepted step times
    ``grow``; the direction is always the (projected) negative gradient.
    """
    if opts["initial"] not in ("bb", "grow"):
        raise ProgramError("option 'initial' must be 'bb' or 'grow'")
    s = problem.sign
    box = _bounds(problem, opts["bounds"])
    proj = (lambda v: np.clip(v, *box)) if box is not None else (lambda v: v)
    v = proj(problem.pack(problem.x0))
    F, G = problem.evaluate(v)
    phi, g = s * F, s * G
    t = float(opts["step"])
    v_prev = g_prev = None
    status, message = MAXITER, "Maximum number of iterations reached"
    nit = 0
    for k in range(int(opts["maxiter"]) + 1):
        if _projected_gradient(v, g, box) <= opts["gtol"]:
            status, message = CONVERGED, "Converged: projected gradient norm <= gtol"
            break
        if not np.all(np.isfinite(g)):
            status, message = FAILED, "The gradient is not finite"
            break
        if k == int(opts["maxiter"]):
            break
        if v_prev is not None:
            sv, sg = v - v_prev, g - g_prev
            curv = float(sv @ sg)
            t = float(sv @ sv) / curv if opts["initial"] == "bb" and curv > 0 else t * opts["grow"]
        backtracks = 0
        while True:
            trial = proj(v - t * g)
            F_new, G_new = _try(problem, trial)
            accepted = s * F_new <= phi + opts["c1"] * float(g @ (trial - v))
            if accepted or backtracks == int(opts["max_backtracks"]):
                break
            t *= opts["shrink"]
            backtracks += 1
        if not accepted:
            status, message = STALLED, "Line search failed: no step decreased the objective"
            break
        phi_old = phi
        v_prev, g_prev = v, g
        v, F, G = trial, F_new, G_new
        phi, g = s * F, s * G
        nit = k + 1
        entry = {
            "iteration": nit,
            "fun": F,
            "grad_norm": _projected_gradient(v, g, box),
            "step": t,
            "backtracks": backtracks,
            "nfev": problem.nfev,
        }
        if monitor.record(entry, problem.user_x(v)):
            status, message = STOPPED, "Stopped by the callback"
            break
        if phi_old - phi <= opts["ftol"] * max(abs(phi_old), abs(phi), 1.0):
            status, message = CONVERGED, "Converged: relative reduction of the objective <= ftol"
            break
    return problem.finish(v, F, G, status=status, message=message, nit=nit, history=monitor.history)


def _try(problem: _Problem, v: np.ndarray) -> tuple[float, np.ndarray]:
    """F and ∇F at a trial point; (inf, nan) if the forward solve fails or overflows."""
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            F, G = problem.evaluate(v)
    except _SOLVE_FAILURES:
        return np.inf, np.full_like(v, np.nan)
    if not (np.isfinite(F) and np.all(np.isfinite(G))):
        return np.inf, G
    return F, G


class _Guarded:
    """An objective ``v -> (f, g)`` for L-BFGS-B, which reads f = +inf as convergence.

    A non-finite value becomes a finite one above the last finite value, with that
    point's gradient, so that the line search backs off instead of stopping.
    """

    def __init__(self, fun: Callable[[np.ndarray], tuple[float, np.ndarray]]):
        self.fun = fun
        self.good: tuple[float, np.ndarray] | None = None
        self.failures = 0

    def __call__(self, v: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = self.fun(v)
        if np.isfinite(f) and np.all(np.isfinite(g)):
            self.good = (f, g)
            return f, g
        self.failures += 1
        if self.good is None:
            return f, np.nan_to_num(g)
        f_good, g_good = self.good
        return f_good + 10 * (1 + abs(f_good)), g_good


# --------------------------------------------------------------------------- L-BFGS

_LBFGS = {
    "maxiter": 15000,
    "maxfun": 15000,
    "gtol": 1e-5,
    "ftol": 2.2e-9,
    "maxcor": 10,
    "maxls": 20,
    "bounds": None,
    "solve": None,
}


def _lbfgs(problem: _Problem, opts: dict, monitor: _Monitor) -> OptimizeResult:
    """SciPy's L-BFGS-B on φ(x) = s F(x), with ∇φ = s Σ_i λ_i ∂f_i/∂x from the multipliers.

    Each evaluation is one forward and one adjoint pass. At a trial point where the
    forward solve of a cyclic block fails (or overflows), L-BFGS-B is given a finite
    value above the last good one (it would read +inf as convergence), so that its line
    search backs off.
    """
    s = problem.sign
    box = _bounds(problem, opts["bounds"])
    last: dict[str, Any] = {}

    def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
        if not np.array_equal(last["v"], v):
            F, G = _try(problem, v)
            last.update(v=v.copy(), F=F, G=G)
        return s * last["F"], s * last["G"]

    def at(v: np.ndarray) -> tuple[float, np.ndarray]:
        if np.array_equal(last["v"], v):
            return last["F"], last["G"]
        return problem.evaluate(v)

    def callback(intermediate_result: scipy.optimize.OptimizeResult) -> None:
        v = intermediate_result.x
        F, G = at(v)
        entry = {
            "iteration": len(monitor.history) + 1,
            "fun": F,
            "grad_norm": _projected_gradient(v, s * G, box),
            "nfev": problem.nfev,
        }
        if monitor.record(entry, problem.user_x(v)):
            raise StopIteration

    v0 = problem.pack(problem.x0)
    if box is not None:
        v0 = np.clip(v0, *box)
    F0, G0 = problem.evaluate(v0)  # errors at the start are the caller's to see
    last.update(v=v0.copy(), F=F0, G=G0)
    objective = _Guarded(fun)
    res = scipy.optimize.minimize(
        objective,
        v0,
        jac=True,
        method="L-BFGS-B",
        bounds=None if box is None else scipy.optimize.Bounds(*box),
        callback=callback,
        options={k: opts[k] for k in ("maxiter", "maxfun", "gtol", "ftol", "maxcor", "maxls")},
    )
    status = {0: CONVERGED, 1: MAXITER, 2: STALLED}.get(res.status, STOPPED)
    message = "Stopped by the callback" if status == STOPPED else str(res.message)
    if status == STALLED:
        message = f"Line search failed: {message}"
    F, G = at(res.x)
    if not np.isfinite(F):
        status, message = FAILED, f"The forward solve failed at the final point ({message})"
    elif (
        objective.failures
        and status == CONVERGED
        and _projected_gradient(res.x, s * G, box) > opts["gtol"]
    ):
        status, message = (
            STALLED,
            (
                f"{message}, but the gradient is not small: the forward solve failed at "
                f"{objective.failures} trial point(s); try bounds, or method='gradient'"
            ),
        )
    return problem.finish(
        res.x,
        F,
        np.nan_to_num(G),
        status=status,
        message=message,
        nit=int(res.nit),
        history=monitor.history,
    )


# --------------------------------------------------------------------------- full space


class _Space:
    """The full-space unknowns: every scalar intermediate, one copy per sample.

    z is held as an array of shape batch + (n_z,) (entries of the intermediates in
    program order, C order within each), and the multipliers as an array of shape
    batch + (m,): constraint by constraint, an array constraint taking as many slots as
    its target has entries (C order), a scalar constraint one.
    """

    def __init__(self, problem: _Problem):
        ir = problem.ir
        self.batch = problem.batch
        self.nb = int(np.prod(self.batch, dtype=int))
        self.vars = ir.intermediates
        self.zoff: dict[str, int] = {}
        off = 0
        for var in self.vars:
            self.zoff[var.name] = off
            off += var.size
        self.nz = off
        where = {s: self.zoff[v.name] + j for v in self.vars for j, s in enumerate(v.symbols)}
        self.out = where[ir.output]
        self.coff = np.cumsum([0, *(c.size for c in ir.constraints)]).tolist()
        self.m = self.coff[-1]
        self.by_target = {c.target: i for i, c in enumerate(ir.constraints) if c.target is not None}
        self.implicit = {c.label: i for i, c in enumerate(ir.constraints) if c.target is None}

    def slots(self, var: Variable) -> list[int] | None:
        """The multiplier slots of a variable's entries (C order), None unless every
        entry has a defining constraint."""
        if var.matrix is not None:
            i = self.by_target.get(var.matrix)
            return None if i is None else list(range(self.coff[i], self.coff[i + 1]))
        idx = [self.by_target.get(s) for s in var.symbols]
        return None if None in idx else [self.coff[i] for i in idx]

    def split(self, Z: np.ndarray) -> dict[str, np.ndarray]:
        """batch + (n_z,) -> name -> batch + shape."""
        return {
            v.name: Z[..., self.zoff[v.name] : self.zoff[v.name] + v.size].reshape(
                self.batch + v.shape
            )
            for v in self.vars
        }

    def join(self, d: Mapping[str, Any]) -> np.ndarray:
        """name -> batch + shape (broadcastable) -> batch + (n_z,)."""
        Z = np.empty((*self.batch, self.nz))
        for v in self.vars:
            a = np.broadcast_to(np.asarray(d[v.name], dtype=np.float64), self.batch + v.shape)
            Z[..., self.zoff[v.name] : self.zoff[v.name] + v.size] = a.reshape(
                (*self.batch, v.size)
            )
        return Z

    def initial(
        self, problem: _Problem, how: Any, v_x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """z and the DESIGN multipliers λ at x: from one exact solve, zeros, or given z."""
        lam = np.zeros((*self.batch, self.m))
        if isinstance(how, Mapping):
            names = {v.name for v in self.vars}
            unknown = sorted(set(how) - names)
            if unknown:
                raise ProgramError(f"z0: {unknown[0]!r} is not an intermediate of the program")
            missing = [n for n in names if n not in how]
            if missing:
                raise ProgramError(f"z0: no value for intermediate {missing[0]!r}")
            return self.join(how), lam
        if how == "zeros":
            return np.zeros((*self.batch, self.nz)), lam
        if how != "forward":
            raise ProgramError("the start of z must be 'forward', 'zeros' or a dict name -> array")
        sol = problem.fn.solve(problem.inputs(v_x), **problem.solve_options)
        problem.nfev += 1
        problem.njev += 1
        for v in self.vars:
            idx = self.slots(v)
            if v.name in sol.multipliers and idx is not None:
                lam[..., idx] = np.reshape(sol.multipliers[v.name], (*self.batch, v.size))
        for label, i in self.implicit.items():
            lam[..., self.coff[i]] = sol.multipliers[label]
        return self.join(sol.values), lam

    def multipliers(self, lam: np.ndarray) -> dict[str, Any]:
        """batch + (m,) -> the layout of `Solution.multipliers`."""
        out: dict[str, Any] = {}
        for v in self.vars:
            idx = self.slots(v)
            if idx is not None:
                out[v.name] = _user(lam[..., idx].reshape(self.batch + v.shape))
        for label, i in self.implicit.items():
            out[label] = _user(lam[..., self.coff[i]])
        return out

    def model_value(self, Z: np.ndarray) -> float:
        """Σ_b z_N read from the optimizer's z (no forward pass)."""
        return float(np.sum(Z[..., self.out]))


def _finish_lifted(problem, space, x, z_flat, multipliers, *, message: str, **fields):
    """The result of a method over (x, z): the model's own z and λ, and ``fun``/``jac``
    from one exact forward and adjoint pass at x (see `_final_pass`)."""
    Z = z_flat.reshape((*space.batch, space.nz))
    F_model = space.model_value(Z)
    F, G, note = _final_pass(problem, x, F_model)
    return problem.finish(
        x,
        F,
        G,
        message=message + note,
        fun_model=F_model,
        multipliers=space.multipliers(multipliers),
        z={name: _user(a) for name, a in space.split(Z).items()},
        **fields,
    )


def _final_pass(problem: _Problem, v: np.ndarray, F_model: float) -> tuple[float, np.ndarray, str]:
    """The exact F and ∇F at the final x (one forward and one adjoint pass)."""
    try:
        F, G = problem.evaluate(v)
    except _SOLVE_FAILURES as err:
        return (
            F_model,
            np.full(problem.n, np.nan),
            (
                f"; the exact forward pass at the final x failed ({err}), so fun is Σ z_N "
                "from the optimizer's z"
            ),
        )
    return F, G, "; fun and jac from one exact forward and adjoint pass at the final x"


# --------------------------------------------------------------------------- augmented Lagrangian

_AUGMENTED = {
    "maxiter": 50,
    "ctol": 1e-8,
    "gtol": 1e-6,
    "rho": 10.0,
    "rho_factor": 10.0,
    "rho_max": 1e10,
    "shrink": 0.25,
    "inner_gtol": 1e-3,
    "inner_factor": 10.0,
    "inner_maxiter": 500,
    "maxcor": 20,
    "z0": "forward",
    "bounds": None,
    "solve": None,
}


@dataclass(frozen=True)
class _AugmentedProgram:
    """The acyclic program whose output is the per-sample augmented Lagrangian.

    Its inputs are the original inputs, every intermediate (as an input of the same name
    and shape), the multipliers and the penalty ``rho``. The multipliers are one input
    per ``slots`` entry (name, its slots in the `_Space` layout): ``al_mult`` of shape
    (k,) for the k scalar constraints, and one array input of the target's shape per
    array constraint. Its output is s·z_N + Σ_i (⟨μ_i, c_i⟩ + (ρ/2) ⟨c_i, c_i⟩). The
    package differentiates it exactly: the gradient with respect to the original inputs
    and intermediates is ∇_{x,z} L_A, and the gradient with respect to a multiplier
    input is c itself (∂L_A/∂μ_i = c_i). With ρ = 0 it is the Lagrangian ℒ(x, z, μ),
    whose Hessian is the KKT matrix (see `_ArrayKKTLayout`).
    """

    fn: CompiledProgram
    slots: tuple[tuple[str, np.ndarray], ...]
    rho: str

    def multipliers(self, mu: np.ndarray) -> dict[str, np.ndarray]:
        """batch + (m,) -> the multiplier inputs (each batch + its shape)."""
        batch = mu.shape[:-1]
        shapes = self._shapes()
        return {n: mu[..., idx].reshape(batch + shapes[n]) for n, idx in self.slots}

    def residuals(self, grad: Mapping[str, Any], batch: tuple[int, ...], m: int) -> np.ndarray:
        """The gradient with respect to the multiplier inputs, as c: batch + (m,)."""
        c = np.zeros((*batch, m))
        for n, idx in self.slots:
            c[..., idx] = np.reshape(grad[n], (*batch, len(idx)))
        return c

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return {v.name: v.shape for v in self.fn.ir.inputs}


_AUGMENTED_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _augmented_program(fn: CompiledProgram, sign: float) -> _AugmentedProgram:
    per_program = _AUGMENTED_CACHE.setdefault(fn, {})
    if sign in per_program:
        return per_program[sign]
    ir: ProgramIR = fn.ir
    fresh = _namer(ir)

    lp = Program()
    for var in (*ir.inputs, *ir.intermediates):
        lp.input(var.name, shape=var.shape, array=var.matrix is not None)
    rho_name = fresh("al_rho")
    rho = lp.input(rho_name)
    offsets = np.cumsum([0, *(c.size for c in ir.constraints)])
    arrays = {v.matrix: v for v in ir.intermediates if v.matrix is not None}
    scalar = [i for i, c in enumerate(ir.constraints) if c.target not in arrays]
    terms, slots = [], []
    if scalar:
        name = fresh("al_mult")
        mult = lp.input(name, shape=(len(scalar),))
        res = lp.define(
            fresh("al_residual"), sp.Matrix([ir.constraints[i].residual for i in scalar])
        )
        slots.append((name, offsets[scalar]))
        terms += [mult[k] * res[k] + rho / 2 * res[k] ** 2 for k in range(len(scalar))]
    for i, c in enumerate(ir.constraints):
        if c.target in arrays:  # ⟨μ, c⟩ + (ρ/2)⟨c, c⟩ on the whole array
            name = fresh(f"al_mult_{c.label}")
            mult = lp.input(name, shape=arrays[c.target].shape, array=True)
            res = lp.define(fresh(f"al_residual_{c.label}"), c.residual)
            slots.append((name, np.arange(offsets[i], offsets[i + 1])))
            terms.append(lad_sum(lad_mul(mult, res)) + rho / 2 * lad_sum(lad_mul(res, res)))
    terms.append(sp.Integer(int(sign)) * ir.output)
    chunk, level = 32, 0
    while len(terms) > chunk:  # partial sums keep every constraint small
        terms = [
            lp.define(fresh(f"al_sum{level}_{k // chunk}"), sp.Add(*terms[k : k + chunk]))
            for k in range(0, len(terms), chunk)
        ]
        level += 1
    lp.output(lp.define(fresh("al_lagrangian"), sp.Add(*terms)))
    out = _AugmentedProgram(lp.compile(), tuple(slots), rho_name)
    per_program[sign] = out
    return out


def _augmented_lagrangian(problem: _Problem, opts: dict, monitor: _Monitor) -> OptimizeResult:
    """The method of multipliers over the inputs and the intermediates jointly.

    Unknowns v = (x, z), z holding every intermediate of every sample. With
    c(x, z) the residuals (c_i = z_i − f_i, or c_i for an implicit equation) and
    multipliers μ (one per constraint and sample), each outer iteration k minimizes

        L_A(x, z; μ, ρ) = s Σ_b z_N + Σ_{b,i} μ_i c_i + (ρ/2) Σ_{b,i} c_i²

    over (x, z) by L-BFGS-B (bounds on x if given), from the previous (x, z), to an
    inner tolerance ω_k (``inner_gtol``, divided by ``inner_factor`` each iteration down
    to ``gtol``), then updates

        μ ← μ + ρ c,    ρ ← ρ_factor·ρ  if  max|c| > max(shrink·(last max|c|), ctol).

    ρ is raised only when the inner problem was solved to ω_k or stopped at
    ``inner_maxiter``: when the inner line search can no longer decrease L_A (its
    conditioning grows with ρ), a larger ρ would only make that worse. Two inner solves
    in a row without any progress stop the method (status 2).

    After the update, ∇_{x,z} L_A(x, z; μ_old, ρ) = ∇ℒ(x, z, μ_new), so the inner
    gradient norm is the stationarity residual of the ordinary Lagrangian; the method
    stops when that is ≤ gtol and max|c| ≤ ctol. In double precision the reachable
    stationarity is about √(ε |L_A| ρ ‖C‖²): ask for ctol and gtol accordingly.

    The exact gradient of L_A comes from a second program, built and compiled once (see
    `_AugmentedProgram`): its value_and_grad gives ∇_{x,z} L_A and, as the gradient with
    respect to μ, the residuals c. No forward pass of the original program runs during
    the iterations; z starts from one exact solve at x0 (``z0="forward"``, which also
    gives the starting μ = −s λ from the program's adjoint), or from zeros with μ = 0,
    and one exact forward and adjoint pass at the final x gives ``fun`` and ``jac``.
    """
    s = problem.sign
    space = _Space(problem)
    aug = _augmented_program(problem.fn, s)
    n = problem.n
    box = _bounds(problem, opts["bounds"])
    v_x = problem.pack(problem.x0)
    if box is not None:
        v_x = np.clip(v_x, *box)
        box = (
            np.concatenate([box[0], np.full(space.nb * space.nz, -np.inf)]),
            np.concatenate([box[1], np.full(space.nb * space.nz, np.inf)]),
        )
    Z, lam = space.initial(problem, opts["z0"], v_x)
    mu = -s * lam
    rho = float(opts["rho"])
    v = np.concatenate([v_x, Z.ravel()])
    last: dict[str, Any] = {}

    def evaluate(w: np.ndarray) -> tuple[float, np.ndarray]:
        inputs = {
            **problem.unpack(w[:n]),
            **problem.fixed,
            **space.split(w[n:].reshape((*space.batch, space.nz))),
            **aug.multipliers(mu),
            aug.rho: rho,
        }
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            value, grad = aug.fn.value_and_grad(inputs)
        problem.nfev += 1
        problem.njev += 1
        g = np.concatenate([problem.pack(grad), space.join(grad).ravel()])
        L = float(np.sum(value))
        last.update(w=w.copy(), L=L, g=g, c=aug.residuals(grad, space.batch, space.m))
        return L, g

    def at(w: np.ndarray) -> None:
        if "w" not in last or not np.array_equal(last["w"], w):
            evaluate(w)

    omega = float(opts["inner_gtol"])
    prev_cv = np.inf
    inner_total = idle = 0
    status, message = MAXITER, "Maximum number of outer iterations reached"
    nit = 0
    for k in range(1, int(opts["maxiter"]) + 1):
        inner = scipy.optimize.minimize(
            _Guarded(evaluate),
            v,
            jac=True,
            method="L-BFGS-B",
            bounds=None if box is None else scipy.optimize.Bounds(*box),
            options={
                "gtol": max(omega, opts["gtol"]),
                "ftol": 0.0,
                "maxiter": int(opts["inner_maxiter"]),
                "maxfun": 10 * int(opts["inner_maxiter"]),
                "maxcor": int(opts["maxcor"]),
            },
        )
        v = inner.x
        at(v)
        c, gnorm = last["c"], _projected_gradient(v, last["g"], box)
        cv = float(np.max(np.abs(c), initial=0.0))
        inner_total += int(inner.nit)
        nit = k
        if not (np.isfinite(cv) and np.isfinite(gnorm)):
            status, message = FAILED, "The augmented Lagrangian is not finite"
            break
        mu = mu + rho * c
        entry = {
            "iteration": k,
            "fun": space.model_value(v[n:].reshape((*space.batch, space.nz))),
            "grad_norm": gnorm,
            "constraint_violation": cv,
            "penalty": rho,
            "inner_iterations": int(inner.nit),
            "inner_status": int(inner.status),
            "nfev": problem.nfev,
        }
        if cv <= opts["ctol"] and gnorm <= opts["gtol"]:
            monitor.record(entry, problem.user_x(v[:n]))
            status, message = CONVERGED, "Converged: max |c| <= ctol and ‖∇ℒ‖ <= gtol"
            break
        if monitor.record(entry, problem.user_x(v[:n])):
            status, message = STOPPED, "Stopped by the callback"
            break
        idle = idle + 1 if inner.nit == 0 else 0
        if idle == 2:
            status, message = (
                STALLED,
                (
                    "The inner solver made no progress twice: the tolerances are below what "
                    "the penalty's conditioning allows"
                ),
            )
            break
        # A larger penalty only when the inner problem was solved and c did not shrink.
        solved = gnorm <= max(omega, opts["gtol"]) or inner.status == 1
        if solved and cv > max(opts["shrink"] * prev_cv, opts["ctol"]):
            rho = min(rho * opts["rho_factor"], opts["rho_max"])
        prev_cv = cv
        omega = max(omega / opts["inner_factor"], opts["gtol"])
    return _finish_lifted(
        problem,
        space,
        v[:n],
        v[n:],
        -s * mu,
        status=status,
        message=message,
        nit=nit,
        inner_nit=inner_total,
        history=monitor.history,
        maxcv=float(np.max(np.abs(last["c"]), initial=0.0)),
        penalty=rho,
    )


# --------------------------------------------------------------------------- Newton-KKT

_NEWTON = {
    "maxiter": 100,
    "tol": 1e-9,
    "init": "forward",
    "c1": 1e-4,
    "max_backtracks": 40,
    "soc": True,
    "inertia": "reduced",
    "max_reduced": 500,
    "delta_min": 1e-8,
    "delta_max": 1e20,
    "damping": 1e-3,
    "solve": None,
}


@dataclass(frozen=True)
class _KKTCode:
    """Residuals and their sparse first and second derivatives, generated once.

    Over the program's scalar symbols (inputs, then intermediates, renamed v0, v1, …):
    ``residuals(*v)`` returns [c_i]; ``derivatives(*v)`` returns ([∂c_i/∂v_k for each
    (i, k) in ``jac_entries``], [∂²c_i/∂v_k∂v_l for each (i, k, l), k ≤ l, in
    ``hess_entries``]), only the structurally nonzero entries and only with respect to
    the unknowns (optimized inputs and intermediates).
    """

    residuals: Callable[..., list]
    derivatives: Callable[..., tuple[list, list]]
    jac_entries: tuple[tuple[int, int], ...]
    hess_entries: tuple[tuple[int, int, int], ...]

    @property
    def source(self) -> str:
        """The generated NumPy source (SymPy's lambdify with common subexpressions)."""
        import inspect

        return inspect.getsource(self.residuals) + "\n" + inspect.getsource(self.derivatives)


_KKT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _scalar_symbols(ir: ProgramIR) -> list[sp.Symbol]:
    return [s for v in (*ir.inputs, *ir.intermediates) for s in v.symbols]


def _kkt_code(fn: CompiledProgram, optimized: frozenset[str]) -> _KKTCode:
    per_program = _KKT_CACHE.setdefault(fn, {})
    if optimized in per_program:
        return per_program[optimized]
    ir = fn.ir
    symbols = _scalar_symbols(ir)
    index = {s: k for k, s in enumerate(symbols)}
    unknown = {index[s] for v in ir.inputs if v.name in optimized for s in v.symbols}
    unknown.update(index[s] for v in ir.intermediates for s in v.symbols)
    args = [sp.Symbol(f"v{k}", real=True) for k in range(len(symbols))]
    rename = dict(zip(symbols, args, strict=True))
    residuals, firsts, seconds = [], [], []
    jac_entries, hess_entries = [], []
    for i, c in enumerate(ir.constraints):
        r = c.residual
        residuals.append(r.xreplace(rename))
        ks = sorted(index[s] for s in r.free_symbols if index[s] in unknown)
        d1 = {}
        for k in ks:
            d = sp.diff(r, symbols[k])
            if d != 0:
                d1[k] = d
                jac_entries.append((i, k))
                firsts.append(d.xreplace(rename))
        for a, k in enumerate(ks):
            if k not in d1:
                continue
            for ell in ks[a:]:
                d2 = sp.diff(d1[k], symbols[ell])
                if d2 != 0:
                    hess_entries.append((i, k, ell))
                    seconds.append(d2.xreplace(rename))
    modules = ["scipy", "numpy"]
    code = _KKTCode(
        residuals=sp.lambdify(args, residuals, modules=modules, cse=True),
        derivatives=sp.lambdify(args, [firsts, seconds], modules=modules, cse=True),
        jac_entries=tuple(jac_entries),
        hess_entries=tuple(hess_entries),
    )
    per_program[optimized] = code
    return code


class _KKTLayout:
    """Unknowns y = (x, z) and μ as flat vectors; sparse C = ∂c/∂y and H = Σ μ_i ∇²c_i.

    x entries come first (as packed by the problem), then z sample by sample
    (index n_x + b·n_z + q); constraint i of sample b is row b·m + i. An x entry shared
    by the whole batch is one column touched by every sample's constraints.
    """

    def __init__(self, problem: _Problem, space: _Space, code: _KKTCode):
        ir, nb, batch = problem.ir, space.nb, space.batch
        self.code, self.space = code, space
        self.n_x = problem.n
        self.n_y = self.n_x + nb * space.nz
        self.n_c = nb * space.m
        self.cols: list[np.ndarray | None] = []
        self.data: list[np.ndarray | None] = []
        for var in ir.inputs:
            if var.name in problem.shapes:
                lead = problem.shapes[var.name][: len(problem.shapes[var.name]) - len(var.shape)]
                idx = problem.offsets[var.name] + np.arange(problem.x0[var.name].size)
                idx = idx.reshape((*lead, var.size))
                for j in range(var.size):
                    self.cols.append(np.broadcast_to(idx[..., j], batch).ravel())
                    self.data.append(None)
            else:
                arr = np.asarray(problem.fixed[var.name])
                lead = arr.shape[: arr.ndim - len(var.shape)]
                flat = arr.reshape((*lead, var.size))
                for j in range(var.size):
                    self.cols.append(None)
                    self.data.append(np.broadcast_to(flat[..., j], batch).ravel())
        samples = np.arange(nb)
        for q in range(space.nz):
            self.cols.append(self.n_x + samples * space.nz + q)
            self.data.append(None)
        rows = [samples * space.m + i for i in range(space.m)]
        self.jrows = _cat([rows[i] for i, _ in code.jac_entries])
        self.jcols = _cat([self.cols[k] for _, k in code.jac_entries])
        self.hmu = _cat([rows[i] for i, _, _ in code.hess_entries])
        hr = _cat([self.cols[k] for _, k, _ in code.hess_entries])
        hc = _cat([self.cols[ell] for _, _, ell in code.hess_entries])
        off = _cat([np.full(nb, k != ell) for _, k, ell in code.hess_entries]).astype(bool)
        self.hrows = np.concatenate([hr, hc[off]])
        self.hcols = np.concatenate([hc, hr[off]])
        self.hoff = off
        self.gphi = np.zeros(self.n_y)
        self.gphi[self.n_x + samples * space.nz + space.out] = problem.sign

    def _values(self, y: np.ndarray) -> list[np.ndarray]:
        return [y[c] if c is not None else d for c, d in zip(self.cols, self.data, strict=True)]

    def residuals(self, y: np.ndarray) -> np.ndarray:
        """c(y), flat in row order b·m + i."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            r = self.code.residuals(*self._values(y))
        nb = self.space.nb
        return (
            np.stack(
                [np.broadcast_to(np.asarray(e, dtype=np.float64), (nb,)) for e in r], axis=1
            ).ravel()
            if r
            else np.zeros(0)
        )

    def derivatives(self, y: np.ndarray, mu: np.ndarray) -> tuple[sps.csr_matrix, sps.csr_matrix]:
        """C = ∂c/∂y (n_c × n_y) and H = Σ_{b,i} μ_i ∇²c_i (n_y × n_y)."""
        nb = self.space.nb
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            first, second = self.code.derivatives(*self._values(y))
        jd = _cat([np.broadcast_to(np.asarray(e, dtype=np.float64), (nb,)) for e in first])
        hd = _cat([np.broadcast_to(np.asarray(e, dtype=np.float64), (nb,)) for e in second])
        hd = hd * mu[self.hmu]
        C = sps.coo_matrix((jd, (self.jrows, self.jcols)), shape=(self.n_c, self.n_y)).tocsr()
        H = sps.coo_matrix(
            (np.concatenate([hd, hd[self.hoff]]), (self.hrows, self.hcols)),
            shape=(self.n_y, self.n_y),
        ).tocsr()
        return C, H

    def merit(self, y: np.ndarray, c: np.ndarray, nu: float) -> float:
        """The ℓ1 merit φ(y) + ν‖c(y)‖₁ (φ is linear: φ = s Σ_b z_N)."""
        return float(self.gphi @ y + nu * np.sum(np.abs(c)))


class _ArrayKKTLayout:
    """`_KKTLayout` for array programs: C and H from products, not from entries.

    An array constraint is a whole layer, so its scalar residuals are never derived one
    by one. With ρ = 0 the augmented program (`_AugmentedProgram`) is the Lagrangian
    ℒ(x, z, μ) = s z_N + Σ_i ⟨μ_i, c_i⟩ per sample, and its Hessian in w = (x, z, μ) is
    the sample's KKT matrix [[H, Cᵀ], [C, 0]] (s z_N is linear). Each column of it is
    one Hessian-vector product by the rules; all n_w columns of all samples come from
    one vectorized call: the inputs repeated along a leading axis of n_w copies, the
    tangents the identity along it, x copied to every sample so that the products stay
    per sample. Dense per sample (n_w² numbers each): for the small problems this
    method is for. The blocks are placed as `_KKTLayout` places its entries: x columns
    shared by the batch, z columns and constraint rows per sample.
    """

    def __init__(self, problem: _Problem, space: _Space):
        self.problem, self.space = problem, space
        self.aug = _augmented_program(problem.fn, problem.sign)
        batch, nb = space.batch, space.nb
        self.vars = {v.name: v for v in problem.ir.inputs}
        self.n_x = problem.n
        self.n_y = self.n_x + nb * space.nz
        self.n_c = nb * space.m
        samples = np.arange(nb)
        parts = []
        for n in problem.names:  # each sample's x entries -> their columns of y
            var, x0 = self.vars[n], problem.x0[n]
            lead = x0.shape[: x0.ndim - len(var.shape)]
            idx = (problem.offsets[n] + np.arange(x0.size)).reshape((*lead, var.size))
            parts.append(np.broadcast_to(idx, (*batch, var.size)).reshape(nb, var.size))
        parts.append(self.n_x + samples[:, None] * space.nz + np.arange(space.nz))
        self.ycols = np.concatenate(parts, axis=1)  # (nb, n_yl)
        self.n_yl = self.ycols.shape[1]
        self.n_w = self.n_yl + space.m
        self.crows = samples[:, None] * space.m + np.arange(space.m)  # (nb, m)
        self.gphi = np.zeros(self.n_y)
        self.gphi[self.n_x + samples * space.nz + space.out] = problem.sign

    def _inputs(self, y: np.ndarray, mu: np.ndarray, lead: tuple[int, ...]) -> dict:
        """The augmented program's inputs at (y, μ), x copied to every sample, all
        broadcast to lead + batch."""
        problem, space = self.problem, self.space
        shape = (*lead, *space.batch)
        x = {
            n: np.broadcast_to(a, (*space.batch, *self.vars[n].shape))
            for n, a in problem.unpack(y[: self.n_x]).items()
        }
        z = space.split(y[self.n_x :].reshape((*space.batch, space.nz)))
        m = self.aug.multipliers(mu.reshape((*space.batch, space.m)))
        named = {**x, **problem.fixed, **z, **m}
        out = {}
        for n, a in named.items():
            own = self.aug.fn._inputs[n].shape
            out[n] = np.broadcast_to(a, (*shape, *own)) if lead else a
        out[self.aug.rho] = 0.0
        return out

    def residuals(self, y: np.ndarray) -> np.ndarray:
        """c(y), flat in row order b·m + i (the gradient with respect to μ)."""
        names = [n for n, _ in self.aug.slots]
        inputs = self._inputs(y, np.zeros(self.n_c), ())
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            _, grad = self.aug.fn.value_and_grad(inputs, check_finite=False, wrt=names)
        return self.aug.residuals(grad, self.space.batch, self.space.m).ravel()

    def derivatives(self, y: np.ndarray, mu: np.ndarray) -> tuple[sps.csr_matrix, sps.csr_matrix]:
        """C = ∂c/∂y (n_c × n_y) and H = Σ_{b,i} μ_i ∇²c_i (n_y × n_y)."""
        space, nb, n_w, n_yl = self.space, self.space.nb, self.n_w, self.n_yl
        inputs = self._inputs(y, mu, (n_w,))
        eye = np.eye(n_w)
        vectors, k = {}, 0
        for n in [*self.problem.names, *(v.name for v in space.vars)]:
            shape, size = self.aug.fn._inputs[n].shape, self.aug.fn._inputs[n].size
            block = eye[:, k : k + size].reshape((n_w, *(1,) * len(space.batch), *shape))
            vectors[n] = np.broadcast_to(block, (n_w, *space.batch, *shape))
            k += size
        for n, idx in self.aug.slots:
            shape = self.aug.fn._inputs[n].shape
            block = eye[:, n_yl + np.asarray(idx)].reshape((n_w, *(1,) * len(space.batch), *shape))
            vectors[n] = np.broadcast_to(block, (n_w, *space.batch, *shape))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            hv = self.aug.fn.hvp(inputs, vectors, check_finite=False)
        cols = [np.reshape(hv[n], (n_w, nb, -1)) for n in self.problem.names]
        cols += [np.reshape(hv[v.name], (n_w, nb, -1)) for v in space.vars]
        c_part = np.zeros((n_w, nb, space.m))
        for n, idx in self.aug.slots:
            c_part[..., idx] = np.reshape(hv[n], (n_w, nb, len(idx)))
        K = np.concatenate([*cols, c_part], axis=2).transpose(1, 0, 2)  # (nb, n_w, n_w)
        Cb, Hb = K[:, n_yl:, :n_yl], K[:, :n_yl, :n_yl]
        b, i, q = np.nonzero(Cb)
        C = sps.coo_matrix(
            (Cb[b, i, q], (self.crows[b, i], self.ycols[b, q])), shape=(self.n_c, self.n_y)
        ).tocsr()
        b, p, q = np.nonzero(Hb)
        H = sps.coo_matrix(
            (Hb[b, p, q], (self.ycols[b, p], self.ycols[b, q])), shape=(self.n_y, self.n_y)
        ).tocsr()
        self.problem.nfev += 1
        return C, H

    def merit(self, y: np.ndarray, c: np.ndarray, nu: float) -> float:
        """The ℓ1 merit φ(y) + ν‖c(y)‖₁ (φ is linear: φ = s Σ_b z_N)."""
        return float(self.gphi @ y + nu * np.sum(np.abs(c)))


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp)


def _reduced_min_eig(H: sps.spmatrix, C: sps.spmatrix, n_x: int) -> float | None:
    """Smallest eigenvalue of the reduced Hessian ZᵀHZ, Z a basis of the null space of C.

    C = [C_x  C_z] with C_z = ∂c/∂z square (it is I − J, sample by sample); when C_z is
    nonsingular, Z = [I; −C_z⁻¹ C_x] (n_y × n_x), and ZᵀHZ is the Hessian of the
    objective in x along the constraints (at a feasible point with the adjoint's
    multipliers, exactly the Hessian of F). The KKT matrix [[H + δD, Cᵀ], [C, 0]] with
    D = diag(I_x, 0) has the right inertia (n_y positive, n_c negative eigenvalues) exactly
    when Zᵀ(H + δD)Z = ZᵀHZ + δI ≻ 0, i.e. when δ > −λ_min. None if C_z is not square
    or is singular.
    """
    Cz = C[:, n_x:]
    if Cz.shape[0] != Cz.shape[1]:
        return None
    try:
        lu = spla.splu(Cz.tocsc())
    except RuntimeError:
        return None
    Cx = C[:, :n_x].toarray()
    Y = -lu.solve(Cx) if Cx.size else np.zeros((Cz.shape[0], n_x))
    if not np.all(np.isfinite(Y)):
        return None
    Z = np.vstack([np.eye(n_x), Y])
    R = Z.T @ (H @ Z)
    return float(scipy.linalg.eigvalsh((R + R.T) / 2, subset_by_index=[0, 0])[0])


def _newton_kkt(problem: _Problem, opts: dict, monitor: _Monitor) -> OptimizeResult:
    """Newton's method on the stationarity conditions ∇ℒ = 0 in (x, z, μ).

    With y = (x, z), c(y) the residuals of every constraint of every sample, C = ∂c/∂y
    and ℒ = φ(y) + μᵀc(y), φ = s Σ_b z_N (linear in y, so ∇²ℒ = Σ_i μ_i ∇²c_i), each
    iteration solves the KKT system

        [ H + δD   Cᵀ ] [ Δy ]     [ ∇φ ]
        [   C      0  ] [ μ⁺ ] = − [  c ]

    by a sparse LU factorization (SuperLU). The entries of C and H are the symbolic
    first and second derivatives of each constraint, derived once with SymPy and
    generated as NumPy code (lambdify with common subexpressions); on an array program,
    whose constraints are whole layers, they are the columns of the Hessian of its
    Lagrangian program, by Hessian-vector products (`_ArrayKKTLayout`). With every
    sample's z as separate unknowns the system grows with the batch: for small data.

    Inertia correction (SciPy has no sparse LDLᵀ to count the inertia). With
    ``inertia="reduced"``, Z = [I; −C_z⁻¹C_x] is a basis of the null space of C
    (C_z = ∂c/∂z is I − J, square: one sparse LU and n_x solves), and the smallest
    eigenvalue λ_min of the reduced Hessian ZᵀHZ (n_x × n_x, dense) is computed; with
    D = diag(I_x, 0) the KKT matrix has the right inertia (n_y positive, n_c negative
    eigenvalues) iff Zᵀ(H + δD)Z = ZᵀHZ + δI ≻ 0, so δ = 0 if λ_min > 0 and
    δ = max(δ_min, 2|λ_min|) otherwise. The shift acts on the x block only, which leaves
    the z rows (the adjoint equations that determine μ⁺) untouched. When C_z is singular
    or more than ``max_reduced`` entries are optimized, ``"descent"`` is used instead:
    D = I and δ grows (δ_min, then ×10) until the step has positive curvature
    Δyᵀ(H + δI)Δy > 0 — a heuristic, not an inertia count.

    Damping: after a step shortened to α < 1, the next δ is at least
    max(δ, ``damping``)/α (a proximal term on x, like Levenberg–Marquardt); each full step
    divides it by 10, and below δ_min it is dropped, so the last steps are pure Newton.

    Globalization: the ℓ1 merit M(y) = φ(y) + ν‖c(y)‖₁ with ν raised (never lowered) to
    max(‖μ⁺‖∞, (∇φᵀΔy + ½ max(ΔyᵀWΔy, 0)) / (½‖c‖₁)) (Nocedal & Wright, 18.36), which
    makes Δy a descent direction with derivative D = ∇φᵀΔy − ν‖c‖₁. A step α is accepted
    when M(y + αΔy) ≤ M(y) + c1 α D; if the full step is rejected, one second-order
    correction (the same factorization, right-hand side c(y) + c(y + Δy)) is tried
    before backtracking by halves. Then μ ← μ + α(μ⁺ − μ).

    The method stops when the KKT residual max(‖∇φ + Cᵀμ‖∞, ‖c‖∞) ≤ tol; near a
    solution with positive definite reduced Hessian the full steps are taken and the
    residual falls quadratically (it is recorded as ``kkt_residual`` in the history).
    No forward pass runs during the iterations: z and μ start from one exact solve at x0
    (``init="forward"``, μ = −s λ) or from zeros, and one exact forward and adjoint pass
    at the final x gives ``fun`` and ``jac``.
    """
    if opts["inertia"] not in ("reduced", "descent"):
        raise ProgramError("option 'inertia' must be 'reduced' or 'descent'")
    if opts["init"] not in ("forward", "zeros"):
        raise ProgramError("option 'init' must be 'forward' or 'zeros'")
    s = problem.sign
    space = _Space(problem)
    lay = (
        _ArrayKKTLayout(problem, space)
        if problem.ir.has_arrays
        else _KKTLayout(problem, space, _kkt_code(problem.fn, frozenset(problem.names)))
    )
    n_x, n_y = lay.n_x, lay.n_y
    v_x = problem.pack(problem.x0)
    Z, lam = space.initial(problem, opts["init"], v_x)
    y = np.concatenate([v_x, Z.ravel()])
    mu = (-s * lam).ravel()
    reduced = opts["inertia"] == "reduced" and n_x <= int(opts["max_reduced"])
    c1, delta_min, delta_max = float(opts["c1"]), float(opts["delta_min"]), opts["delta_max"]

    def state(y: np.ndarray, mu: np.ndarray, c: np.ndarray):
        C, H = lay.derivatives(y, mu)
        problem.njev += 1
        grad_l = lay.gphi + C.T @ mu
        stat = float(np.max(np.abs(grad_l), initial=0.0))
        cv = float(np.max(np.abs(c), initial=0.0))
        return C, H, stat, cv

    c = lay.residuals(y)
    problem.nfev += 1
    C, H, stat, cv = state(y, mu, c)
    nu = float(np.max(np.abs(mu), initial=0.0))
    delta_last = damping = 0.0
    damping_min = float(opts["damping"])
    status, message = MAXITER, "Maximum number of iterations reached"
    nit = 0
    # δ goes on the x block only when the reduced test is exact (it shifts ZᵀHZ by δI and
    # leaves the z rows, which determine μ⁺, untouched); on every y otherwise.
    shift = sps.identity(n_y, format="csr")
    shift_x = sps.diags(np.r_[np.ones(n_x), np.zeros(n_y - n_x)], format="csr")
    for k in range(int(opts["maxiter"]) + 1):
        kkt = max(stat, cv)
        if not np.isfinite(kkt):
            status, message = FAILED, "The KKT residual is not finite"
            break
        if kkt <= opts["tol"]:
            status, message = CONVERGED, "Converged: KKT residual <= tol"
            break
        if k == int(opts["maxiter"]):
            break
        # ---- inertia correction and the Newton step
        lam_min = _reduced_min_eig(H, C, n_x) if reduced else None
        if lam_min is not None:
            delta = 0.0 if lam_min > 0 else max(delta_min, 2 * abs(lam_min))
        else:
            delta = 0.0 if delta_last == 0 else max(delta_min, delta_last / 4)
        delta = max(delta, damping)
        rhs = -np.concatenate([lay.gphi, c])
        while True:
            W = H + delta * (shift_x if lam_min is not None else shift) if delta else H
            K = sps.bmat([[W, C.T], [C, None]], format="csc")
            try:
                lu = spla.splu(K)
                sol = lu.solve(rhs)
            except RuntimeError:
                sol = None
            ok = sol is not None and bool(np.all(np.isfinite(sol)))
            if ok:
                dy, mu_plus = sol[:n_y], sol[n_y:]
                curv = float(dy @ (W @ dy))
                if lam_min is not None or curv > 1e-12 * float(dy @ dy):
                    break
            if delta >= delta_max:
                lu = None
                break
            delta = delta_min if delta == 0 else 10 * delta
        if lu is None:
            status, message = FAILED, "The KKT matrix is singular for every inertia correction"
            break
        delta_last = delta
        # ---- merit function, line search with one second-order correction
        c_l1 = float(np.sum(np.abs(c)))
        slope = float(lay.gphi @ dy)
        if c_l1 > 0:
            nu_req = (slope + 0.5 * max(curv, 0.0)) / (0.5 * c_l1)
            nu = max(nu, nu_req, float(np.max(np.abs(mu_plus), initial=0.0))) + 1e-8
        D = slope - nu * c_l1
        M0 = lay.merit(y, c, nu)
        slack = 10 * np.finfo(float).eps * max(1.0, abs(M0))
        alpha, soc, accepted = 1.0, False, False
        for backtracks in range(int(opts["max_backtracks"]) + 1):
            y_t = y + alpha * dy
            c_t = lay.residuals(y_t)
            problem.nfev += 1
            if lay.merit(y_t, c_t, nu) <= M0 + c1 * alpha * D + slack:
                mu_t = mu + alpha * (mu_plus - mu)
                accepted = True
                break
            if backtracks == 0 and opts["soc"]:
                sol = lu.solve(-np.concatenate([lay.gphi, c + c_t]))
                y_s = y + sol[:n_y]
                c_s = lay.residuals(y_s)
                problem.nfev += 1
                if np.all(np.isfinite(sol)) and lay.merit(y_s, c_s, nu) <= M0 + c1 * D + slack:
                    y_t, c_t, mu_t, soc, accepted = y_s, c_s, sol[n_y:], True, True
                    break
            alpha /= 2
        if not accepted:
            status, message = STALLED, "Line search failed: no step decreased the merit function"
            break
        y, c, mu = y_t, c_t, mu_t
        C, H, stat, cv = state(y, mu, c)
        # Damping: a shortened step asks for a stronger proximal term next time, a full
        # step for a weaker one (gone after a few full steps, so the end is pure Newton).
        damping = damping / 10 if alpha == 1 else max(delta, damping_min) / alpha
        damping = 0.0 if damping < delta_min else damping
        nit = k + 1
        entry = {
            "iteration": nit,
            "fun": space.model_value(y[n_x:].reshape((*space.batch, space.nz))),
            "grad_norm": stat,
            "constraint_violation": cv,
            "kkt_residual": max(stat, cv),
            "step": alpha,
            "backtracks": backtracks,
            "soc": soc,
            "delta": delta,
            "penalty": nu,
            "nfev": problem.nfev,
        }
        if monitor.record(entry, problem.user_x(y[:n_x])):
            status, message = STOPPED, "Stopped by the callback"
            break
    return _finish_lifted(
        problem,
        space,
        y[:n_x],
        y[n_x:],
        -s * mu.reshape((*space.batch, space.m)),
        status=status,
        message=message,
        nit=nit,
        history=monitor.history,
        maxcv=cv,
        kkt_residual=max(stat, cv),
    )


# --------------------------------------------------------------------------- registry

_METHODS: dict[str, tuple[dict, Callable[[_Problem, dict, _Monitor], OptimizeResult]]] = {
    "gradient": (_GRADIENT, _gradient),
    "lbfgs": (_LBFGS, _lbfgs),
    "augmented-lagrangian": (_AUGMENTED, _augmented_lagrangian),
    "newton-kkt": (_NEWTON, _newton_kkt),
}

_TOL_KEYS = {
    "gradient": ("gtol",),
    "lbfgs": ("ftol", "gtol"),
    "augmented-lagrangian": ("ctol", "gtol"),
    "newton-kkt": ("tol",),
}


# --------------------------------------------------------------------------- interior point

_INTERIOR = {**IP_OPTIONS, "bounds": None, "solve": None}


@dataclass(frozen=True)
class _ConstraintProgram:
    """The program whose output is w_0 z_N + Σ_j w_j g_j, with the weights w an input.

    The same inputs, intermediates and definitions as the program, the constraints g_j
    of `Program.subject_to` (each written g_j ≤ 0 or g_j = 0), and one more input
    ``weights`` of shape (1 + m,). The package differentiates it like any program, so:

    * with w = e_k, its value is z_N (k = 0) or g_k, and its gradient ∇z_N or ∇g_k
      (all m + 1 at once: a batch of m + 1 copies with the rows of the identity);
    * with w = (s σ, y), its Hessian in x is that of the (scaled) Lagrangian
      s σ F + Σ_j y_j g_j of the interior-point method, by Hessian-vector products;
    * with w = (1, s y) at the optimum, its gradient with respect to the data is
      ∂F*/∂p by the envelope theorem.

    The forward pass eliminates the definitions (z = z(x)): the interior-point method
    works in the space of the optimized inputs only.
    """

    fn: CompiledProgram
    weights: str
    labels: tuple[str, ...]
    is_eq: np.ndarray


_CONSTRAINT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _constraint_program(fn: CompiledProgram) -> _ConstraintProgram:
    cached = _CONSTRAINT_CACHE.get(fn)
    if cached is not None:
        return cached
    ir: ProgramIR = fn.ir
    fresh = _namer(ir)

    lp = Program(progress=False)
    for var in ir.inputs:
        lp.input(var.name, shape=var.shape, array=var.matrix is not None)
    for var in ir.intermediates:
        lp.var(var.name, shape=var.shape, array=var.matrix is not None)
    by_target = {c.target: c for c in ir.constraints if c.target is not None}
    for var in ir.intermediates:
        if var.matrix is not None:
            if var.matrix in by_target:
                lp.define(var.name, by_target[var.matrix].expr)
        elif all(s in by_target for s in var.symbols):
            exprs = [by_target[s].expr for s in var.symbols]
            if var.shape == ():
                lp.define(var.name, exprs[0])
            else:
                rows, cols = (var.shape[0], 1) if len(var.shape) == 1 else var.shape
                lp.define(var.name, sp.Matrix(rows, cols, exprs))
    for c in ir.constraints:
        if c.target is None:
            lp.equation(c.expr, 0, name=c.label)
    m = len(ir.subject_to)
    weights = fresh("ip_weights")
    w = lp.input(weights, shape=(1 + m,))
    total = w[0] * ir.output + sp.Add(*[w[1 + j] * g.g for j, g in enumerate(ir.subject_to)])
    lp.output(lp.define(fresh("ip_lagrangian"), total))
    out = _ConstraintProgram(
        lp.compile(),
        weights,
        tuple(g.label for g in ir.subject_to),
        np.array([g.is_equality for g in ir.subject_to], dtype=bool),
    )
    _CONSTRAINT_CACHE[fn] = out
    return out


def _input_dependencies(ir: ProgramIR) -> dict[str, frozenset[str]]:
    """Variable name -> the names of the inputs its value depends on (through the
    definitions; an implicit equation makes every unknown it reads depend on all it
    reads). Iterative: passes over the constraints until nothing changes."""
    owner: dict[Any, str] = {}
    for var in (*ir.inputs, *ir.intermediates):
        for sym in var.symbols if var.matrix is None else (var.matrix,):
            owner[sym] = var.name
    deps: dict[str, set[str]] = {v.name: {v.name} for v in ir.inputs}
    deps.update({v.name: set() for v in ir.intermediates})
    edges = []
    for c in ir.constraints:
        reads = {owner[s] for s in c.expr.free_symbols if s in owner}
        if c.target is not None:
            writes = {owner[c.target]}
        else:
            writes = {r for r in reads if r not in {v.name for v in ir.inputs}}
        edges.append((sorted(reads), sorted(writes)))
    changed = True
    while changed:
        changed = False
        for reads, writes in edges:
            got = set().union(*(deps[r] for r in reads)) if reads else set()
            for w in writes:
                if not got <= deps[w]:
                    deps[w] |= got
                    changed = True
    return {k: frozenset(v) for k, v in deps.items()}


class _ReducedNLP:
    """F(x) and the constraints g(x, z(x)) of a program, with exact derivatives.

    The optimized inputs are the flat vector v of `_Problem`; bounds become the
    inequalities v_k − hi_k ≤ 0 and lo_k − v_k ≤ 0 (after the program's constraints).
    Every evaluation is a call of `_ConstraintProgram`: values and the Jacobian from one
    batched ``value_and_grad`` (rows: the objective, then each constraint), the Hessian
    of the Lagrangian from one batched ``hvp`` along the n unit vectors.

    Batched data: a constraint whose value depends (through the definitions) on an
    input with batch axes — batched data in ``fixed``, or an optimized input given with
    batch axes — is one constraint per sample, with the batch shape of those inputs
    (``shapes[j]``; ``()`` for a constraint of the parameters alone, which is one
    constraint). Its rows of c and J are the samples in C order, taken from one
    evaluation over the whole batch: the optimized inputs are copied to every sample so
    that the gradient comes per sample, and J is assembled sparse (each row touches
    the shared parameters and its own sample's entries). The Hessian of the Lagrangian
    takes the multipliers as per-sample weights.
    """

    def __init__(self, problem: _Problem, box: tuple[np.ndarray, np.ndarray] | None):
        self.problem = problem
        self.cp = _constraint_program(problem.fn)
        self.m = len(self.cp.labels)
        n = problem.n
        self.n = n
        batch = problem.batch
        self.nb = int(np.prod(batch, dtype=int))
        # the batch shape of each constraint, and which samples of the batch are its rows
        leads = {
            n_: problem.x0[n_].shape[: problem.x0[n_].ndim - len(problem.ir_shapes[n_])]
            for n_ in problem.names
        }
        for name, a in problem.fixed.items():
            a = np.asarray(a)
            leads[name] = a.shape[: a.ndim - len(problem.ir_shapes[name])]
        deps = _input_dependencies(problem.ir) if batch != () else {}
        owner = {}
        for var in (*problem.ir.inputs, *problem.ir.intermediates):
            for sym in var.symbols if var.matrix is None else (var.matrix,):
                owner[sym] = var.name
        flat = np.arange(self.nb).reshape(batch)
        self.shapes: list[tuple[int, ...]] = []
        self.samples: list[np.ndarray] = []
        for side in problem.ir.subject_to:
            used = set().union(*(deps.get(owner.get(s), ()) for s in side.free_symbols))
            shape = np.broadcast_shapes(*(leads[u] for u in sorted(used) if leads.get(u)))
            padded = (1,) * (len(batch) - len(shape)) + tuple(shape)
            pick = tuple(slice(None) if k != 1 else slice(0, 1) for k in padded)
            self.shapes.append(tuple(shape))
            self.samples.append(flat[pick].ravel())
        sizes = [s_.size for s_ in self.samples]
        self.row_offsets = np.cumsum([0, *sizes]).tolist()
        self.m_rows = int(self.row_offsets[-1])
        # the columns of v each sample's entries of each optimized input occupy
        self.cols: dict[str, np.ndarray] = {}
        for name in problem.names:
            own = problem.ir_shapes[name]
            idx = problem.offsets[name] + np.arange(problem.x0[name].size)
            idx = np.broadcast_to(idx.reshape(problem.x0[name].shape), (*batch, *own))
            self.cols[name] = idx.reshape(self.nb, -1)
        self.shared_names = [n_ for n_ in problem.names if leads[n_] == ()]
        self.batched_names = [n_ for n_ in problem.names if leads[n_] != ()]
        self.structured = bool(self.batched_names) and all(
            leads[n_] == batch for n_ in self.batched_names
        )
        lo, hi = box if box is not None else (np.full(n, -np.inf), np.full(n, np.inf))
        self.upper, self.lower = np.flatnonzero(np.isfinite(hi)), np.flatnonzero(np.isfinite(lo))
        self.hi, self.lo = hi[self.upper], lo[self.lower]
        nbounds = self.upper.size + self.lower.size
        self.J_bounds = sps.csr_matrix(
            (
                np.r_[np.ones(self.upper.size), -np.ones(self.lower.size)],
                (np.arange(nbounds), np.r_[self.upper, self.lower]),
            ),
            shape=(nbounds, n),
        )
        if self.nb == 1:  # no batch: J dense, as small problems have it
            self.J_bounds = self.J_bounds.toarray()
        is_eq = [
            np.full(k, g.is_equality) for k, g in zip(sizes, problem.ir.subject_to, strict=True)
        ]
        self.is_eq = np.concatenate([*is_eq, np.zeros(nbounds, dtype=bool)])

    def row_names(self, j: int) -> list[str]:
        """The names of constraint j's rows: ``g1``, or ``g1[0]``, ``g1[1]``, … per sample."""
        label, shape = self.cp.labels[j], self.shapes[j]
        if shape == ():
            return [label]
        return [f"{label}[{', '.join(map(str, i))}]" for i in np.ndindex(*shape)]

    def per_constraint(self, rows: np.ndarray) -> dict[str, Any]:
        """The first m_rows entries (one per constraint row) -> name -> float or array
        with the constraint's batch shape."""
        out = {}
        for j, label in enumerate(self.cp.labels):
            part = rows[self.row_offsets[j] : self.row_offsets[j + 1]]
            out[label] = float(part[0]) if self.shapes[j] == () else part.reshape(self.shapes[j])
        return out

    def _bound_values(self, v: np.ndarray) -> np.ndarray:
        return np.concatenate([v[self.upper] - self.hi, self.lo - v[self.lower]])

    def _weights(self, k: int, rows: np.ndarray | None, w0: float) -> np.ndarray:
        """The weights input for a batch of k copies: (k, *batch, 1 + m). ``rows`` None:
        copy i has the unit weight e_i on every sample; else every copy has w0 and, for
        constraint j, its rows' values at its samples (0 at the other samples)."""
        batch = self.problem.batch
        if rows is None:
            w = np.broadcast_to(np.eye(k)[:, None, :], (k, self.nb, k))
        else:
            w = np.zeros((self.nb, 1 + self.m))
            w[:, 0] = w0
            for j in range(self.m):
                w[self.samples[j], 1 + j] = rows[self.row_offsets[j] : self.row_offsets[j + 1]]
            w = np.broadcast_to(w, (k, self.nb, 1 + self.m))
        return w.reshape((k, *batch, -1))

    def _lift(self, v: np.ndarray, k: int, weights: np.ndarray, per_sample: bool) -> dict:
        """The inputs for a batch of k copies of v: x broadcast along a new first axis
        (and, ``per_sample``, to every sample, so that gradients come per sample), the
        weights (k, *batch, 1 + m), and the data as given."""
        x = self.problem.unpack(v)
        batch = self.problem.batch
        out: dict[str, Any] = {}
        for name, a in x.items():
            own = self.problem.ir_shapes[name]
            lead = a.ndim - len(own)
            a = a.reshape((1,) * (1 + len(batch) - lead) + a.shape)
            shape = (k, *batch, *own) if per_sample else (k, *a.shape[1:])
            out[name] = np.broadcast_to(a, shape)
        return {**out, **self.problem.fixed, self.cp.weights: weights}

    def _rows(self, grad: Mapping[str, Any], k: int) -> np.ndarray:
        return np.concatenate([np.reshape(grad[n], (k, -1)) for n in self.problem.names], axis=1)

    def _constraint_rows(self, value: np.ndarray) -> np.ndarray:
        """(k, nb) values -> the constraint rows g_j at their samples."""
        return np.concatenate(
            [value[1 + j, self.samples[j]] for j in range(self.m)] or [np.zeros(0)]
        )

    def fun(self, v: np.ndarray) -> tuple[float, np.ndarray]:
        k = 1 + self.m
        try:
            with np.errstate(all="ignore"), _quiet():
                inputs = self._lift(v, k, self._weights(k, None, 0.0), per_sample=False)
                value = self.cp.fn.value(inputs, check_finite=False)
        except _SOLVE_FAILURES:
            return np.inf, np.full(self.is_eq.size, np.nan)
        value = np.reshape(value, (k, self.nb))
        self.problem.nfev += 1
        f = self.problem.sign * float(np.sum(value[0]))
        return f, np.concatenate([self._constraint_rows(value), self._bound_values(v)])

    def jac(self, v: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, Any]:
        k, nb, names = 1 + self.m, self.nb, self.problem.names
        with np.errstate(all="ignore"), _quiet():
            value, grad = self.cp.fn.value_and_grad(
                self._lift(v, k, self._weights(k, None, 0.0), per_sample=True),
                check_finite=False,
                wrt=names,
            )
        self.problem.njev += 1
        value = np.reshape(value, (k, nb))
        s = self.problem.sign
        f = s * float(np.sum(value[0]))
        c = np.concatenate([self._constraint_rows(value), self._bound_values(v)])
        if nb == 1:  # no batch: the rows of the gradients are those of J
            rows = self._rows(grad, k)
            return f, s * rows[0], c, np.vstack([rows[1:], self.J_bounds])
        per = {n: np.reshape(grad[n], (k, nb, -1)) for n in names}
        g = np.zeros(self.n)
        for n in names:  # ∇F: the per-sample gradients summed into their columns
            g += np.bincount(self.cols[n].ravel(), per[n][0].ravel(), minlength=self.n)
        rows, cols, data = [], [], []
        for j in range(self.m):
            pick = self.samples[j]
            r = self.row_offsets[j] + np.arange(pick.size)
            for n in names:
                width = self.cols[n].shape[1]
                rows.append(np.repeat(r, width))
                cols.append(self.cols[n][pick].ravel())
                data.append(per[n][1 + j, pick].ravel())
        J = sps.coo_matrix(
            (_cat(data).astype(np.float64), (_cat(rows), _cat(cols))),
            shape=(self.m_rows, self.n),
        ).tocsr()
        return f, s * g, c, sps.vstack([J, self.J_bounds]).tocsr()

    def hess(self, v: np.ndarray, sigma: float, y: np.ndarray) -> Any:
        if self.structured:
            return self._structured_hess(v, sigma, y)
        n = self.n
        weights = self._weights(n, y[: self.m_rows], self.problem.sign * sigma)
        inputs = self._lift(v, n, weights, per_sample=False)
        eye, vectors, off = np.eye(n), {}, 0
        for name in self.problem.names:
            size = self.problem.x0[name].size
            vectors[name] = eye[:, off : off + size].reshape(inputs[name].shape)
            off += size
        with np.errstate(all="ignore"), _quiet():
            hv = self.cp.fn.hvp(inputs, vectors, check_finite=False)
        H = self._rows(hv, n)
        return (H + H.T) / 2

    def _structured_hess(self, v: np.ndarray, sigma: float, y: np.ndarray) -> sps.csr_matrix:
        """The Hessian of the Lagrangian when optimized inputs carry the batch axes (one
        variable per sample, u_b) beside shared ones θ: sample b reads only θ and u_b,
        so W is θθ dense, θu_b per sample and u_b u_b block diagonal. One batched
        ``hvp`` with n_θ + Σ_u size(u) tangents instead of n: e_p on θ gives W[θ, θ_p]
        and every W[u_b, θ_p]; e_q on the entry q of every u_b at once gives
        W[u_b, u_b q] for all b (the blocks do not overlap). Sparse."""
        shared, batched = self.shared_names, self.batched_names
        widths = {n_: int(np.prod(self.problem.ir_shapes[n_], dtype=int)) for n_ in batched}
        n_theta = sum(self.problem.x0[n_].size for n_ in shared)
        T = n_theta + sum(widths.values())
        weights = self._weights(T, y[: self.m_rows], self.problem.sign * sigma)
        inputs = self._lift(v, T, weights, per_sample=False)
        eye, vectors, off = np.eye(T), {}, 0
        for name in shared:
            size = self.problem.x0[name].size
            vectors[name] = eye[:, off : off + size].reshape(inputs[name].shape)
            off += size
        lead = (1,) * len(self.problem.batch)
        for name in batched:  # the same tangent for the entry of every sample
            block = eye[:, off : off + widths[name]]
            block = block.reshape((T, *lead, *self.problem.ir_shapes[name]))
            vectors[name] = np.broadcast_to(block, inputs[name].shape)
            off += widths[name]
        with np.errstate(all="ignore"), _quiet():
            hv = self.cp.fn.hvp(inputs, vectors, check_finite=False)
        rows, cols, data = [], [], []
        theta_cols = (
            np.concatenate([self.cols[n_][0] for n_ in shared]) if shared else np.zeros(0, int)
        )
        for name in shared:  # W[θ, θ_p]
            r = hv[name].reshape(T, -1)[:n_theta]  # (p, entries of name)
            pp, ee = np.nonzero(r)
            rows.append(self.cols[name][0][ee])
            cols.append(theta_cols[pp])
            data.append(r[pp, ee])
        for name in batched:
            r = hv[name].reshape(T, self.nb, -1)  # (tangent, sample, entries of name)
            ucol = self.cols[name]  # (nb, width)
            # W[u_b, θ_p] and its transpose
            pp, bb, ee = np.nonzero(r[:n_theta])
            rows += [ucol[bb, ee], theta_cols[pp]]
            cols += [theta_cols[pp], ucol[bb, ee]]
            data += [r[:n_theta][pp, bb, ee]] * 2
            # W[u_b, u'_b q] for the tangents of every batched input u'
            t2 = n_theta
            for other in batched:
                w = widths[other]
                qq, bb, ee = np.nonzero(r[t2 : t2 + w])
                rows.append(ucol[bb, ee])
                cols.append(self.cols[other][bb, qq])
                data.append(r[t2 : t2 + w][qq, bb, ee])
                t2 += w
        W = sps.coo_matrix(
            (_cat(data).astype(float), (_cat(rows), _cat(cols))), shape=(self.n, self.n)
        ).tocsr()
        return ((W + W.T) / 2).tocsr()

    def sensitivity(self, v: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """∂F*/∂p for each data input p: the gradient of F + s Σ_j y_j g_j (envelope)."""
        data = list(self.problem.fixed)
        if not data:
            return {}
        w = self._weights(1, self.problem.sign * y[: self.m_rows], 1.0)[0]
        inputs = {**self.problem.inputs(v), self.cp.weights: w}
        _, grad = self.cp.fn.value_and_grad(inputs, wrt=data, **self.problem.solve_options)
        return {n: _user(grad[n]) for n in data}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Trial points may overflow: the interior-point method handles it, no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteWarning)
        yield


def _push_inside(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, kappa: float) -> np.ndarray:
    """v moved into [lo + p_lo, hi − p_hi], p = min(κ max(1, |bound|), κ (hi − lo))
    (IPOPT's bound_push and bound_frac, both κ)."""
    width = hi - lo
    with np.errstate(invalid="ignore"):
        p_lo = np.minimum(kappa * np.maximum(1.0, np.abs(lo)), kappa * width)
        p_hi = np.minimum(kappa * np.maximum(1.0, np.abs(hi)), kappa * width)
    low = np.where(np.isfinite(lo), lo + np.nan_to_num(p_lo), -np.inf)
    high = np.where(np.isfinite(hi), hi - np.nan_to_num(p_hi), np.inf)
    with np.errstate(invalid="ignore"):
        middle = (lo + hi) / 2
    return np.where(low <= high, np.clip(v, low, high), middle)


def _interior_point(problem: _Problem, opts: dict, monitor: _Monitor) -> OptimizeResult:
    """A primal-dual interior-point method in the space of the optimized inputs.

    The problem is min s·F(x) subject to g_j(x, z(x)) ≤ 0 or = 0, the constraints of
    `Program.subject_to` (and the bounds), with z(x) the forward pass: the definitions
    are eliminated (reduced space), so every iterate satisfies them exactly and the
    unknowns are the optimized inputs only. F, every g_j, their gradients and the exact
    Hessian of the Lagrangian s σ F + Σ_j y_j g_j come from one auxiliary program
    (`_ConstraintProgram`) through the package's own adjoint and second-order adjoint
    passes. The iteration (barrier, slacks, dense LDLᵀ with inertia correction, ℓ1
    merit line search with the fraction-to-boundary rule, infeasibility and
    unboundedness detection) is `lagrangian_ad.using._interior.interior_point`.

    The multipliers reported satisfy ∇F + Σ_j μ_j ∇g_j = 0 for `minimize` and
    ∇F = Σ_j μ_j ∇g_j for `maximize` (the μ of `Program.lagrangian`), μ_j ≥ 0 for
    inequalities in both cases; ``sensitivity`` is ∂F*/∂p = ∂/∂p (F + s Σ_j μ_j g_j).
    """
    box = _bounds(problem, opts.pop("bounds"))
    nlp = _ReducedNLP(problem, box)
    v0 = problem.pack(problem.x0)

    def record(entry: dict[str, Any], v: np.ndarray) -> bool:
        entry["fun"] = problem.sign * entry["fun"]
        entry["nfev"] = problem.nfev
        return monitor.record(entry, problem.user_x(v))

    v_user = v0
    if box is not None:  # start strictly inside the bounds, as IPOPT does (bound_push)
        v0 = _push_inside(v0, *box, float(opts["bound_push"]))
    problem.evaluate(v0)  # errors at the start are the caller's to see
    is_bound = np.arange(nlp.is_eq.size) >= nlp.m_rows
    try:  # IPOPT scales at the user's start, before it is pushed inside the bounds
        finite = bool(np.all(np.isfinite(nlp.jac(v_user)[1])))
    except _SOLVE_FAILURES:
        finite = False
    scale_at = v_user if finite else v0
    r = interior_point(nlp.fun, nlp.jac, nlp.hess, v0, nlp.is_eq, opts, record, is_bound, scale_at)
    if r.status == FAILED and r.nit == 0:  # not finite at the start: say which constraint
        _check_start(nlp, v0)
    m = nlp.m_rows
    try:
        F, G = problem.evaluate(r.x)
    except _SOLVE_FAILURES:
        F, G = np.nan, np.full(problem.n, np.nan)
    multipliers = nlp.per_constraint(r.y)
    mu_hi = np.zeros(problem.n)
    mu_lo = np.zeros(problem.n)
    mu_hi[nlp.upper] = r.y[m : m + nlp.upper.size]
    mu_lo[nlp.lower] = r.y[m + nlp.upper.size :]
    extra: dict[str, Any] = {}
    if box is not None:
        lo_d, hi_d = problem.unpack(mu_lo), problem.unpack(mu_hi)
        extra["bound_multipliers"] = {n: (_user(lo_d[n]), _user(hi_d[n])) for n in problem.names}
    sensitivity = {}
    if r.status == CONVERGED:
        sensitivity = nlp.sensitivity(r.x, r.y)
    return problem.finish(
        r.x,
        F,
        np.nan_to_num(G),
        status=r.status,
        message=r.message,
        nit=r.nit,
        nhev=r.nhev,
        multipliers=multipliers,
        kkt=r.kkt,
        maxcv=r.kkt["feasibility"],
        sensitivity=sensitivity,
        constraints=nlp.per_constraint(r.c),
        history=monitor.history,
        **extra,
    )


def _check_start(nlp: _ReducedNLP, v0: np.ndarray) -> None:
    """A constraint that is not finite at the start is the caller's error: name it (and
    its sample). Called when the method failed at once, so that a run that starts well
    pays no evaluation for it."""
    _, c = nlp.fun(v0)
    bad = np.flatnonzero(~np.isfinite(c[: nlp.m_rows]))
    if not bad.size:
        return
    j = int(np.searchsorted(nlp.row_offsets, bad[0], side="right") - 1)
    name = nlp.row_names(j)[bad[0] - nlp.row_offsets[j]]
    raise ProgramError(
        f"constraint {name!r} is not finite at the start (value {c[bad[0]]}); "
        "give a start (x0) and data where every constraint is defined"
        + (f" ({bad.size} constraint rows are not finite)" if bad.size > 1 else "")
    )


_METHODS["interior-point"] = (_INTERIOR, _interior_point)
_TOL_KEYS["interior-point"] = ("tol",)


# --------------------------------------------------------------------------- training methods


def _lifted(run: Callable[[Lifted, dict, _Monitor], OptimizeResult]):
    """A method of `_training` on the lifted problem: z, μ and L_A as above."""

    def method(problem: _Problem, opts: dict, monitor: _Monitor) -> OptimizeResult:
        aug = _augmented_program(problem.fn, problem.sign)
        return run(Lifted(problem, _Space(problem), aug, _finish_lifted), opts, monitor)

    return method


for _name, (_defaults, _run, _tol_keys) in TRAINING.items():
    _METHODS[_name] = ({**_defaults, "solve": None}, _lifted(_run))
    _TOL_KEYS[_name] = _tol_keys


def _namer(ir: ProgramIR) -> Callable[[str], str]:
    """Names for the variables of a program derived from ``ir``: ``base``, or ``base_k``
    where that is taken by a variable, a constraint or a constraint of subject_to."""
    taken = {v.name for v in (*ir.inputs, *ir.intermediates)}
    taken.update(c.label for c in ir.constraints)
    taken.update(g.label for g in ir.subject_to)

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    return fresh
