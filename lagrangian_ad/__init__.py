"""lagrangian_ad: derivatives of programs by the method of Lagrange multipliers.

A program is a list of equality constraints z_i = f_i(z_Pa(i)); its Lagrangian
L = z_N − Σ λ_i (z_i − f_i) is stationary at the forward values, at multipliers λ equal
to backprop's adjoints, and there ∂L/∂x is the gradient of the output z_N.
"""

from .building._decompose import decompose
from .building._parse import load, parse
from .building._program import Program
from .compiling._compiled import CompiledProgram
from .core._arrays import apply, cos, exp, log, mul, sigmoid, sin, softplus, sqrt, sum, tanh
from .core._errors import (
    ConvergenceError,
    LagrangianADError,
    LagrangianADWarning,
    NonFiniteWarning,
    ParseError,
    ProgramError,
    SingularSystemError,
)
from .core._version import __version__ as __version__
from .solving._values import Solution
from .symbolic._symbolic import Conditions
from .using._equilibrium import EnergyProgram, energy_program
from .using._optimize import OptimizeResult, maximize, minimize
from .using._report import EstimatorReport, estimator_report

__all__ = [
    "CompiledProgram",
    "Conditions",
    "ConvergenceError",
    "EnergyProgram",
    "EstimatorReport",
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
    "energy_program",
    "estimator_report",
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
