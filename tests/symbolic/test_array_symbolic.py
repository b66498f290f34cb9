"""The Lagrangian and conditions of array programs: ⟨Λ, Z − F⟩ and matrix equations.

Checked against values computed another way: the compiled program's multipliers and
gradients (substituted into the matrix equations), and the Lagrangian of the same
program built entry-wise (expanded and differentiated entry by entry).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement

import lagrangian_ad as lad
from lagrangian_ad.core._arrays import ArraySum, Elementwise
from lagrangian_ad.symbolic._array_symbolic import Inner
from lagrangian_ad.using._cli import main

# --------------------------------------------------------------------------- helpers


def entries(m: sp.Basic) -> sp.Matrix:
    """An array expression as the explicit Matrix of its entries (small shapes only)."""
    if isinstance(m, sp.MatrixSymbol):
        return sp.Matrix(*m.shape, lambda i, j: MatrixElement(m, i, j))
    if isinstance(m, sp.MatMul):
        out = sp.Integer(1)
        for a in m.args:
            out = out * (entries(a) if isinstance(a, sp.MatrixExpr) else scalar(a))
        return out
    if isinstance(m, sp.MatAdd):
        return sum((entries(a) for a in m.args[1:]), entries(m.args[0]))
    if isinstance(m, sp.Transpose):
        return entries(m.arg).T
    if isinstance(m, sp.HadamardProduct):
        a, b = (entries(x) for x in m.args)
        return a.multiply_elementwise(b)
    if isinstance(m, Elementwise):
        ops = [entries(o) if isinstance(o, sp.MatrixExpr) else scalar(o) for o in m.operands]
        return sp.Matrix(
            *m.shape,
            lambda i, j: m.function(*(o[i, j] if isinstance(o, sp.MatrixBase) else o for o in ops)),
        )
    return sp.Matrix(m.as_explicit())  # ones, zeros, matrix units, constants


def scalar(e: sp.Basic) -> sp.Expr:
    """A scalar expression with inner products, sums and entries written out."""
    if isinstance(e, Inner):
        a, b = (entries(x) for x in e.args)
        return sp.Add(*[p * q for p, q in zip(a, b, strict=True)])
    if isinstance(e, ArraySum):
        return sp.Add(*entries(e.array))
    if isinstance(e, MatrixElement):
        return e if isinstance(e.parent, sp.MatrixSymbol) else entries(e.parent)[e.i, e.j]
    if not e.args or isinstance(e, sp.MatrixExpr):
        return e
    return e.func(*[scalar(a) for a in e.args])


def explicit(e: sp.Basic) -> sp.Matrix:
    """An array or scalar expression as a Matrix of its entries (1×1 for a scalar)."""
    return entries(e) if isinstance(e, sp.MatrixExpr) else sp.Matrix([[scalar(e)]])


def numeric(e: sp.Basic, values: dict) -> np.ndarray:
    """The value of an array or scalar expression at the given entries."""
    return np.array(explicit(e).xreplace(values).evalf(), dtype=float)


def at(symbols: dict[str, sp.Basic], arrays: dict[str, np.ndarray]) -> dict:
    """Entry -> value for MatrixSymbols (entries) and scalar Symbols, by name."""
    out = {}
    for name, value in arrays.items():
        s, value = symbols[name], np.asarray(value, dtype=float)
        if isinstance(s, sp.MatrixSymbol):
            grid = value.reshape(s.shape)
            for i in range(s.shape[0]):
                for j in range(s.shape[1]):
                    out[MatrixElement(s, i, j)] = sp.Float(grid[i, j])
        else:
            out[s] = sp.Float(float(value))
    return out


def mlp(n_in=3, n_hidden=4, n_out=2):
    prog = lad.Program()
    x = prog.input("x", (n_in,), array=True)
    t = prog.input("t", (n_out,), array=True)
    W1, b1 = prog.input("W1", (n_hidden, n_in), array=True), prog.input("b1", (n_hidden,), True)
    W2, b2 = prog.input("W2", (n_out, n_hidden), array=True), prog.input("b2", (n_out,), True)
    h = prog.define("h", lad.tanh(W1 @ x + b1))
    y = prog.define("y", W2 @ h + b2)
    lse = prog.define("lse", sp.log(lad.sum(lad.exp(y))))
    prog.define("loss", lse - lad.sum(lad.mul(t, y)))
    return prog


def mlp_data(rng, n_in=3, n_hidden=4, n_out=2):
    return {
        "x": rng.normal(size=n_in),
        "t": np.eye(n_out)[1],
        "W1": rng.normal(size=(n_hidden, n_in)),
        "b1": rng.normal(size=n_hidden),
        "W2": rng.normal(size=(n_out, n_hidden)),
        "b2": rng.normal(size=n_out),
    }


def symbols_and_values(prog, sol):
    """Every variable and multiplier by name, with its value in ``sol``."""
    ir = prog.ir
    symbols, values = {}, {}
    for v in (*ir.inputs, *ir.intermediates):
        symbols[v.name] = v.as_sympy()
        values[v.name] = sol.values[v.name]
        if v.kind == "intermediate":
            symbols["lambda_" + v.name] = prog.multiplier(v.name)
            values["lambda_" + v.name] = sol.multipliers[v.name]
    return symbols, values


# --------------------------------------------------------------------------- tests


def test_mlp_lagrangian_has_one_inner_product_per_layer():
    prog = mlp()
    L = prog.lagrangian()
    inner = sorted(L.atoms(Inner), key=str)
    assert [str(i.args[0]) for i in inner] == ["Λ_h", "Λ_y"]
    assert inner[0].args[0] == prog.multiplier("h")  # the multiplier the program hands out
    assert isinstance(prog.multiplier("h"), sp.MatrixSymbol)
    assert prog.multiplier("h").shape == (4, 1)
    assert str(inner[0]) == "⟨Λ_h, h - tanh(W1@x + b1)⟩"
    # the inner product is L's derivative: dL/dΛ_h = −(h − F), entry by entry
    lam = prog.multiplier("h")
    explicit = scalar(L)
    residual = entries(prog.ir.constraints[0].residual)
    for i in range(4):
        assert sp.expand(sp.diff(explicit, lam[i, 0]) + residual[i, 0]) == 0


def test_mlp_conditions_give_the_compiled_multipliers_and_gradients():
    rng = np.random.default_rng(0)
    prog = mlp()
    data = mlp_data(rng)
    sol = prog.compile().solve(data)
    symbols, values = symbols_and_values(prog, sol)
    subs = at(symbols, values)
    cond = prog.conditions()
    for eq in cond.constraints:  # the forward pass holds at the solution
        np.testing.assert_allclose(numeric(eq.lhs, subs), numeric(eq.rhs, subs), atol=1e-12)
    by_lhs = {str(eq.lhs): eq.rhs for eq in cond.adjoint}
    assert set(by_lhs) == {"Λ_h", "Λ_y", "lambda_lse", "lambda_loss"}
    for name in ("h", "y", "lse", "loss"):
        lhs = prog.multiplier(name)
        (rhs,) = [eq.rhs for eq in cond.adjoint if eq.lhs == lhs]
        want = np.reshape(sol.multipliers[name], numeric(rhs, subs).shape)
        np.testing.assert_allclose(numeric(rhs, subs), want, rtol=1e-10, atol=1e-12)
    assert set(cond.gradient) == set(data)
    for name, g in cond.gradient.items():
        got = numeric(g, subs)
        np.testing.assert_allclose(got.reshape(np.shape(sol.grad[name])), sol.grad[name], 1e-10)
    # and the gradient by central differences, independently of both
    eps = 1e-6
    for k in range(3):
        up, down = dict(data), dict(data)
        up["W1"], down["W1"] = data["W1"].copy(), data["W1"].copy()
        up["W1"][k, 1] += eps
        down["W1"][k, 1] -= eps
        fd = (prog.solve(up).value - prog.solve(down).value) / (2 * eps)
        assert numeric(cond.gradient["W1"], subs)[k, 1] == pytest.approx(fd, rel=1e-6)


def test_adjoint_conditions_read_as_vector_jacobian_products():
    prog = mlp()
    cond = prog.conditions()
    text = str(cond)
    assert "Λ_h = W2ᵀ@Λ_y" in text
    assert "dL/dW1 = (Λ_h ∘ (1 - h ∘ h))@xᵀ" in text
    assert "dL/dx = W1ᵀ@(Λ_h ∘ (1 - h ∘ h))" in text
    assert "dL/db2 = Λ_y" in text
    assert "Λ_y = -lambda_loss*t + lambda_lse/sum(exp(y))*exp(y)" in text


def _vanishes(expr: sp.Expr, points: int = 3) -> bool:
    """Whether expr is 0 at random values of its free symbols (to 1e-12): an identity
    check that fails fast where sp.simplify could search for a long time."""
    rng = np.random.default_rng(0)
    symbols = sorted(expr.free_symbols, key=str)
    for _ in range(points):
        at = {v: sp.Float(rng.uniform(-1, 1)) for v in symbols}
        if abs(complex(expr.xreplace(at).evalf())) > 1e-12:
            return False
    return True


def test_lagrangian_expanded_is_the_entrywise_lagrangian():
    """The same network built entry by entry: its Lagrangian equals the inner-product
    one written out, and each entry-wise condition ∂L/∂z equals the entry of the matrix
    condition (up to the forward equations, which the rules use: 1 − h² for tanh')."""
    array = mlp(3, 2, 2)
    entry = lad.Program()
    x = entry.input("x", (3,))
    t = entry.input("t", (2,))
    W1, b1 = entry.input("W1", (2, 3)), entry.input("b1", (2,))
    W2, b2 = entry.input("W2", (2, 2)), entry.input("b2", (2,))
    h = entry.define("h", (W1 * x + b1).applyfunc(sp.tanh))
    y = entry.define("y", W2 * h + b2)
    lse = entry.define("lse", sp.log(sum(sp.exp(v) for v in y)))
    entry.define("loss", lse - sum(a * b for a, b in zip(t, y, strict=True)))

    # MatrixElement(W1, i, j) -> the entry-wise symbol W1[i,j]; Λ_h[i, 0] -> lambda_h[i]
    rename = {}
    for var in (*array.ir.inputs, *array.ir.intermediates):
        flat = entry.ir.inputs + entry.ir.intermediates
        (twin,) = [v for v in flat if v.name == var.name]
        if var.matrix is None:
            rename[var.symbols[0]] = twin.symbols[0]
            continue
        m, lam = var.matrix, (array.multiplier(var.name) if var.kind != "input" else None)
        k = 0
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                rename[MatrixElement(m, i, j)] = twin.symbols[k]
                if lam is not None:
                    rename[MatrixElement(lam, i, j)] = entry.multiplier(twin.symbols[k].name)
                k += 1
    L_array = scalar(array.lagrangian()).xreplace(rename)
    L_entry = entry.lagrangian()
    assert sp.expand(L_array - L_entry) == 0

    inline = {}  # each intermediate entry -> its definition in the inputs
    for c in entry.ir.constraints:
        inline[c.target] = c.expr.xreplace(inline)
    cond = array.conditions()
    for eq in cond.adjoint:  # λ_z = rhs  <=>  ∂L/∂z = −(λ_z − rhs)
        lhs = entries(eq.lhs) if isinstance(eq.lhs, sp.MatrixExpr) else sp.Matrix([[eq.lhs]])
        rhs = (
            entries(eq.rhs) if isinstance(eq.rhs, sp.MatrixExpr) else sp.Matrix([[scalar(eq.rhs)]])
        )
        for a, b in zip(lhs, rhs, strict=True):
            lam = a.xreplace(rename)
            (z,) = [c.target for c in entry.ir.constraints if c.multiplier == lam]
            d = sp.diff(L_entry, z) + (lam - b.xreplace(rename))
            assert _vanishes(d.xreplace(inline)), (z, d)
    for name, g in cond.gradient.items():
        (var,) = [v for v in entry.ir.inputs if v.name == name]
        for s, e in zip(var.symbols, explicit(g), strict=True):
            d = sp.diff(L_entry, s) - e.xreplace(rename)
            assert _vanishes(d.xreplace(inline)), (s, d)


def test_cyclic_array_with_entries_in_a_scalar():
    rng = np.random.default_rng(1)
    prog = lad.Program()
    A = prog.input("A", (3, 3), array=True)
    x = prog.input("x", (3,), array=True)
    u = prog.var("u", (3,), array=True)
    prog.define(u, lad.tanh(A @ u + x))
    prog.define("s", u[0, 0] * sp.sin(u[1, 0]) + lad.sum(lad.exp(u)))
    data = {"A": 0.3 * rng.normal(size=(3, 3)), "x": rng.normal(size=3)}
    sol = prog.solve(data, tol=1e-13)
    symbols, values = symbols_and_values(prog, sol)
    subs = at(symbols, values)
    cond = prog.conditions()
    (eq_u,) = [eq for eq in cond.adjoint if eq.lhs == prog.multiplier("u")]
    # Λ_u appears on both sides (the cycle): the compiled Λ_u satisfies the equation
    assert "E(0,0)" in str(cond) and "E(1,0)" in str(cond)  # the entries' contributions
    np.testing.assert_allclose(numeric(eq_u.rhs, subs), numeric(eq_u.lhs, subs), atol=1e-10)
    for name in ("A", "x"):
        got = numeric(cond.gradient[name], subs).reshape(np.shape(sol.grad[name]))
        np.testing.assert_allclose(got, sol.grad[name], rtol=1e-9, atol=1e-12)
    assert "⟨Λ_u, u - tanh(A@u + x)⟩" in str(prog.lagrangian())


def test_latex_shows_multiplier_arrays_and_matrix_equations():
    prog = mlp()
    L = sp.latex(prog.lagrangian())
    assert r"\left\langle \Lambda_{h}, h - \tanh{\left(W_{1} x + b_{1} \right)} \right\rangle" in L
    tex = prog.conditions()._repr_latex_()
    assert r"\Lambda_{h} &= W_{2}^{T} \Lambda_{y}" in tex
    assert r"\Lambda_{h} \circ \left(1 - h \circ h\right)" in tex
    assert r"\frac{\partial L}{\partial W_{1}}" in tex
    assert "[0, 0]" not in L + tex and "_{0, 0}" not in L + tex


def test_a_784_256_layer_prints_unexpanded_and_fast():
    prog = lad.Program()
    x = prog.input("x", (784,), array=True)
    W1, b1 = prog.input("W1", (256, 784), array=True), prog.input("b1", (256,), array=True)
    h = prog.define("h", lad.tanh(W1 @ x + b1))
    prog.define("s", lad.sum(lad.mul(h, h)))
    start = time.perf_counter()
    L, cond = prog.lagrangian(), prog.conditions()
    printed = [str(L), sp.latex(L), str(cond), cond._repr_latex_()]
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{elapsed:.2f} s to derive and print a 784-256 layer"
    for text in printed:
        assert "W1[0, 0]" not in text and "W_{1}[0, 0]" not in text and len(text) < 2000
    everything = [L, *cond.constraints, *cond.adjoint, *cond.gradient.values()]
    assert not any(e.atoms(MatrixElement) for e in everything)
    assert "dL/dW1 = (Λ_h ∘ (1 - h ∘ h))@xᵀ" in printed[2]


def test_cli_prints_the_array_lagrangian(tmp_path, capsys):
    path = tmp_path / "layer.lad"
    path.write_text(
        "input W[3,4]\ninput x[4]\ninput b[3]\nh = tanh(W @ x + b)\ns = sum(h) + h[0]\n"
    )
    assert main(["lagrangian", str(path)]) == 0
    out = capsys.readouterr().out
    assert "⟨Λ_h, h - tanh(W@x + b)⟩" in out
    assert "dL/dx = Wᵀ@(Λ_h ∘ (1 - h ∘ h))" in out
    assert "Λ_h = lambda_s*E(0,0) + lambda_s*𝟙" in out  # h[0] and sum(h)
    assert main(["lagrangian", str(path), "--latex"]) == 0
    out = capsys.readouterr().out
    assert r"\left\langle \Lambda_{h}" in out and r"W^{T}" in out


def test_multiplier_of_an_array_input_is_an_error():
    prog = mlp()
    with pytest.raises(lad.ProgramError, match="'W1' is an input"):
        prog.multiplier("W1")


def _plain(e: sp.Basic) -> sp.Basic:
    """Entries of MatrixSymbols as plain Symbols named like them (to differentiate)."""
    return e.xreplace({m: sp.Symbol(str(m), real=True) for m in e.atoms(MatrixElement)})


def test_constraints_of_an_array_program_enter_its_conditions():
    """subject_to on an array program: −μ_j ∂g_j/∂v in the matrix conditions, checked
    against the derivatives of the Lagrangian written out entry by entry, and the
    complementarity conditions as for an entry-wise program."""
    prog = lad.Program()
    x = prog.input("x", (3,), array=True)
    W = prog.input("W", (2, 3), array=True)
    h = prog.define("h", lad.tanh(W @ x))
    y = prog.define("y", lad.sum(lad.mul(h, h)) + x[0, 0])
    prog.subject_to(lad.sum(lad.mul(h, h)) <= 1, name="norm")
    prog.subject_to(h[1, 0] >= -0.5, name="low")
    prog.subject_to(sp.Eq(W[0, 0] + y, 1), name="tie")
    cond = prog.conditions()
    assert len(cond.complementarity) == 7  # g ≤ 0, μ ≥ 0, μg = 0 twice; g = 0 once
    assert str(cond.complementarity[1]) == "mu_norm >= 0"

    L = _plain(scalar(prog.lagrangian()))
    assert {"mu_norm", "mu_low", "mu_tie"} <= {s.name for s in L.free_symbols}
    inline = {}  # each intermediate entry -> its definition in the inputs (the rules
    for c in prog.ir.constraints:  # use the forward equations: 1 − h² for tanh')
        targets = explicit(c.target) if isinstance(c.target, sp.MatrixSymbol) else [c.target]
        for z, e in zip(targets, explicit(c.expr), strict=True):
            inline[_plain(z)] = _plain(e).xreplace(inline)

    def vanishes(d: sp.Expr) -> bool:
        return _vanishes(d.xreplace(inline))

    for name, g in cond.gradient.items():
        (var,) = [v for v in prog.ir.inputs if v.name == name]
        for s, e in zip(explicit(var.matrix), explicit(g), strict=True):
            assert vanishes(sp.diff(L, _plain(s)) - _plain(e)), (name, s)
    for eq in cond.adjoint:  # Λ_z = rhs  <=>  ∂L/∂z = rhs − Λ_z
        z = explicit(h) if isinstance(eq.lhs, sp.MatrixExpr) else [y]
        for zk, a, b in zip(z, explicit(eq.lhs), explicit(eq.rhs), strict=True):
            assert vanishes(sp.diff(L, _plain(zk)) - _plain(b - a)), zk
    text = str(cond)
    assert all(f"mu_{n}" in text for n in ("norm", "low", "tie"))
    assert r"\mu_{norm}" in cond._repr_latex_()


def test_the_matrix_condition_vanishes_at_a_constrained_optimum():
    """min Σ x² subject to Σ x ≥ 1 (x of 3 entries), solved by lad.minimize: ∂L/∂x of
    the matrix conditions is 0 there, with μ_L = −μ (L has the sign of a maximization
    of z_N; the result's μ ≥ 0 is that of the minimization, ∇f + μ ∇g = 0)."""
    prog = lad.Program()
    x = prog.input("x", (3,), array=True)
    prog.define("s", lad.sum(lad.mul(x, x)))
    prog.subject_to(lad.sum(x) >= 1)
    res = lad.minimize(prog, x0={"x": np.array([0.9, -0.2, 0.1])})
    assert res.success
    grad = prog.conditions().gradient["x"]
    values = at({"x": x}, {"x": res.x["x"]})
    values[prog.multiplier("s")] = sp.Float(1.0)
    values[prog.multiplier("g1")] = sp.Float(-res.multipliers["g1"])
    np.testing.assert_allclose(numeric(grad, values), 0, atol=1e-7)
    values[prog.multiplier("g1")] = sp.Float(res.multipliers["g1"])  # the other sign: not 0
    assert np.abs(numeric(grad, values)).max() > 1
