"""Array expressions: whole vectors and matrices as single SymPy objects.

An array variable (``prog.input("W", shape=(3, 4), array=True)``) is a `MatrixVariable`,
a ``sympy.MatrixSymbol``; matrix expressions over it are SymPy's (``@``, ``+``, ``-``,
numeric multiples, ``.T``) and the elementwise functions of this module (`tanh`, `exp`,
…, `apply`, `mul`) build an `Elementwise` node: a scalar function, kept as a
``sympy.Lambda``, applied entry by entry to operands of one shape (scalars broadcast).
`sum` is the scalar sum of the entries. Nothing here ever expands an array into its
entries: the compiler lowers each constraint to a few array operations.

Shapes are checked as the expression is built: the operators of these classes run
before SymPy's (a higher ``_op_priority``) and a mismatch is a `ProgramError` that names
both operands and their shapes, not SymPy's ``ShapeError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.str import StrPrinter

from ._errors import ProgramError

__all__ = [
    "ArrayMultiplier",
    "ArraySum",
    "Elementwise",
    "MatrixVariable",
    "apply",
    "check_array_node",
    "cos",
    "exp",
    "is_array",
    "log",
    "mul",
    "sigmoid",
    "sin",
    "softplus",
    "sqrt",
    "sum",
    "tanh",
]

_PRIORITY = 20.0  # above MatrixExpr's 11 and Expr's 10: our operators run first


def is_array(e: Any) -> bool:
    """Whether ``e`` is a matrix expression (not an explicit Matrix of entries)."""
    return isinstance(e, sp.MatrixExpr) and not isinstance(e, sp.MatrixBase)


def _shape(e: Any) -> tuple[int, int] | None:
    return tuple(int(d) for d in e.shape) if isinstance(e, (sp.MatrixExpr, sp.MatrixBase)) else None


def _shown(e: Any) -> str:
    text = str(e)
    return text if len(text) <= 60 else text[:57] + "..."


def _operand(e: Any, what: str) -> sp.Basic:
    """``e`` as an operand of an array operation: a matrix expression or a scalar Expr."""
    if isinstance(e, sp.MatrixBase):
        return sp.ImmutableMatrix(e)
    if isinstance(e, sp.MatrixExpr):
        return e
    if isinstance(e, str):
        raise ProgramError(f"{what}: got the string {e!r}; pass a SymPy expression")
    try:
        e = sp.sympify(e, strict=True)
    except (sp.SympifyError, TypeError):
        raise ProgramError(f"{what}: cannot use {e!r} as an array or scalar expression") from None
    if not isinstance(e, sp.Expr):
        raise ProgramError(f"{what}: {e} is a {type(e).__name__}, not an expression")
    return e


class _Checked:
    """Operators that check shapes and keep building nodes of this module."""

    _op_priority = _PRIORITY

    def __add__(self, other: Any) -> sp.MatrixExpr:
        return _add(self, other, 1)

    def __radd__(self, other: Any) -> sp.MatrixExpr:
        return _add(other, self, 1)

    def __sub__(self, other: Any) -> sp.MatrixExpr:
        return _add(self, other, -1)

    def __rsub__(self, other: Any) -> sp.MatrixExpr:
        return _add(other, self, -1)

    def __neg__(self) -> sp.MatrixExpr:
        return ArrayMatMul(sp.S.NegativeOne, self)

    def __matmul__(self, other: Any) -> sp.MatrixExpr:
        return _matmul(self, other)

    def __rmatmul__(self, other: Any) -> sp.MatrixExpr:
        return _matmul(other, self)

    def __mul__(self, other: Any) -> sp.MatrixExpr:
        return _times(self, other)

    def __rmul__(self, other: Any) -> sp.MatrixExpr:
        return _times(other, self)

    def __truediv__(self, other: Any) -> sp.MatrixExpr:
        other = _operand(other, "division")
        if _shape(other) is not None:
            raise ProgramError(
                f"cannot divide {_shown(self)} by the array {_shown(other)}; for an "
                "elementwise quotient use lad.apply(lambda a, b: a / b, A, B)"
            )
        return _times(1 / other, self)

    def __pow__(self, other: Any) -> sp.MatrixExpr:
        raise ProgramError(
            f"{_shown(self)} ** {other}: powers of arrays are elementwise here; write "
            f"lad.apply(lambda a: a**{other}, A) (or lad.mul(A, A) for a square)"
        )

    def transpose(self) -> sp.MatrixExpr:
        return ArrayTranspose(self)

    @property
    def T(self) -> sp.MatrixExpr:
        return ArrayTranspose(self)

    def __getitem__(self, key: Any) -> sp.Expr:
        rows, cols = _shape(self)
        if isinstance(key, tuple) and len(key) == 2:
            i, j = key
        elif cols == 1 and not isinstance(key, tuple):
            i, j = key, 0
        else:
            raise ProgramError(f"{_shown(self)}[{key!r}]: index an array entry as A[i, j]")
        if not all(isinstance(k, int) or getattr(k, "is_Integer", False) for k in (i, j)):
            raise ProgramError(
                f"{_shown(self)}[{key!r}]: entries are indexed by integers (slices are not "
                "supported)"
            )
        i, j = int(i), int(j)
        if not (-rows <= i < rows and -cols <= j < cols):
            raise ProgramError(
                f"{_shown(self)}[{i}, {j}]: index out of range for shape ({rows}, {cols})"
            )
        return MatrixElement(self, i % rows, j % cols)


class MatrixVariable(_Checked, sp.MatrixSymbol):
    """An array variable of a program: a ``sympy.MatrixSymbol`` (n×1 for shape (n,))."""


class ArrayMultiplier(sp.MatrixSymbol):
    """The multiplier Λ of an array constraint: a ``sympy.MatrixSymbol`` of the
    constraint's shape named ``lambda_<label>``, printed Λ_label (LaTeX ``\\Lambda_{label}``)."""

    @property
    def label(self) -> str:
        return self.name.removeprefix("lambda_")

    def _sympystr(self, printer: Any) -> str:
        return f"Λ_{self.label}"

    def _latex(self, printer: Any) -> str:
        return rf"\Lambda_{{{printer._print(sp.Symbol(self.label))}}}"


class ArrayMatMul(_Checked, sp.MatMul):
    """A matrix product (or numeric multiple) built from this module's operators."""

    def _sympystr(self, printer: Any) -> str:
        """``W@x`` for products of arrays, ``2*W`` for multiples (as the text format)."""
        parts, factors = [], self.args
        if factors[0] == -1:
            parts, factors = ["-"], factors[1:]
        for k, f in enumerate(factors):
            # a scalar product needs no parentheses: a*b*W is (a*b)*W
            text = printer.parenthesize(f, PRECEDENCE["Mul"], strict=_shape(f) is None)
            if k:
                parts.append("@" if _shape(f) is not None and _shape(factors[k - 1]) else "*")
            parts.append(text)
        return "".join(parts)


class ArrayMatAdd(_Checked, sp.MatAdd):
    """A sum of arrays of one shape built from this module's operators."""


class ArrayTranspose(_Checked, sp.Transpose):
    """The transpose of an array expression."""


def _add(a: Any, b: Any, sign: int) -> sp.MatrixExpr:
    a, b = _operand(a, "+"), _operand(b, "+")
    sa, sb = _shape(a), _shape(b)
    if sa is None or sb is None:  # a scalar broadcasts over the array
        return apply((lambda p, q: p + q) if sign > 0 else (lambda p, q: p - q), a, b)
    if sa != sb:
        op = "+" if sign > 0 else "-"
        raise ProgramError(
            f"shape mismatch: {_shown(a)} {op} {_shown(b)} adds shapes {sa} and {sb}"
        )
    if sign < 0:
        b = ArrayMatMul(sp.S.NegativeOne, b)
    return ArrayMatAdd(a, b)


def _matmul(a: Any, b: Any) -> sp.MatrixExpr:
    a, b = _operand(a, "@"), _operand(b, "@")
    sa, sb = _shape(a), _shape(b)
    if sa is None or sb is None:
        raise ProgramError(
            f"{_shown(a)} @ {_shown(b)}: matrix product with a scalar; use * for a multiple"
        )
    if sa[1] != sb[0]:
        raise ProgramError(
            f"shape mismatch: {_shown(a)} @ {_shown(b)} multiplies shapes {sa} and {sb} "
            f"({sa[1]} columns against {sb[0]} rows)"
        )
    return ArrayMatMul(a, b)


def _times(a: Any, b: Any) -> sp.MatrixExpr:
    a, b = _operand(a, "*"), _operand(b, "*")
    if _shape(a) is not None and _shape(b) is not None:
        return _matmul(a, b)  # SymPy's meaning of * between matrices
    return ArrayMatMul(a, b) if _shape(b) is not None else ArrayMatMul(b, a)


# --------------------------------------------------------------------------- elementwise


class Elementwise(_Checked, sp.MatrixExpr):
    """``fn`` applied entry by entry: ``args = (fn, *operands)``.

    ``fn`` is a ``sympy.Lambda`` of as many scalar arguments as there are operands; the
    array operands share one shape, scalar operands broadcast over it.
    """

    def __new__(cls, fn: sp.Lambda, *operands: sp.Basic):
        return sp.Basic.__new__(cls, fn, *operands)

    @property
    def function(self) -> sp.Lambda:
        return self.args[0]

    @property
    def operands(self) -> tuple[sp.Basic, ...]:
        return self.args[1:]

    @property
    def shape(self) -> tuple[int, int]:
        return next(_shape(o) for o in self.operands if _shape(o) is not None)

    def _entry(self, i: Any, j: Any, **kwargs: Any) -> sp.Expr:
        return self.function(*(o[i, j] if _shape(o) else o for o in self.operands))

    def doit(self, **hints: Any) -> sp.MatrixExpr:
        return self

    def _printed(self, printer: Any, latex: bool) -> str:
        """The form with its operands in place; a printer with a ``body_printer``
        attribute (the symbolic layer's) chooses how the scalar template is printed."""
        show = printer._print
        template = self.function.expr
        # an operand is parenthesized unless it is the whole argument of a function
        bare = isinstance(template, sp.Function) and all(a.is_Symbol for a in template.args)
        names = [_Shown(show(o), o, bare, k) for k, o in enumerate(self.operands)]
        body = template.xreplace(dict(zip(self.function.variables, names, strict=True)))
        if body.is_Mul and all(isinstance(f, _Shown) for f in body.args):
            return (r" \circ " if latex else " ∘ ").join(n.text for n in names)
        body_printer = getattr(printer, "body_printer", None)
        if body_printer is None:
            body_printer = LatexPrinter if latex else StrPrinter
        return body_printer().doprint(body)

    def _sympystr(self, printer: Any) -> str:
        return self._printed(printer, latex=False)

    def _latex(self, printer: Any) -> str:
        return self._printed(printer, latex=True)


class _Shown(sp.Symbol):
    """An operand inside a printed elementwise form: prints as given text."""

    def __new__(cls, text: str, operand: sp.Basic, bare: bool, k: int):
        obj = sp.Symbol.__new__(cls, f"«{k}:{text}»")
        wrap = not bare and precedence(operand) < PRECEDENCE["Mul"]
        obj.text = f"({text})" if wrap or (_needs_parentheses(operand) and not bare) else text
        obj.is_array_operand = _shape(operand) is not None
        return obj

    def _sympystr(self, printer: Any) -> str:
        return self.text

    def _latex(self, printer: Any) -> str:
        return self.text


def _needs_parentheses(operand: sp.Basic) -> bool:
    return isinstance(operand, (sp.MatAdd, sp.Add)) or (
        isinstance(operand, Elementwise) and operand.function.expr.is_Add
    )


class ArraySum(sp.Expr):
    """The scalar sum of the entries of an array expression (`sum`)."""

    is_commutative = True
    is_real = True

    def __new__(cls, array: sp.MatrixExpr):
        return sp.Expr.__new__(cls, array)

    @property
    def array(self) -> sp.MatrixExpr:
        return self.args[0]

    def as_explicit(self) -> sp.Expr:
        """The sum written out over the entries (for small shapes)."""
        return sp.Add(*self.array.as_explicit())

    def _sympystr(self, printer: Any) -> str:
        return f"sum({printer._print(self.array)})"

    def _latex(self, printer: Any) -> str:
        return rf"\operatorname{{sum}}\left({printer._print(self.array)}\right)"


_SUPPORTED = (
    sp.MatrixSymbol,
    sp.MatMul,
    sp.MatAdd,
    sp.Transpose,
    sp.HadamardProduct,
    sp.ImmutableMatrix,
)


def check_array_node(node: sp.Basic, label: str) -> None:
    """A `ProgramError` naming constraint ``label`` if ``node`` is an array operation
    the compiler has no rule for, or a scalar function applied to a whole array."""
    if isinstance(node, (Elementwise, ArraySum, MatrixElement)):
        return
    if isinstance(node, sp.MatrixExpr):
        if not isinstance(node, _SUPPORTED):
            raise ProgramError(
                f"constraint {label!r}: {type(node).__name__} ({_shown(node)}) is not an array "
                "operation lagrangian_ad supports (@, +, -, numeric and scalar multiples, .T, "
                "the elementwise functions lad.tanh … lad.apply, lad.sum and entries)"
            )
        return
    if isinstance(node, sp.Expr):
        arrays = [a for a in node.args if isinstance(a, sp.MatrixExpr)]
        if arrays:
            a = arrays[0]
            raise ProgramError(
                f"constraint {label!r}: {_shown(node)} applies a scalar operation to the "
                f"array {_shown(a)} of shape {_shape(a)}; use the elementwise functions "
                "(lad.sin(A), lad.apply(f, A)) or a scalar of it (lad.sum(A), A[i, j])"
            )


def apply(f: Callable[..., Any] | sp.Lambda, *args: Any) -> sp.MatrixExpr | sp.Matrix:
    """``f`` applied elementwise to arrays of one shape (scalars broadcast).

    ``f`` is a SymPy function (``sp.tanh``), a Python function or lambda of SymPy
    scalars, or a ``sympy.Lambda``. On explicit Matrices of entries (entry-wise
    programs) the result is the Matrix of the entries.
    """
    if not args:
        raise ProgramError("lad.apply(f, *args): give at least one array")
    ops = [_operand(a, "lad.apply") for a in args]
    shapes = {_shape(o) for o in ops} - {None}
    if not shapes:
        raise ProgramError("lad.apply(f, *args): no argument is an array; call f itself")
    if len(shapes) > 1:
        shown = ", ".join(f"{_shown(o)}: {_shape(o)}" for o in ops if _shape(o) is not None)
        raise ProgramError(f"shape mismatch: an elementwise function of shapes {shown}")
    fn = _lambda(f, len(ops))
    if all(isinstance(o, sp.MatrixBase) or _shape(o) is None for o in ops):
        rows, cols = shapes.pop()
        return sp.Matrix(
            rows,
            cols,
            lambda i, j: fn(*(o[i, j] if _shape(o) is not None else o for o in ops)),
        )
    return Elementwise(fn, *ops)


def _lambda(f: Any, arity: int) -> sp.Lambda:
    if isinstance(f, sp.Lambda):
        if len(f.variables) != arity:
            raise ProgramError(
                f"lad.apply: the Lambda takes {len(f.variables)} arguments, given {arity}"
            )
        return f
    dummies = [sp.Dummy(f"a{k}", real=True) for k in range(arity)]
    try:
        body = sp.sympify(f(*dummies), strict=True)
    except (TypeError, ValueError, sp.SympifyError) as err:
        raise ProgramError(f"lad.apply: cannot apply {f!r} to scalar symbols ({err})") from None
    if not isinstance(body, sp.Expr) or isinstance(body, (sp.MatrixExpr, sp.MatrixBase)):
        raise ProgramError(f"lad.apply: {f!r} must map scalars to a scalar expression")
    return sp.Lambda(tuple(dummies), body)


def _elementwise(f: Callable[[sp.Expr], sp.Expr], name: str) -> Callable[[Any], Any]:
    def function(a: Any) -> Any:
        if _shape(_operand(a, f"lad.{name}")) is None:
            return f(a)  # a scalar: the function itself
        return apply(f, a)

    function.__name__ = function.__qualname__ = name
    function.__doc__ = f"{name} of every entry (a scalar argument gives the scalar {name})."
    return function


class Sigmoid(sp.Function):
    """The logistic function 1 / (1 + exp(−x))."""

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return Sigmoid(self.args[0]) * (1 - Sigmoid(self.args[0]))

    def _eval_rewrite_as_exp(self, x: sp.Expr, **kwargs: Any) -> sp.Expr:
        return 1 / (1 + sp.exp(-x))

    def _latex(self, printer: Any) -> str:
        return rf"\sigma\left({printer._print(self.args[0])}\right)"

    def _sympystr(self, printer: Any) -> str:
        return f"sigmoid({printer._print(self.args[0])})"


class Softplus(sp.Function):
    """log(1 + exp(x)), evaluated without overflow."""

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return Sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, x: sp.Expr, **kwargs: Any) -> sp.Expr:
        return sp.log(1 + sp.exp(x))

    def _sympystr(self, printer: Any) -> str:
        return f"softplus({printer._print(self.args[0])})"


tanh = _elementwise(sp.tanh, "tanh")
exp = _elementwise(sp.exp, "exp")
log = _elementwise(sp.log, "log")
sin = _elementwise(sp.sin, "sin")
cos = _elementwise(sp.cos, "cos")
sqrt = _elementwise(sp.sqrt, "sqrt")
sigmoid = _elementwise(Sigmoid, "sigmoid")
softplus = _elementwise(Softplus, "softplus")


def mul(a: Any, b: Any) -> sp.MatrixExpr | sp.Matrix:
    """The elementwise (Hadamard) product a ∘ b (a scalar broadcasts)."""
    return apply(lambda p, q: p * q, a, b)


def sum(a: Any) -> sp.Expr:
    """The scalar sum of the entries of an array."""
    a = _operand(a, "lad.sum")
    if isinstance(a, sp.MatrixBase):
        return sp.Add(*a)
    if _shape(a) is None:
        raise ProgramError(f"lad.sum({_shown(a)}): the argument must be an array")
    return ArraySum(a)
