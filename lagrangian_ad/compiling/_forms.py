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

from ..core._constants import ConstantError, bottom_up, constant_value
from ..core._errors import ProgramError

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
    def masked(node: sp.Basic, children: list[int]) -> int:
        if node.is_Symbol:
            return hash(("s", rank[node]))
        if node.is_Float:
            return hash("f")
        if node.is_Number or not node.args:
            return hash(node)
        if node.is_Add or node.is_Mul:
            children.sort()
        return hash((type(node).__name__, *children))

    shape: dict[sp.Basic, int] = {}
    bottom_up(expr, masked, shape)
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
            tokens.append(f"f{k}=0" if node.is_zero else f"f{k}")
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

    The partials alone (forward mode) are printed on request: `FormTable.jacobian`.
    """

    expr: sp.Expr
    partials: tuple[tuple[int, sp.Expr], ...]
    forward: str
    temps: tuple[str, ...]
    terms: tuple[str, ...]


class FormTable:
    """Forms met so far, keyed by `form_key`, derived and printed on first sight."""

    def __init__(self, printer_factory: Callable[[dict[sp.Symbol, str]], NumPyPrinter]):
        self._forms: dict[str, Form] = {}
        self._second: dict[int, tuple] = {}
        self._raw: dict[int, tuple] = {}
        self._jac: dict[int, tuple] = {}
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

    def jacobian(self, form: Form, label: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Code of the partials ∂f/∂p alone (f replaced by «t»), in the order of
        ``form.partials``: (temporaries, codes). For forward mode; made on first request."""
        cached = self._jac.get(id(form))
        if cached is None:
            names = {s: s.name for s in form.expr.free_symbols | {sp.Symbol("«t»", real=True)}}
            exprs = [d for _, d in form.partials]
            cached = self._jac[id(form)] = _print_shared(exprs, self._printer_factory(names), label)
        return cached

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
        memo: dict[sp.Basic, sp.Basic] = {template: t}
        for i, pa in enumerate(placeholders):
            da = first(pa)
            if da == 0:
                continue
            second = _SparseDiff(da)
            for pb in placeholders[i:]:
                d2 = _differentiate(second, pb, label, pb)
                if d2 != 0:
                    if not template.is_Atom:
                        d2 = replace(d2, memo)
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
        # A float placeholder knows it is nonzero (the form key tells zeros apart), so the
        # derivative of x**2.5 or 2.5**x needs no ReplaceZero.
        c = [
            sp.Symbol(f"«c{k}»", real=True, **({"nonzero": True} if not f.is_zero else {}))
            for k, f in enumerate(floats)
        ]
        t, lam = sp.Symbol("«t»", real=True), sp.Symbol("«l»", real=True)
        to_template: dict[sp.Basic, sp.Basic] = dict(zip(parents, p, strict=True))
        to_template.update(zip(floats, c, strict=True))
        template = primitives(expr).xreplace(to_template)
        printer = self._printer_factory({s: s.name for s in (*p, *c, t, lam)})

        partials = []
        diff = _SparseDiff(template)
        memo: dict[sp.Basic, sp.Basic] = {template: t}
        for k, pk in enumerate(p):
            d = _differentiate(diff, pk, label, parents[k])
            if d != 0:
                if target is not None and not template.is_Atom:
                    d = replace(d, memo)
                partials.append((k, d))
        temps, terms = _print_shared([lam * d for _, d in partials], printer, label)
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
        )


def _print_shared(
    exprs: list[sp.Expr], printer: NumPyPrinter, label: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Code of ``exprs`` after common subexpression elimination: (temporaries, results)."""
    temps: list[str] = []
    if exprs:  # one expression too: the cofactors of a wide product repeat within it
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


# --------------------------------------------------------------------------- primitives
#
# Functions of the generated code that SymPy lacks, or has with a derivative unfit for
# floating point. Each is a SymPy function with its own derivative (fdiff) and a printer
# method in `_codegen`; `_RULES` below gives the derivative of SymPy's own functions
# where its rule does not suit numbers.


class ReplaceZero(sp.Function):
    """``ReplaceZero(x, v)`` is x, or the number v where x = 0; its derivative is 1.

    Used by the derivative of powers, as autograd's and JAX's rules for x**y are:
    ∂(b**e)/∂b = e·b**(e′ − 1) with e′ = ReplaceZero(e, 2), which is 0 (not 0·0**−1 = NaN)
    where e = 0, and ∂(b**e)/∂e = b**e·log(ReplaceZero(b, 1)), which is 0 (not 0·log 0)
    where b = 0.
    """

    nargs = 2

    @classmethod
    def eval(cls, x, v):
        if x.is_Number:
            return v if x.is_zero else x  # is_zero: Float(0.0) == 0 is False in SymPy
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.S.One if argindex == 1 else sp.S.Zero


class Ties(sp.Function):
    """``Ties(m, a1, a2, …)``: how many of the a_j equal m (derivative 0). Max and Min
    use it: one node holding m once, where a sum of n comparisons would hold it n times
    (and every walk over the partials would be quadratic)."""

    @classmethod
    def eval(cls, m, *args):
        if m.is_Number and all(a.is_Number for a in args):
            return sp.Integer(sum(float(a) == float(m) for a in args))
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.S.Zero


class _Lattice(sp.Function):
    """Max or Min as a primitive: never evaluated or compared symbolically (SymPy's Max
    compares every pair of arguments through its assumptions, on every rebuild: 49 s to
    compile a Max of 25 arguments). Its partial with respect to argument k is
    Ties(M, a_k) / Ties(M, a_1, …, a_n), M the result: the arguments tied at the extremum share
    the derivative equally (autograd's and JAX's convention); elsewhere it is 1 for the
    argument that is the extremum and 0 for the others. Linear in the arguments: the
    denominator is one shared count."""

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return _lattice_partials(self)[argindex - 1]


class Maximum(_Lattice):
    """The largest argument (SymPy's ``Max``, as a primitive of the generated code)."""


class Minimum(_Lattice):
    """The smallest argument (SymPy's ``Min``, as a primitive of the generated code)."""


def _lattice_partials(node: _Lattice) -> tuple[sp.Expr, ...]:
    count = Ties(node, *node.args)
    return tuple(Ties(node, a) / count for a in node.args)


class SincPrime(sp.Function):
    """sinc′(x) = (x cos x − sin x)/x², with its value −x/3 + … kept near 0.

    SymPy's derivative of sinc drops its Piecewise (NaN at 0), and the closed form loses
    every digit near 0 by cancellation; the generated code evaluates it by its Taylor
    series for |x| < 1 (`_codegen`).
    """

    nargs = 1

    @classmethod
    def eval(cls, x):
        return sp.S.Zero if x.is_zero else None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return SincSecond(self.args[0])

    def _eval_evalf(self, prec: int) -> sp.Expr:
        x = self.args[0]
        return ((x * sp.cos(x) - sp.sin(x)) / x**2)._eval_evalf(prec)


class SincSecond(sp.Function):
    """sinc″(x) = ((2 − x²) sin x − 2x cos x)/x³, −1/3 at 0 (see `SincPrime`)."""

    nargs = 1

    @classmethod
    def eval(cls, x):
        return sp.Rational(-1, 3) if x.is_zero else None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        # Third order, which no pass uses: from (x sinc x)‴ = −(x sinc x)′, not for x ≈ 0.
        x = self.args[0]
        return -(sp.sinc(x) + x * SincPrime(x) + 3 * self) / x

    def _eval_evalf(self, prec: int) -> sp.Expr:
        x = self.args[0]
        return (((2 - x**2) * sp.sin(x) - 2 * x * sp.cos(x)) / x**3)._eval_evalf(prec)


# Partial derivatives of SymPy functions whose own rule does not suit numbers: one
# function of the node per class, giving the partial for every argument. floor and
# ceiling are flat almost everywhere (their derivative 0, as in autograd and JAX; SymPy
# has none); Mod(a, b) = a − b·floor(a/b) has partials 1 and −floor(a/b).
_RULES: dict[type, Callable[[sp.Expr], tuple[sp.Expr, ...]]] = {
    sp.sinc: lambda node: (SincPrime(node.args[0]),),
    sp.floor: lambda node: (sp.S.Zero,),
    sp.ceiling: lambda node: (sp.S.Zero,),
    sp.Mod: lambda node: (sp.S.One, -sp.floor(node.args[0] / node.args[1])),
    Maximum: _lattice_partials,
    Minimum: _lattice_partials,
}

_PRIMITIVES = {sp.Max: Maximum, sp.Min: Minimum}


def primitives(expr: sp.Expr) -> sp.Expr:
    """``expr`` with SymPy's Max and Min replaced by `Maximum` and `Minimum` (bottom-up,
    iterative; nothing else is rebuilt, and no Max is ever re-evaluated)."""
    if not expr.has(*_PRIMITIVES):
        return expr

    def convert(node: sp.Basic, args: list) -> sp.Basic:
        kind = _PRIMITIVES.get(type(node))
        return kind(*args) if kind is not None else _rebuilt(node, args)

    return bottom_up(expr, convert)


def _rebuilt(node: sp.Basic, args: list) -> sp.Basic:
    """``node`` with these arguments: itself when none changed."""
    changed = any(a is not b for a, b in zip(args, node.args, strict=True))
    return node.func(*args) if changed else node


def replace(expr: sp.Basic, memo: dict[sp.Basic, sp.Basic]) -> sp.Basic:
    """``expr.xreplace(rule)`` for the rule that ``memo`` starts with, memo kept across
    calls: each distinct subtree is rebuilt once, however many partials share it."""
    return bottom_up(expr, _rebuilt, memo)


class Times(sp.Expr):
    """``Times(a, b)`` = a·b, kept as one node: the shared partial products of a wide
    product (`_SparseDiff._cofactor`), which SymPy's Mul would flatten into copies. A
    bare Expr, not a Function: tens of thousands are built (and rebuilt by ``cse``) for
    a product of thousands of factors, and a Function's constructor is slow."""

    is_commutative = True

    def __new__(cls, a: sp.Expr, b: sp.Expr) -> sp.Expr:
        if a.is_Number and b.is_Number:
            return a * b
        return sp.Expr.__new__(cls, a, b)

    def _eval_evalf(self, prec: int) -> sp.Expr:
        return sp.Mul(*self.args)._eval_evalf(prec)


_WIDE = 8  # products of this many factors or more get shared cofactors


def _nonzero(e: sp.Expr) -> bool:
    """Whether e is known nonzero without asking the assumptions of a compound expression."""
    if e.is_Number:
        return e.is_zero is False
    return (e.is_Symbol or e.is_NumberSymbol) and e.is_zero is False


def _symbols_in(node: sp.Basic, inside: list[frozenset]) -> frozenset:
    return frozenset((node,)) if node.is_Symbol else frozenset().union(*inside)


class _SparseDiff:
    """∂f/∂p for one template f and many placeholders p, skipping what does not hold p.

    SymPy's ``diff`` visits every argument of a sum for every variable, which is
    quadratic for the wide sums of dense layers (Σ_j W_ij h_j). This chain rule visits
    only the subexpressions that contain p: each node's arguments are indexed by the
    placeholders they hold, and each (node, p) is differentiated once. Its rules: sums,
    products (wide ones with shared cofactors, `_cofactor`), powers (safe at 0, see
    `ReplaceZero`), functions by `_RULES` or their own ``fdiff``; anything else goes to
    SymPy's ``diff``.
    """

    def __init__(self, expr: sp.Expr):
        self.expr = expr
        self._holds: dict[sp.Basic, frozenset] = {}
        self._index: dict[sp.Basic, dict[sp.Symbol, list[int]]] = {}
        self._memo: dict[tuple[sp.Basic, sp.Symbol], sp.Expr] = {}
        self._segments: dict[sp.Basic, dict[tuple[int, int], sp.Expr]] = {}
        self._partials: dict[sp.Basic, tuple[sp.Expr, ...]] = {}
        self._contains: dict[type, dict[sp.Basic, bool]] = {}

    def holds(self, node: sp.Basic) -> frozenset:
        """The symbols in ``node`` (memoized over the shared DAG, iteratively)."""
        found = self._holds.get(node)
        if found is None:
            found = bottom_up(node, _symbols_in, self._holds)
        return found

    def __call__(self, p: sp.Symbol) -> sp.Expr:
        return self._d(self.expr, p)

    def contains(self, expr: sp.Basic, kind: type) -> bool:
        """Whether ``expr`` has a node of class ``kind``: like ``expr.has(kind)``, but each
        distinct subtree is visited once over all calls (the partials of one form share
        most of their subtrees, and SymPy's ``has`` walks a shared subtree every time)."""
        return bottom_up(
            expr,
            lambda node, inside: isinstance(node, kind) or any(inside),
            self._contains.setdefault(kind, {}),
        )

    def _holding(self, node: sp.Basic, p: sp.Symbol) -> list[int]:
        """The indices of the arguments of ``node`` that hold p (indexed once per node)."""
        index = self._index.get(node)
        if index is None:
            index = self._index[node] = {}
            for k, a in enumerate(node.args):
                for s in self.holds(a):
                    index.setdefault(s, []).append(k)
        return index.get(p, [])

    def _d(self, node: sp.Expr, p: sp.Symbol) -> sp.Expr:
        if p not in self.holds(node):
            return sp.S.Zero
        if node == p:
            return sp.S.One
        key = (node, p)
        d = self._memo.get(key)
        if d is None:
            d = self._memo[key] = self._rule(node, p)
        return d

    def _rule(self, node: sp.Expr, p: sp.Symbol) -> sp.Expr:
        args = node.args
        if node.is_Add:
            return sp.Add(*[self._d(args[k], p) for k in self._holding(node, p)])
        if node.is_Mul:
            if len(args) < _WIDE:
                return sp.Add(
                    *[
                        sp.Mul(*args[:k], *args[k + 1 :]) * self._d(args[k], p)
                        for k in self._holding(node, p)
                    ]
                )
            return sp.Add(
                *[self._cofactor(node, k) * self._d(args[k], p) for k in self._holding(node, p)]
            )
        if isinstance(node, Times):
            a, b = args
            return b * self._d(a, p) + a * self._d(b, p)
        if node.is_Pow:
            # ∂(b**e) = e·b**(e − 1)·∂b + b**e·log(b)·∂e, with ReplaceZero where e or b
            # may be 0 (see there): x**0.0 at 0 and 0.0**y have derivative 0, not NaN.
            base, exp = node.args
            terms = []
            if p in self.holds(base):
                lower = exp - 1 if _nonzero(exp) else ReplaceZero(exp, 2) - 1
                terms.append(exp * base**lower * self._d(base, p))
            if p in self.holds(exp):
                log = sp.log(base if _nonzero(base) else ReplaceZero(base, 1))
                terms.append(node * log * self._d(exp, p))
            return sp.Add(*terms)
        if isinstance(node, sp.Function) and all(isinstance(a, sp.Expr) for a in args):
            terms = []
            for k in self._holding(node, p):
                outer = self._outer(node, k)
                if outer is None:
                    return sp.diff(node, p)
                terms.append(outer * self._d(args[k], p))
            return sp.Add(*terms)
        return sp.diff(node, p)

    def _cofactor(self, node: sp.Mul, k: int) -> sp.Expr:
        """The product of the factors of ``node`` other than factor k, for a wide product.

        Written naively, the n partials of f_1 ⋯ f_n hold n − 1 factors each: quadratic
        (88 s to compile (x+1)(x+2)⋯(x+500)). Here the factors are the leaves of a
        balanced tree of `Times` nodes; the cofactor of k is the product of the
        siblings of the nodes on the path from leaf k to the root, log2(n) nodes shared
        with every other cofactor (common subexpressions for the printer). No division:
        right where a factor is 0.
        """
        args = node.args
        segments = self._segments.setdefault(node, {})

        def segment(lo: int, hi: int) -> sp.Expr:
            found = segments.get((lo, hi))
            if found is None:
                if hi - lo == 1:
                    found = args[lo]
                else:
                    mid = (lo + hi) // 2
                    found = Times(segment(lo, mid), segment(mid, hi))
                segments[(lo, hi)] = found
            return found

        lo, hi, siblings = 0, len(args), []
        while hi - lo > 1:  # down the path to leaf k
            mid = (lo + hi) // 2
            if k < mid:
                siblings.append(segment(mid, hi))
                hi = mid
            else:
                siblings.append(segment(lo, mid))
                lo = mid
        cofactor = siblings.pop()
        while siblings:
            cofactor = Times(siblings.pop(), cofactor)
        return cofactor

    def _outer(self, node: sp.Function, k: int) -> sp.Expr | None:
        """∂node/∂(argument k), by `_RULES` or the function's own rule (None: no rule)."""
        rule = _RULES.get(type(node))
        if rule is not None:
            partials = self._partials.get(node)
            if partials is None:
                partials = self._partials[node] = rule(node)
            return partials[k]
        try:
            outer = node.fdiff(k + 1)
        except (ArgumentIndexError, NotImplementedError):
            return None
        return None if outer.has(sp.Derivative, sp.Subs) else outer  # sign, …: SymPy's diff


def _differentiate(diff: _SparseDiff, wrt: sp.Symbol, label: str, shown: sp.Symbol) -> sp.Expr:
    d = diff(wrt)
    # The derivative of sign, Heaviside, … is zero almost everywhere, as in every
    # autodiff library; SymPy writes it with DiracDelta, which has no numeric value.
    if diff.contains(d, sp.DiracDelta):
        d = d.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
    if diff.contains(d, sp.Derivative) or diff.contains(d, sp.Subs):
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


def fold_constants(expr: sp.Expr, label: str) -> sp.Expr:
    """``expr`` with each constant subexpression replaced by its value (a Float or an
    exact number), so generated code never computes with Python integers or constants
    (``pi**100000`` overflowed a Python float, ``cos(99999999999999999999)`` sent a
    Python integer to ``numpy.cos``). A non-real constant is a `ProgramError`."""

    def constant(node: sp.Basic, inside: list[bool]) -> bool:
        if node in (sp.I, sp.zoo):
            raise ProgramError(f"constraint {label!r}: the constant {node} is not real")
        return all(inside) if node.args else not node.is_Symbol

    const: dict[sp.Basic, bool] = {}
    bottom_up(expr, constant, const)  # which subtrees hold no symbol
    if const[expr] and not expr.args:
        return expr
    tops: dict[sp.Basic, sp.Basic] = {}
    stack = [expr]
    while stack:  # the largest constant subtrees
        node = stack.pop()
        if const[node] and isinstance(node, sp.Expr):
            if node.args and node not in tops:
                try:
                    tops[node] = constant_value(node)
                except ConstantError as err:
                    raise ProgramError(f"constraint {label!r}: {err}") from None
        else:
            stack.extend(node.args)
    return expr.xreplace(tops) if tops else expr
