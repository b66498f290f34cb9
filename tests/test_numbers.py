"""Numbers at the edges (issue 11): valid programs that crashed, removable singularities,
zero powers, non-finite inputs and results, special functions, wide products.

Every expected value is computed another way: by hand, with mpmath at 30 digits, with
SciPy, or by SymPy's derivative of the flat expression.
"""

from __future__ import annotations

import mpmath
import pytest

import lagrangian_ad as lad

mpmath.mp.dps = 30


def _mp_diff(f, x: float, n: int = 1) -> float:
    """The n-th derivative of f at x by mpmath (30 digits)."""
    return float(mpmath.diff(f, mpmath.mpf(x), n))


# --------------------------------------------------------------------------- C: crashes


def test_block_functions_are_named_after_their_own_block():
    # The loop that added temporaries reused the block index: KeyError 'block0_map'.
    fn = lad.parse("input x\nz0 = 5 ** atan2(19*z0, x)\n").compile()
    sol = fn.solve({"x": 1.0}, init={"z0": 1.0})

    def g(z, x):
        return mpmath.power(5, mpmath.atan2(19 * z, x))

    z = mpmath.findroot(lambda z: z - g(z, 1), mpmath.mpf(sol.value))
    g_z = mpmath.diff(lambda t: g(t, 1), z)
    g_x = mpmath.diff(lambda t: g(z, t), mpmath.mpf(1))
    assert sol.value == pytest.approx(float(z), rel=1e-13)
    assert sol.grad["x"] == pytest.approx(float(g_x / (1 - g_z)), rel=1e-10)


@pytest.mark.parametrize(
    ("text", "a", "b"),
    [
        ("input tangents\ninput x\ny = tangents**3 * x\n", "tangents", "x"),
        ("input x\ninput t\nsecond_adjoint = x**3\ny = second_adjoint * t\n", "x", "t"),
        ("input hvp\ninput forward\nkkt = hvp**3\nadjoint = kkt * forward\n", "hvp", "forward"),
        (
            "input jvp\ninput hessian\nblock0_map = jvp**3\nz = hessian * block0_map\n",
            "jvp",
            "hessian",
        ),
    ],
)
def test_user_names_never_collide_with_generated_names(text, a, b):
    # An input named `tangents` or an intermediate named `second_adjoint` shadowed the
    # generated function of that name (hvp: TypeError). Here f = a³·b, by hand.
    fn = lad.parse(text).compile()
    va, vb = 1.5, -0.5
    at = {a: va, b: vb}
    value, grad = fn.value_and_grad(at)
    assert value == pytest.approx(va**3 * vb, rel=1e-15)
    assert grad == pytest.approx({a: 3 * va**2 * vb, b: va**3}, rel=1e-15)
    hess = {a: {a: 6 * va * vb, b: 3 * va**2}, b: {a: 3 * va**2, b: 0.0}}
    H = fn.hessian(at)
    for p in (a, b):
        assert H[p] == pytest.approx(hess[p], rel=1e-14)
    assert fn.hvp(at, {a: 1.0}) == pytest.approx({a: hess[a][a], b: hess[b][a]}, rel=1e-14)
    assert fn.jvp(at, {b: 1.0})[1] == pytest.approx(va**3, rel=1e-15)
    assert fn.solve(at).kkt["max_dL_dlambda"] == 0.0
