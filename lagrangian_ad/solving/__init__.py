"""Solving: cyclic blocks (Newton, fixed point), solutions, inputs, Dask batches.

Numerical code only (NumPy, SciPy, Dask): no SymPy tree is walked here. Imports only
``core``.
"""
