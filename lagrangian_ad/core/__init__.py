"""The representation every layer reads: errors, constants, array expressions, the IR.

Imports nothing of the package outside ``core``. Layers above it, each importing only
the ones below (no cycle, lazy imports included)::

    using       optimizers, the interior-point method, the command line, the demo
    building    Program (the builder and façade), the text format, parse, decompose
    symbolic    the Lagrangian and its conditions as SymPy objects
    compiling   forms, lowering, graph analysis, generated code, the compiled engines
    solving     block solvers, solutions and input handling, Dask batches
    core        this package
"""
