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
subexpressions (SymPy's ``cse``). That symbolic work is done once per constraint *form*
(see `_forms`). SymPy is used here, once; the generated functions call only NumPy.
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

from ._forms import FormTable, float_text, form_key, instantiate
from ._graph import Graph
from ._program import ProgramIR

__all__ = ["Generated", "generate"]

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
    n_forms: int


def generate(ir: ProgramIR, graph: Graph) -> Generated:
    """Source and functions of the forward and adjoint passes (acyclic blocks)."""
    namer = _Namer()
    names = [namer.fresh(s.name) for s in graph.symbols]
    n_in = graph.n_inputs
    table = FormTable(_Printer)
    forms, consts = [], []
    for c, parents in zip(ir.constraints, graph.parents, strict=True):
        parent_symbols = tuple(graph.symbols[p] for p in parents)
        key, floats = form_key(c.expr, {s: k for k, s in enumerate(parent_symbols)})
        forms.append(table.get(key, c.expr, parent_symbols, floats, c.target, c.label))
        consts.append({f"c{k}": float_text(f) for k, f in enumerate(floats)})

    def slots(i: int) -> dict[str, str]:
        """Placeholder -> name for constraint i."""
        out = {f"p{k}": names[p] for k, p in enumerate(graph.parents[i])}
        out.update(consts[i], t=names[n_in + i], l=lam[n_in + i], **temps)
        return out

    order = [b.constraints[0] for b in graph.blocks]  # acyclic: singleton blocks
    lam = {n_in + i: namer.fresh("lam_" + names[n_in + i]) for i in range(len(order))}
    lam.update({k: namer.fresh("grad_" + names[k]) for k in range(n_in)})
    most_temps = max((len(f.temps) for f in forms), default=0)
    temps = {f"tmp{k}": namer.fresh(f"t{k}") for k in range(most_temps)}

    # Forward: one line per constraint, in topological order.
    fwd = [f"def forward({', '.join(names[:n_in])}):"]
    fwd += [f"    {names[n_in + i]} = {instantiate(forms[i].forward, slots(i))}" for i in order]
    fwd.append(f"    return [{', '.join(names[n_in:])}]")
    forward_source = "\n".join(fwd) + "\n"

    # Adjoint: constraints in reverse, each scattering λ_i ∂f_i/∂z_j to its parents.
    out_index = n_in + graph.symbols[n_in:].index(ir.output)
    adj = [f"def adjoint({', '.join(names)}):", f"    {lam[out_index]} = 1.0"]
    assigned = {out_index}
    for i in reversed(order):
        form = forms[i]
        if i not in graph.needed or not form.partials:
            continue
        sl = slots(i)
        adj.append(f"    # {names[n_in + i]} = {instantiate(form.forward, sl)}")
        adj += [f"    {instantiate(t, sl)}" for t in form.temps]
        for (k, _), term in zip(form.partials, form.terms, strict=True):
            p = graph.parents[i][k]
            code = instantiate(term, sl)
            adj.append(
                f"    {lam[p]} = {lam[p]} + {code}" if p in assigned else f"    {lam[p]} = {code}"
            )
            assigned.add(p)
    lam_out = [lam[n_in + i] if n_in + i in assigned else "0.0" for i in range(len(order))]
    grad_out = [lam[k] if k in assigned else "0.0" for k in range(n_in)]
    adj.append(f"    return [{', '.join(lam_out)}], [{', '.join(grad_out)}]")
    adjoint_source = "\n".join(adj) + "\n"

    forward = _exec(forward_source, "forward")
    adjoint = _exec(adjoint_source, "adjoint")
    return Generated(forward, adjoint, forward_source, adjoint_source, len(table))


_counter = itertools.count()


def _exec(source: str, name: str) -> Callable:
    """Compile our generated source (never user text); register it for tracebacks."""
    filename = f"<lagrangian_ad {name} {next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict = {"numpy": np, "functools": functools}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]
