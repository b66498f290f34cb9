"""The exceptions of lagrangian_ad: one base class, one subclass per kind of failure.

Each also subclasses the builtin it refines, so ``except ValueError`` keeps working for
callers who do not know this package.
"""

from __future__ import annotations


class LagrangianADError(Exception):
    """Base class of every error raised by lagrangian_ad."""


class ProgramError(LagrangianADError, ValueError):
    """The program or its inputs are ill-formed.

    Undefined or duplicate variables, a missing output, a wrong shape, a missing or
    unknown input. The message names the variable or constraint involved.
    """


class ParseError(LagrangianADError, ValueError):
    """A program file or expression text could not be parsed.

    Attributes
    ----------
    line, column : int or None
        1-based position of the problem in the text.
    """

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.line = line
        self.column = column


class ConvergenceError(LagrangianADError, RuntimeError):
    """The forward solve of a cyclic block did not reach its tolerance."""


class SingularSystemError(LagrangianADError, ArithmeticError):
    """The forward point was found but I − J is singular there: no gradient exists."""


class LagrangianADWarning(UserWarning):
    """Base class of every warning issued by lagrangian_ad."""


class NonFiniteWarning(LagrangianADWarning, RuntimeWarning):
    """A value or multiplier became non-finite (inf or NaN) from finite inputs.

    The message names the first constraint, in evaluation order, whose value (forward
    pass) or multiplier (adjoint pass) is not finite: the place where the overflow or
    the domain error happened (``log(-1)``, ``exp(1000)``).
    """
