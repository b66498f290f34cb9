"""The implementations under test, and the small record each one hands to the runner.

An implementation is a module with a ``LABEL``, an ``available()`` check (the peers are
optional), a ``version()`` and a table ``BUILDERS`` keyed by problem family
(`Problem.kind`: the name, or for the equilibrium models of several sizes their family,
"deq"). A builder takes
the problem and its inputs (NumPy arrays in lagrangian_ad's shapes), converts them once to
the library's own arrays, and returns a `Bench`: two closures to time and a converter
back to NumPy for the gradient check.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "IMPLEMENTATIONS",
    "Bench",
    "Implementation",
    "Memory",
    "Unsupported",
    "load",
]


class Unsupported(Exception):
    """This implementation cannot run this problem; ``str(exc)`` goes in the table."""


@dataclass(frozen=True)
class Memory:
    """Peak memory of one value_and_grad call: bytes (None if unknown) and how measured."""

    nbytes: int | None
    how: str


@dataclass
class Bench:
    """One implementation set up for one problem and batch.

    Attributes
    ----------
    value, value_and_grad : callable
        No-argument closures over the prepared inputs; these are what is timed. Both
        finish their work before returning (JAX results are blocked on).
    to_numpy : callable
        ``to_numpy(value_and_grad())`` -> (value, {input name: gradient}) as NumPy arrays
        in lagrangian_ad's shapes, for the gradient check (not timed).
    memory : callable or None
        Measures the peak memory of one value_and_grad call.
    note : str
        How this implementation does the problem (e.g. ``lax.scan``), for the table notes.
    setup : dict
        Measurements of the setup, by name (lagrangian_ad: ``build_s``, ``compile_s``
        and their peak resident memory ``build_rss``, ``compile_rss`` in bytes), for
        the report and ``results.json``.
    """

    value: Callable[[], Any]
    value_and_grad: Callable[[], Any]
    to_numpy: Callable[[Any], tuple[np.ndarray, dict[str, np.ndarray]]]
    memory: Callable[[], Memory] | None = None
    note: str = ""
    setup: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Implementation:
    """An implementation's registry entry: short name, module path, and a column label."""

    name: str
    module: str
    label: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl
    for impl in (
        Implementation("lad", "benchmarks.impl_lad", "lagrangian_ad"),
        Implementation(
            "lad_unchecked", "benchmarks.impl_lad_unchecked", "lagrangian_ad (check_finite=False)"
        ),
        Implementation("numba", "benchmarks.impl_numba", "lagrangian_ad (numba)"),
        Implementation("numpy", "benchmarks.impl_numpy", "NumPy by hand"),
        Implementation("torch", "benchmarks.impl_torch", "PyTorch eager"),
        Implementation("jax", "benchmarks.impl_jax", "JAX jit"),
        Implementation("jax_root", "benchmarks.impl_jax_root", "JAX custom_root"),
        Implementation("casadi", "benchmarks.impl_casadi", "CasADi"),
    )
}


def load(name: str) -> tuple[ModuleType | None, str]:
    """The implementation module and its version, or None and the reason it is missing."""
    impl = IMPLEMENTATIONS[name]
    module = impl.load()
    ok, reason = module.available()
    if not ok:
        return None, reason
    return module, module.version()
