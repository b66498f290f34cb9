"""The blog's example end to end: what ``lagrangian-ad`` prints with no arguments.

    f(x) = exp(exp(x) + exp(x)²) + sin(exp(x) + exp(x)²)
    a = exp(x)   b = a²   c = a + b   d = exp(c)   e = sin(c)   f = d + e

(Tim Vieira, "Backprop is not just the chain rule", 2017; LeCun 1988.)
"""

from __future__ import annotations

import math

import sympy as sp

from ..building._program import Program

__all__ = ["blog_program", "run_demo"]


def blog_program() -> Program:
    """The blog's program of six intermediates."""
    prog = Program()
    x = prog.input("x")
    a = prog.define("a", sp.exp(x))
    b = prog.define("b", a**2)
    c = prog.define("c", a + b)
    d = prog.define("d", sp.exp(c))
    e = prog.define("e", sp.sin(c))
    prog.define("f", d + e)
    return prog


def run_demo(x0: float = 0.5) -> bool:
    """Print the example end to end; return whether every check passed."""
    prog = blog_program()
    x = sp.Symbol("x")
    flat = sp.exp(sp.exp(x) + sp.exp(x) ** 2) + sp.sin(sp.exp(x) + sp.exp(x) ** 2)

    print("lagrangian-ad: backprop is the method of Lagrange multipliers\n")
    print(f"The function   f(x) = {flat}")
    print(f"Its derivative df/dx = {sp.diff(flat, x)}")
    print("  (the flat derivative repeats exp(x) + exp(2x) in every term)\n")
    print("The program (one constraint per intermediate):")
    print("  " + str(prog).rstrip().replace("\n", "\n  ") + "\n")
    print(f"Its Lagrangian:\n  L = {prog.lagrangian()}\n")
    print("Stationarity conditions, ∇L = 0:")
    print("  " + str(prog.conditions()).replace("\n", "\n  ") + "\n")

    fn = prog.compile()
    print("The generated multiplier pass (the forward program run backwards):")
    print("  " + fn.adjoint_source.rstrip().replace("\n", "\n  ") + "\n")

    sol = fn.solve({"x": x0})
    print(f"At x = {x0}:")
    print(f"  {'variable':<10}{'value':>24}{'multiplier λ':>24}")
    print(f"  {'x':<10}{sol.values['x']:>24.16g}{'(input)':>24}")
    for name in "abcdef":
        print(f"  {name:<10}{sol.values[name]:>24.16g}{sol.multipliers[name]:>24.16g}")

    exact = float(sp.diff(flat, x).subs(x, x0).evalf(30))
    a, c = sol.values["a"], sol.values["c"]
    lam_c = math.exp(c) + math.cos(c)
    hand = lam_c * (1 + 2 * a) * math.exp(x0)
    grad = sol.grad["x"]
    print(f"\n  df/dx from the multipliers  ∂L/∂x = λ_a·exp(x) = {grad:.16g}")
    print(f"  df/dx by hand (exp(c)+cos(c))(1+2a)exp(x)   = {hand:.16g}")
    print(f"  df/dx from SymPy's flat derivative           = {exact:.16g}")
    rel = abs(grad - exact) / abs(exact)
    ok = rel < 1e-12 and abs(hand - exact) / abs(exact) < 1e-12
    print(f"  relative difference: {rel:.1e}  -> {'agree' if ok else 'DISAGREE'}")
    return ok
