"""Benchmarks of lagrangian_ad against a hand-written NumPy adjoint, PyTorch, JAX and CasADi.

Run ``python -m benchmarks`` from the repository root (``--help`` for the options;
``--problems arrays`` runs only the array programs of issue 12, the MLP 784-256-256-10
and the equilibrium models at n = 100, 500 and 1,000, in about a minute). The
problems are in `benchmarks.problems`, one module per implementation
(``benchmarks.impl_*``), the runner in `benchmarks.runner`; it writes ``RESULTS.md``
(`benchmarks.report`) and the same measurements as ``results.json``
(`benchmarks.records`). ``python -m benchmarks.compile_curve`` measures build and compile
time against program size (``--arrays``: of the array programs, with peak memory). This
package imports nothing heavy, so ``__main__`` can pin every library to one thread (and
the process to one CPU) before NumPy loads.
"""
