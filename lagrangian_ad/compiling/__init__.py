"""Compiling: forms and partials derived once, lowering, graph analysis, generated code.

Everything that turns the IR of `core` into code that runs many times: the entry-wise
engine (`_codegen`, `_fused`), the array engine (`_lowering`, `_rules`,
`_array_engine`, `_inexact`; entry-wise programs lowered to it by `_grouping`), second
order (`_second`) and `CompiledProgram` (`_compiled`), which
runs them with the solvers of `solving`. Imports only ``solving`` and ``core``.
"""
