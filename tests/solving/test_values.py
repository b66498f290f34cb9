"""The checks of `_values`: the finiteness test every input, output and gradient goes
through (one reduction per array), against NumPy's entry-by-entry ``isfinite``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lagrangian_ad.solving._values import _finite

SHAPES = [(), (1,), (7,), (256, 784), (3, 4, 5), (128, 784, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_one_non_finite_entry_anywhere_is_found(shape, bad):
    rng = np.random.default_rng(0)
    a = rng.normal(size=shape)
    assert _finite(a)
    for where in {0, a.size // 2, a.size - 1}:
        b = a.copy()
        b.reshape(-1)[where] = bad
        with np.errstate(invalid="ignore"):  # a sum of inf and -inf is NaN: not finite
            assert not _finite(b), (shape, bad, where)
            assert not _finite(b.T)  # not contiguous: summed instead
            assert not _finite(b.astype(np.float32))


def test_infinities_of_both_signs_and_nan_together_are_found():
    for n in (1000, 100_000):  # summed, and by the sum of squares
        a = np.zeros(n)
        a[[3, 500]] = [np.inf, -np.inf]  # a sum reads NaN, the squares inf: not finite
        with np.errstate(invalid="ignore"):
            assert not _finite(a)
            a[7] = np.nan
            assert not _finite(a)


def test_large_finite_entries_are_finite_though_their_squares_overflow():
    # 1e200² overflows: the reduction reads inf, and the entries are checked one by one;
    # finite entries, however large, raise no warning
    for shape in ((50, 40), (400, 400)):
        a = np.full(shape, 1e200)
        a[0, 0] = -1e308
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _finite(a)
            assert _finite(a.T)
        a[1, 1] = np.inf
        assert not _finite(a)


def test_floats_integers_and_empty_arrays():
    assert _finite(1.5) and not _finite(float("nan")) and not _finite(float("-inf"))
    assert _finite(np.arange(10))  # integers are always finite
    assert _finite(np.zeros((0, 3)))
    assert _finite(np.float64(2.0)) and not _finite(np.float64("inf"))
