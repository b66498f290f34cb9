"""Constraint forms: derive and print once per form, instantiate per constraint.

Big programs repeat a few shapes of constraint: z_k = sin(z_{k−1}) + 0.5·x ten thousand
times, or h_i = tanh(Σ_j W_ij h_j + b_i) for every unit. Two constraints have the same
*form* when their expression trees are equal up to renaming their variables (ranked by
variable index) and changing their float constants (with the same pattern of equal
floats). For each form the expensive SymPy work — the partials ∂f/∂z_j, the
substitution of f by its target, the common subexpressions of λ·∂f/∂z_j, and printing
to NumPy code — is done once, on a template whose variables are placeholders ``«p0»``,
``«p1»``…, whose float constants are ``«c0»``…, whose target is ``«t»`` and whose
multiplier is ``«l»``. A constraint's code is its form's text with the placeholders
replaced by its own names and constants: string work, not symbolic work.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp
from sympy.core.function import ArgumentIndexError
from sympy.printing.numpy import NumPyPrinter

from ._errors import ProgramError

__all__ = ["Form", "FormTable", "float_text", "form_key", "instantiate"]

_PLACEHOLDER = re.compile(r"«(\w+)»")


def form_key(expr: sp.Expr, rank: dict[sp.Symbol, int]) -> tuple[str, tuple[sp.Float, ...]]:
    """A structural key of ``expr`` and its distinct float constants in traversal order.

    Symbols are written by rank, distinct floats by order of first appearance, every
    other node by its class and, for numbers, its value. The arguments of sums and
    products are visited in a canonical order that ignores float values: SymPy orders
    2.0·x₁ − 3.0·x₂ by its coefficients, and one dense layer's rows must still share
    a form. Iterative walks (no recursion limit).
    """
    # Pass 1, bottom-up: a hash of each subtree with its floats masked, to sort by.
    shape: dict[sp.Basic, int] = {}
    stack: list[tuple[sp.Basic, bool]] = [(expr, False)]
    while stack:
        node, ready = stack.pop()
        if node in shape:
            continue
        if node.is_Symbol:
            shape[node] = hash(("s", rank[node]))
        elif node.is_Float:
            shape[node] = hash("f")
        elif node.is_Number or not node.args:
            shape[node] = hash(node)
        elif ready:
            children = [shape[a] for a in node.args]
            if node.is_Add or node.is_Mul:
                children.sort()
            shape[node] = hash((type(node).__name__, *children))
        else:
            stack.append((node, True))
            stack.extend((a, False) for a in node.args if a not in shape)
    # Pass 2, top-down in that order: the tokens and the floats.
    tokens: list[str] = []
    floats: list[sp.Float] = []
    seen_floats: dict[sp.Float, int] = {}
    stack = [expr]
    while stack:
        node = stack.pop()
        if node.is_Symbol:
            tokens.append(f"s{rank[node]}")
        elif node.is_Float:
            k = seen_floats.setdefault(node, len(seen_floats))
            if k == len(floats):
                floats.append(node)
            tokens.append(f"f{k}")
        elif node.is_Rational:  # in hex: no limit on the digits of a huge integer
            tokens.append(f"{type(node).__name__}:{node.p:x}/{node.q:x}")
        elif node.is_Number or not node.args:
            tokens.append(f"{type(node).__name__}:{node}")
        else:
            tokens.append(f"{type(node).__name__}/{len(node.args)}")
            args = node.args
            if node.is_Add or node.is_Mul:
                args = sorted(args, key=shape.__getitem__)
            stack.extend(reversed(args))
    return " ".join(tokens), tuple(floats)


@dataclass(frozen=True)
class Form:
    """Printed code of one constraint form.

    Attributes
    ----------
    expr : sympy.Expr
        The template f in placeholders (for symbolic use).
    partials : tuple of (int, sympy.Expr)
        (parent rank, ∂f/∂p) for each nonzero partial, f replaced by «t».
    forward : str
        Code of f.
    temps : tuple of str
        Code of the common subexpressions ``«tmpK» = …`` of the terms λ·∂f/∂p.
    terms : tuple of str
        Code of λ·∂f/∂p for each nonzero partial, in the order of ``partials``.
    jac_temps, jac : tuple of str
        The same for the partials ∂f/∂p alone (Jacobian entries of cyclic blocks).
    """

    expr: sp.Expr
    partials: tuple[tuple[int, sp.Expr], ...]
    forward: str
    temps: tuple[str, ...]
    terms: tuple[str, ...]
    jac_temps: tuple[str, ...]
    jac: tuple[str, ...]


class FormTable:
    """Forms met so far, keyed by `form_key`, derived and printed on first sight."""

    def __init__(self, printer_factory: Callable[[dict[sp.Symbol, str]], NumPyPrinter]):
        self._forms: dict[str, Form] = {}
        self._second: dict[int, tuple] = {}
        self._raw: dict[int, tuple] = {}
        self._printer_factory = printer_factory

    def __len__(self) -> int:
        return len(self._forms)

    def get(
        self,
        key: str,
        expr: sp.Expr,
        parents: tuple[sp.Symbol, ...],
        floats: tuple[sp.Float, ...],
        target: sp.Symbol | None,
        label: str,
    ) -> Form:
        form = self._forms.get(key)
        if form is None:
            form = self._forms[key] = self._derive(expr, parents, floats, target, label)
        return form

    def raw_jacobian(self, form: Form, label: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Code of ∂f/∂p without f replaced by «t», in the order of ``form.partials``.

        Newton's iterates inside a cyclic block are not solutions, so there z_i ≠ f_i and
        the substitution that makes the adjoint cheap would give a wrong Jacobian.
        """
        cached = self._raw.get(id(form))
        if cached is None:
            diff = _SparseDiff(form.expr)
            exprs = [diff(sp.Symbol(f"«p{k}»", real=True)) for k, _ in form.partials]
            names = {s: s.name for s in form.expr.free_symbols}
            cached = _print_shared(exprs, self._printer_factory(names), label)
            self._raw[id(form)] = cached
        return cached

    def second_derivatives(self, form: Form, label: str) -> tuple[tuple[str, ...], tuple]:
        """Code of λ ∂²f/∂p_a∂p_b for a ≤ b (nonzero ones): (temporaries, ((a, b, code), …)).

        Derived on first request only: first-order work never pays for it.
        """
        cached = self._second.get(id(form))
        if cached is not None:
            return cached
        template = form.expr
        placeholders = sorted(
            (s for s in template.free_symbols if s.name.startswith("«p")),
            key=lambda s: int(s.name[2:-1]),
        )
        first = _SparseDiff(template)
        lam, t = sp.Symbol("«l»", real=True), sp.Symbol("«t»", real=True)
        pairs, exprs = [], []
        for i, pa in enumerate(placeholders):
            da = first(pa)
            if da == 0:
                continue
            second = _SparseDiff(da)
            for pb in placeholders[i:]:
                d2 = _differentiate(second, pb, label, pb)
                if d2 != 0:
                    if not template.is_Atom:
                        d2 = d2.xreplace({template: t})
                    pairs.append((int(pa.name[2:-1]), int(pb.name[2:-1])))
                    exprs.append(lam * d2)
        names = {s: s.name for s in template.free_symbols | {lam, t}}
        temps, codes = _print_shared(exprs, self._printer_factory(names), label)
        result = (temps, tuple((a, b, c) for (a, b), c in zip(pairs, codes, strict=True)))
        self._second[id(form)] = result
        return result

    def _derive(
        self,
        expr: sp.Expr,
        parents: tuple[sp.Symbol, ...],
        floats: tuple[sp.Float, ...],
        target: sp.Symbol | None,
        label: str,
    ) -> Form:
        p = [sp.Symbol(f"«p{k}»", real=True) for k in range(len(parents))]
        c = [sp.Symbol(f"«c{k}»", real=True) for k in range(len(floats))]
        t, lam = sp.Symbol("«t»", real=True), sp.Symbol("«l»", real=True)
        to_template: dict[sp.Basic, sp.Basic] = dict(zip(parents, p, strict=True))
        to_template.update(zip(floats, c, strict=True))
        template = expr.xreplace(to_template)
        printer = self._printer_factory({s: s.name for s in (*p, *c, t, lam)})

        partials = []
        diff = _SparseDiff(template)
        for k, pk in enumerate(p):
            d = _differentiate(diff, pk, label, parents[k])
            if d != 0:
                if target is not None and not template.is_Atom:
                    d = d.xreplace({template: t})
                partials.append((k, d))
        temps, terms = _print_shared([lam * d for _, d in partials], printer, label)
        jac_temps, jac = _print_shared([d for _, d in partials], printer, label)
        folded = fold_constants(template, label)
        forward = _print(printer, folded, label)
        if not folded.free_symbols:  # z = constant: a NumPy float, so 1/z is inf, not an error
            forward = f"numpy.float64({forward})"
        return Form(
            expr=template,
            partials=tuple(partials),
            forward=forward,
            temps=temps,
            terms=terms,
            jac_temps=jac_temps,
            jac=jac,
        )


def _print_shared(
    exprs: list[sp.Expr], printer: NumPyPrinter, label: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Code of ``exprs`` after common subexpression elimination: (temporaries, results)."""
    temps: list[str] = []
    if len(exprs) > 1:
        names = (sp.Symbol(f"«tmp{k}»") for k in range(1 << 30))
        replacements, exprs = sp.cse(exprs, symbols=names, order="none")
        for sym, e in replacements:
            printer._names[sym] = sym.name
            temps.append(f"{sym.name} = {_print(printer, e, label)}")
    return tuple(temps), tuple(_print(printer, e, label) for e in exprs)


def float_text(value: sp.Float) -> str:
    """A float constant as Python code: exact (repr), parenthesized when negative."""
    text = repr(float(value))
    if text in ("inf", "-inf", "nan"):
        text = f"numpy.{text.lstrip('-')}" if text != "-inf" else "-numpy.inf"
    return f"({text})" if text.startswith("-") else text


def instantiate(text: str, names: dict[str, str]) -> str:
    """Replace every «placeholder» of ``text`` by ``names[placeholder]``."""
    return _PLACEHOLDER.sub(lambda m: names[m.group(1)], text)


class _SparseDiff:
    """∂f/∂p for one template f and many placeholders p, skipping what does not hold p.

    SymPy's ``diff`` visits every argument of a sum for every variable, which is
    quadratic for the wide sums of dense layers (Σ_j W_ij h_j). This chain rule visits
    only the subexpressions that contain p: for each Add node it indexes its arguments by
    the placeholders they hold. Nodes it has no rule for go to SymPy's ``diff``.
    """

    def __init__(self, expr: sp.Expr):
        self.expr = expr
        self._holds: dict[sp.Basic, frozenset] = {}
        self._add_index: dict[sp.Basic, dict[sp.Symbol, list[sp.Basic]]] = {}

    def holds(self, node: sp.Basic) -> frozenset:
        """The symbols in ``node`` (memoized over the shared DAG, iteratively)."""
        if node in self._holds:
            return self._holds[node]
        stack = [(node, False)]
        while stack:
            n, ready = stack.pop()
            if n in self._holds:
                continue
            if n.is_Symbol:
                self._holds[n] = frozenset((n,))
            elif not n.args:
                self._holds[n] = frozenset()
            elif ready:
                self._holds[n] = frozenset().union(*(self._holds[a] for a in n.args))
            else:
                stack.append((n, True))
                stack.extend((a, False) for a in n.args if a not in self._holds)
        return self._holds[node]

    def __call__(self, p: sp.Symbol) -> sp.Expr:
        return self._d(self.expr, p)

    def _d(self, node: sp.Expr, p: sp.Symbol) -> sp.Expr:
        if p not in self.holds(node):
            return sp.S.Zero
        if node == p:
            return sp.S.One
        if node.is_Add:
            index = self._add_index.get(node)
            if index is None:
                index = self._add_index[node] = {}
                for a in node.args:
                    for s in self.holds(a):
                        index.setdefault(s, []).append(a)
            return sp.Add(*[self._d(a, p) for a in index[p]])
        if node.is_Mul:
            args = node.args
            return sp.Add(
                *[
                    sp.Mul(*args[:k], *args[k + 1 :]) * self._d(a, p)
                    for k, a in enumerate(args)
                    if p in self.holds(a)
                ]
            )
        if node.is_Pow and p not in self.holds(node.exp):
            base, exp = node.args
            return exp * base ** (exp - 1) * self._d(base, p)
        if isinstance(node, sp.Function) and all(isinstance(a, sp.Expr) for a in node.args):
            terms = []
            for k, a in enumerate(node.args):
                if p in self.holds(a):
                    try:
                        outer = node.fdiff(k + 1)
                    except (ArgumentIndexError, NotImplementedError):
                        return sp.diff(node, p)
                    if outer.has(sp.Derivative, sp.Subs):  # no rule of its own (sign, …)
                        return sp.diff(node, p)
                    terms.append(outer * self._d(a, p))
            return sp.Add(*terms)
        return sp.diff(node, p)


def _differentiate(diff: _SparseDiff, wrt: sp.Symbol, label: str, shown: sp.Symbol) -> sp.Expr:
    d = diff(wrt)
    # The derivative of sign, Heaviside, … is zero almost everywhere, as in every
    # autodiff library; SymPy writes it with DiracDelta, which has no numeric value.
    if d.has(sp.DiracDelta):
        d = d.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
    if d.has(sp.Derivative, sp.Subs):
        raise ProgramError(
            f"constraint {label!r}: SymPy cannot differentiate it with respect to {shown}"
        )
    return d


def _print(printer: NumPyPrinter, expr: sp.Expr, label: str) -> str:
    expr = fold_constants(expr, label)
    try:
        return printer.doprint(expr)
    except Exception as err:  # SymPy raises several kinds for what it cannot print
        raise ProgramError(
            f"constraint {label!r}: cannot generate numeric code for it ({err})"
        ) from err


# Constant subexpressions are evaluated node by node, bottom-up, with SymPy's evalf:
# exact where SymPy is exact, else to _DIGITS significant digits (more for large
# arguments, so that cos(99999999999999999999) is the cosine of that integer). A value
# beyond 10**±_RANGE is already ±inf or 0 in double precision: it is clamped there, so
# that no evaluation meets an astronomically large argument (0.5**cosh(10**7) would
# keep mpmath busy for minutes; clamped, cosh(10**7) is oo and the power is 0).
_DIGITS = 30
_RANGE = 400
_HUGE = sp.Integer(10) ** _RANGE
_NON_REAL = (sp.I, sp.zoo)


def fold_constants(expr: sp.Expr, label: str) -> sp.Expr:
    """``expr`` with each constant subexpression replaced by its value (a Float or an
    exact number), so generated code never computes with Python integers or constants
    (``pi**100000`` overflowed a Python float, ``cos(99999999999999999999)`` sent a
    Python integer to ``numpy.cos``). A non-real constant is a `ProgramError`."""
    const: dict[sp.Basic, bool] = {}
    stack: list[tuple[sp.Basic, bool]] = [(expr, False)]
    while stack:  # which subtrees hold no symbol (iterative: any depth)
        node, ready = stack.pop()
        if node in const:
            continue
        if not node.args or ready:
            const[node] = not node.is_Symbol if not node.args else all(const[a] for a in node.args)
            if node in _NON_REAL:
                raise ProgramError(f"constraint {label!r}: the constant {node} is not real")
        else:
            stack.append((node, True))
            stack.extend((a, False) for a in node.args if a not in const)
    if const[expr] and not expr.args:
        return expr
    tops: dict[sp.Basic, sp.Basic] = {}
    stack = [expr]
    while stack:  # the largest constant subtrees
        node = stack.pop()
        if const[node] and isinstance(node, sp.Expr):
            if node.args and node not in tops:
                tops[node] = _constant_value(node, label)
        else:
            stack.extend(node.args)
    return expr.xreplace(tops) if tops else expr


def _constant_value(expr: sp.Expr, label: str) -> sp.Expr:
    """The value of a constant expression: bottom-up, each node from its children's values."""
    if not isinstance(expr, sp.Expr):
        return expr
    value: dict[sp.Basic, sp.Expr] = {}
    stack: list[tuple[sp.Basic, bool]] = [(expr, False)]
    while stack:
        node, ready = stack.pop()
        if node in value:
            continue
        if not node.args:
            value[node] = node
        elif ready:
            v = node.func(*[value[a] for a in node.args])
            if not v.is_Number:
                v = v.evalf(_DIGITS)
                if v.is_Number and abs(v) > 10**_DIGITS and abs(v) < _HUGE:
                    digits = _DIGITS + len(str(int(abs(v))))  # cos(10**20 + …): all of it
                    v = node.func(*[value[a] for a in node.args]).evalf(digits)
            if not v.is_Number:
                if v.is_real is False or v.has(*_NON_REAL):
                    raise ProgramError(
                        f"constraint {label!r}: the constant {node} is not real ({v})"
                    )
                raise ProgramError(f"constraint {label!r}: cannot evaluate the constant {node}")
            if v.is_finite and abs(v) > _HUGE:
                v = sp.oo if v > 0 else -sp.oo
            elif v.is_finite and v != 0 and abs(v) < 1 / _HUGE:
                v = sp.Float(0.0)
            value[node] = v
        else:
            stack.append((node, True))
            stack.extend((a, False) for a in node.args if a not in value)
    return value[expr]
