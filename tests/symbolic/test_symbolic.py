"""The Lagrangian and its stationarity conditions, checked by differentiating L itself."""

from __future__ import annotations

import sympy as sp

import lagrangian_ad as lad
from lagrangian_ad.using._demo import blog_program


def _array_program():
    prog = lad.Program()
    x = prog.input("x")
    W = prog.input("W", shape=(2, 2))
    h = prog.define("h", (W * sp.Matrix([x, 1])).applyfunc(sp.tanh))
    prog.define("f", h[0] * h[1] + x)
    return prog


def test_lagrangian_is_output_minus_multiplied_residuals():
    prog = blog_program()
    L = prog.lagrangian()
    x = sp.Symbol("x", real=True)
    a, b, c, d, e, f = sp.symbols("a b c d e f", real=True)
    lam = {n: prog.multiplier(n) for n in "abcdef"}
    expected = f - (
        lam["a"] * (a - sp.exp(x))
        + lam["b"] * (b - a**2)
        + lam["c"] * (c - a - b)
        + lam["d"] * (d - sp.exp(c))
        + lam["e"] * (e - sp.sin(c))
        + lam["f"] * (f - d - e)
    )
    assert sp.expand(L - expected) == 0


def test_conditions_are_the_gradient_of_the_lagrangian():
    """Every condition is ∂L/∂(something) = 0, recomputed here with sp.diff on L."""
    for prog in (blog_program(), _array_program()):
        L = prog.lagrangian()
        cond = prog.conditions()
        ir = prog.ir
        for c, eq in zip(ir.constraints, cond.constraints, strict=True):
            # ∂L/∂λ_i = −(z_i − f_i): zero exactly when the forward equation holds
            assert sp.simplify(sp.diff(L, c.multiplier) + (eq.lhs - eq.rhs)) == 0
        targets = [c.target for c in ir.constraints]
        for z, eq in zip(targets, cond.adjoint, strict=True):
            # ∂L/∂z_j = [j = N] − λ_j + Σ λ_i ∂f_i/∂z_j = −(lhs − rhs) of λ_j = rhs
            assert sp.simplify(sp.diff(L, z) + (eq.lhs - eq.rhs)) == 0
        for v in ir.inputs:
            for s in v.symbols:
                assert sp.simplify(sp.diff(L, s) - cond.gradient[s.name]) == 0


def test_blog_adjoint_equations_read_like_the_blog():
    cond = blog_program().conditions()
    lam = {eq.lhs.name: eq.rhs for eq in cond.adjoint}
    a, c = sp.symbols("a c", real=True)
    l_b, l_c, l_d, l_e, l_f = sp.symbols("lambda_b lambda_c lambda_d lambda_e lambda_f", real=True)
    assert lam["lambda_f"] == 1
    assert lam["lambda_d"] == l_f and lam["lambda_e"] == l_f
    assert sp.simplify(lam["lambda_c"] - (l_d * sp.exp(c) + l_e * sp.cos(c))) == 0
    assert lam["lambda_b"] == l_c
    assert sp.simplify(lam["lambda_a"] - (l_c + 2 * a * l_b)) == 0


def test_latex_reprs():
    prog = blog_program()
    latex = prog._repr_latex_()
    assert latex.startswith("$$") and r"e^{x}" in latex and r"\text{output}" in latex
    cond_latex = prog.conditions()._repr_latex_()
    assert r"\lambda_{c}" in cond_latex and r"\frac{\partial L}{\partial x}" in cond_latex
    assert r"\cos{\left(c \right)}" in cond_latex


def test_implicit_equation_in_residual_form():
    prog = lad.Program()
    x = prog.input("x")
    u = prog.var("u")
    lam_eq = prog.equation(u**3 + u, x)
    y = prog.define("y", 2 * u)
    L = prog.lagrangian()
    assert sp.expand(L - (y - lam_eq * (u**3 + u - x) - prog.multiplier("y") * (y - 2 * u))) == 0
    cond = prog.conditions()
    # ∂L/∂u = 2 λ_y − λ_eq1 (3u² + 1) = 0
    (eq_u,) = [eq for eq in cond.adjoint if eq.lhs.has(lam_eq)]
    assert sp.simplify(eq_u.lhs - sp.diff(L, u)) == 0


def test_conditions_of_a_wide_program(time_limit):
    # 1,500 inputs, z_k = sin(x_k)*x_(k+1), y = Σ z_k: SymPy's diff of the sum visits all
    # its terms for each z_k (35 s here; 388 s for the CLI's 3,000-input file). The
    # conditions must still be ∂L/∂(each variable), checked here at a few of them.
    n = 1500
    text = "".join(f"input x{k}\n" for k in range(n))
    text += "".join(f"z{k} = sin(x{k})*x{(k + 1) % n}\n" for k in range(n))
    prog = lad.parse(text + "y = " + "+".join(f"z{k}" for k in range(n)) + "\n")
    with time_limit(15):
        L = prog.lagrangian()
        cond = prog.conditions()
    sym = {s.name: s for s in L.free_symbols}
    adjoint = {str(eq.lhs): eq.rhs for eq in cond.adjoint}
    for k in (0, 1, 977, n - 1):
        lam = sym[f"lambda_z{k}"]
        assert adjoint[f"lambda_z{k}"] == sym["lambda_y"]
        x_k = sym[f"x{k}"]
        assert cond.gradient[f"x{k}"] == sp.diff(L, x_k)
        want = lam * sp.cos(x_k) * sym[f"x{(k + 1) % n}"] + sym[f"lambda_z{(k - 1) % n}"] * sp.sin(
            sym[f"x{(k - 1) % n}"]
        )
        assert sp.expand(cond.gradient[f"x{k}"] - want) == 0
