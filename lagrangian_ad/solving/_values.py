"""What a compiled program hands back, and the checks and shapes of what it is given:
`Solution`, the conversion of inputs to float64 arrays, the finiteness checks, and the
summing and broadcasting of per-sample quantities to the batch. Below the engines and
the Dask layer, which all use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core._errors import ProgramError
from ._blocks import BlockReport

__all__ = ["Solution"]

Array = Any  # float or numpy.ndarray


@dataclass(frozen=True)
class Solution:
    """The stationary point of the Lagrangian for given inputs.

    Attributes
    ----------
    value : float or ndarray
        The output z_N, with the batch shape.
    grad : dict
        ∂(Σ_batch z_N)/∂x for each input name, with the shape of the array given for it.
    values : dict
        The forward value of every variable, inputs included (batch shape + own shape).
    multipliers : dict
        λ for each intermediate defined by an explicit constraint (batch shape + own
        shape; the output's is 1) and for each implicit equation, by its name.
    blocks : tuple of BlockReport
        For each cyclic block: its variables, Newton (or fixed-point) iterations, final
        max residual and condition estimate of I − J (worst sample).
    kkt : dict
        The certificate of stationarity, recomputed from the conditions:
        ``max_dL_dlambda`` = max ``|∂L/∂λ|`` (every residual) and ``max_dL_dz`` = max ``|∂L/∂z|``.
    """

    value: Array
    grad: dict[str, Array]
    values: dict[str, Array]
    multipliers: dict[str, Array] = field(repr=False)
    blocks: tuple[BlockReport, ...] = field(default=(), repr=False)
    kkt: dict[str, float] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (
            f"Solution(value={self.value!r}, grad={self.grad!r}, "
            f"values=<{len(self.values)} variables>, "
            f"multipliers=<{len(self.multipliers)} constraints>, "
            f"blocks=<{len(self.blocks)} cyclic>)"
        )


# --------------------------------------------------------------------------- shapes


def _as_float_array(value: Any, what: str) -> np.ndarray:
    """``value`` as float64 (no copy when it is one), or a `ProgramError` naming ``what``
    ("input 'x'").

    Only numbers: ``None`` or other objects (which NumPy would turn into NaN), complex
    values, and masked arrays with masked entries (whose mask ``numpy.asarray`` drops)
    are refused.
    """
    if isinstance(value, np.ma.MaskedArray):
        if np.ma.is_masked(value):
            raise ProgramError(
                f"{what}: a masked array with {np.ma.count_masked(value)} masked "
                "entries; fill them (value.filled(...)) or leave those samples out"
            )
        value = value.data
    try:
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            kind = "complex values" if arr.dtype.kind == "c" else f"dtype {arr.dtype}"
            raise TypeError(kind)
        return arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as err:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ProgramError(f"{what}: expected real numbers, got {shown} ({err})") from None


def _not_finite(what: str, value: Any) -> ProgramError:
    """The error for a non-finite input (``what`` names it: "input 'x'")."""
    bad = ~np.isfinite(np.asarray(value, dtype=np.float64))
    where = "" if bad.ndim == 0 else f" at index {tuple(int(i) for i in np.argwhere(bad)[0])}"
    first = np.asarray(value, dtype=np.float64)[bad].flat[0]
    count = f" ({int(bad.sum())} of {bad.size} entries are not finite)" if bad.ndim else ""
    return ProgramError(
        f"{what} holds {first}{where}{count}; pass check_finite=False to compute with it anyway"
    )


def _finite(v: Any) -> bool:
    """Whether a float, or every entry of an array, is finite.

    An array's sum is finite only if every entry is (a NaN or an inf carries through),
    and summing needs no temporary array; a sum that overflows is checked entry by entry.
    """
    if type(v) is float:
        return math.isfinite(v)
    return math.isfinite(np.sum(v)) or bool(np.isfinite(v).all())


def _all_finite(value: Array, grad: dict[str, Array]) -> bool:
    """Whether the output and every gradient are finite (fast for floats: the hot path)."""
    try:
        return math.isfinite(value) and all(map(math.isfinite, grad.values()))
    except TypeError:  # arrays
        return _finite(value) and all(map(_finite, grad.values()))


def _sum_to(g: Any, batch: tuple[int, ...], target: tuple[int, ...]) -> np.ndarray:
    """Sum ``g`` (broadcastable to ``batch``) down to the batch axes ``target`` of an input."""
    g = np.asarray(g)
    if g.shape != batch:
        g = np.broadcast_to(g, batch)
    extra = len(batch) - len(target)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(k for k, t in enumerate(target) if t == 1 and g.shape[k] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


def _broadcasts_to(shape: tuple[int, ...], batch: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to ``batch`` (without growing it)."""
    try:
        return np.broadcast_shapes(shape, batch) == batch
    except ValueError:
        return False


def _shaped(v: Any, batch: tuple[int, ...]) -> Array:
    """A per-sample quantity with the batch shape; a float when there is no batch."""
    if batch == ():
        return float(v)
    v = np.asarray(v, dtype=np.float64)
    return v if v.shape == batch else np.broadcast_to(v, batch).copy()


def _assemble(parts: list, shape: tuple[int, ...], batch: tuple[int, ...]) -> Array:
    if shape == ():
        return _shaped(parts[0], batch)
    stacked = np.stack([np.broadcast_to(p, batch) for p in parts], axis=-1)
    return stacked.reshape(batch + shape)


def _user_array(a: Any) -> Array:
    a = np.asarray(a, dtype=np.float64)
    return float(a) if a.ndim == 0 else a
