"""Checking derivatives another way: finite differences and the flat symbolic derivative.

`check_grads` tests a program's derivatives against numbers computed independently of
the generated derivative code, as HIPS autograd's and JAX's ``check_grads`` do. Every
numerical reference is a central difference along random unit directions u, v with
Richardson extrapolation D = (4 D(h/2) − D(h)) / 3, accurate to O(h⁴):

========  =====  ==================================================  ===========================
mode      order  analytic (the package)                              central differences of
========  =====  ==================================================  ===========================
``rev``   1      ⟨∇F, v⟩ from the multipliers (``solve().grad``)     F(x + t v) = Σ_batch z_N
``fwd``   1      ż_N per sample from `CompiledProgram.jvp` along v    z_N(x + t v), per sample
``rev``   2      H v by the second-order adjoint (`hvp`)             ∇F(x + t v), every entry
``fwd``   2      uᵀ H v with H from the tangents (`hessian`)         Σ_batch ż_N(x + t u; v)
========  =====  ==================================================  ===========================

so each second-order method is checked against the derivative of a first-order one.

For an acyclic program the gradient and every multiplier are also compared with SymPy's
derivative of the inlined expression, evaluated without the generated code: the program
is inlined once with a shift ε_j added to each intermediate, z_j = f_j(…) + ε_j, and then
∂z_N/∂x_k and λ_j = ∂z_N/∂ε_j are read at ε = 0 (λ_j is the derivative of the output
with respect to z_j when z_j's own definition is held fixed).

Examples
--------
>>> import sympy as sp, lagrangian_ad as lad
>>> from lagrangian_ad.testing import check_grads
>>> x = sp.Symbol("x")
>>> check_grads(lad.decompose(sp.exp(sp.sin(x)) * x, [x]), {"x": [0.1, 0.7]})
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import sympy as sp

from .building._program import Program
from .compiling._compiled import CompiledProgram
from .compiling._graph import analyse
from .core._errors import ProgramError
from .core._ir import ProgramIR
from .solving._values import _sum_to

__all__ = ["check_grads", "inline_output"]

MODES = ("fwd", "rev")
MAX_MULTIPLIERS = 60  # the symbolic check of the multipliers: programs up to this size


def check_grads(
    program: Program | CompiledProgram,
    inputs: Mapping[Any, Any],
    *,
    modes: Iterable[str] = ("rev",),
    order: int = 1,
    rtol: float = 1e-6,
    atol: float = 1e-10,
    symbolic: bool | None = None,
    symbolic_rtol: float = 1e-9,
    seed: int = 0,
    step: float | None = None,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Assert that the program's derivatives are right, up to second order.

    Parameters
    ----------
    program : Program or CompiledProgram
        The program to check (compiled on the call if it is a `Program`).
    inputs : dict
        Inputs as for `Program.solve`, batched or not.
    modes : iterable of {"fwd", "rev"}
        Which derivatives to check: ``"rev"`` the gradient from the multipliers (and at
        order 2 the Hessian-vector product `CompiledProgram.hvp`), ``"fwd"`` the
        Jacobian-vector product `CompiledProgram.jvp` (and at order 2 the Hessian
        `CompiledProgram.hessian`, formed from tangents).
    order : {1, 2}
        Check first derivatives only, or first and second. The defaults (``rev``,
        order 1) check the gradient; ``modes=("fwd", "rev"), order=2`` checks every
        derivative method, as JAX's ``check_grads(f, args, order=2)`` does.
    rtol, atol : float
        Tolerances of the finite-difference comparisons; for arrays, relative to the
        largest magnitude among the numbers compared.
    symbolic : bool or None
        Compare the gradient (and, for programs of at most ``MAX_MULTIPLIERS`` = 60
        constraints, every multiplier) with SymPy's derivative of the inlined expression
        (acyclic programs only). ``None``: do it when the program is acyclic and has at
        most 300 constraints.
    symbolic_rtol : float
        Tolerance of the symbolic comparison.
    seed : int
        Seed of the random directions.
    step : float or None
        Finite-difference step along a unit direction; default 1e-3 × max(1, max ``|x|``).
    options : dict, optional
        Solving options passed to every call (``init``, ``method``, ``tol`` …), for
        cyclic programs.

    Raises
    ------
    AssertionError
        With the analytic and the independent numbers side by side.
    ProgramError
        An unknown mode or order, or ``symbolic=True`` for a cyclic program.

    Examples
    --------
    >>> import sympy as sp, lagrangian_ad as lad
    >>> from lagrangian_ad.testing import check_grads
    >>> prog = lad.parse("input x\\ninput y\\nh = tanh(0.5*h + x*y)\\nout = h**2\\n")
    >>> check_grads(prog, {"x": [0.3, -0.2], "y": 1.5}, modes=("fwd", "rev"), order=2)
    """
    modes = tuple(modes)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ProgramError(f"check_grads: modes must be among {MODES}, got {modes!r}")
    if order not in (1, 2):
        raise ProgramError(f"check_grads: order must be 1 or 2, got {order!r}")
    fn = program.compile() if isinstance(program, Program) else program
    opts = dict(options or {})
    sol = fn.solve(inputs, **opts)
    given = {v.name: np.asarray(sol.values[v.name], dtype=float) for v in fn.ir.inputs}
    if step is None:
        scale = max([1.0, *(float(np.max(np.abs(a))) for a in given.values() if a.size)])
        step = 1e-3 * scale
    rng = np.random.default_rng(seed)
    v, u = _direction(rng, given), _direction(rng, given)

    def moved(t: float, along: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: a + t * along[n] for n, a in given.items()}

    def compare(what: str, by: str, analytic: Any, numeric: Any) -> None:
        if not _close(analytic, numeric, rtol, atol, relative_to_max=True):
            raise AssertionError(_report(what, by, analytic, numeric, rtol, atol))

    if "rev" in modes:
        analytic = sum(float(np.sum(sol.grad[n] * v[n])) for n in given)
        numeric = _derivative(lambda t: np.sum(fn.value(moved(t, v), **opts)), step)
        compare(
            "rev, order 1: the gradient along a random direction", "multipliers", analytic, numeric
        )
    if "fwd" in modes:
        _, analytic = fn.jvp(given, v, **opts)
        numeric = _derivative(lambda t: fn.value(moved(t, v), **opts), step)
        compare(
            "fwd, order 1: jvp along a random direction, per sample", "tangents", analytic, numeric
        )
    if order == 2 and "rev" in modes:
        analytic = _flat(fn.hvp(given, v, **opts), given)
        numeric = _derivative(
            lambda t: _flat(fn.value_and_grad(moved(t, v), **opts)[1], given), step
        )
        compare(
            "rev, order 2: hvp along a random direction", "second-order adjoint", analytic, numeric
        )
    if order == 2 and "fwd" in modes:
        hessian = fn.hessian(given, **opts)
        analytic = sum(
            float(np.sum(u[a] * np.tensordot(hessian[a][b], v[b], axes=v[b].ndim)))
            for a in given
            for b in given
        )
        numeric = _derivative(lambda t: np.sum(fn.jvp(moved(t, u), v, **opts)[1]), step)
        compare("fwd, order 2: uᵀ H v, two random directions", "hessian", analytic, numeric)

    arrays = fn.ir.has_arrays  # no flat scalar expression to compare with
    acyclic = not arrays and not fn.graph.cyclic_blocks
    if symbolic is None:
        symbolic = acyclic and len(fn.ir.constraints) <= 300
    if symbolic:
        if arrays:
            raise ProgramError(
                "check_grads: the symbolic comparison needs an entry-wise program "
                "(its array variables are never expanded into entries)"
            )
        if not acyclic:
            raise ProgramError("check_grads: the symbolic comparison needs an acyclic program")
        _check_symbolic(fn.ir, sol, given, symbolic_rtol, atol)


def inline_output(ir: ProgramIR, keep: frozenset[sp.Symbol] = frozenset()) -> sp.Expr:
    """The output as one flat expression of the inputs (and of the symbols in ``keep``).

    Substitutes every explicit constraint into its children in topological order, except
    the definitions of the symbols in ``keep``, which stay free.

    Parameters
    ----------
    ir : ProgramIR
        An acyclic program of explicit constraints (``Program.ir``).
    keep : frozenset of sympy.Symbol
        Intermediates left as free symbols.

    Returns
    -------
    sympy.Expr

    Raises
    ------
    ProgramError
        For a cyclic program or one with implicit equations.

    Examples
    --------
    >>> import lagrangian_ad as lad
    >>> from lagrangian_ad.testing import inline_output
    >>> prog = lad.parse("input x\\na = exp(x)\\nb = a**2 + a\\n")
    >>> inline_output(prog.ir)
    exp(2*x) + exp(x)
    """
    return _inline(ir, keep, {}).get(ir.output, ir.output)


def _inline(
    ir: ProgramIR, keep: frozenset[sp.Symbol], shift: Mapping[sp.Symbol, sp.Symbol]
) -> dict[sp.Symbol, sp.Expr]:
    """Every intermediate as a flat expression: z_j = f_j(…) + shift[z_j], substituted down."""
    graph = analyse(ir)
    if graph.cyclic_blocks or any(c.target is None for c in ir.constraints):
        raise ProgramError("inline_output: only acyclic programs of explicit constraints")
    flat: dict[sp.Symbol, sp.Expr] = {}
    for block in graph.blocks:
        (i,) = block.constraints
        c = ir.constraints[i]
        if c.target not in keep:
            flat[c.target] = c.expr.xreplace(flat) + shift.get(c.target, sp.S.Zero)
    return flat


def _check_symbolic(ir: ProgramIR, sol: Any, given: dict, rtol: float, atol: float) -> None:
    input_symbols = [s for v in ir.inputs for s in v.symbols]
    batch = np.shape(sol.value)
    entries = []
    for v in ir.inputs:
        arr = given[v.name]
        lead = arr.shape[: arr.ndim - len(v.shape)]
        flat = arr.reshape((*lead, v.size))
        entries.extend(flat[..., k] for k in range(v.size))

    # One inlining, with a shift ε_j on every intermediate: λ_j = ∂z_N/∂ε_j at ε = 0.
    # Multipliers only up to MAX_MULTIPLIERS constraints: each is one more derivative of
    # the whole flat expression.
    defined = {c.target for c in ir.constraints if c.target is not None}
    targets = [s for var in ir.intermediates for s in var.symbols if s in defined]
    if len(ir.constraints) > MAX_MULTIPLIERS:
        targets = []
    taken = {s.name for s in input_symbols} | {s.name for s in defined}
    shifts = {z: sp.Symbol(_fresh(f"eps_{k}", taken), real=True) for k, z in enumerate(targets)}
    out = _inline(ir, frozenset(), shifts).get(ir.output, ir.output)
    unknowns = [*input_symbols, *shifts.values()]
    derivs = [sp.diff(out, s) for s in unknowns]
    evaluate = sp.lambdify(unknowns, derivs, modules="numpy", cse=True)
    values = evaluate(*entries, *[0.0] * len(shifts))

    # The gradient: d/dx of the flat output, summed over the batch like ours.
    pos = 0
    for v in ir.inputs:
        arr = given[v.name]
        lead = arr.shape[: arr.ndim - len(v.shape)]
        for k in range(v.size):
            expect = _sum_to(values[pos + k], batch, lead)
            got = np.asarray(sol.grad[v.name]).reshape((*lead, v.size))[..., k]
            _assert_close(got, expect, rtol, atol, f"gradient of {input_symbols[pos + k]}")
        pos += v.size

    # Each multiplier, per sample.
    lam_of = dict(zip(targets, values[pos:], strict=True))
    for var in ir.intermediates:
        lam = np.asarray(sol.multipliers[var.name]).reshape((*batch, var.size))
        for k, z in enumerate(var.symbols):
            if z in lam_of:
                expect = np.broadcast_to(lam_of[z], batch)
                _assert_close(lam[..., k], expect, rtol, atol, f"multiplier of {z}")


# --------------------------------------------------------------------------- helpers


def _fresh(name: str, taken: set[str]) -> str:
    """``name``, or ``name_`` … if a variable of the program already has it."""
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _direction(rng: np.random.Generator, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A random direction over all the given arrays, of unit norm."""
    d = {n: rng.standard_normal(a.shape) for n, a in like.items()}
    norm = np.sqrt(sum(float(np.sum(x * x)) for x in d.values()))
    return {n: x / norm for n, x in d.items()}


def _flat(arrays: Mapping[str, Any], like: dict[str, np.ndarray]) -> np.ndarray:
    """The arrays of a gradient-like dict, in input order, as one vector."""
    return np.concatenate([np.ravel(np.asarray(arrays[n], dtype=float)) for n in like])


def _derivative(f: Callable[[float], Any], h: float) -> np.ndarray:
    """d/dt f(t) at 0 by central differences with one Richardson step (error O(h⁴))."""

    def central(s: float) -> np.ndarray:
        return (np.asarray(f(s), dtype=float) - np.asarray(f(-s), dtype=float)) / (2 * s)

    return (4 * central(h / 2) - central(h)) / 3


def _close(a: Any, b: Any, rtol: float, atol: float, relative_to_max: bool = False) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if relative_to_max:
        scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
        return bool(np.all(np.abs(a - b) <= atol + rtol * scale))
    return bool(np.all(np.abs(a - b) <= atol + rtol * np.maximum(np.abs(a), np.abs(b))))


def _worst(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray, tuple, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    err = np.abs(a - b)
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), err.shape))
    return a, b, worst, err


def _report(what: str, by: str, analytic: Any, numeric: Any, rtol: float, atol: float) -> str:
    a, b, worst, err = _worst(analytic, numeric)
    where = f" at index {worst}" if worst else ""
    label = f"{by} (analytic)"
    return (
        f"{what} disagrees:\n"
        f"  {label}: {float(a[worst])!r}\n"
        f"  {'central differences':<{len(label)}}: {float(b[worst])!r}\n"
        f"  difference {err[worst]:.3e}{where}, rtol {rtol}, atol {atol}"
    )


def _assert_close(got: Any, expect: Any, rtol: float, atol: float, what: str) -> None:
    if not _close(got, expect, rtol, atol):
        got, expect, worst, err = _worst(got, expect)
        raise AssertionError(
            f"{what} disagrees with SymPy's derivative of the flat expression:\n"
            f"  multipliers (analytic): {float(got[worst])!r}\n"
            f"  flat symbolic         : {float(expect[worst])!r}\n"
            f"  at batch index {worst}, difference {err[worst]:.3e}, rtol {rtol}"
        )
