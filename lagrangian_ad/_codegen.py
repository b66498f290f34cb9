"""Compiling: local partials ∂f_i/∂z_j derived once, printed as straight-line NumPy code.

Two functions are generated from one program, and their source is kept for inspection:

* ``forward(<inputs>)`` evaluates z_i = f_i(z_Pa(i)) in topological order and returns the
  values of every constraint target;
* ``adjoint(<inputs>, <targets>)`` runs the constraints backwards. The output's
  multiplier is 1, and each constraint i, once its own λ_i is complete (all its children
  came later in the forward order, so earlier in the reverse), adds λ_i ∂f_i/∂z_j to the
  multiplier of each parent z_j — the adjoint equation
  λ_j = [j = N] + Σ_{i ∈ children(j)} λ_i ∂f_i/∂z_j. Contributions that land on an input
  x_k sum to ∂L/∂x_k = ∂z_N/∂x_k.

In a partial, an occurrence of f_i itself is replaced by the already computed z_i (so
∂exp(c)/∂c is read as ``d``), and the partials of one constraint share their common
subexpressions (SymPy's ``cse``). SymPy is used here, once; the generated functions call
only NumPy.
"""

from __future__ import annotations

import builtins
import functools
import itertools
import keyword
import linecache
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.printing.numpy import NumPyPrinter

from ._errors import ProgramError
from ._graph import Graph
from ._program import ProgramIR

__all__ = ["Partials", "derive_partials", "generate"]

# A constraint's partials: (parent variable index, ∂f_i/∂z_parent), nonzero ones only.
Partials = tuple[tuple[tuple[int, sp.Expr], ...], ...]


def derive_partials(ir: ProgramIR, graph: Graph) -> Partials:
    """∂f_i/∂z_j for every constraint i and parent j, with f_i replaced by z_i inside."""
    out = []
    for c, parents in zip(ir.constraints, graph.parents, strict=True):
        row = []
        for p in parents:
            d = _differentiate(c.expr, graph.symbols[p], c.label)
            if d != 0:
                if c.target is not None and not c.expr.is_Atom:
                    d = d.xreplace({c.expr: c.target})
                row.append((p, d))
        out.append(tuple(row))
    return tuple(out)


def _differentiate(expr: sp.Expr, wrt: sp.Symbol, label: str) -> sp.Expr:
    d = sp.diff(expr, wrt)
    # The derivative of sign, Heaviside, … is zero almost everywhere, as in every
    # autodiff library; SymPy writes it with DiracDelta, which has no numeric value.
    if d.has(sp.DiracDelta):
        d = d.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
    if d.has(sp.Derivative, sp.Subs):
        raise ProgramError(
            f"constraint {label!r}: SymPy cannot differentiate {expr} with respect to {wrt}"
        )
    return d


# --------------------------------------------------------------------------- printing


class _Printer(NumPyPrinter):
    """NumPy printer over this program's identifiers, with exact floats."""

    def __init__(self, names: dict[sp.Symbol, str]):
        super().__init__({"fully_qualified_modules": True, "strict": True})
        self._names = names

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return self._names[expr]

    def _print_Float(self, expr: sp.Float) -> str:
        return repr(float(expr))

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        # Inputs are always float arrays, so integer powers need no conversion.
        return self._hprint_Pow(expr, rational=rational, sqrt="numpy.sqrt")

    def _print_Heaviside(self, expr: sp.Expr) -> str:
        return f"numpy.heaviside({self._print(expr.args[0])}, 0.5)"

    def _minmax(self, expr: sp.Expr, func: str) -> str:
        args = [self._print(a) for a in expr.args]
        return functools.reduce(lambda a, b: f"{func}({a}, {b})", args)

    def _print_Max(self, expr: sp.Expr) -> str:
        return self._minmax(expr, "numpy.maximum")

    def _print_Min(self, expr: sp.Expr) -> str:
        return self._minmax(expr, "numpy.minimum")


class _Namer:
    """Unique, safe Python identifiers for symbols (``W[0,1]`` -> ``W_0_1``)."""

    RESERVED = frozenset(keyword.kwlist) | frozenset(dir(builtins)) | {"numpy", "functools"}

    def __init__(self) -> None:
        self.taken: set[str] = set(self.RESERVED)

    def fresh(self, hint: str) -> str:
        base = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in hint).strip("_")
        if not base or not base.isidentifier():
            base = "v_" + base
        name = base
        for k in itertools.count(1):
            if name not in self.taken:
                break
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


@dataclass(frozen=True)
class Generated:
    """Generated forward and adjoint functions, with their source."""

    forward: Callable[..., list]
    adjoint: Callable[..., tuple[list, list]]
    forward_source: str
    adjoint_source: str


def generate(ir: ProgramIR, graph: Graph, partials: Partials) -> Generated:
    """Source and functions of the forward and adjoint passes (acyclic blocks)."""
    namer = _Namer()
    names = {s: namer.fresh(s.name) for s in graph.symbols}
    printer = _Printer(names)
    n_in = graph.n_inputs
    input_names = [names[s] for s in graph.symbols[:n_in]]
    target_names = [names[s] for s in graph.symbols[n_in:]]
    order = [b.constraints[0] for b in graph.blocks]  # acyclic: singleton blocks

    # Forward: one line per constraint, in topological order.
    fwd = [f"def forward({', '.join(input_names)}):"]
    for i in order:
        c = ir.constraints[i]
        fwd.append(f"    {target_names[i]} = {_print(printer, c.expr, c.label)}")
    fwd.append(f"    return [{', '.join(target_names)}]")
    forward_source = "\n".join(fwd) + "\n"

    # Adjoint: constraints in reverse, each scattering λ_i ∂f_i/∂z_j to its parents.
    lam = {n_in + i: namer.fresh("lam_" + target_names[i]) for i in range(len(target_names))}
    lam.update({k: namer.fresh("grad_" + input_names[k]) for k in range(n_in)})
    out_index = n_in + graph.symbols[n_in:].index(ir.output)
    temps = (sp.Symbol(namer.fresh(f"t{k}")) for k in itertools.count())
    adj = [f"def adjoint({', '.join(input_names + target_names)}):"]
    adj.append(f"    {lam[out_index]} = 1.0")
    assigned = {out_index}
    for i in reversed(order):
        if i not in graph.needed or not partials[i]:
            continue
        c = ir.constraints[i]
        adj.append(f"    # {target_names[i]} = {_print(printer, c.expr, c.label)}")
        lam_i = sp.Symbol(lam[n_in + i])
        names[lam_i] = lam[n_in + i]
        terms = [lam_i * d for _, d in partials[i]]
        if len(terms) > 1:
            replacements, terms = sp.cse(terms, symbols=temps, order="none")
            for t, e in replacements:
                names[t] = t.name
                adj.append(f"    {t.name} = {_print(printer, e, c.label)}")
        for (p, _), term in zip(partials[i], terms, strict=True):
            code = _print(printer, term, c.label)
            if p in assigned:
                adj.append(f"    {lam[p]} = {lam[p]} + {code}")
            else:
                adj.append(f"    {lam[p]} = {code}")
                assigned.add(p)
    lam_out = [lam[n_in + i] if n_in + i in assigned else "0.0" for i in range(len(order))]
    grad_out = [lam[k] if k in assigned else "0.0" for k in range(n_in)]
    adj.append(f"    return [{', '.join(lam_out)}], [{', '.join(grad_out)}]")
    adjoint_source = "\n".join(adj) + "\n"

    forward = _exec(forward_source, "forward")
    adjoint = _exec(adjoint_source, "adjoint")
    return Generated(forward, adjoint, forward_source, adjoint_source)


def _print(printer: _Printer, expr: sp.Expr, label: str) -> str:
    try:
        return printer.doprint(expr)
    except Exception as err:  # SymPy raises several kinds for what it cannot print
        raise ProgramError(
            f"constraint {label!r}: cannot generate numeric code for {expr} ({err})"
        ) from err


_counter = itertools.count()


def _exec(source: str, name: str) -> Callable:
    """Compile our generated source (never user text); register it for tracebacks."""
    filename = f"<lagrangian_ad {name} {next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict = {"numpy": np, "functools": functools}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]
