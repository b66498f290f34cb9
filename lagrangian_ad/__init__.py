"""lagrangian_ad: derivatives of programs by the method of Lagrange multipliers.

A program is a list of equality constraints z_i = f_i(z_Pa(i)); its Lagrangian
L = z_N − Σ λ_i (z_i − f_i) is stationary at the forward values, at multipliers λ equal
to backprop's adjoints, and there ∂L/∂x is the gradient of the output z_N.
"""

from ._arrays import apply, cos, exp, log, mul, sigmoid, sin, softplus, sqrt, sum, tanh
from ._compiled import CompiledProgram
from ._decompose import decompose
from ._errors import (
    ConvergenceError,
    LagrangianADError,
    LagrangianADWarning,
    NonFiniteWarning,
    ParseError,
    ProgramError,
    SingularSystemError,
)
from ._optimize import OptimizeResult, maximize, minimize
from ._parse import load, parse
from ._program import Program
from ._symbolic import Conditions
from ._values import Solution

__all__ = [
    "CompiledProgram",
    "Conditions",
    "ConvergenceError",
    "LagrangianADError",
    "LagrangianADWarning",
    "NonFiniteWarning",
    "OptimizeResult",
    "ParseError",
    "Program",
    "ProgramError",
    "SingularSystemError",
    "Solution",
    "apply",
    "cos",
    "decompose",
    "exp",
    "load",
    "log",
    "maximize",
    "minimize",
    "mul",
    "parse",
    "sigmoid",
    "sin",
    "softplus",
    "sqrt",
    "sum",
    "tanh",
]

__version__ = "0.1.0"
