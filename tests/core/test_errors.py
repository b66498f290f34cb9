"""Every error the package raises is one of its own classes (issue 11, item 7).

A scan of the package's source with `ast` finds each ``raise`` of a builtin exception that
is not caught by an enclosing ``try`` of the same function; each one must be an internal
invariant on the short allow-list below, with the reason it may stay a builtin. The
behaviour behind the scan is tested on the public calls that used to raise builtins.
"""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad
from lagrangian_ad import testing

PACKAGE = Path(lad.__file__).resolve().parent

# (module, builtin, enclosing function) -> why it may stay a builtin exception.
ALLOWED = {
    ("solving/_blocks.py", "AssertionError", "_anderson"): (
        "after a loop that returns or raises on every path: unreachable"
    ),
    ("compiling/_graph.py", "RuntimeError", "analyse"): (
        "the condensation of a graph is acyclic, so its block order is always complete"
    ),
    ("compiling/_fused.py", "ValueError", "source"): (
        "the kind of a kernel comes only from the module's own call sites (value, grad, full)"
    ),
    ("compiling/_fused.py", "ImportError", "_numba"): (
        "a missing optional dependency is an ImportError, as callers test for it "
        "(`except ImportError`, `pytest.importorskip`); the message says what to install"
    ),
    ("using/_optimize.py", "StopIteration", "callback"): (
        "SciPy's documented way for a minimize callback to stop the iteration; SciPy catches it"
    ),
    ("testing.py", "AssertionError", "compare"): (
        "a failed check of lagrangian_ad.testing is an assertion, like numpy.testing's, "
        "so a test runner reports a failure, not an error"
    ),
    ("testing.py", "AssertionError", "_assert_close"): (
        "a failed check of lagrangian_ad.testing is an assertion, like numpy.testing's"
    ),
}

# Raises in modules that another change of issue 11 owns, listed for it to convert; each
# entry fails the test as stale once its raise is gone, so the list cannot outlive them.
PENDING: dict[tuple[str, str, str], str] = {}


def _builtin_exception(node: ast.expr | None) -> str | None:
    """The name of the builtin exception class ``node`` raises or names, if it is one."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        obj = getattr(builtins, node.id, None)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return node.id
    return None


def _catches(handler: ast.ExceptHandler, name: str) -> bool:
    """Whether ``except …`` of this handler catches the builtin ``name``."""
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    raised = getattr(builtins, name)
    for t in types:
        caught = getattr(builtins, t.id, None) if isinstance(t, ast.Name) else None
        if isinstance(caught, type) and issubclass(raised, caught):
            return True
    return False


def _escaping_raises(tree: ast.Module) -> list[tuple[str, str, int]]:
    """(builtin, enclosing function, line) of each raise not caught in its function."""
    found: list[tuple[str, str, int]] = []
    # Iterative walk; each entry carries the enclosing function and the handlers of the
    # ``try`` bodies it is lexically inside (reset at a nested function).
    stack: list[tuple[ast.AST, str, tuple[ast.ExceptHandler, ...]]] = [(tree, "<module>", ())]
    while stack:
        node, function, handlers = stack.pop()
        if isinstance(node, ast.Raise):
            name = _builtin_exception(node.exc)
            if name is not None and not any(_catches(h, name) for h in handlers):
                found.append((name, function, node.lineno))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            function = getattr(node, "name", "<lambda>")
            handlers = ()
        if isinstance(node, ast.Try):
            stack += [(child, function, (*handlers, *node.handlers)) for child in node.body]
            rest = [*node.handlers, *node.orelse, *node.finalbody]
            stack += [(child, function, handlers) for child in rest]
            continue
        stack += [(child, function, handlers) for child in ast.iter_child_nodes(node)]
    return found


def test_no_builtin_exception_escapes_the_package():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 10  # the scan sees the package
    escaping = {}
    for path in modules:
        module = path.relative_to(PACKAGE).as_posix()
        for name, function, line in _escaping_raises(ast.parse(path.read_text("utf-8"))):
            escaping.setdefault((module, name, function), []).append(line)
    allowed = {**ALLOWED, **PENDING}
    unexpected = {key: lines for key, lines in escaping.items() if key not in allowed}
    assert not unexpected, (
        "raise of a builtin exception that reaches users; raise a LagrangianADError "
        f"subclass instead: {unexpected}"
    )
    stale = set(allowed) - set(escaping)
    assert not stale, f"allow-list entries that match no raise any more: {stale}"


def test_the_scan_finds_what_it_should():
    """The scan itself: an escaping raise is found, a locally caught one is not."""
    source = (
        "def f(x):\n"
        "    if x:\n"
        "        raise ValueError('escapes')\n"
        "    try:\n"
        "        raise KeyError('caught as a LookupError')\n"
        "    except LookupError:\n"
        "        pass\n"
        "    try:\n"
        "        def g():\n"
        "            raise TypeError('escapes from g: the try is f\\'s')\n"
        "        raise OSError\n"
        "    except ValueError:\n"
        "        raise RuntimeError('escapes: raised in the handler')\n"
        "    raise MyError('not a builtin')\n"
    )
    found = sorted(_escaping_raises(ast.parse(source)), key=lambda t: t[2])
    assert found == [
        ("ValueError", "f", 3),
        ("TypeError", "g", 10),
        ("OSError", "f", 11),
        ("RuntimeError", "f", 13),
    ]


def _quadratic() -> lad.Program:
    prog = lad.Program()
    x = prog.input("x")
    prog.define("y", (x - 1) ** 2)
    return prog


@pytest.mark.parametrize("optimize", [lad.minimize, lad.maximize])
def test_unknown_method_is_a_program_error_that_lists_the_methods(optimize):
    with pytest.raises(lad.ProgramError) as err:
        optimize(_quadratic(), x0={"x": 0.0}, method="bfgs")
    assert isinstance(err.value, ValueError)  # docs/design.md: an unknown method is a ValueError
    message = str(err.value)
    assert "'bfgs'" in message
    for method in ("gradient", "lbfgs", "augmented-lagrangian", "newton-kkt"):
        assert method in message


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"options": [1]}, "options must be a dict"),
        ({"options": {"gtool": 1}}, "Unknown option 'gtool'"),
        ({"callback": 3}, "callback must be callable"),
        ({"options": {"bounds": [0, 1]}}, "option 'bounds' must be a dict"),
        ({"options": {"bounds": {"x": 1}}}, "bounds['x'] must be a pair"),
        ({"options": {"bounds": {"x": (2, 1)}}}, "a lower bound exceeds its upper bound"),
        ({"options": {"bounds": {"x": ([0, 0], 1)}}}, "does not broadcast"),
        ({"options": {"solve": 1}}, "option 'solve' must be a dict"),
    ],
)
def test_bad_optimizer_options_are_program_errors(kwargs, words):
    with pytest.raises(lad.ProgramError, match=re.escape(words)):
        lad.minimize(_quadratic(), x0={"x": 0.0}, method="lbfgs", **kwargs)


def test_bad_method_specific_options_are_program_errors():
    cases = [
        ("gradient", {"initial": "huge"}, "option 'initial'"),
        ("newton-kkt", {"inertia": "none"}, "option 'inertia'"),
        ("newton-kkt", {"init": "random"}, "option 'init'"),
        ("augmented-lagrangian", {"z0": "random"}, "the start of z"),
    ]
    for method, options, words in cases:
        with pytest.raises(lad.ProgramError, match=words):
            lad.minimize(_quadratic(), x0={"x": 0.0}, method=method, options=options)


def test_testing_helpers_reject_cyclic_programs_with_program_errors():
    prog = lad.Program()
    x = prog.input("x")
    h = prog.var("h")
    prog.define(h, sp.tanh(0.5 * h + x))
    with pytest.raises(lad.ProgramError, match="acyclic"):
        testing.check_grads(prog, {"x": np.array(0.3)}, symbolic=True)
    with pytest.raises(lad.ProgramError, match="acyclic"):
        testing.inline_output(prog.ir)
