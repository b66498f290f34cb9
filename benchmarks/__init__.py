"""Benchmarks of lagrangian_ad against a hand-written NumPy adjoint, PyTorch, JAX and CasADi.

Run ``python -m benchmarks`` from the repository root (``--help`` for the options). The
problems are in `benchmarks.problems`, one module per implementation
(``benchmarks.impl_*``), the runner in `benchmarks.runner`; it writes ``RESULTS.md``
(`benchmarks.report`) and the same measurements as ``results.json``
(`benchmarks.records`). This package imports nothing heavy, so ``__main__`` can pin
every library to one thread before NumPy loads.
"""
