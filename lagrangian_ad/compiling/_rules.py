"""The rules of the structural operations, written once for every pass and printer.

The lowering (`_lowering`) turns each array constraint Z = F(…) into nodes: elementwise
forms (``ew``, whose rules are their partials, derived by SymPy once per form in
`_forms`) and four structural operations, whose rules are this table:

=========  ==============  =======================================================
op         value           vector-Jacobian products (g: the adjoint of the value)
=========  ==============  =======================================================
matmul     A B             Ā = g Bᵀ,  B̄ = Aᵀ g
T          Aᵀ              Ā = gᵀ
sum        Σ_ij A_ij       Ā = g 𝟙 (g at every entry)
entry      A_ij            Ā = g E_ij (g at entry (i, j), zero elsewhere)
gather     A at positions  Ā = g added at those positions (a scatter-add); only in
           ix, shaped      entry-wise programs lowered by groups (`_grouping`)
=========  ==============  =======================================================

Each operation is multilinear in its operands, so the rest follows from these two
columns and is written once, here, for all of them:

- the Jacobian-vector product is the product rule, Σ_k value(A_1, …, Ȧ_k, …, A_m);
- the tangent of a vector-Jacobian product (the second-order adjoint) is that of a
  multilinear map of g and of the operands each product reads (`Rule.reads`): the
  product with ġ, plus the product with each operand it reads replaced by its tangent.

A rule is written against an *algebra*: the NumPy code printer of the array engine
(`_array_engine`, where every array has leading batch axes and ``fit`` sums a
contribution down to its operand's shape) and the SymPy printer of the symbolic layer
(`_array_symbolic`, which shows the conditions as matrix equations; ``fit`` is the
identity there). An algebra provides ``matmul``, ``T``, ``total``, ``entry``,
``spread`` (a scalar at every entry of an array shaped like another), ``place`` (a
scalar at one entry, zero elsewhere), ``fit`` and ``add``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RULES", "jvp", "value", "vjp", "vjp_tangent"]


@dataclass(frozen=True)
class Rule:
    """``value(alg, data, *operands)``; ``vjps[k](alg, data, g, *operands)``, the
    contribution of g to operand k's adjoint; ``reads[k]``, the operands that product
    is linear in (the others it reads for their shape only)."""

    value: Callable[..., Any]
    vjps: tuple[Callable[..., Any], ...]
    reads: tuple[tuple[int, ...], ...]


RULES: dict[str, Rule] = {
    "matmul": Rule(
        value=lambda o, d, a, b: o.matmul(a, b),
        vjps=(
            lambda o, d, g, a, b: o.fit(o.matmul(g, o.T(b)), a),
            lambda o, d, g, a, b: o.fit(o.matmul(o.T(a), g), b),
        ),
        reads=((1,), (0,)),
    ),
    "T": Rule(value=lambda o, d, a: o.T(a), vjps=(lambda o, d, g, a: o.T(g),), reads=((),)),
    "sum": Rule(
        value=lambda o, d, a: o.total(a), vjps=(lambda o, d, g, a: o.spread(g, a),), reads=((),)
    ),
    "entry": Rule(
        value=lambda o, d, a: o.entry(a, *d),
        vjps=(lambda o, d, g, a: o.place(g, a, *d),),
        reads=((),),
    ),
    "gather": Rule(  # data: (the flat positions, whether unique, the value's shape)
        value=lambda o, d, a: o.gather(a, *d),
        vjps=(lambda o, d, g, a: o.scatter(g, a, *d),),
        reads=((),),
    ),
}


def value(alg: Any, op: str, data: Any, operands: list) -> Any:
    """The value of a structural node from its operands'."""
    return RULES[op].value(alg, data, *operands)


def vjp(alg: Any, op: str, data: Any, g: Any, operands: list) -> list[tuple[int, Any]]:
    """(operand position, contribution of ``g`` to that operand's adjoint)."""
    return [(k, f(alg, data, g, *operands)) for k, f in enumerate(RULES[op].vjps)]


def jvp(alg: Any, op: str, data: Any, operands: list, tangents: list) -> Any | None:
    """The tangent of a structural node from its operands' tangents (None: zero), by the
    product rule; None where every tangent is zero."""
    rule, total = RULES[op], None
    for k, t in enumerate(tangents):
        if t is not None:
            term = rule.value(alg, data, *operands[:k], t, *operands[k + 1 :])
            total = term if total is None else alg.add(total, term)
    return total


def vjp_tangent(
    alg: Any, op: str, data: Any, g: Any, dg: Any | None, operands: list, tangents: list
) -> list[tuple[int, Any]]:
    """The tangents of `vjp`'s contributions, from the tangent ``dg`` of g and those of
    the operands (None: zero): (operand position, tangent) where it is not zero."""
    rule, out = RULES[op], []
    for k, f in enumerate(rule.vjps):
        total = None if dg is None else f(alg, data, dg, *operands)
        for j in rule.reads[k]:
            if tangents[j] is not None:
                moved = [*operands[:j], tangents[j], *operands[j + 1 :]]
                term = f(alg, data, g, *moved)
                total = term if total is None else alg.add(total, term)
        if total is not None:
            out.append((k, total))
    return out
