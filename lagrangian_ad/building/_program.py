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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy as sp
from sympy.core.function import AppliedUndef

from ..core._arrays import Elementwise, MatrixVariable, check_array_node, is_array
from ..core._constants import bottom_up
from ..core._errors import ProgramError
from ..core._ir import (
    MULTIPLIER_PREFIX,
    SIDE_MULTIPLIER_PREFIX,
    Constraint,
    ProgramIR,
    SideConstraint,
    Variable,
    _as_sympy,
    _names,
)
from ..core._progress import BuildProgress

if TYPE_CHECKING:
    from ..compiling._compiled import CompiledProgram
    from ..solving._values import Solution
    from ..symbolic._symbolic import Conditions

__all__ = ["Constraint", "Program", "ProgramIR", "SideConstraint", "Variable"]

_MULTIPLIER_PREFIX = MULTIPLIER_PREFIX
_NOT_REAL = frozenset({sp.I, sp.zoo, sp.nan})
_UNEVALUATED = (sp.Derivative, sp.Integral, sp.Sum, sp.Product, sp.Subs)
MAX_EXPRESSION_DEPTH = 100
"""Deepest expression `Program.define` accepts, in levels of operations: SymPy's
differentiation, assumptions and printing recurse on the tree, and at Python's default
recursion limit they fail from about 120 levels (sin nested 1,200 times failed in
``free_symbols``). `decompose` takes any depth: one constraint per operation."""


def _depth(node: sp.Basic, below: list[int]) -> int:
    return 1 + max(below, default=-1)


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
        self._side: dict[str, SideConstraint] = {}  # subject_to, in order
        self._output: sp.Symbol | None = None
        self._frozen: ProgramIR | None = None
        self._compiled: CompiledProgram | None = None
        self._compiled_key: tuple[str, str] | None = None

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
            while self._name_taken(f"eq{k}"):
                k += 1
            name = f"eq{k}"
        _check_name(name)
        if self._name_taken(name):
            raise ProgramError(f"equation name {name!r} is already in use")
        left, right = _scalar_expr(lhs, name), _scalar_expr(rhs, name)
        residual = self._bind(left - right, name)
        if not residual.free_symbols:
            raise ProgramError(f"equation {name!r}: {left} = {right} involves no variable")
        self._equations[name] = residual
        self._changed()
        self._building.step(1)
        return sp.Symbol(_MULTIPLIER_PREFIX + name, real=True)

    def subject_to(self, relation: Any, name: str | None = None) -> sp.Symbol:
        """Add a constraint that is not a definition; returns its multiplier μ.

        ``relation`` is a SymPy relation over inputs and intermediates (entries of
        arrays, ``lad.sum`` of an array variable): ``x**2 + y**2 <= 1``, ``z >= 0``,
        ``sp.Eq(a + b, 1)``. The forward pass and the gradient ignore it; `lad.minimize`
        and `lad.maximize` then solve the constrained problem (``method=
        "interior-point"``), and `lagrangian` includes it with its multiplier.

        Strict inequalities (``<``, ``>``) are rejected: an interior-point method (like
        every solver of continuous problems) works on the closure of the feasible set,
        where ``x < 1`` and ``x <= 1`` are the same constraint; accepting ``<`` would
        promise something the solution may not hold (it may sit on the boundary).

        Parameters
        ----------
        relation : sympy.Le, sympy.Ge or sympy.Eq
        name : str, optional
            The constraint's name (default ``g1``, ``g2``, …): the key of its multiplier
            in the optimizer's result, and ``mu_<name>`` in the Lagrangian.

        Returns
        -------
        sympy.Symbol
            The multiplier μ of the constraint (≥ 0 for an inequality).

        Raises
        ------
        ProgramError
            Not a relation, a strict inequality, a relation that involves no variable
            (or SymPy already evaluated to True or False), an unknown symbol, a name in
            use.

        Examples
        --------
        >>> import sympy as sp, lagrangian_ad as lad
        >>> prog = lad.Program()
        >>> x, y = prog.input("x"), prog.input("y")
        >>> f = prog.define("f", x + y)
        >>> prog.subject_to(x**2 + y**2 <= 1)
        mu_g1
        >>> res = lad.minimize(prog, {"x": 0.5, "y": 0.0})
        >>> round(res.fun, 6), round(res.multipliers["g1"], 6)
        (-1.414214, 0.707107)
        """
        if name is None:
            k = len(self._side) + 1
            while self._name_taken(f"g{k}"):
                k += 1
            name = f"g{k}"
        label = name if isinstance(name, str) else repr(name)
        if isinstance(relation, (bool, sp.logic.boolalg.BooleanAtom)):
            raise ProgramError(
                f"constraint {label!r}: the relation is the constant {relation}: SymPy "
                "evaluated it because it involves no variable; a constraint must involve "
                "an input or intermediate"
            )
        if isinstance(relation, (sp.StrictLessThan, sp.StrictGreaterThan)):
            raise ProgramError(
                f"constraint {label!r}: strict inequality {relation}; write it with <= or "
                ">= (an interior-point method works on the closure of the feasible set, "
                "where < and <= are the same constraint)"
            )
        if isinstance(relation, sp.Ne):
            raise ProgramError(
                f"constraint {label!r}: {relation} (≠) is not a constraint of a continuous "
                "problem; use <=, >= or sp.Eq"
            )
        ops = {sp.LessThan: "<=", sp.GreaterThan: ">=", sp.Equality: "=="}
        op = ops.get(type(relation))
        if op is None:
            raise ProgramError(
                f"constraint {label!r}: {relation!r} is not a relation; write lhs <= rhs, "
                "lhs >= rhs or sp.Eq(lhs, rhs)"
            )
        if not isinstance(name, str):
            raise ProgramError(f"a constraint name must be a str, not {type(name).__name__}")
        _check_name(name)
        if self._name_taken(name):
            raise ProgramError(f"constraint name {name!r} is already in use")
        sides = []
        for side in (relation.lhs, relation.rhs):
            if isinstance(side, sp.MatrixBase) or isinstance(side, sp.MatrixExpr):
                raise ProgramError(
                    f"constraint {name!r}: {side} is an array; a constraint is scalar (use "
                    "an entry, or lad.sum)"
                )
            sides.append(self._bind(side, name))
        lhs, rhs = sides
        if not (lhs.free_symbols | rhs.free_symbols):
            raise ProgramError(
                f"constraint {name!r}: {relation} involves no variable; a constraint must "
                "involve an input or intermediate"
            )
        side = SideConstraint(name, op, lhs, rhs)
        self._side[name] = side
        self._changed()
        return side.multiplier

    def _name_taken(self, name: str) -> bool:
        return (
            name in self._vars
            or name in self._equations
            or name in self._side
            or name in self._by_entry_name
            or SIDE_MULTIPLIER_PREFIX + name in self._vars
        )

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
        elif isinstance(target, sp.MatrixSymbol):
            raise ProgramError(
                f"output: {target.name!r} is an array of shape {tuple(target.shape)}; the "
                "output must be a scalar (define one, e.g. with lad.sum or an entry)"
            )
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
        if isinstance(target, str) and target in self._side:
            return self._side[target].multiplier
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
        from ..symbolic._symbolic import lagrangian

        return lagrangian(self.ir)

    def conditions(self) -> Conditions:
        """The stationarity conditions of the Lagrangian (forward, adjoint, gradient)."""
        from ..symbolic._symbolic import conditions

        return conditions(self.ir)

    def compile(
        self, progress: Any = None, backend: str = "numpy", engine: str = "auto"
    ) -> CompiledProgram:
        """Derive the partials once and generate numeric code; cached until a change.

        ``progress``: None shows a progress bar (tqdm) for compiles longer than two
        seconds when stderr is a terminal or in Jupyter; True always (after two
        seconds), False never; or a callable ``report(stage, done, total, elapsed)``.
        ``backend``: "numpy" (the default) or "numba": `value` and `value_and_grad` of
        an acyclic program run as one Numba loop over the batch (needs ``numba``; each
        kernel compiles on first use, seconds for long programs). Same results to
        rounding; see `CompiledProgram`.
        ``engine``: "auto" (the default: the array engine for programs with array
        variables, the entry-wise engine for the others), "arrays" (the array engine
        for any program without implicit equations: every scalar is a 1×1 array there)
        or "entries" (the entry-wise engine: per-scalar code, and for batches of programs
        with repeated structure the array engine on the program lowered to one array
        constraint per group of constraints of one form). ``fn.engine`` says which runs:
        "arrays", "entries" or "lowered" (that last).
        """

        if engine not in ("auto", "arrays", "entries"):
            raise ProgramError(f"unknown engine {engine!r}: use 'auto', 'arrays' or 'entries'")
        key = (backend, engine)
        if self._compiled is None or self._compiled_key != key:
            ir = self.ir
            if engine == "entries" and ir.has_arrays:
                raise ProgramError(
                    "engine='entries': this program has array variables (array=True), which "
                    "only the array engine runs"
                )
            if engine == "arrays" or (engine == "auto" and ir.has_arrays):
                from ..compiling._array_engine import ArrayProgram

                if backend != "numpy":
                    raise ProgramError(
                        f"backend {backend!r}: the array engine compiles to NumPy only "
                        "(backend='numpy')"
                    )
                self._compiled = ArrayProgram(ir, progress=progress)
            else:
                from ..compiling._grouping import GroupedProgram

                self._compiled = GroupedProgram(ir, progress=progress, backend=backend)
            self._compiled_key = key
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
        from ..symbolic._symbolic import program_latex

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
        if name in self._side:
            raise ProgramError(f"{name!r} already names a constraint (subject_to)")
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
        depth = bottom_up(expr, _depth)
        if depth > MAX_EXPRESSION_DEPTH:
            raise ProgramError(
                f"constraint {label!r}: the expression is nested {depth} levels deep (at most "
                f"{MAX_EXPRESSION_DEPTH}), too deep for SymPy's recursive algorithms; split it "
                "into elementary constraints with lad.decompose(expr, inputs=[…]), or define "
                "inner parts as intermediates of their own"
            )
        symbols = set()
        seen = {expr}
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
                check_array_node(node, label)
                fresh = [a for a in node.args if a not in seen]
                seen.update(fresh)
                stack.extend(fresh)
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
            subject_to=tuple(self._side.values()),
        )
        ir.validate()
        return ir


# --------------------------------------------------------------------------- helpers


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
        if isinstance(e, sp.MatrixExpr):
            raise ProgramError(
                f"{label!r}: {e} is an array of shape {tuple(e.shape)}, not a scalar "
                "expression (use an entry, lad.sum, or define an array variable)"
            )
        if not isinstance(e, sp.Expr) or isinstance(e, sp.MatrixBase):
            raise ProgramError(
                f"define {label!r}: {e} is a {type(e).__name__}, not a scalar expression"
            )
        out.append(e)
    return tuple(out), shape
