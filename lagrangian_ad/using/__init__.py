"""Using: optimizers on the Lagrangian, the interior-point method, the command line.

The top layer: it builds and compiles programs through `building` and `compiling`.
"""
