"""The bias and the cost of a gradient estimator, against the exact multipliers.

For an estimate ĝ of the gradient g (``adjoint="exact"``), per input and for all the
gradients concatenated into one vector:

    cosine          ⟨ĝ, g⟩ / (‖ĝ‖ ‖g‖)        (1 when both are zero, 0 when one is)
    relative error  ‖ĝ − g‖ / ‖g‖             (0 when both are zero, inf when g is)

and the wall time of the estimator's call and of the exact call, measured one after the
other in the same call (a report of this machine's load, not a benchmark).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EstimatorReport", "estimator_report"]

# options of the estimators, which the exact call does not take
_ESTIMATOR_OPTIONS = ("steps", "damping", "beta", "symmetric")


@dataclass(frozen=True)
class EstimatorReport:
    """What `estimator_report` measured.

    Attributes
    ----------
    adjoint : str
        The estimator.
    options : dict
        The options of the call (``steps``, ``damping``, ``beta``, … and solve options).
    cosine, relative_error : dict of str to float
        Per input, the estimate against the exact gradient.
    cosine_all, relative_error_all : float
        The same for all gradients concatenated.
    seconds, exact_seconds : float
        Wall time of the estimator's call and of the exact call.
    value, exact_value
        The outputs the two calls returned (they differ for ``"unrolled"``, whose value
        is the unrolled program's).
    grad, exact_grad : dict of str to array
        The two gradients.
    """

    adjoint: str
    options: dict
    cosine: dict
    relative_error: dict
    cosine_all: float
    relative_error_all: float
    seconds: float
    exact_seconds: float
    value: Any
    exact_value: Any
    grad: dict
    exact_grad: dict


def estimator_report(
    fn: Any, inputs: Mapping[Any, Any], adjoint: str, **options: Any
) -> EstimatorReport:
    """The bias (cosine, relative error) and the cost (seconds) of a gradient estimator
    against the exact multipliers' gradient.

    Parameters
    ----------
    fn : CompiledProgram or EnergyProgram
        Anything whose ``value_and_grad(inputs, adjoint=…, **options)`` takes the
        estimator.
    inputs : dict
        The inputs, as for ``fn.value_and_grad``.
    adjoint : str
        The estimator (``"unrolled"``, ``"jfb"``, ``"phantom"``, ``"ep"``, …).
    **options
        Its options (``steps``, ``damping``, ``beta``, ``symmetric``) and the solve
        options, which the exact call gets too (``init``, ``method``, ``tol``,
        ``maxiter``, ``wrt``).

    Examples
    --------
    >>> import lagrangian_ad as lad
    >>> prog = lad.Program()
    >>> x = prog.input("x", shape=(3,), array=True)
    >>> W = prog.input("W", shape=(3, 3), array=True)
    >>> h = prog.var("h", shape=(3,), array=True)
    >>> _ = prog.define(h, lad.tanh(0.3 * W @ h + x))
    >>> _ = prog.define("y", lad.sum(h))
    >>> inputs = {"x": [0.1, 0.2, 0.3], "W": [[0.1, 0.2, 0.3]] * 3}
    >>> rep = lad.estimator_report(prog.compile(), inputs, adjoint="phantom", steps=40, damping=1.0)
    >>> rep.relative_error_all < 1e-12
    True
    """
    exact_options = {k: v for k, v in options.items() if k not in _ESTIMATOR_OPTIONS}
    start = time.perf_counter()
    value, grad = fn.value_and_grad(inputs, adjoint=adjoint, **options)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    exact_value, exact_grad = fn.value_and_grad(inputs, **exact_options)
    exact_seconds = time.perf_counter() - start
    cosine, error = {}, {}
    for name, g in exact_grad.items():
        cosine[name], error[name] = _compare(grad[name], g)
    flat = [np.ravel(grad[n]) for n in exact_grad]
    exact_flat = [np.ravel(g) for g in exact_grad.values()]
    both = _compare(np.concatenate(flat or [[]]), np.concatenate(exact_flat or [[]]))
    return EstimatorReport(
        adjoint,
        dict(options),
        cosine,
        error,
        both[0],
        both[1],
        seconds,
        exact_seconds,
        value,
        exact_value,
        grad,
        exact_grad,
    )


def _compare(estimate: Any, exact: Any) -> tuple[float, float]:
    """(cosine, relative error) of ``estimate`` against ``exact``."""
    a = np.ravel(np.asarray(estimate, dtype=np.float64))
    b = np.ravel(np.asarray(exact, dtype=np.float64))
    na, nb, nd = (float(np.linalg.norm(v)) for v in (a, b, a - b))
    if na == 0 and nb == 0:
        return 1.0, 0.0
    cosine = 0.0 if na == 0 or nb == 0 else float(np.dot(a, b)) / (na * nb)
    return cosine, (nd / nb if nb > 0 else math.inf)
