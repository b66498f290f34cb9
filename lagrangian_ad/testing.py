"""Checking derivatives another way: finite differences and the flat symbolic derivative.

`check_grads` tests a program's gradient two independent ways:

1. along a random direction v, the dot product Σ_k ⟨∂z_N/∂x_k, v_k⟩ against a central
   difference of Σ_batch z_N(x + t v), with Richardson extrapolation
   D = (4 D(h/2) − D(h)) / 3, which is accurate to O(h⁴);
2. for an acyclic program, against SymPy's derivative of the inlined expression: every
   constraint substituted into the output, differentiated, evaluated independently of the
   generated code. The program is inlined once with a shift ε_j added to each
   intermediate, z_j = f_j(…) + ε_j; then ∂z_N/∂x_k and λ_j = ∂z_N/∂ε_j are read at
   ε = 0 (λ_j is the derivative of the output with respect to z_j when z_j's own
   definition is held fixed).

Examples
--------
>>> import sympy as sp, lagrangian_ad as lad
>>> from lagrangian_ad.testing import check_grads
>>> x = sp.Symbol("x")
>>> check_grads(lad.decompose(sp.exp(sp.sin(x)) * x, [x]), {"x": [0.1, 0.7]})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import sympy as sp

from ._compiled import CompiledProgram, _sum_to
from ._errors import ProgramError
from ._graph import analyse
from ._program import Program, ProgramIR

__all__ = ["check_grads", "inline_output"]

MAX_MULTIPLIERS = 60  # the symbolic check of the multipliers: programs up to this size


def check_grads(
    program: Program | CompiledProgram,
    inputs: Mapping[Any, Any],
    *,
    rtol: float = 1e-6,
    atol: float = 1e-10,
    symbolic: bool | None = None,
    symbolic_rtol: float = 1e-9,
    seed: int = 0,
    step: float | None = None,
) -> None:
    """Assert that the program's gradient (and multipliers) are right.

    Parameters
    ----------
    program : Program or CompiledProgram
    inputs : dict
        Inputs as for `Program.solve`, batched or not.
    rtol, atol : float
        Tolerance of the finite-difference comparison.
    symbolic : bool or None
        Compare with SymPy's derivative of the inlined expression (acyclic programs
        only). ``None``: do it when the program is acyclic and has at most 300
        constraints.
    symbolic_rtol : float
        Tolerance of the symbolic comparison (gradient and every multiplier).
    seed : int
        Seed of the random direction.
    step : float or None
        Finite-difference step along the unit direction; default scales with the inputs.

    Raises
    ------
    AssertionError
        With the analytic and the independent numbers side by side.
    """
    fn = program.compile() if isinstance(program, Program) else program
    sol = fn.solve(inputs)
    given = {v.name: np.asarray(sol.values[v.name], dtype=float) for v in fn.ir.inputs}

    rng = np.random.default_rng(seed)
    direction = {n: rng.standard_normal(a.shape) for n, a in given.items()}
    norm = np.sqrt(sum(float(np.sum(d * d)) for d in direction.values()))
    direction = {n: d / norm for n, d in direction.items()}
    analytic = sum(float(np.sum(sol.grad[n] * direction[n])) for n in given)
    if step is None:
        scale = max(1.0, max((float(np.max(np.abs(a))) if a.size else 0.0) for a in given.values()))
        step = 1e-3 * scale

    def total(t: float) -> float:
        moved = {n: a + t * direction[n] for n, a in given.items()}
        return float(np.sum(fn.value(moved)))

    def central(h: float) -> float:
        return (total(h) - total(-h)) / (2 * h)

    numeric = (4 * central(step / 2) - central(step)) / 3
    if not _close(analytic, numeric, rtol, atol):
        raise AssertionError(
            "directional derivative along a random direction disagrees:\n"
            f"  multipliers (analytic): {analytic!r}\n"
            f"  central differences   : {numeric!r}\n"
            f"  difference {abs(analytic - numeric):.3e}, rtol {rtol}, atol {atol}"
        )

    acyclic = not fn.graph.cyclic_blocks
    if symbolic is None:
        symbolic = acyclic and len(fn.ir.constraints) <= 300
    if symbolic:
        if not acyclic:
            raise ValueError("check_grads: the symbolic comparison needs an acyclic program")
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


def _assert_close(got: Any, expect: Any, rtol: float, atol: float, what: str) -> None:
    if not _close(got, expect, rtol, atol):
        got, expect, worst, err = _worst(got, expect)
        raise AssertionError(
            f"{what} disagrees with SymPy's derivative of the flat expression:\n"
            f"  multipliers (analytic): {float(got[worst])!r}\n"
            f"  flat symbolic         : {float(expect[worst])!r}\n"
            f"  at batch index {worst}, difference {err[worst]:.3e}, rtol {rtol}"
        )
