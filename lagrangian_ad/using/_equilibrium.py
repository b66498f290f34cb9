"""Energy-based programs and equilibrium propagation.

An energy-based program has a state h (an array) at a stationary point of a scalar
energy E(h, θ, x), and a cost C(h, θ) read there:

    h*(θ) :  ∇_h E(h*, θ, x) = 0,          output  C(h*(θ), θ).

`energy_program` states one: it derives ∇_h E once, by the array symbolic layer (the
vector-Jacobian rules the engine runs, as SymPy matrix expressions), and defines the
state by the fixed-point form of that stationarity,

    h = h − η ∇_h E(h, θ, x)          (η = ``step``, default 1),

whose fixed points are exactly the stationary points (the array engine solves array
unknowns of definitions; the exact gradient does not depend on η, the plain iteration's
map does: for E = ½‖h‖² − Φ(h), η = 1 gives h = ∇Φ(h), the Hopfield update). The output
is C, so the library's exact multipliers give dC/dθ, the reference.

Equilibrium propagation (Scellier and Bengio, "Equilibrium propagation: bridging the gap
between energy-based models and backpropagation", Frontiers in Computational
Neuroscience, 2017) estimates the same gradient from two equilibria instead of a linear
solve. With the total energy F_β = E + β C:

    free phase     h_0 :   ∇_h E(h_0) = 0
    nudged phase   h_β :   ∇_h F_β(h_β) = 0, warm-started from h_0
    one-sided      ĝ = (∂_θ F_β(h_β) − ∂_θ E(h_0)) / β                  error O(β)
    symmetric      ĝ = (∂_θ F_β(h_β) − ∂_θ F_−β(h_−β)) / (2β)           error O(β²)

(the symmetric form: Laborieux, Ernoult, Scellier, Bengio, Grollier, Querlioz, "Scaling
equilibrium propagation to deep ConvNets by drastically reducing its gradient estimator
bias", Frontiers in Neuroscience, 2021). Why it works: d/dβ ∂_θ F_β(h_β) at β = 0 is
∂_θ C + (∂²E/∂θ∂h) dh_β/dβ, and dh_β/dβ = −H⁻¹ ∂_h C (H = ∂²E/∂h², the implicit function
theorem on ∇_h F_β = 0) while dh*/dθ = −H⁻¹ ∂²E/∂h∂θ: so the β-derivative is
∂_θ C + (dh*/dθ)ᵀ ∂_h C = dC/dθ, and the estimates are its one-sided and central
differences in β. EP needs a dynamics that is the gradient of an energy (the
Hessian H symmetric): here it is one by construction, since the map is derived from E
(a Hopfield energy written with a W that is not symmetric is the energy of (W + Wᵀ)/2,
and EP is exact in the limit for it too).

The phases run the compiled programs' forward passes alone: a second program with β as
an input (``h = h − η ∇_h F_β``), and ∂_θ F_β at a given state by the gradient of a third,
acyclic program whose input is the state. Every derivative comes from the rules once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sympy as sp

from ..building._program import Program
from ..compiling._estimators import forward_values, is_positive
from ..core._arrays import MatrixVariable, mul
from ..core._errors import ProgramError
from ..symbolic._array_symbolic import array_conditions

__all__ = ["EnergyProgram", "energy_program"]

DEFAULT_BETA = 0.1


def energy_program(
    program: Program,
    state: Any,
    energy: Any,
    cost: Any,
    *,
    step: float = 1.0,
    name: str = "cost",
) -> EnergyProgram:
    """State an energy-based program in ``program``: the ``state`` at a stationary point
    of ``energy``, the output ``cost`` there (see the module docstring).

    Parameters
    ----------
    program : Program
        Holds the inputs (θ and the data x) and the state, declared with
        ``program.var(name, shape=…, array=True)`` and not yet defined.
    state : MatrixVariable
        The state h.
    energy, cost : sympy.Expr
        Scalar expressions over the state and the program's inputs (``lad.sum``,
        ``lad.mul``, ``@``, the elementwise functions of `lagrangian_ad`).
    step : float
        η > 0 of the definition h = h − η ∇_h E (the fixed points do not depend on it).
    name : str
        The name of the output, the cost.

    Returns
    -------
    EnergyProgram
        ``program`` now defines the state and the output; the returned object runs it
        (exactly, or with any estimator of `CompiledProgram.value_and_grad`) and
        estimates its gradient by equilibrium propagation (``adjoint="ep"``).

    Examples
    --------
    >>> import lagrangian_ad as lad
    >>> prog = lad.Program()
    >>> x = prog.input("x", shape=(2,), array=True)
    >>> W = prog.input("W", shape=(2, 2), array=True)
    >>> h = prog.var("h", shape=(2,), array=True)
    >>> r = lad.tanh(h)
    >>> E = 0.5 * lad.sum(lad.mul(h, h)) - 0.5 * lad.sum(lad.mul(r, W @ r)) - lad.sum(lad.mul(r, x))
    >>> ep = lad.energy_program(prog, h, E, 0.5 * lad.sum(lad.mul(r, r)))
    >>> inputs = {"x": [0.5, -0.3], "W": [[0.0, 0.2], [0.2, 0.0]]}
    >>> value, grad = ep.value_and_grad(inputs, adjoint="ep", beta=1e-3, symmetric=True)
    >>> exact = ep.value_and_grad(inputs)[1]
    >>> bool(abs(grad["W"] - exact["W"]).max() < 1e-6)
    True
    """
    if not isinstance(program, Program):
        raise ProgramError(f"energy_program: program must be a lad.Program, not {program!r}")
    if not isinstance(state, MatrixVariable):
        raise ProgramError(
            "energy_program: the state must be an array variable, declared with "
            f"program.var(name, shape=..., array=True), not {state!r}"
        )
    var = program.intermediates.get(state.name)
    if var is None or var.matrix != state:
        raise ProgramError(
            f"energy_program: the state {state.name!r} is not a variable declared in this "
            "program with program.var(..., array=True)"
        )
    if not is_positive(step):
        raise ProgramError(f"energy_program: step must be a positive number, not {step!r}")
    for what, e in (("energy", energy), ("cost", cost)):
        if not isinstance(e, sp.Expr) or isinstance(e, sp.MatrixExpr):
            raise ProgramError(
                f"energy_program: the {what} must be a scalar expression (lad.sum of an "
                f"array expression, say), not {type(e).__name__}"
            )
    inputs = program.inputs
    beta = _fresh("beta", inputs)
    grad_e = _state_gradient(inputs, state, energy, "energy")
    grad_c = _state_gradient(inputs, state, cost, "cost")
    eta = sp.S.One if step == 1 else sp.Float(step)
    program.define(state, state - _times(eta, grad_e))
    program.define(name, cost)
    program.output(name)

    nudged = _with_inputs(inputs)
    b = nudged.input(beta)
    h = nudged.var(state.name, shape=var.shape, array=True)
    nudged.define(h, h - _times(eta, grad_e) - _times(eta * b, grad_c))
    nudged.define(name, cost)
    nudged.output(name)

    total = _with_inputs(inputs)
    total.input(state.name, shape=var.shape, array=True)
    b = total.input(beta)
    total.define(_fresh("total_energy", inputs), energy + b * cost)
    return EnergyProgram(program, state.name, nudged, total, beta)


def _times(s: sp.Expr, m: sp.MatrixExpr) -> sp.MatrixExpr:
    return m if s == 1 else s * m


def _fresh(base: str, taken: Mapping[str, Any]) -> str:
    """``base``, or ``base_1``, ``base_2``, … : a name that is not an input's."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def _with_inputs(inputs: Mapping[str, Any]) -> Program:
    """A new program declaring the same inputs (their symbols equal the originals')."""
    prog = Program()
    for n, v in inputs.items():
        prog.input(n, shape=v.shape, array=v.matrix is not None)
    return prog


def _state_gradient(inputs: Mapping[str, Any], state: MatrixVariable, expr: sp.Expr, what: str):
    """∇_h expr as a matrix expression: the gradient of an acyclic program with the
    state as an input and ``expr`` as its output, from the array symbolic layer."""
    aux = _with_inputs(inputs)
    shape = (state.shape[0],) if state.shape[1] == 1 else tuple(state.shape)
    aux.input(state.name, shape=shape, array=True)
    try:
        out = aux.define(_fresh(what, inputs), expr)
    except ProgramError as err:
        raise ProgramError(
            f"energy_program: the {what} must be an expression of the state "
            f"{state.name!r} and the program's inputs only ({err})"
        ) from err
    _, _, gradient, _ = array_conditions(aux.ir)
    grad = gradient[state.name].xreplace({aux.multiplier(out.name): sp.S.One, out: expr})
    # the conditions' g ∘ ∂f/∂p as the elementwise product of the programs (`lad.mul`)
    return grad.replace(lambda e: isinstance(e, sp.HadamardProduct), lambda e: mul(*e.args))


class EnergyProgram:
    """An energy-based program (`energy_program`): its state at a stationary point of
    the energy, its output the cost there.

    Attributes
    ----------
    program : Program
        The program (the state defined by h = h − η ∇_h E, the output the cost).
    compiled : CompiledProgram
        ``program.compile()``, on the array engine.
    state : str
        The name of the state.
    """

    def __init__(self, program: Program, state: str, nudged: Program, total: Program, beta: str):
        self.program = program
        self.state = state
        self.compiled = program.compile()
        self._nudged = nudged.compile()
        self._total = total.compile()
        self._beta = beta

    def __repr__(self) -> str:
        return f"<EnergyProgram: state {self.state!r}, {self.compiled!r}>"

    def value(self, inputs: Mapping[Any, Any], **options: Any) -> Any:
        """The cost at the free equilibrium (`CompiledProgram.value`)."""
        return self.compiled.value(inputs, **options)

    def solve(self, inputs: Mapping[Any, Any], **options: Any) -> Any:
        """`CompiledProgram.solve` of the program: values, exact multipliers, gradient."""
        return self.compiled.solve(inputs, **options)

    def equilibrium(self, inputs: Mapping[Any, Any], beta: float = 0.0, **options: Any):
        """The state h_β at the stationary point of E + β C (β = 0: the free phase), by
        the forward pass alone, batch + the state's shape; ``options`` as for `value`
        (``init={state: h}`` warm-starts it)."""
        given = self._named(inputs)
        given[self._beta] = float(beta)
        return forward_values(self._nudged, given, [self.state], **options)[1][self.state]

    def value_and_grad(
        self,
        inputs: Mapping[Any, Any],
        check_finite: bool = True,
        wrt: Any = None,
        *,
        adjoint: str = "exact",
        beta: float | None = None,
        symmetric: bool | None = None,
        **options: Any,
    ) -> tuple[Any, dict[str, Any]]:
        """The cost at the free equilibrium and its gradient: exact, by any estimator of
        `CompiledProgram.value_and_grad` (``adjoint``, ``steps``, ``damping`` there), or
        by equilibrium propagation, ``adjoint="ep"`` with ``beta`` (β > 0, default 0.1)
        and ``symmetric`` (default False: one-sided; True: nudged at ±β). ``options``
        (``init``, ``method``, ``tol``, ``maxiter``) go to every phase's solve, ``init``
        to the free phase (the nudged phases start from its solution)."""
        if adjoint != "ep":
            if beta is not None or symmetric is not None:
                option = "beta" if beta is not None else "symmetric"
                raise ProgramError(
                    f"{option}: only adjoint='ep' (equilibrium propagation) takes it, "
                    f"not adjoint={adjoint!r}"
                )
            return self.compiled.value_and_grad(
                inputs, check_finite, wrt, adjoint=adjoint, **options
            )
        for option in ("steps", "damping"):
            if option in options:
                raise ProgramError(f"{option}: adjoint='ep' takes beta and symmetric, not {option}")
        beta = DEFAULT_BETA if beta is None else beta
        if not is_positive(beta):
            raise ProgramError(f"beta must be a positive number, not {beta!r}")
        symmetric = False if symmetric is None else symmetric
        if not isinstance(symmetric, bool):
            raise ProgramError(f"symmetric must be True or False, not {symmetric!r}")
        given = self._named(inputs)
        names = None if wrt is None else [self.compiled._input_name(k) for k in wrt]
        value, free = self._phase(given, 0.0, check_finite, options)
        warm = {**options, "init": {self.state: free}}
        grad_plus = self._total_grad(given, free, beta, names, warm)
        if symmetric:
            grad_minus = self._total_grad(given, free, -beta, names, warm)
            scale = 2 * beta
        else:
            grad_minus = self._theta_grad(given, free, 0.0, names)
            scale = beta
        grad = {n: (grad_plus[n] - grad_minus[n]) / scale for n in grad_plus}
        return value, grad

    # ----------------------------------------------------------------- phases

    def _named(self, inputs: Mapping[Any, Any]) -> dict[str, Any]:
        return self.compiled._named(inputs)

    def _phase(self, given: dict, beta: float, check_finite: bool, options: dict):
        """(cost, state) at the stationary point of E + β C."""
        run = {**given, self._beta: float(beta)}
        if check_finite:
            self.compiled._check(given, True)  # the user's inputs, named as theirs
        value, values = forward_values(self._nudged, run, [self.state], **options)
        return value, values[self.state]

    def _total_grad(self, given: dict, free: Any, beta: float, names, options: dict):
        """∂_θ F_β at h_β, h_β from the nudged phase warm-started at the free state."""
        _, state = self._phase(given, beta, False, options)
        return self._theta_grad(given, state, beta, names)

    def _theta_grad(self, given: dict, state: Any, beta: float, names) -> dict[str, Any]:
        """∂_θ (E + β C) at the given state (θ: the inputs, or ``names``)."""
        run = {**given, self.state: state, self._beta: float(beta)}
        wanted = list(given) if names is None else names
        return self._total.value_and_grad(run, wrt=wanted)[1]
