"""Building programs: variables, constraints and the output, as SymPy expressions.

A program is a list of equality constraints over scalar variables (docs/design.md)::

    inputs        x_1 … x_n                 (given)
    intermediates z_i = f_i(z_Pa(i))        (one constraint per scalar intermediate)
    output        z_N                       (the scalar to maximize)

`Program` is the mutable builder users call; `ProgramIR` is the frozen, validated
snapshot the rest of the package works on. Array variables are matrices of scalar
symbols named like ``W[0,1]``; every scalar entry of an array intermediate has its own
constraint and its own multiplier.
"""

from __future__ import annotations

import keyword
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy as sp
from sympy.core.function import AppliedUndef

from ._arrays import Elementwise, MatrixVariable, is_array
from ._errors import ProgramError
from ._progress import BuildProgress

if TYPE_CHECKING:
    from ._compiled import CompiledProgram, Solution
    from ._symbolic import Conditions

__all__ = ["Constraint", "Program", "ProgramIR", "Variable"]

_MULTIPLIER_PREFIX = "lambda_"
_NOT_REAL = frozenset({sp.I, sp.zoo, sp.nan})
_UNEVALUATED = (sp.Derivative, sp.Integral, sp.Sum, sp.Product, sp.Subs)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Variable:
    """A named variable: a scalar, an array of scalar entries in C order, or an array
    variable (one `MatrixVariable` for the whole array).

    Attributes
    ----------
    name : str
    kind : {"input", "intermediate"}
    shape : tuple of int
        ``()`` for a scalar.
    symbols : tuple of sympy.Symbol
        The scalar entries, flattened in C order (none for an array variable).
    matrix : MatrixVariable or None
        The array variable itself (n×1 for shape (n,)), if declared with ``array=True``.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    symbols: tuple[sp.Symbol, ...]
    matrix: MatrixVariable | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=int)) if self.matrix is not None else len(self.symbols)

    def as_sympy(self) -> sp.Symbol | sp.Matrix | MatrixVariable:
        """The Symbol of a scalar, a Matrix of Symbols (n×1 for shape (n,)), or the
        MatrixVariable of an array variable."""
        if self.matrix is not None:
            return self.matrix
        return _as_sympy(self.shape, self.symbols)


@dataclass(frozen=True)
class Constraint:
    """One scalar constraint and its multiplier.

    Explicit constraints ``z_i = f_i(…)`` have ``target = z_i`` and ``expr = f_i``; their
    residual is ``z_i − f_i``. An implicit equation has ``target = None`` and ``expr`` is
    its residual ``c(z)`` itself.
    """

    label: str
    target: sp.Symbol | MatrixVariable | None
    expr: sp.Expr | sp.MatrixExpr

    @property
    def multiplier(self) -> sp.Symbol | sp.MatrixSymbol:
        """λ of this constraint (made on demand: the numeric path never needs it); a
        MatrixSymbol Λ of the target's shape for an array constraint."""
        if isinstance(self.target, sp.MatrixSymbol):
            return sp.MatrixSymbol(_MULTIPLIER_PREFIX + self.label, *self.target.shape)
        return sp.Symbol(_MULTIPLIER_PREFIX + self.label, real=True)

    @property
    def residual(self) -> sp.Expr:
        return self.expr if self.target is None else self.target - self.expr


@dataclass(frozen=True)
class ProgramIR:
    """The frozen program: what compiling, solving and printing work from."""

    inputs: tuple[Variable, ...]
    intermediates: tuple[Variable, ...]
    constraints: tuple[Constraint, ...]
    output: sp.Symbol

    @property
    def has_arrays(self) -> bool:
        """Whether any variable is an array variable (``array=True``)."""
        return any(v.matrix is not None for v in (*self.inputs, *self.intermediates))

    def validate(self) -> None:
        """Check the invariants the builder guarantees; raise `ProgramError` if broken."""
        seen: dict[sp.Basic, str] = {}
        for var in (*self.inputs, *self.intermediates):
            if var.size != int(np.prod(var.shape, dtype=int)):
                raise ProgramError(
                    f"variable {var.name!r}: {var.size} entries for shape {var.shape}"
                )
            for s in var.symbols if var.matrix is None else (var.matrix,):
                if s in seen:
                    raise ProgramError(f"symbol {s} belongs to both {seen[s]!r} and {var.name!r}")
                seen[s] = var.name
        defined: set[sp.Symbol] = set()
        for c in self.constraints:
            if c.target is not None:
                if c.target in defined:
                    raise ProgramError(f"variable {c.target} is defined twice")
                defined.add(c.target)
            unknown = [s for s in c.expr.free_symbols if s not in seen]
            if unknown:
                raise ProgramError(f"constraint {c.label!r} uses undefined {_names(unknown)}")
        has_equations = any(c.target is None for c in self.constraints)
        used = set().union(*(c.expr.free_symbols for c in self.constraints))
        undefined = [
            s
            for v in self.intermediates
            for s in (v.symbols if v.matrix is None else (v.matrix,))
            if s not in defined and (not has_equations or s not in used)
        ]
        if undefined:
            raise ProgramError(f"intermediate {_names(undefined)} declared but never defined")
        if self.output not in {s for v in self.intermediates for s in v.symbols}:
            raise ProgramError(f"the output {self.output} is not an intermediate")


# --------------------------------------------------------------------------- builder


class Program:
    """A program of equality constraints, built step by step.

    Parameters
    ----------
    progress : None, bool or callable
        Progress of long builds (many `define` calls in quick succession): None (the
        default) shows a bar after two seconds on a terminal or in Jupyter, True
        always (after two seconds), False never; a callable gets
        ``report("building", constraints, 0, elapsed)`` at every call.

    Examples
    --------
    >>> import sympy as sp, lagrangian_ad as lad
    >>> prog = lad.Program()
    >>> x = prog.input("x")
    >>> a = prog.define("a", sp.exp(x))
    >>> b = prog.define("b", a * sp.sin(x))
    >>> sol = prog.solve({"x": 0.0})
    >>> float(sol.value), float(sol.grad["x"])
    (0.0, 1.0)
    """

    def __init__(self, progress: Any = None) -> None:
        self.progress = progress
        self._vars: dict[str, Variable] = {}
        self._owner: dict[sp.Symbol, str] = {}  # scalar symbol -> variable name
        self._by_entry_name: dict[str, sp.Symbol] = {}  # "W[0,1]" -> symbol
        self._definitions: dict[str, tuple[sp.Expr, ...]] = {}  # in definition order
        self._equations: dict[str, sp.Expr] = {}  # label -> residual lhs − rhs
        self._output: sp.Symbol | None = None
        self._frozen: ProgramIR | None = None
        self._compiled: CompiledProgram | None = None

    # ----------------------------------------------------------------- declaring

    def input(
        self, name: str, shape: tuple[int, ...] | int = (), array: bool = False
    ) -> sp.Symbol | sp.Matrix | MatrixVariable:
        """Declare an input; returns its Symbol, or a Matrix of Symbols for an array.

        With ``array=True`` the array is one variable, a `MatrixVariable` (a
        ``sympy.MatrixSymbol``, n×1 for shape (n,)), used in matrix expressions and the
        elementwise functions of `lagrangian_ad` (``lad.tanh(W @ x + b)``).
        """
        return self._declare(name, "input", shape, array).as_sympy()

    def var(
        self, name: str, shape: tuple[int, ...] | int = (), array: bool = False
    ) -> sp.Symbol | sp.Matrix | MatrixVariable:
        """Declare an intermediate to be defined later, so it can be used before (cycles);
        ``array=True`` as for `input`."""
        return self._declare(name, "intermediate", shape, array).as_sympy()

    def define(self, target: str | sp.Symbol | sp.MatrixBase, expr: Any) -> sp.Symbol | sp.Matrix:
        """Define an intermediate ``target = expr``; returns its Symbol or Matrix of Symbols.

        ``target`` is a new name, or a variable declared with `var`. A Matrix ``expr``
        defines an array: one column gives shape ``(n,)``, otherwise ``(rows, cols)``.
        Every symbol in ``expr`` must already be declared. A matrix expression over array
        variables (``W @ x + b``, ``lad.tanh(…)``) defines an array variable: one
        constraint for the whole array.
        """
        if is_array(expr) or self._is_array_target(target):
            return self._define_array(target, expr)
        exprs, shape = _flatten_expr(expr, target)
        if isinstance(target, str):
            name = target
            if name in self._vars:
                var = self._vars[name]
            else:
                var = self._declare(name, "intermediate", shape)
        else:
            var = self._resolve_declared(target)
            name = var.name
        if var.kind == "input":
            raise ProgramError(f"{name!r} is an input; inputs are given, not defined")
        if name in self._definitions:
            raise ProgramError(f"variable {name!r} is defined twice")
        if var.shape != shape:
            raise ProgramError(
                f"variable {name!r} was declared with shape {var.shape} "
                f"but its definition has shape {shape}"
            )
        exprs = tuple(
            self._bind(e, label) for e, label in zip(exprs, _entry_labels(var), strict=True)
        )
        self._definitions[name] = exprs
        self._changed()
        self._building.step(len(exprs))
        return var.as_sympy()

    def equation(self, lhs: Any, rhs: Any = 0, name: str | None = None) -> sp.Symbol:
        """State an implicit equation ``lhs = rhs``; returns its multiplier.

        Its unknowns are the variables declared with `var` and never defined. The
        constraint is the residual c = lhs − rhs, named ``name`` (default ``eq1``, ``eq2``…).
        """
        if name is None:
            k = len(self._equations) + 1
            while f"eq{k}" in self._vars or f"eq{k}" in self._equations:
                k += 1
            name = f"eq{k}"
        _check_name(name)
        if name in self._vars or name in self._equations:
            raise ProgramError(f"equation name {name!r} is already in use")
        left, right = _scalar_expr(lhs, name), _scalar_expr(rhs, name)
        residual = self._bind(left - right, name)
        if not residual.free_symbols:
            raise ProgramError(f"equation {name!r}: {left} = {right} involves no variable")
        self._equations[name] = residual
        self._changed()
        self._building.step(1)
        return sp.Symbol(_MULTIPLIER_PREFIX + name, real=True)

    def output(self, target: str | sp.Symbol) -> sp.Symbol:
        """Choose the scalar output z_N (default: the last intermediate defined)."""
        if isinstance(target, sp.MatrixBase) and target.shape == (1, 1):
            target = target[0, 0]
        if isinstance(target, str):
            sym = self._by_entry_name.get(target)
            if sym is None:
                var = self._vars.get(target)
                if var is None:
                    raise ProgramError(f"output: no variable named {target!r}")
                if var.shape != ():
                    example = f"{target}[0, 0]" if var.matrix is not None else var.symbols[0]
                    raise ProgramError(
                        f"output: {target!r} has shape {var.shape}; the output must be a "
                        f"scalar (define one, e.g. from an entry such as {example} or "
                        "lad.sum)"
                    )
                sym = var.symbols[0]
        elif isinstance(target, sp.Symbol):
            sym = self._symbol(target)
            if sym is None:
                raise ProgramError(f"output: {target} is not a variable of this program")
        else:
            raise ProgramError(
                f"output: expected a variable name or Symbol, got {type(target).__name__}; "
                "define the expression as an intermediate first"
            )
        if self._vars[self._owner[sym]].kind == "input":
            raise ProgramError(f"output: {sym} is an input; the output must be an intermediate")
        self._output = sym
        self._changed()
        return sym

    # ----------------------------------------------------------------- reading

    @property
    def ir(self) -> ProgramIR:
        """The frozen, validated program (rebuilt only after a change)."""
        if self._frozen is None:
            self._building.end()
            self._frozen = self._freeze()
        return self._frozen

    @property
    def progress(self) -> Any:
        """How building shows its progress: None, True, False or a callable.

        A bar appears once `define` calls in quick succession have lasted two seconds
        (None: only on a terminal or in Jupyter); see `compile` for the settings.
        """
        return self._building.setting

    @progress.setter
    def progress(self, setting: Any) -> None:
        self._building = BuildProgress(setting)

    @property
    def inputs(self) -> dict[str, Variable]:
        return {n: v for n, v in self._vars.items() if v.kind == "input"}

    @property
    def intermediates(self) -> dict[str, Variable]:
        return {n: v for n, v in self._vars.items() if v.kind == "intermediate"}

    def multiplier(self, target: str | sp.Symbol) -> sp.Symbol | sp.Matrix:
        """The multiplier λ of an intermediate (a Matrix of them for an array)."""
        if isinstance(target, str) and target in self._equations:
            return sp.Symbol(_MULTIPLIER_PREFIX + target, real=True)
        var = self._vars.get(target) if isinstance(target, str) else None
        if var is not None and var.kind == "input":
            raise ProgramError(f"{target!r} is an input: it has no constraint, no multiplier")
        by_target = {c.target: c.multiplier for c in self.ir.constraints}
        if var is not None and var.matrix is not None:
            if var.matrix not in by_target:
                raise ProgramError(f"{target!r} is not defined by a constraint: no multiplier")
            return by_target[var.matrix]
        if var is not None:
            if not all(s in by_target for s in var.symbols):
                raise ProgramError(
                    f"{target!r} is an unknown of implicit equations: the multipliers belong "
                    "to the equations (prog.multiplier('eq1'), …)"
                )
            return _as_sympy(var.shape, tuple(by_target[s] for s in var.symbols))
        sym = self._by_entry_name.get(target) if isinstance(target, str) else self._symbol(target)
        if sym is None or sym not in by_target:
            raise ProgramError(f"multiplier: {target} is not an intermediate of this program")
        return by_target[sym]

    def lagrangian(self) -> sp.Expr:
        """L = z_N − Σ_i λ_i (z_i − f_i) as a SymPy expression (for an array constraint
        the term is the Frobenius inner product ⟨Λ_i, Z_i − F_i⟩)."""
        from ._symbolic import lagrangian

        return lagrangian(self.ir)

    def conditions(self) -> Conditions:
        """The stationarity conditions of the Lagrangian (forward, adjoint, gradient)."""
        from ._symbolic import conditions

        return conditions(self.ir)

    def compile(self, progress: Any = None, backend: str = "numpy") -> CompiledProgram:
        """Derive the partials once and generate numeric code; cached until a change.

        ``progress``: None shows a progress bar (tqdm) for compiles longer than two
        seconds when stderr is a terminal or in Jupyter; True always (after two
        seconds), False never; or a callable ``report(stage, done, total, elapsed)``.
        ``backend``: "numpy" (the default) or "numba": `value` and `value_and_grad` of
        an acyclic program run as one Numba loop over the batch (needs ``numba``; each
        kernel compiles on first use, seconds for long programs). Same results to
        rounding; see `CompiledProgram`.
        """
        from ._compiled import CompiledProgram

        if self._compiled is None or self._compiled.backend != backend:
            ir = self.ir
            if ir.has_arrays:
                from ._array_engine import ArrayProgram

                if backend != "numpy":
                    raise ProgramError(
                        f"backend {backend!r}: array programs compile to NumPy only "
                        "(backend='numpy')"
                    )
                self._compiled = ArrayProgram(ir, progress=progress)
            else:
                self._compiled = CompiledProgram(ir, progress=progress, backend=backend)
        return self._compiled

    def solve(self, inputs: Mapping[Any, Any], **options: Any) -> Solution:
        """Forward pass, multipliers and gradient; see `CompiledProgram.solve`."""
        return self.compile().solve(inputs, **options)

    def __str__(self) -> str:
        from ._text import format_program

        return format_program(self.ir)

    def __repr__(self) -> str:
        n_in = sum(v.size for v in self._vars.values() if v.kind == "input")
        n_c = sum(len(d) for d in self._definitions.values())
        return f"<Program: {n_in} scalar inputs, {n_c} constraints>"

    def _repr_latex_(self) -> str:
        from ._symbolic import program_latex

        return program_latex(self.ir)

    # ----------------------------------------------------------------- internals

    def _changed(self) -> None:
        self._frozen = None
        self._compiled = None

    def _declare(self, name: str, kind: str, shape: Any, array: bool = False) -> Variable:
        _check_name(name)
        if name in self._vars:
            raise ProgramError(f"variable {name!r} is declared twice")
        if name in self._equations:
            raise ProgramError(f"{name!r} already names an equation")
        shape = _check_shape(name, shape)
        if not isinstance(array, bool):
            raise ProgramError(f"variable {name!r}: array must be True or False, not {array!r}")
        if array:
            if shape == ():
                raise ProgramError(
                    f"variable {name!r}: array=True needs a shape, (n,) or (rows, cols); "
                    "a scalar is declared without it"
                )
            if name in self._by_entry_name:
                raise ProgramError(f"variable {name!r}: the name is already an entry name")
            rows, cols = (shape[0], 1) if len(shape) == 1 else shape
            var = Variable(name, kind, shape, (), MatrixVariable(name, rows, cols))
            self._vars[name] = var
            self._changed()
            return var
        if shape == ():
            names = [name]
        else:
            names = [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]
        taken = [n for n in names if n in self._by_entry_name]
        if taken:
            raise ProgramError(f"variable {name!r}: entry name {taken[0]!r} is already in use")
        symbols = tuple(sp.Symbol(n, real=True) for n in names)
        var = Variable(name, kind, shape, symbols)
        self._vars[name] = var
        for n, s in zip(names, symbols, strict=True):
            self._owner[s] = name
            self._by_entry_name[n] = s
        self._changed()
        return var

    def _is_array_target(self, target: Any) -> bool:
        if isinstance(target, sp.MatrixSymbol):
            return True
        var = self._vars.get(target) if isinstance(target, str) else None
        return var is not None and var.matrix is not None

    def _define_array(self, target: Any, expr: Any) -> MatrixVariable:
        """``target = expr`` for an array variable: one constraint for the whole array."""
        label = target if isinstance(target, str) else getattr(target, "name", str(target))
        if not is_array(expr):
            raise ProgramError(
                f"define {label!r}: {label!r} is an array variable; its definition must be "
                f"a matrix expression, not {type(expr).__name__} {expr}"
            )
        rows, cols = (int(d) for d in expr.shape)
        shape = (rows,) if cols == 1 else (rows, cols)
        if isinstance(target, str) and target not in self._vars:
            var = self._declare(target, "intermediate", shape, array=True)
        elif isinstance(target, str):
            var = self._vars[target]
        else:
            var = self._vars.get(target.name)
            if var is None or var.matrix != target:
                raise ProgramError(
                    f"define: {target} was not declared; pass a name, or declare it with "
                    "prog.var(name, shape, array=True)"
                )
        name = var.name
        if var.kind == "input":
            raise ProgramError(f"{name!r} is an input; inputs are given, not defined")
        if name in self._definitions:
            raise ProgramError(f"variable {name!r} is defined twice")
        if var.matrix is None:
            raise ProgramError(
                f"define {name!r}: it was declared entry-wise (without array=True); define "
                "it with a Matrix of entries, or declare it with array=True"
            )
        if var.shape != shape:
            raise ProgramError(
                f"define {name!r}: declared with shape {var.shape}, but its definition "
                f"{expr} has shape {shape}"
            )
        self._definitions[name] = (self._bind(expr, name),)
        self._changed()
        self._building.step(1)
        return var.matrix

    def _symbol(self, s: sp.Symbol) -> sp.Symbol | None:
        """This program's symbol for ``s``: itself, or the one of the same name."""
        if s in self._owner:
            return s
        return self._by_entry_name.get(s.name)

    def _resolve_declared(self, target: Any) -> Variable:
        if isinstance(target, sp.MatrixBase):
            entries = list(target)
            owners = {
                self._owner.get(self._symbol(e)) if isinstance(e, sp.Symbol) else None
                for e in entries
            }
            if len(owners) != 1 or None in owners:
                raise ProgramError(
                    "define: the target Matrix is not a variable declared with var()"
                )
            var = self._vars[owners.pop()]
            if list(var.symbols) != [self._symbol(e) for e in entries]:
                raise ProgramError(f"define: the target Matrix is only part of {var.name!r}")
            return var
        if isinstance(target, sp.Symbol):
            sym = self._symbol(target)
            if sym is None:
                raise ProgramError(
                    f"define: {target} was not declared; pass a name, or declare it with var()"
                )
            var = self._vars[self._owner[sym]]
            if var.shape != ():
                raise ProgramError(
                    f"define: {target} is an entry of array {var.name!r}; "
                    f"define the whole array at once"
                )
            return var
        raise ProgramError(
            f"define: the target must be a name or a declared variable, not {type(target).__name__}"
        )

    def _bind(self, expr: sp.Expr, label: str) -> sp.Expr:
        """Check ``expr`` for constraint ``label`` and map its symbols to ours (one walk)."""
        symbols = set()
        stack = [expr]
        while stack:
            node = stack.pop()
            if isinstance(node, sp.MatrixSymbol):
                var = self._vars.get(node.name)
                if var is None or var.matrix != node:
                    raise ProgramError(
                        f"constraint {label!r}: the array {node.name} of shape "
                        f"{tuple(node.shape)} is not a variable of this program; declare it "
                        "with prog.input(name, shape, array=True)"
                    )
            elif isinstance(node, Elementwise):
                stack.extend(node.operands)
                stack.append(node.function.expr.xreplace({v: 1 for v in node.function.variables}))
            elif node.is_Symbol:
                symbols.add(node)
            elif node in _NOT_REAL:
                raise ProgramError(f"constraint {label!r}: expression {expr} is not real-valued")
            elif isinstance(node, AppliedUndef):
                raise ProgramError(
                    f"constraint {label!r}: unknown function {node.func}; "
                    "use SymPy's elementary functions (exp, log, sin, tanh, …)"
                )
            elif isinstance(node, _UNEVALUATED):
                raise ProgramError(
                    f"constraint {label!r}: unevaluated {type(node).__name__} in {expr}; "
                    "evaluate it (.doit()) or write it out"
                )
            else:
                stack.extend(node.args)
        mapping: dict[sp.Symbol, sp.Symbol] = {}
        unknown = []
        for sym in symbols:
            ours = self._symbol(sym)
            if ours is None:
                unknown.append(sym)
            elif ours is not sym:
                mapping[sym] = ours
        if unknown:
            raise ProgramError(
                f"constraint {label!r}: {_names(unknown)} "
                f"{'is' if len(unknown) == 1 else 'are'} not a variable of this program; "
                "declare inputs with prog.input() and later-defined variables with prog.var()"
            )
        return expr.xreplace(mapping) if mapping else expr

    def _freeze(self) -> ProgramIR:
        used = set().union(*(r.free_symbols for r in self._equations.values()))
        used.update(*(e.free_symbols for exprs in self._definitions.values() for e in exprs))
        undefined = [
            n
            for n, v in self._vars.items()
            if v.kind == "intermediate"
            and n not in self._definitions
            and (
                not self._equations
                or not used.intersection(v.symbols if v.matrix is None else (v.matrix,))
            )
        ]
        if undefined:
            raise ProgramError(
                f"intermediate {_names(undefined)} declared with var() but never defined"
                + (" and used nowhere" if self._equations else "")
            )
        if not self._definitions:
            raise ProgramError("the program has no intermediates; define at least the output")
        output = self._output
        if output is None:
            last = self._vars[next(reversed(self._definitions))]
            if last.shape != ():
                raise ProgramError(
                    f"no output() was chosen and the last intermediate {last.name!r} is an "
                    f"array of shape {last.shape}; call prog.output() with a scalar"
                )
            output = last.symbols[0]
        constraints = []
        for name, exprs in self._definitions.items():
            var = self._vars[name]
            if var.matrix is not None:
                constraints.append(Constraint(name, var.matrix, exprs[0]))
                continue
            for sym, expr in zip(var.symbols, exprs, strict=True):
                constraints.append(Constraint(sym.name, sym, expr))
        for label, residual in self._equations.items():
            constraints.append(Constraint(label, None, residual))
        unknowns = [
            v
            for n, v in self._vars.items()
            if v.kind == "intermediate" and n not in self._definitions
        ]
        ir = ProgramIR(
            inputs=tuple(v for v in self._vars.values() if v.kind == "input"),
            intermediates=tuple(self._vars[n] for n in self._definitions) + tuple(unknowns),
            constraints=tuple(constraints),
            output=output,
        )
        ir.validate()
        return ir


# --------------------------------------------------------------------------- helpers


def _as_sympy(shape: tuple[int, ...], symbols: tuple[sp.Symbol, ...]) -> sp.Symbol | sp.Matrix:
    if shape == ():
        return symbols[0]
    rows, cols = (shape[0], 1) if len(shape) == 1 else shape
    return sp.Matrix(rows, cols, list(symbols))


def _names(items: Iterable[Any]) -> str:
    return ", ".join(sorted(str(i) for i in items))


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise ProgramError(f"a variable name must be a str, not {type(name).__name__}")
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ProgramError(
            f"invalid variable name {name!r}: use an identifier (letters, digits, _), "
            "not a Python keyword"
        )
    if name.startswith(_MULTIPLIER_PREFIX):
        raise ProgramError(
            f"invalid variable name {name!r}: names starting with {_MULTIPLIER_PREFIX!r} "
            "are reserved for the multipliers"
        )


def _check_shape(name: str, shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ProgramError(
            f"variable {name!r}: shape must be a tuple of ints, got {shape!r}"
        ) from None
    if len(shape) > 2 or any(d < 1 for d in shape):
        raise ProgramError(
            f"variable {name!r}: shape {shape} not supported; use (), (n,) or (rows, cols) "
            "with positive sizes"
        )
    return shape


def _scalar_expr(expr: Any, label: str) -> sp.Expr:
    (entry,), shape = (
        _flatten_expr(expr, label) if not isinstance(expr, sp.MatrixBase) else ((None,), (0,))
    )
    if shape != ():
        raise ProgramError(f"equation {label!r}: both sides must be scalar expressions")
    return entry


def _entry_labels(var: Variable) -> list[str]:
    return [s.name for s in var.symbols]


def _flatten_expr(expr: Any, target: Any) -> tuple[tuple[sp.Expr, ...], tuple[int, ...]]:
    """Entries of ``expr`` in C order and the shape they define."""
    label = target if isinstance(target, str) else str(target)
    if isinstance(expr, sp.MatrixBase):
        rows, cols = expr.shape
        if rows == 0 or cols == 0:
            raise ProgramError(f"define {label!r}: empty Matrix")
        shape = (rows,) if cols == 1 else (rows, cols)
        entries = tuple(expr)  # row-major == C order
    elif isinstance(expr, np.ndarray):
        raise ProgramError(
            f"define {label!r}: got a NumPy array; wrap symbolic arrays in sympy.Matrix"
        )
    else:
        shape, entries = (), (expr,)
    out = []
    for e in entries:
        if isinstance(e, str):
            raise ProgramError(
                f"define {label!r}: got the string {e!r}; pass a SymPy expression "
                "(text is read only by lad.parse)"
            )
        try:
            e = sp.sympify(e, strict=True)
        except (sp.SympifyError, TypeError) as err:
            raise ProgramError(f"define {label!r}: cannot use {e!r} as an expression") from err
        if not isinstance(e, sp.Expr) or isinstance(e, sp.MatrixBase):
            raise ProgramError(
                f"define {label!r}: {e} is a {type(e).__name__}, not a scalar expression"
            )
        out.append(e)
    return tuple(out), shape
