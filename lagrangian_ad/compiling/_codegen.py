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
import itertools
import keyword
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType
from typing import Any

import numpy as np
import scipy.special
import sympy as sp
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.precedence import PRECEDENCE

from ..core._ir import ProgramIR, adjoint_sign
from ..solving._blocks import BlockSolver
from ._forms import FormTable, float_text, form_key, instantiate
from ._graph import Graph

__all__ = ["Generated", "generate"]

# --------------------------------------------------------------------------- printing


class _Printer(NumPyPrinter):
    """NumPy printer over this program's identifiers, with exact floats."""

    def __init__(self, names: dict[sp.Symbol, str]):
        # order="none": terms in SymPy's own order; sorting them for print walks every
        # subtree again (seconds for the partials of a wide product)
        super().__init__({"fully_qualified_modules": True, "strict": True, "order": "none"})
        self._names = names

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return self._names[expr]

    def _print_Float(self, expr: sp.Float) -> str:
        return float_text(expr)

    def _print_Integer(self, expr: sp.Integer) -> str:
        # Python integers beyond 2**53 would meet floats only at run time (an
        # OverflowError past 10**308, an object array in NumPy): print the double.
        return str(expr.p) if abs(expr.p) < 1 << 53 else float_text(_double(expr))

    def _print_Rational(self, expr: sp.Rational) -> str:
        if max(abs(expr.p), expr.q) < 1 << 53:
            return super()._print_Rational(expr)
        return float_text(_double(expr))

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        # Integer powers stay ``**`` (real for any float base); other powers go through
        # numpy.power, so a negative base gives NaN for arrays and, in the scalar fast
        # path, an exception that falls back to NumPy — never a complex number.
        base, exp = expr.args
        if exp.is_Integer or exp in (sp.S.Half, -sp.S.Half):
            return self._hprint_Pow(expr, rational=rational, sqrt="numpy.sqrt")
        return f"numpy.power({self._print(base)}, {self._print(exp)})"

    def _call(self, func: str, expr: sp.Expr) -> str:
        return f"{func}({', '.join(self._print(a) for a in expr.args)})"

    def _print_polygamma(self, expr: sp.Expr) -> str:
        if expr.args[0] == 0:  # SymPy writes digamma(x) as polygamma(0, x)
            return f"special.digamma({self._print(expr.args[1])})"
        return self._call("special.polygamma", expr)

    def _print_Heaviside(self, expr: sp.Expr) -> str:
        return f"numpy.heaviside({self._print(expr.args[0])}, 0.5)"

    def _print_ReplaceZero(self, expr: sp.Expr) -> str:
        x, v = (self._print(a) for a in expr.args)
        return f"({x} + {'' if v == '1' else v + '*'}({x} == 0))"

    def _print_Ties(self, expr: sp.Expr) -> str:
        m, *args = (self._print(a) for a in expr.args)
        if len(args) == 1:
            return f"({args[0]} == {m})"
        # 0.0 first: NumPy adds boolean arrays as a logical or
        return f"(0.0 + {' + '.join(f'({a} == {m})' for a in args)})"

    def _lattice(self, args: list[str], func: str) -> str:
        # A balanced tree of pairwise calls: nesting log2(n) deep, whatever n.
        if len(args) == 1:
            return args[0]
        half = len(args) // 2
        return f"{func}({self._lattice(args[:half], func)}, {self._lattice(args[half:], func)})"

    def _print_Maximum(self, expr: sp.Expr) -> str:
        return self._lattice([self._print(a) for a in expr.args], "numpy.maximum")

    def _print_Minimum(self, expr: sp.Expr) -> str:
        return self._lattice([self._print(a) for a in expr.args], "numpy.minimum")

    # A sum or product of many terms printed flat is a left-deep chain of binary
    # operations, which Python's compiler walks recursively (a RecursionError from about
    # 3,000 terms): wide ones are printed as a balanced tree of parenthesized halves.
    def _print_Add(self, expr: sp.Add, order: Any = None) -> str:
        if len(expr.args) <= _WIDE:
            return super()._print_Add(expr, order)
        a, b = _halves(sp.Add, expr.args)
        return f"({self._print(a)}) + ({self._print(b)})"

    def _print_Mul(self, expr: sp.Mul) -> str:
        if len(expr.args) <= _WIDE:
            return super()._print_Mul(expr)
        a, b = _halves(sp.Mul, expr.args)
        return f"({self._print(a)})*({self._print(b)})"

    def _print_Times(self, expr: sp.Expr) -> str:
        a, b = (self.parenthesize(a, PRECEDENCE["Mul"]) for a in expr.args)
        return f"{a}*{b}"

    def _print_Softplus(self, expr: sp.Expr) -> str:
        # lad.softplus: log(1 + exp(x)) = logaddexp(0, x), without overflow for large x
        return f"numpy.logaddexp(0.0, {self._print(expr.args[0])})"

    def _print_SincPrime(self, expr: sp.Expr) -> str:
        return self._call("_lad.sinc_prime", expr)

    def _print_SincSecond(self, expr: sp.Expr) -> str:
        return self._call("_lad.sinc_second", expr)


_WIDE = 256  # most terms of a sum or product printed as one flat chain


def _halves(op: Any, args: tuple) -> tuple[sp.Expr, sp.Expr]:
    half = len(args) // 2
    return op(*args[:half], evaluate=False), op(*args[half:], evaluate=False)


# SymPy function -> scipy.special function of the same name and arguments (the generated
# code's ``special``). loggamma is scipy's gammaln, log|Γ(x)|: real for every real x, with
# derivative digamma(x) as SymPy's rule says.
_SCIPY_SPECIAL = {
    "erf": "erf",
    "erfc": "erfc",
    "erfinv": "erfinv",
    "erfcinv": "erfcinv",
    "gamma": "gamma",
    "loggamma": "gammaln",
    "beta": "beta",
    "besselj": "jv",
    "bessely": "yv",
    "besseli": "iv",
    "besselk": "kv",
    "Sigmoid": "expit",  # lad.sigmoid, 1 / (1 + exp(−x)) without overflow
}


def _special_printer(name: str) -> Callable[[_Printer, sp.Expr], str]:
    return lambda self, expr: self._call(f"special.{name}", expr)


for _sympy_name, _scipy_name in _SCIPY_SPECIAL.items():
    setattr(_Printer, f"_print_{_sympy_name}", _special_printer(_scipy_name))


def _double(r: sp.Rational) -> float:
    """The double nearest a rational (±inf beyond the range), digits not counted."""
    try:
        return r.p / r.q  # Python rounds int / int correctly
    except OverflowError:
        return math.inf if (r.p > 0) == (r.q > 0) else -math.inf


class _Namer:
    """Unique, safe Python identifiers for symbols (``W[0,1]`` -> ``W_0_1``).

    Every name in generated code comes from here — the program's variables first, then
    the generated functions (``forward``, ``adjoint``, ``tangents``, …) and their
    temporaries — or begins with an underscore (``_ctx``, ``_Z``, ``_blocks``: the
    plumbing of the generated code), which no name made here does. So a variable named
    ``tangents`` or ``second_adjoint`` gets an identifier of its own, and the function of
    that name is ``tangents_1``.
    """

    RESERVED = frozenset(keyword.kwlist) | frozenset(dir(builtins)) | {"numpy", "special", "math"}

    def __init__(self) -> None:
        self.taken: set[str] = set(self.RESERVED)

    def fresh(self, hint: str) -> str:
        # ASCII only: Python folds other identifiers (NFKC), so ｘ and x would be one name.
        base = "".join(
            ch if ch.isascii() and (ch.isalnum() or ch == "_") else "_" for ch in hint
        ).strip("_")
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
class Passes:
    """The generated passes, compiled in one namespace (NumPy, or floats with math)."""

    forward: Callable[..., list]
    adjoint: Callable[..., tuple[list, list]]


@dataclass(frozen=True)
class Generated:
    """Generated functions, with their source.

    ``numpy`` runs on arrays (any batch); ``scalar`` is the same source run on Python
    floats with ``math`` (one sample, where it is several times faster).
    """

    numpy: Passes
    scalar: Passes
    forward_source: str
    adjoint_source: str
    blocks_source: str
    block_solvers: tuple[BlockSolver, ...]
    n_forms: int
    emitter: Any


class _Emitter:
    """Writes the code of one program: names, forms, and the scatter of λ·∂r/∂z."""

    def __init__(self, ir: ProgramIR, graph: Graph, report: Callable = lambda *a: None):
        self.ir, self.graph = ir, graph
        self.namer = _Namer()
        self.names = [self.namer.fresh(s.name) for s in graph.symbols]
        self.n_in = graph.n_inputs
        self.table = table = FormTable(_Printer)
        self.forms, self.consts, self.floats = [], [], []
        n_c = len(ir.constraints)
        for e, (c, parents) in enumerate(zip(ir.constraints, graph.parents, strict=True)):
            if not e & 255:
                report(f"deriving forms ({len(self.table)} so far)", e, n_c)
            parent_symbols = tuple(graph.symbols[p] for p in parents)
            key, floats = form_key(c.expr, {s: k for k, s in enumerate(parent_symbols)})
            key = ("z = " if c.target is not None else "0 = ") + key  # «t» only if explicit
            self.forms.append(table.get(key, c.expr, parent_symbols, floats, c.target, c.label))
            self.consts.append({f"c{k}": float_text(f) for k, f in enumerate(floats)})
            self.floats.append(floats)
        # Where each variable index lives as an array entry: (variable number, entry),
        # numbering the inputs, then the intermediates (the lowering by groups reads it).
        variables = (*ir.inputs, *ir.intermediates)
        place = {s: (k, j) for k, v in enumerate(variables) for j, s in enumerate(v.symbols)}
        self.loc = [place[s] for s in graph.symbols]
        self.n_forms = len(table)
        most = max((len(f.temps) for f in self.forms), default=0)
        self.temps: dict[str, str] = {}
        self.ensure_temps(most)
        # λ of every constraint; the accumulator of ∂L/∂v for every variable. For the
        # constraint of an explicit block both are one name: λ_i = [i = N] + Σ … .
        self.lam: dict[int, str] = {}
        self.acc: dict[int, str] = {
            k: self.namer.fresh("grad_" + self.names[k]) for k in range(self.n_in)
        }
        for b in graph.blocks:
            for e in b.constraints:
                t = graph.targets[e]
                if b.explicit:
                    self.acc[t] = self.lam[e] = self.namer.fresh("lam_" + self.names[t])
                else:
                    self.lam[e] = self.namer.fresh("lam_" + ir.constraints[e].label)
            if not b.explicit:
                for v in b.unknowns:
                    self.acc[v] = self.namer.fresh("g_" + self.names[v])

    def ensure_temps(self, n: int) -> None:
        """Names for the temporaries «tmp0» … «tmp(n−1)» of printed forms."""
        for k in range(len(self.temps), n):
            self.temps[f"tmp{k}"] = self.namer.fresh(f"t{k}")

    def slots(self, e: int, lam: str | None = None) -> dict[str, str]:
        """Placeholder -> code for constraint e."""
        out = {f"p{k}": self.names[p] for k, p in enumerate(self.graph.parents[e])}
        t = self.graph.targets[e]
        out.update(self.consts[e], l=lam or self.lam[e], **self.temps)
        if t is not None:
            out["t"] = self.names[t]
        return out

    def forward_text(self, e: int) -> str:
        return instantiate(self.forms[e].forward, self.slots(e))

    def residual_text(self, e: int) -> str:
        t = self.graph.targets[e]
        f = self.forward_text(e)
        return f if t is None else f"{self.names[t]} - ({f})"

    def scatter(
        self,
        e: int,
        acc: dict[int, str],
        assigned: set[int],
        skip=frozenset(),
        lam: str | None = None,
        target: bool = False,
    ) -> list[str]:
        """Lines adding −λ_e ∂r_e/∂v to ``acc[v]`` for the variables v of r_e not in skip.

        For an explicit constraint that is +λ ∂f/∂p for a parent p (and −λ for its
        target, when ``target``); for an implicit one, −λ ∂c/∂p.
        """
        form, sl = self.forms[e], self.slots(e, lam)
        sign = _SIGN[adjoint_sign(self.graph.targets[e] is not None)]
        lines = [f"    {instantiate(t, sl)}" for t in form.temps]
        for (k, _), term in zip(form.partials, form.terms, strict=True):
            p = self.graph.parents[e][k]
            if p not in skip:
                lines.append(_accumulate(acc[p], sign, instantiate(term, sl), p in assigned))
                assigned.add(p)
        t = self.graph.targets[e]
        if target and t is not None and t not in skip:
            lines.append(_accumulate(acc[t], "-", sl["l"], t in assigned))
            assigned.add(t)
        return lines


_SIGN = {1: "+", -1: "-"}  # `adjoint_sign` as the operator that accumulates a term


def _accumulate(name: str, sign: str, code: str, exists: bool) -> str:
    if exists:
        return f"    {name} = {name} {sign} {code}"
    return f"    {name} = {code}" if sign == "+" else f"    {name} = -({code})"


def generate(ir: ProgramIR, graph: Graph, report: Callable = lambda *a: None) -> Generated:
    """Source and functions of the forward pass, the adjoint pass and the cyclic blocks."""
    em = _Emitter(ir, graph, report)
    n_b = len(graph.blocks)
    names, n_in = em.names, em.n_in

    fresh = em.namer.fresh
    forward, adjoint = fresh("forward"), fresh("adjoint")
    # Forward: explicit blocks one line each, cyclic blocks one call each.
    fwd = [f"def {forward}(_ctx, {', '.join(names[:n_in])}):"]
    block_src, solvers = [], []
    cyclic_index = {b: k for k, b in enumerate(graph.cyclic_blocks)}
    for i, b in enumerate(graph.blocks):
        if not i & 255:
            report("writing the forward pass", i, n_b)
        if b.explicit:
            (e,) = b.constraints
            fwd.append(f"    {names[graph.targets[e]]} = {em.forward_text(e)}")
            continue
        k = cyclic_index[b]
        ext = sorted({v for e in b.constraints for v in graph.reads(e)} - set(b.unknowns))
        functions = tuple(fresh(f"block{k}_{part}") for part in ("residual", "jacobian", "map"))
        src, rows, cols, has_map = _block_source(em, b, functions, ext)
        block_src.append(src)
        unknown_names = tuple(graph.symbols[v].name for v in b.unknowns)
        solvers.append((k, unknown_names, b.unknowns, rows, cols, functions, has_map))
        fwd.append(f"    _Z = _blocks[{k}].solve(_ctx, ({''.join(names[v] + ', ' for v in ext)}))")
        fwd += [f"    {names[v]} = _Z[..., {j}]" for j, v in enumerate(b.unknowns)]
    fwd.append(f"    return [{', '.join(names[n_in:])}]")
    forward_source = "\n".join(fwd) + "\n"

    # Adjoint: blocks in reverse, each scattering λ_e ∂r_e/∂z to the variables it reads.
    adj = [f"def {adjoint}(_ctx, {', '.join(names)}):", f"    {em.acc[graph.output]} = 1.0"]
    assigned = {graph.output}
    for i, b in enumerate(reversed(graph.blocks)):
        if not i & 255:
            report("writing the adjoint pass", i, n_b)
        if not graph.needed.intersection(b.constraints):
            continue
        if b.explicit:
            (e,) = b.constraints
            if graph.targets[e] not in assigned or not em.forms[e].partials:
                continue
            adj.append(f"    # {names[graph.targets[e]]} = {em.forward_text(e)}")
            adj += em.scatter(e, em.acc, assigned)
            continue
        k = cyclic_index[b]
        seeds = [em.acc[v] if v in assigned else "0.0" for v in b.unknowns]
        adj.append(f"    # block {k}: {', '.join(names[v] for v in b.unknowns)}")
        adj.append(f"    _L = _blocks[{k}].adjoint(_ctx, ({''.join(s + ', ' for s in seeds)}))")
        adj += [f"    {em.lam[e]} = _L[..., {j}]" for j, e in enumerate(b.constraints)]
        for e in b.constraints:
            adj += em.scatter(e, em.acc, assigned, skip=frozenset(b.unknowns), target=True)
    lam_out = [
        em.lam[e] if _lam_known(graph, em, e, assigned) else "0.0"
        for e in range(len(ir.constraints))
    ]
    grad_out = [em.acc[k] if k in assigned else "0.0" for k in range(n_in)]
    adj.append(f"    return [{', '.join(lam_out)}], [{', '.join(grad_out)}]")
    adjoint_source = "\n".join(adj) + "\n"

    blocks_source = "\n".join(block_src)
    # Compiled once; run in two namespaces (NumPy for arrays, math for one sample).
    report("compiling the generated source", 0, 0)
    code = _compile("\n".join([forward_source, adjoint_source, blocks_source]), "program")
    namespace = _exec(code)
    block_solvers = tuple(
        BlockSolver(
            k,
            unknown_names,
            variables,
            namespace[residual],
            namespace[jacobian],
            namespace[fixed_point_map] if has_map else None,
            rows,
            cols,
        )
        for k, unknown_names, variables, rows, cols, (
            residual,
            jacobian,
            fixed_point_map,
        ), has_map in solvers
    )
    namespace["_blocks"] = em.block_solvers = block_solvers
    scalar = _exec(code, {**SCALAR_NAMESPACE, "_blocks": block_solvers})
    return Generated(
        numpy=Passes(namespace[forward], namespace[adjoint]),
        scalar=Passes(scalar[forward], scalar[adjoint]),
        forward_source=forward_source,
        adjoint_source=adjoint_source,
        blocks_source=blocks_source,
        block_solvers=block_solvers,
        n_forms=em.n_forms,
        emitter=em,
    )


def jvp_functions(em: _Emitter) -> tuple[Callable, Callable, str]:
    """The tangent pass, generated on first use: (NumPy version, float version, source)."""
    name = em.namer.fresh("jvp")
    source = _jvp_source(em, name)
    code = _compile(source, "jvp")
    numpy_ns = _exec(code, {**NUMPY_NAMESPACE, "_blocks": em.block_solvers})
    scalar_ns = _exec(code, {**SCALAR_NAMESPACE, "_blocks": em.block_solvers})
    return numpy_ns[name], scalar_ns[name], source


def kkt_function(em: _Emitter) -> tuple[Callable, str]:
    """The stationarity certificate, generated on first use: (function, source)."""
    name = em.namer.fresh("kkt")
    source = _kkt_source(em, name)
    return _exec(_compile(source, "kkt"))[name], source


def _lam_known(graph: Graph, em: _Emitter, e: int, assigned: set[int]) -> bool:
    """Whether λ_e was computed by the adjoint (otherwise it is zero)."""
    t = graph.targets[e]
    if t is not None and em.lam[e] == em.acc.get(t):  # explicit block: λ_e accumulates
        return t in assigned
    return e in graph.needed  # a cyclic block: all its constraints are needed, or none


def _block_source(em: _Emitter, b, functions: tuple[str, str, str], ext: list[int]):
    """Residual, Jacobian (nonzero entries) and fixed-point map of a cyclic block, as the
    functions named ``functions``."""
    names, graph = em.names, em.graph
    col = {v: j for j, v in enumerate(b.unknowns)}
    head = [f"    {names[v]} = _X[{i}]" for i, v in enumerate(ext)]
    head += [f"    {names[v]} = _Z[..., {j}]" for j, v in enumerate(b.unknowns)]

    residual, jacobian, fixed_point_map = functions
    res = [f"def {residual}(_R, _Z, _X):", *head]
    res += [f"    _R[..., {r}] = {em.residual_text(e)}" for r, e in enumerate(b.constraints)]

    jac = [f"def {jacobian}(_D, _Z, _X):", *head]
    rows, cols = [], []
    for r, e in enumerate(b.constraints):
        form, sl = em.forms[e], em.slots(e)
        explicit = graph.targets[e] is not None
        jac_temps, jac_codes = em.table.raw_jacobian(form, em.ir.constraints[e].label)
        em.ensure_temps(len(jac_temps))
        sl = em.slots(e)
        # ∂r/∂z for the unknowns of the block: δ(z = target) − ∂f/∂z, or ∂c/∂z.
        entries: dict[int, str] = {}
        t = graph.targets[e]
        if explicit and t in col:
            entries[col[t]] = "1"
        for (kk, _), text in zip(form.partials, jac_codes, strict=True):
            p = graph.parents[e][kk]
            if p in col:
                code = f"({instantiate(text, sl)})"
                old = entries.get(col[p])
                if not explicit:
                    entries[col[p]] = code
                else:
                    entries[col[p]] = f"{old} - {code}" if old else f"-{code}"
        if entries:
            jac += [f"    {instantiate(t_, sl)}" for t_ in jac_temps]
        for c, code in entries.items():
            jac.append(f"    _D[..., {len(rows)}] = {code}")
            rows.append(r)
            cols.append(c)

    src = res + jac
    has_map = all(graph.targets[e] == graph.match[e] for e in b.constraints)
    if has_map:
        src += [f"def {fixed_point_map}(_F, _Z, _X):", *head]
        src += [f"    _F[..., {r}] = {em.forward_text(e)}" for r, e in enumerate(b.constraints)]
    return (
        "\n".join(src) + "\n",
        np.array(rows, dtype=np.intp),
        np.array(cols, dtype=np.intp),
        has_map,
    )


def _jvp_source(em: _Emitter, name: str, every: bool = False) -> str:
    """Forward mode: ż_i = Σ_j ∂f_i/∂z_j ż_j in block order; J ż_B = rhs in cyclic blocks.

    Only variables downstream of the inputs get a tangent; the rest are zero and skipped.
    """
    graph, names, n_in = em.graph, em.names, em.n_in
    dot = {v: em.namer.fresh("d_" + names[v]) for v in range(len(names))}
    lines = [f"def {name}(_ctx, {', '.join(names)}, {', '.join(dot[k] for k in range(n_in))}):"]
    known = set(range(n_in))

    def terms(e: int, skip: frozenset = frozenset()) -> tuple[list[str], list[str]]:
        """Temporaries, and the products ∂f/∂p · ṗ for the parents p with a tangent."""
        form = em.forms[e]
        jac_temps, jac = em.table.jacobian(form, em.ir.constraints[e].label)
        em.ensure_temps(len(jac_temps))
        sl = em.slots(e)
        out = []
        for (k, _), text in zip(form.partials, jac, strict=True):
            p = graph.parents[e][k]
            if p in known and p not in skip:
                code = instantiate(text, sl)
                out.append(dot[p] if code == "1" else f"({code})*{dot[p]}")
        temps = [f"    {instantiate(t, sl)}" for t in jac_temps] if out else []
        return temps, out

    cyclic_index = {b: k for k, b in enumerate(graph.cyclic_blocks)}
    for b in graph.blocks:
        if b.explicit:
            (e,) = b.constraints
            temps, products = terms(e)
            if products:
                t = graph.targets[e]
                lines += [*temps, f"    {dot[t]} = {' + '.join(products)}"]
                known.add(t)
            continue
        # J ż_B = −Σ_{p outside} ∂r/∂p ṗ: +∂f/∂p ṗ (explicit), −∂c/∂p ṗ (implicit).
        rhs = []
        inside = frozenset(b.unknowns)
        for e in b.constraints:
            temps, products = terms(e, skip=inside)
            t = graph.targets[e]
            parts = [f"-({' + '.join(products)})"] if t is None and products else products
            if t is not None and t not in inside and t in known:
                parts.append(f"-{dot[t]}")
            if not parts:
                rhs.append("0.0")
                continue
            # each row's value now: the next constraint's temporaries reuse the names
            row = em.namer.fresh("rhs")
            lines += [*temps, f"    {row} = {' + '.join(parts)}"]
            rhs.append(row)
        if all(r == "0.0" for r in rhs):
            continue
        lines.append(f"    _T = _blocks[{cyclic_index[b]}].tangent(_ctx, ({', '.join(rhs)},))")
        lines += [f"    {dot[v]} = _T[..., {j}]" for j, v in enumerate(b.unknowns)]
        known.update(b.unknowns)
    if every:
        listed = [dot[v] if v in known else "0.0" for v in range(len(names))]
        lines.append(f"    return [{', '.join(listed)}]")
    else:
        lines.append(f"    return {dot[graph.output] if graph.output in known else '0.0'}")
    return "\n".join(lines) + "\n"


def hessian_functions(em: _Emitter) -> tuple[Callable, Callable, str]:
    """Second order, generated on first use: the tangents Z = dz/dx, then Zᵀ ∇²L Z.

    At the stationary point the Hessian of the output with respect to the inputs is the
    reduced Hessian H = Zᵀ (∇²_{x,z} L) Z, where Z stacks the identity (inputs) and the
    tangents of every variable along every input direction, and
    ∇²L = Σ_i λ_i ∇²f_i (explicit) − Σ_i λ_i ∇²c_i (implicit). Directions lead the
    tangent arrays, so each term is one contraction over the batch.
    """
    graph, names = em.graph, em.names
    tangents, hessian = em.namer.fresh("tangents"), em.namer.fresh("hessian")
    tangents_source = _jvp_source(em, tangents, every=True)
    lam = [em.namer.fresh("mu_" + c.label) for c in em.ir.constraints]
    dot = [em.namer.fresh("z_" + names[v]) for v in range(len(names))]
    lines = [
        f"def {hessian}({', '.join(names)}, {', '.join(lam)}, {', '.join(dot)}):",
        "    _H = 0.0",
    ]
    for e, c in enumerate(em.ir.constraints):
        if e not in graph.needed:
            continue
        temps, pairs = em.table.second_derivatives(em.forms[e], c.label)
        if not pairs:
            continue
        em.ensure_temps(len(temps))  # second order may need more names
        sl = em.slots(e, lam[e])
        lines += [f"    {instantiate(t, sl)}" for t in temps]
        sign = _SIGN[c.sign]
        for a, b, code in pairs:
            pa, pb = dot[graph.parents[e][a]], dot[graph.parents[e][b]]
            kind = "_outer" if a == b else "_outer2"
            lines.append(f"    _H = _H {sign} {kind}({instantiate(code, sl)}, {pa}, {pb})")
    lines.append("    return _H")
    source = tangents_source + "\n" + "\n".join(lines) + "\n"
    namespace = _exec(
        _compile(source, "hessian"),
        {
            **NUMPY_NAMESPACE,
            "_outer": _outer,
            "_outer2": _outer2,
            "_blocks": em.block_solvers,
        },
    )
    return namespace[tangents], namespace[hessian], source


def _outer(c: Any, za: Any, zb: Any) -> Any:
    """Σ_batch c·z_a z_bᵀ over the leading direction axis (0 where a tangent is 0)."""
    if np.ndim(za) == 0 or np.ndim(zb) == 0:
        return 0.0
    za, zb = np.broadcast_arrays(za * c, zb)
    n = math.prod(za.shape[1:])  # not -1: an empty batch has no size to infer
    return za.reshape(za.shape[0], n) @ zb.reshape(zb.shape[0], n).T


def _outer2(c: Any, za: Any, zb: Any) -> Any:
    """The symmetric pair term of a mixed second partial: c (z_a z_bᵀ + z_b z_aᵀ)."""
    h = _outer(c, za, zb)
    return h if np.ndim(h) == 0 else h + h.T


def hvp_functions(em: _Emitter) -> tuple[Callable, Callable, str]:
    """Hessian-vector products, generated on first use: (NumPy version, float version, source).

    ``hvp(_ctx, <variables>, <λ>, <ẋ>)`` returns (∇²(Σ z_N)) ẋ per input entry and sample,
    the second-order adjoint way: the tangents ż = Z ẋ along one direction
    (`_jvp_source`), then the reverse pass of the tangent-linear program,
    `_second_adjoint_source`. Never forms a Hessian: about one forward and two reverse
    sweeps.
    """
    names, fresh = em.names, em.namer.fresh
    hvp, tangents, second_adjoint = fresh("hvp"), fresh("tangents"), fresh("second_adjoint")
    tangents_source = _jvp_source(em, tangents, every=True)
    lam = [fresh("l_" + c.label) for c in em.ir.constraints]
    dot = [fresh("zd_" + names[v]) for v in range(len(names))]
    dx = [fresh("xd_" + names[k]) for k in range(em.n_in)]
    wrapper = [
        f"def {hvp}(_ctx, {', '.join(names)}, {', '.join(lam)}, {', '.join(dx)}):",
        f"    _D = {tangents}(_ctx, {', '.join(names)}, {', '.join(dx)})",
        f"    return {second_adjoint}(_ctx, {', '.join(names)}, {', '.join(lam)}, *_D)",
    ]
    second = _second_adjoint_source(em, second_adjoint, lam, dot)
    source = "\n".join([tangents_source, second, "\n".join(wrapper) + "\n"])
    code = _compile(source, "hvp")
    numpy_ns = _exec(code, {**NUMPY_NAMESPACE, "_blocks": em.block_solvers})
    scalar_ns = _exec(code, {**SCALAR_NAMESPACE, "_blocks": em.block_solvers})
    return numpy_ns[hvp], scalar_ns[hvp], source


def _second_adjoint_source(em: _Emitter, name: str, lam: list[str], dot: list[str]) -> str:
    """The reverse pass of the tangent-linear program: μ, and Hẋ at the inputs.

    Differentiating ∂L/∂z_j = 0 (the adjoint) along ż gives the same triangular system
    with another right-hand side: Σ_e μ_e ∂r_e/∂z_j = w_j, where μ = λ̇ and
    w = (∇²L) ż, w_j = Σ_e λ_e Σ_p ∂²f_e/∂z_j∂z_p ż_p (−∂²c_e for implicit equations).
    The output's seed is 0. So this is the adjoint pass, blocks in reverse, with each
    constraint first adding its λ_e ∂²f_e ż terms to its parents, then scattering
    μ_e ∂f_e/∂p; cyclic blocks solve Jᵀ μ_B = w_B + … with the forward factorization.
    At an input x_k the accumulator is (Hẋ)_k = w_k + Σ_e μ_e ∂f_e/∂x_k.
    """
    graph, names, n_in = em.graph, em.names, em.n_in
    acc = {v: em.namer.fresh("m_" + names[v]) for v in range(len(names))}
    lines = [f"def {name}(_ctx, {', '.join(names)}, {', '.join(lam)}, {', '.join(dot)}):"]
    assigned: set[int] = set()

    def curvature(e: int) -> list[str]:
        """Lines adding λ_e (∂²f_e/∂p_a∂p_b) ż to the parents of constraint e: w."""
        c = em.ir.constraints[e]
        temps, pairs = em.table.second_derivatives(em.forms[e], c.label)
        if not pairs:
            return []
        em.ensure_temps(len(temps))  # second order may need more names
        sl = em.slots(e, lam[e])
        sign = _SIGN[c.sign]
        out = [f"    {instantiate(t, sl)}" for t in temps]
        parents = graph.parents[e]
        for a, b, code in pairs:
            pa, pb = parents[a], parents[b]
            text = instantiate(code, sl)
            out.append(_accumulate(acc[pa], sign, f"({text})*{dot[pb]}", pa in assigned))
            assigned.add(pa)
            if a != b:
                out.append(_accumulate(acc[pb], sign, f"({text})*{dot[pa]}", pb in assigned))
                assigned.add(pb)
        return out

    cyclic_index = {b: k for k, b in enumerate(graph.cyclic_blocks)}
    for b in reversed(graph.blocks):
        needed = [e for e in b.constraints if e in graph.needed]
        if not needed:
            continue
        if b.explicit:
            (e,) = b.constraints
            t = graph.targets[e]
            lines.append(f"    # {names[t]} = {em.forward_text(e)}")
            lines += curvature(e)
            if t in assigned and em.forms[e].partials:
                lines += em.scatter(e, acc, assigned, lam=acc[t])
            continue
        k = cyclic_index[b]
        lines.append(f"    # block {k}: {', '.join(names[v] for v in b.unknowns)}")
        for e in b.constraints:
            lines += curvature(e)
        if not any(v in assigned for v in b.unknowns):
            continue
        seeds = [acc[v] if v in assigned else "0.0" for v in b.unknowns]
        lines.append(f"    _M = _blocks[{k}].adjoint(_ctx, ({''.join(s + ', ' for s in seeds)}))")
        mu = {e: em.namer.fresh("mu2_" + em.ir.constraints[e].label) for e in b.constraints}
        lines += [f"    {mu[e]} = _M[..., {j}]" for j, e in enumerate(b.constraints)]
        for e in b.constraints:
            lines += em.scatter(
                e, acc, assigned, skip=frozenset(b.unknowns), lam=mu[e], target=True
            )
    out = [acc[k] if k in assigned else "0.0" for k in range(n_in)]
    lines.append(f"    return [{', '.join(out)}]")
    return "\n".join(lines) + "\n"


def _kkt_source(em: _Emitter, name: str) -> str:
    """max |∂L/∂λ| (every residual) and max |∂L/∂z| (every unknown), recomputed."""
    graph, names, n_in = em.graph, em.names, em.n_in
    lam = [
        em.namer.fresh("mu_" + em.ir.constraints[e].label) for e in range(len(em.ir.constraints))
    ]
    lines = [f"def {name}({', '.join(names)}, {', '.join(lam)}):", "    _r = 0.0"]
    lines += [
        f"    _r = numpy.maximum(_r, numpy.abs({em.residual_text(e)}))"
        for e in range(len(em.ir.constraints))
    ]
    acc = {v: em.namer.fresh("s_" + names[v]) for v in range(n_in, len(names))}
    acc.update({v: "_unused" for v in range(n_in)})
    assigned = {graph.output}
    lines.append(f"    {acc[graph.output]} = 1.0")
    inputs = frozenset(range(n_in))
    for e in range(len(em.ir.constraints)):
        lines += em.scatter(e, acc, assigned, skip=inputs, lam=lam[e], target=True)
    lines.append("    _s = 0.0")
    lines += [f"    _s = numpy.maximum(_s, numpy.abs({acc[v]}))" for v in sorted(assigned)]
    lines.append("    return _r, _s")
    return "\n".join(lines) + "\n"


_counter = itertools.count()


@dataclass(frozen=True)
class _Code:
    """Compiled generated source, with its source and module name."""

    code: CodeType
    source: str
    module: str


class _Loader:
    """The ``__loader__`` of generated code: its source, for tracebacks.

    It lives in the namespace the code runs in, so as long as its functions do, and no
    longer: ``linecache`` asks a frame's globals for their loader when a traceback is
    printed (``linecache.lazycache``), so nothing is registered in advance (registering
    every compile in ``linecache.cache`` kept all sources alive: +26 MB per 1,000
    programs).
    """

    def __init__(self, source: str):
        self._source = source

    def get_source(self, name: str) -> str:
        return self._source


def _compile(source: str, name: str) -> _Code:
    """Compile our generated source (never user text), named for tracebacks."""
    module = f"lagrangian_ad-generated:{name} {next(_counter)}"
    # Not "<…>": linecache asks no loader for such names. No file has this name either.
    return _Code(compile(source, module, "exec"), source, module)


def _exec(code: _Code, namespace: dict | None = None) -> dict:
    """Run compiled generated code in a fresh namespace (NumPy's by default)."""
    namespace = dict(namespace or NUMPY_NAMESPACE)
    namespace.update(__name__=code.module, __loader__=_Loader(code.source))
    exec(code.code, namespace)
    return namespace


class _ScalarNumpy:
    """The ``numpy`` of generated code run on Python floats (the small-batch fast path).

    Functions of ``math`` where they give the same double as NumPy's; anything else falls
    through to NumPy itself. Where math raises (log of a negative, overflow, a negative
    base to a fractional power) the caller reruns the call on the NumPy path, so both
    paths return the same numbers.
    """

    exp, log, log2, log10 = math.exp, math.log, math.log2, math.log10
    log1p, expm1, sqrt, hypot = math.log1p, math.expm1, math.sqrt, math.hypot
    sin, cos, tan, arcsin, arccos = math.sin, math.cos, math.tan, math.asin, math.acos
    arctan, arctan2 = math.atan, math.atan2
    sinh, cosh, tanh = math.sinh, math.cosh, math.tanh
    arcsinh, arccosh, arctanh = math.asinh, math.acosh, math.atanh
    power = math.pow
    float64 = float  # the constant of a constraint z = c stays a Python float here

    @staticmethod
    def sign(x: float) -> float:
        # As numpy.sign: NaN for NaN, 0.0 for ±0; a NumPy scalar (from a function that
        # falls through to NumPy, such as sinc) is fine too.
        return 1.0 if x > 0 else -1.0 if x < 0 else 0.0 if x == 0 else float(x)

    @staticmethod
    def heaviside(x: float, at_zero: float) -> float:
        return x if x != x else (at_zero if x == 0 else float(x > 0))

    @staticmethod
    def maximum(a: float, b: float) -> float:
        return a if a != a else (b if b != b or b > a else a)

    @staticmethod
    def minimum(a: float, b: float) -> float:
        return a if a != a else (b if b != b or b < a else a)

    def __getattr__(self, name: str):
        return getattr(np, name)


class _ScalarSpecial:
    """The ``special`` of generated code on Python floats: math's erf and erfc, the rest
    scipy.special's."""

    erf, erfc = math.erf, math.erfc

    def __getattr__(self, name: str):
        return getattr(scipy.special, name)


# The generated code's own functions (``_lad``): sinc′ and sinc″ by their Taylor series
# for |x| < 1 (eleven terms: the first left out is below 1e-17 there), and from
# sinc′ = (cos x − sinc x)/x, sinc″ = −(sin x + 2 sinc′ x)/x elsewhere (no x³ to
# overflow). The closed forms lose every digit near 0, where the series are exact.
_SINC_TERMS = range(1, 12)
_SINC_PRIME = tuple((-1) ** k * 2 * k / math.factorial(2 * k + 1) for k in reversed(_SINC_TERMS))
_SINC_SECOND = tuple(
    (-1) ** k * 2 * k * (2 * k - 1) / math.factorial(2 * k + 1) for k in reversed(_SINC_TERMS)
)


def scalar_sinc_prime(x: float) -> float:
    """sinc′(x) of one float (self-contained: Numba compiles it for the fused backend)."""
    if abs(x) < 1.0:
        total, x2 = 0.0, x * x
        for c in _SINC_PRIME:  # Horner
            total = total * x2 + c
        return x * total
    return (math.cos(x) - math.sin(x) / x) / x


def scalar_sinc_second(x: float) -> float:
    """sinc″(x) of one float (self-contained, like `scalar_sinc_prime`)."""
    if abs(x) < 1.0:
        total, x2 = 0.0, x * x
        for c in _SINC_SECOND:
            total = total * x2 + c
        return total
    return -(math.sin(x) + 2.0 * (math.cos(x) - math.sin(x) / x) / x) / x


class _NumpyOwn:
    """``_lad`` on arrays: the same functions, elementwise."""

    @staticmethod
    def sinc_prime(x: Any) -> Any:
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(all="ignore"):  # the closed form at 0: not used there
            far = (np.cos(x) - np.sin(x) / x) / x
        return np.where(np.abs(x) < 1.0, x * np.polyval(_SINC_PRIME, x * x), far)[()]

    @staticmethod
    def sinc_second(x: Any) -> Any:
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(all="ignore"):
            far = -(np.sin(x) + 2.0 * (np.cos(x) - np.sin(x) / x) / x) / x
        return np.where(np.abs(x) < 1.0, np.polyval(_SINC_SECOND, x * x), far)[()]


class _ScalarOwn:
    """``_lad`` on Python floats."""

    sinc_prime = staticmethod(scalar_sinc_prime)
    sinc_second = staticmethod(scalar_sinc_second)


NUMPY_NAMESPACE = {"numpy": np, "special": scipy.special, "math": math, "_lad": _NumpyOwn}
SCALAR_NAMESPACE = {
    "numpy": _ScalarNumpy(),
    "special": _ScalarSpecial(),
    "math": math,
    "_lad": _ScalarOwn,
}
