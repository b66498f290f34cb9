"""The symbolic layer: the Lagrangian and its stationarity conditions as SymPy objects.

Reads the IR of `core`; array programs reuse the lowering and forms of `compiling`, so
their printed conditions are derived by the same rules the engine runs.
"""
