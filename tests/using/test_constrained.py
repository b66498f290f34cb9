"""Constraints that are not definitions (`Program.subject_to`) and the interior point.

Known answers come from elsewhere: the published optima of the Hock–Schittkowski
collection, multipliers from a hand KKT solve (SymPy's derivatives of the constraints at
the optimum, NumPy least squares for ∇f + Σ μ_j ∇g_j = 0 over the active constraints),
sensitivities from central differences of re-solves with the data moved, closed-form
optima of small problems.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import sympy as sp

import lagrangian_ad as lad
from benchmarks.hs_problems import PROBLEMS

HS = {p.number: p for p in PROBLEMS}
INFEASIBLE, UNBOUNDED = 5, 6


def _hs(number: int):
    """The problem's program (its text, bounds as constraints) and its start."""
    p = HS[number]
    prog = lad.parse(p.text)
    return p, prog, {f"x{i + 1}": v for i, v in enumerate(p.x0)}


def _hand_multipliers(prog: lad.Program, x: dict[str, float]) -> dict[str, float]:
    """μ of ∇f + Σ μ_j ∇g_j = 0 over the active constraints, by least squares on SymPy's
    gradients at x (inactive constraints: μ = 0)."""
    ir = prog.ir
    symbols = [v.symbols[0] for v in ir.inputs]
    (definition,) = ir.constraints  # the HS programs define only f
    at = {s: x[s.name] for s in symbols}
    grad = lambda e: np.array([float(sp.diff(e, s).subs(at)) for s in symbols])  # noqa: E731
    active = [g for g in ir.subject_to if g.is_equality or abs(float(g.g.subs(at))) <= 1e-6]
    A = np.array([grad(g.g) for g in active]).T
    mu = np.linalg.lstsq(A, -grad(definition.expr), rcond=None)[0]
    out = {g.label: 0.0 for g in ir.subject_to}
    out.update({g.label: float(m) for g, m in zip(active, mu, strict=True)})
    return out


@pytest.mark.parametrize("number", [6, 7, 10, 11, 12, 14, 15, 21, 35, 71])
def test_hock_schittkowski_optimum_and_multipliers(number):
    p, prog, x0 = _hs(number)
    res = lad.minimize(prog, x0)  # method="interior-point": the default with constraints
    assert res.success and res.status == 0, res.message
    assert abs(res.fun - p.fstar) <= 1e-6 * (1 + abs(p.fstar))
    assert res.kkt["feasibility"] <= 1e-8
    assert res.kkt["stationarity"] <= 1e-6 and res.kkt["complementarity"] <= 1e-6
    hand = _hand_multipliers(prog, res.x)
    assert res.multipliers.keys() == hand.keys()
    for name, mu in hand.items():
        assert res.multipliers[name] == pytest.approx(mu, abs=1e-5, rel=1e-5), name
    inequalities = [g.label for g in prog.ir.subject_to if not g.is_equality]
    assert all(res.multipliers[k] >= 0 for k in inequalities)


def test_hs71_solution_point():
    _, prog, x0 = _hs(71)
    res = lad.minimize(prog, x0)
    # the published solution (Hock & Schittkowski 1981)
    want = [1.0, 4.7429994, 3.8211503, 1.3794082]
    assert [res.x[f"x{i}"] for i in range(1, 5)] == pytest.approx(want, abs=1e-6)


def test_bounds_become_inequalities_of_the_same_mechanism():
    # HS 21 with its bounds given as the ``bounds`` option instead of subject_to lines
    prog = lad.Program()
    x1, x2 = prog.input("x1"), prog.input("x2")
    prog.define("f", 0.01 * x1**2 + x2**2 - 100)
    prog.subject_to(10 * x1 - x2 - 10 >= 0)
    bounds = {"x1": (2, 50), "x2": (-50, 50)}
    res = lad.minimize(prog, {"x1": -1.0, "x2": -1.0}, options={"bounds": bounds})
    assert res.success and res.fun == pytest.approx(-99.96, abs=1e-7)
    assert res.x["x1"] == pytest.approx(2.0, abs=1e-7)
    lower, upper = res.bound_multipliers["x1"]
    # at x* = (2, 0): ∇f = (0.04, 0) = μ_lower (1, 0), the general constraint inactive
    assert lower == pytest.approx(0.04, abs=1e-7) and upper == pytest.approx(0, abs=1e-7)
    assert res.multipliers["g1"] == pytest.approx(0, abs=1e-7)


def test_constraint_on_an_intermediate():
    # min x² + y² subject to z = x y >= 1: x = y = 1, f = 2, and ∇f = μ ∇z gives μ = 2
    prog = lad.Program()
    x, y = prog.input("x"), prog.input("y")
    z = prog.define("z", x * y)
    prog.define("f", x**2 + y**2)
    prog.subject_to(z >= 1, name="product")
    res = lad.minimize(prog, {"x": 2.0, "y": 0.7})
    assert res.success
    assert (res.x["x"], res.x["y"], res.fun) == pytest.approx((1, 1, 2), abs=1e-7)
    assert res.multipliers["product"] == pytest.approx(2, abs=1e-6)
    assert res.constraints["product"] == pytest.approx(0, abs=1e-7)  # g = 1 − z, active


def test_equality_between_intermediates_and_entries_of_an_array():
    # min Σ X_i² subject to a = X0 + X1 equal to b = 2 X2 and X0 + X1 + X2 = 3:
    # by hand X = (1, 1, 1), and the KKT system 2X + μ1 (1, 1, −2) + μ2 (1, 1, 1) = 0
    # gives μ1 = 0, μ2 = −2
    prog = lad.Program()
    X = prog.input("X", shape=(3,))
    a = prog.define("a", X[0] + X[1])
    b = prog.define("b", 2 * X[2])
    prog.define("f", X[0] ** 2 + X[1] ** 2 + X[2] ** 2)
    prog.subject_to(sp.Eq(a, b))
    prog.subject_to(sp.Eq(X[0] + X[1] + X[2], 3))
    res = lad.minimize(prog, {"X": np.array([3.0, -1.0, 0.5])})
    assert res.success
    np.testing.assert_allclose(res.x["X"], [1, 1, 1], atol=1e-8)
    assert res.multipliers["g1"] == pytest.approx(0, abs=1e-7)
    assert res.multipliers["g2"] == pytest.approx(-2, abs=1e-7)


def test_sum_of_an_array_variable():
    # array program: min ‖x‖² subject to lad.sum(x) >= 3 (n = 3): x = 1, f = 3, μ = 2
    prog = lad.Program()
    x = prog.input("x", shape=(3,), array=True)
    prog.define("f", lad.sum(lad.mul(x, x)))
    prog.subject_to(lad.sum(x) >= 3)
    res = lad.minimize(prog, {"x": np.array([0.2, -1.0, 0.5])})
    assert res.success
    np.testing.assert_allclose(res.x["x"], [1, 1, 1], atol=1e-7)
    assert res.fun == pytest.approx(3, abs=1e-7)
    assert res.multipliers["g1"] == pytest.approx(2, abs=1e-6)


def _resolve(prog, x0, fixed, sense=lad.minimize):
    res = sense(prog, x0, fixed=fixed, tol=1e-10)
    assert res.success, res.message
    return res


@pytest.mark.parametrize("sense", [lad.minimize, lad.maximize])
def test_sensitivity_equals_central_difference_of_resolves(sense):
    # f = ±((x − 2)² + (y − 1)² + p x y) subject to x² + y² <= r and x + y == c:
    # ∂f*/∂(r, c, p) from the multipliers (envelope theorem) against re-solving
    s = 1 if sense is lad.minimize else -1
    prog = lad.Program()
    x, y = prog.input("x"), prog.input("y")
    r, c, p = prog.input("r"), prog.input("c"), prog.input("p")
    prog.define("f", s * ((x - 2) ** 2 + (y - 1) ** 2 + p * x * y))
    prog.subject_to(x**2 + y**2 <= r, name="disc")
    prog.subject_to(sp.Eq(x + 2 * y, c), name="line")
    data = {"r": 1.0, "c": 0.5, "p": 0.3}
    x0 = {"x": 0.1, "y": 0.1}
    res = _resolve(prog, x0, data, sense)
    assert res.multipliers["disc"] > 1e-3  # active: the difference is not trivially 0
    h = 1e-5
    for name in data:
        up = _resolve(prog, x0, {**data, name: data[name] + h}, sense).fun
        down = _resolve(prog, x0, {**data, name: data[name] - h}, sense).fun
        assert res.sensitivity[name] == pytest.approx((up - down) / (2 * h), abs=1e-6), name


def test_sensitivity_has_the_shape_of_the_data():
    # min Σ (x_i − t_i)² subject to Σ x_i <= 1 for data t of shape (2, 2)
    prog = lad.Program()
    X, T = prog.input("X", shape=(2, 2)), prog.input("T", shape=(2, 2))
    prog.define("f", sum((X[i, j] - T[i, j]) ** 2 for i in range(2) for j in range(2)))
    prog.subject_to(X[0, 0] + X[0, 1] + X[1, 0] + X[1, 1] <= 1)
    t = np.array([[1.0, 0.5], [0.25, 0.75]])
    res = lad.minimize(prog, {"X": np.zeros((2, 2))}, fixed={"T": t})
    assert res.sensitivity["T"].shape == (2, 2)
    # by hand: x = t − (Σt − 1)/4, μ = (Σt − 1)/2, ∂f*/∂t = −2(x − t) = μ for every entry
    mu = (t.sum() - 1) / 2
    np.testing.assert_allclose(res.x["X"], t - mu / 2, atol=1e-8)
    np.testing.assert_allclose(res.sensitivity["T"], np.full((2, 2), mu), atol=1e-7)


def test_maximize_convention():
    # max −(x − 3)² subject to x <= b (b = 1): x = 1, ∇F = μ ∇g gives μ = 4 >= 0, and
    # ∂F*/∂b = 4 (F* = −(b − 3)²)
    prog = lad.Program()
    x, b = prog.input("x"), prog.input("b")
    prog.define("F", -((x - 3) ** 2))
    prog.subject_to(x <= b)
    res = lad.maximize(prog, {"x": 0.0}, fixed={"b": 1.0})
    assert res.success and res.fun == pytest.approx(-4, abs=1e-7)
    assert res.multipliers["g1"] == pytest.approx(4, abs=1e-6)
    assert res.sensitivity["b"] == pytest.approx(4, abs=1e-6)


def test_infeasible_problem():
    prog = lad.Program()
    x, y = prog.input("x"), prog.input("y")
    prog.define("f", x + y)
    prog.subject_to(x**2 + y**2 <= 1)
    prog.subject_to(x + y >= 3)
    res = lad.minimize(prog, {"x": 0.3, "y": -0.2})
    assert not res.success and res.status == INFEASIBLE
    assert "nfeasible" in res.message
    # it stops where ½ Σ violation² is stationary: by symmetry x = y = t with
    # 8t (2t² − 1) = 4 (3 − 2t), i.e. t³ = 3/4; the largest violation is 3 − 2t
    t = 0.75 ** (1 / 3)
    assert (res.x["x"], res.x["y"]) == pytest.approx((t, t), abs=1e-6)
    assert res.maxcv == pytest.approx(3 - 2 * t, abs=1e-6)


def test_unbounded_problem():
    prog = lad.Program()
    x, y = prog.input("x"), prog.input("y")
    prog.define("f", -x - y**2)
    prog.subject_to(x - y >= 0)
    res = lad.minimize(prog, {"x": 1.0, "y": 0.0})
    assert not res.success and res.status == UNBOUNDED
    assert "nbounded" in res.message


def test_history_and_callback():
    _, prog, x0 = _hs(71)
    seen = []
    res = lad.minimize(prog, x0, callback=lambda r: seen.append(r.nit))
    assert len(res.history) == res.nit == len(seen)
    assert res.history[-1]["kkt_residual"] <= 1e-8
    # stopping from the callback: status 3, never success
    res = lad.minimize(prog, x0, callback=lambda r: r.nit >= 2)
    assert res.status == 3 and not res.success and res.nit == 2


# --------------------------------------------------------------------------- the program


def test_lagrangian_and_conditions_include_the_constraints():
    prog = lad.Program()
    x, y = prog.input("x"), prog.input("y")
    z = prog.define("z", x * y)
    prog.define("f", x**2 + y**2)
    mu = prog.subject_to(z >= 1, name="product")
    assert mu == sp.Symbol("mu_product", real=True) == prog.multiplier("product")
    L = prog.lagrangian()
    lam_z, lam_f = prog.multiplier("z"), prog.multiplier("f")
    f = prog.ir.output
    want = f - lam_z * (z - x * y) - lam_f * (f - x**2 - y**2) - mu * (1 - z)
    assert sp.simplify(L - want) == 0
    cond = prog.conditions()
    assert sp.Le(1 - z, 0, evaluate=False) in cond.complementarity
    assert sp.Eq(mu * (1 - z), 0, evaluate=False) in cond.complementarity
    adjoint = {e.lhs: e.rhs for e in cond.adjoint}
    assert sp.simplify(adjoint[lam_z] - mu) == 0  # λ_z = μ (z is read only by g)
    assert "mu_{product}" in cond._repr_latex_() and r"\ge" in prog._repr_latex_()


def test_text_format_round_trip():
    text = (
        "input x, y\n"
        "z = x*y\n"
        "f = (x - 2)**2 + (y - 1)**2\n"
        "subject to x**2 + y**2 <= 1\n"
        "subject to cap: z >= 0.1\n"
        "subject to x + y == 1  # a comment\n"
    )
    prog = lad.parse(text)
    assert [(g.label, g.relation) for g in prog.ir.subject_to] == [
        ("g1", "<="),
        ("cap", ">="),
        ("g3", "=="),
    ]
    again = lad.parse(str(prog))
    assert str(again) == str(prog)
    assert again.ir.subject_to == prog.ir.subject_to


@pytest.mark.parametrize(
    ("line", "column", "words"),
    [
        ("subject to x < 1", 14, "strict"),
        ("subject to x = 1", 14, "=="),
        ("subject to x <= 1 <= 2", 19, "second relation"),
        ("subject to q <= 1", 12, "undefined name 'q'"),
        ("subject to 1 <= 2", 1, "involves no variable"),
        ("subject to x <=", 16, "nothing on the right"),
        ("subject to", 11, "expected a relation"),
        ("subject to exp: x <= 1", 12, "cannot name a constraint"),
    ],
)
def test_parse_errors_give_line_and_column(line, column, words):
    with pytest.raises(lad.ParseError, match=words) as err:
        lad.parse(f"input x\ny = x\n{line}\n")
    assert (err.value.line, err.value.column) == (3, column)


def test_duplicate_constraint_name_in_text():
    with pytest.raises(lad.ParseError, match="already in use") as err:
        lad.parse("input x\ny = x\nsubject to a: x <= 1\nsubject to a: x >= 0\n")
    assert err.value.line == 4


@pytest.mark.parametrize(
    ("relation", "words"),
    [
        (lambda x: x + 1, "not a relation"),
        (lambda x: x < 1, "strict inequality"),
        (lambda x: x > 1, "strict inequality"),
        (lambda x: sp.Eq(1, 1), "constant True"),
        (lambda x: True, "constant True"),
        (lambda x: sp.Symbol("q") <= 1, "q is not a variable"),
        (lambda x: sp.Ne(x, 1), "not a constraint"),
        (lambda x: sp.Matrix([x, x]), "not a relation"),
    ],
)
def test_bad_relations_are_program_errors_naming_the_constraint(relation, words):
    prog = lad.Program()
    x = prog.input("x")
    prog.define("y", x**2)
    with pytest.raises(lad.ProgramError, match=words) as err:
        prog.subject_to(relation(x), name="mine")
    assert "'mine'" in str(err.value)


def test_names_of_constraints():
    prog = lad.Program()
    x = prog.input("x")
    prog.define("g1", x**2)  # a variable already takes the first default name
    prog.subject_to(x <= 1)
    prog.subject_to(x >= -1, name="low")
    assert [g.label for g in prog.ir.subject_to] == ["g2", "low"]
    for name in ("low", "x", "g1"):
        with pytest.raises(lad.ProgramError, match="already in use"):
            prog.subject_to(x <= 2, name=name)
    with pytest.raises(lad.ProgramError, match="already names a constraint"):
        prog.input("low")


def test_other_methods_refuse_constraints():
    prog = lad.Program()
    x, t = prog.input("x"), prog.input("t")
    prog.define("f", (x - t) ** 2)
    prog.subject_to(x >= 0)
    for method in ("lbfgs", "gradient", "newton-kkt", "augmented-lagrangian"):
        with pytest.raises(lad.ProgramError, match="interior-point"):
            lad.minimize(prog, {"x": 1.0}, fixed={"t": 0.5}, method=method)


def test_batched_data_one_constraint_per_sample_by_hand():
    # min Σ_b (x − t_b)² subject to x >= 0 (one constraint: it reads no data) and
    # x t_b <= 0.3 (one per sample). t = (0.5, 1): x = 0.3, only cap[1] active, and
    # ∇f + μ t_1 = 0 gives μ = 1.8; ∂f*/∂t_b = −2(x − t_b) + μ_b x = (0.4, 1.94)
    prog = lad.Program()
    x, t = prog.input("x"), prog.input("t")
    prog.define("f", (x - t) ** 2)
    prog.subject_to(x >= 0)
    prog.subject_to(x * t <= 0.3, name="cap")
    res = lad.minimize(prog, {"x": 1.0}, fixed={"t": np.array([0.5, 1.0])})
    assert res.success, res.message
    assert res.x["x"] == pytest.approx(0.3, abs=1e-7) and res.fun == pytest.approx(0.53)
    assert isinstance(res.multipliers["g1"], float) and res.multipliers["g1"] < 1e-7
    assert res.multipliers["cap"].shape == (2,) and res.constraints["cap"].shape == (2,)
    np.testing.assert_allclose(res.multipliers["cap"], [0, 1.8], atol=1e-6)
    np.testing.assert_allclose(res.constraints["cap"], [-0.15, 0], atol=1e-7)
    np.testing.assert_allclose(res.sensitivity["t"], [0.4, 1.94], atol=1e-6)


# A network on a set of points with a bound on its output at every point: one constraint
# per sample, against independent solvers and a hand KKT check.
POINTS = np.linspace(-1.0, 1.0, 12)
TARGETS = 1.2 * np.sin(2.5 * POINTS)
BOUND = 0.8
RIDGE = 1e-2
THETA0 = np.array([0.5, -0.3, 0.8, 0.2, 0.4, -0.6, 0.3, -0.2, 0.5, 0.1])


def _net(theta, s):
    """y(s) = Σ_k v_k tanh(w_k s + b_k) + c for three hidden units (NumPy, by hand)."""
    w, b, v, c = theta[0:3], theta[3:6], theta[6:9], theta[9]
    return np.tanh(np.outer(s, w) + b) @ v + c


def _objective(theta):
    return np.sum((_net(theta, POINTS) - TARGETS) ** 2) + RIDGE * np.sum(theta**2)


def _net_program() -> lad.Program:
    prog = lad.Program()
    theta = prog.input("theta", shape=(10,))
    s, t = prog.input("s"), prog.input("t")
    h = [prog.define(f"h{k}", sp.tanh(theta[k] * s + theta[3 + k])) for k in range(3)]
    y = prog.define("y", sum(theta[6 + k] * h[k] for k in range(3)) + theta[9])
    # a ridge term keeps the fit well posed (without it the weights grow without bound)
    prog.define("loss", (y - t) ** 2 + RIDGE / POINTS.size * sum(theta[k] ** 2 for k in range(10)))
    prog.subject_to(y <= BOUND, name="upper")
    prog.subject_to(y >= -BOUND, name="lower")
    return prog


@pytest.fixture(scope="module")
def net_result():
    prog = _net_program()
    res = lad.minimize(
        prog, {"theta": THETA0}, fixed={"s": POINTS, "t": TARGETS}, options={"tol": 1e-10}
    )
    assert res.success, res.message
    return res


def _fd_grad(fun, theta, h=1e-6):
    e = np.eye(theta.size)
    return np.array(
        [(fun(theta + h * e[k]) - fun(theta - h * e[k])) / (2 * h) for k in range(theta.size)]
    )


def test_batched_constraints_hand_kkt(net_result):
    res = net_result
    theta = res.x["theta"]
    mu_u, mu_l = res.multipliers["upper"], res.multipliers["lower"]
    assert mu_u.shape == mu_l.shape == POINTS.shape
    y = _net(theta, POINTS)
    g_u, g_l = y - BOUND, -BOUND - y
    assert np.max(g_u) <= 1e-8 and np.max(g_l) <= 1e-8  # feasible at every point
    assert np.min(mu_u) >= 0 and np.min(mu_l) >= 0
    assert np.max(np.abs(mu_u * g_u)) <= 1e-7 and np.max(np.abs(mu_l * g_l)) <= 1e-7
    active = (mu_u > 1e-6) | (mu_l > 1e-6)
    assert 0 < active.sum() < POINTS.size  # some bounds bind, not all
    # stationarity ∇f + Σ_b μ_b ∇g_b = 0 with every gradient by central differences of
    # the NumPy network (∇g_u = ∇y_b, ∇g_l = −∇y_b)
    grad_f = _fd_grad(_objective, theta)
    grad_y = np.array(
        [
            _fd_grad(lambda th, b=b: _net(th, POINTS[b : b + 1])[0], theta)
            for b in range(POINTS.size)
        ]
    )
    stationarity = grad_f + (mu_u - mu_l) @ grad_y
    assert np.max(np.abs(stationarity)) <= 1e-6
    np.testing.assert_allclose(res.constraints["upper"], g_u, atol=1e-9)


def test_batched_constraints_against_ipopt_and_slsqp(net_result):
    ca = pytest.importorskip("casadi")
    res = net_result
    # IPOPT on the same problem written in CasADi, from the same start
    th = ca.SX.sym("theta", 10)
    y = ca.vertcat(
        *[
            sum(th[6 + k] * ca.tanh(th[k] * float(s) + th[3 + k]) for k in range(3)) + th[9]
            for s in POINTS
        ]
    )
    f = ca.sumsqr(y - ca.DM(TARGETS)) + RIDGE * ca.sumsqr(th)
    solver = ca.nlpsol(
        "s",
        "ipopt",
        {"x": th, "f": f, "g": y},
        {"ipopt.print_level": 0, "print_time": 0, "ipopt.tol": 1e-10},
    )
    out = solver(x0=THETA0, lbg=-BOUND, ubg=BOUND)
    assert solver.stats()["success"]
    assert res.fun == pytest.approx(float(out["f"]), abs=1e-7)
    # the same network (up to the sign symmetry of tanh units: compare the outputs)
    np.testing.assert_allclose(
        _net(res.x["theta"], POINTS), _net(np.asarray(out["x"]).ravel(), POINTS), atol=1e-6
    )
    lam = np.asarray(out["lam_g"]).ravel()  # IPOPT: ∇f + Jᵀλ = 0, λ > 0 at upper bounds
    np.testing.assert_allclose(res.multipliers["upper"], np.maximum(lam, 0), atol=1e-6)
    np.testing.assert_allclose(res.multipliers["lower"], np.maximum(-lam, 0), atol=1e-6)
    # SciPy's SLSQP from lad's optimum stays there (a local solution of the same NLP)
    cons = [
        {"type": "ineq", "fun": lambda th: BOUND - _net(th, POINTS)},
        {"type": "ineq", "fun": lambda th: _net(th, POINTS) + BOUND},
    ]
    sl = scipy.optimize.minimize(
        _objective,
        res.x["theta"],
        method="SLSQP",
        constraints=cons,
        options={"ftol": 1e-12, "maxiter": 200},
    )
    assert sl.success and sl.fun == pytest.approx(res.fun, abs=1e-7)


@pytest.mark.parametrize("solver", ["dense", "sparse"])
def test_sparse_and_dense_kkt_solves_agree(net_result, solver):
    prog = _net_program()
    res = lad.minimize(
        prog,
        {"theta": THETA0},
        fixed={"s": POINTS, "t": TARGETS},
        options={"tol": 1e-10, "linear_solver": solver},
    )
    assert res.success, res.message
    assert res.fun == pytest.approx(net_result.fun, abs=1e-10)
    # the same network (the two may end at units swapped or sign-flipped: the fit is
    # symmetric under those, and rounding differences pick one)
    np.testing.assert_allclose(
        _net(res.x["theta"], POINTS), _net(net_result.x["theta"], POINTS), atol=1e-7
    )
    for name in ("upper", "lower"):
        np.testing.assert_allclose(res.multipliers[name], net_result.multipliers[name], atol=1e-7)


def test_sparse_kkt_on_hock_schittkowski_problems():
    # the sparse factorization takes the same steps as the dense one on small problems
    for number in (6, 21, 28, 35, 71):
        _, prog, x0 = _hs(number)
        dense = lad.minimize(prog, x0, options={"linear_solver": "dense"})
        sparse = lad.minimize(prog, x0, options={"linear_solver": "sparse"})
        assert sparse.success and sparse.nit == dense.nit, number
        assert sparse.fun == pytest.approx(dense.fun, abs=1e-9)


def test_batched_optimized_inputs_projection_onto_the_disc():
    # one variable point x_b per sample (x0 with a batch axis): min Σ_b ‖x_b − p_b‖²
    # subject to ‖x_b‖² <= 1: x_b = p_b / max(1, ‖p_b‖), μ_b = max(0, ‖p_b‖ − 1)
    rng = np.random.default_rng(3)
    P = rng.normal(size=(40, 2)) * 1.2
    prog = lad.Program()
    X, Pp = prog.input("X", shape=(2,)), prog.input("P", shape=(2,))
    prog.define("f", (X[0] - Pp[0]) ** 2 + (X[1] - Pp[1]) ** 2)
    prog.subject_to(X[0] ** 2 + X[1] ** 2 <= 1, name="disc")
    norms = np.linalg.norm(P, axis=1)
    for solver in ("dense", "sparse"):
        res = lad.minimize(
            prog, {"X": np.zeros((40, 2))}, fixed={"P": P}, options={"linear_solver": solver}
        )
        assert res.success, res.message
        np.testing.assert_allclose(res.x["X"], P / np.maximum(1, norms)[:, None], atol=1e-7)
        np.testing.assert_allclose(res.multipliers["disc"], np.maximum(0, norms - 1), atol=1e-6)


def test_batched_errors_name_the_constraint_and_sample():
    prog = lad.Program()
    x, t = prog.input("x"), prog.input("t")
    prog.define("f", (x - t) ** 2)
    prog.subject_to(sp.log(t) * x <= 1, name="logcap")
    with pytest.raises(lad.ProgramError, match=r"'logcap\[2\]' is not finite"):
        lad.minimize(prog, {"x": 1.0}, fixed={"t": np.array([0.5, 1.0, -1.0])})
    with pytest.raises(lad.ProgramError, match="linear_solver"):
        lad.minimize(prog, {"x": 1.0}, fixed={"t": 0.5}, options={"linear_solver": "ma57"})


def test_interior_point_without_constraints_is_newton_with_bounds():
    # no subject_to: the default stays L-BFGS; interior-point runs on the bounds alone
    prog = lad.Program()
    x, y = prog.input("x"), prog.input("y")
    prog.define("f", (1 - x) ** 2 + 100 * (y - x**2) ** 2)
    res = lad.minimize(
        prog, {"x": -1.2, "y": 1.0}, method="interior-point", options={"bounds": {"x": (None, 0.5)}}
    )
    # on x <= 0.5 the minimum of Rosenbrock's function is at (0.5, 0.25), f = 0.25
    assert res.success and res.fun == pytest.approx(0.25, abs=1e-8)
    assert res.x["y"] == pytest.approx(0.25, abs=1e-7)


def test_array_program_constrained_optimum_and_its_conditions():
    """min Σ x² subject to Σ x ≥ 1 over an array x: the Lagrangian carries −μ (1 − Σ x),
    the conditions its complementarity, and the optimum is x = 1/3, μ = 2/3 by hand
    (2 x = μ); tests/symbolic/test_array_symbolic.py evaluates the matrix condition
    there."""
    prog = lad.Program()
    x = prog.input("x", (3,), array=True)
    prog.define("s", lad.sum(lad.mul(x, x)))
    prog.subject_to(lad.sum(x) >= 1)
    mu = prog.multiplier("g1")
    assert mu in prog.lagrangian().free_symbols
    res = lad.minimize(prog, x0={"x": np.zeros(3)})
    np.testing.assert_allclose(res.x["x"], np.full(3, 1 / 3), atol=1e-8)
    assert res.multipliers["g1"] == pytest.approx(2 / 3, abs=1e-7)
    cond = prog.conditions()
    assert [str(r) for r in cond.complementarity] == [
        "1 - sum(x) <= 0",
        "mu_g1 >= 0",
        "Eq(mu_g1*(1 - sum(x)), 0)",
    ]


def test_structured_hessian_equals_the_one_from_unit_vectors():
    # per-sample optimized inputs X_b beside shared θ: the block Hessian from
    # n_θ + size(X) tangents is the Hessian from all n unit vectors
    from lagrangian_ad.using._optimize import _Problem, _ReducedNLP

    rng = np.random.default_rng(0)
    prog = lad.Program()
    X, P, th = prog.input("X", shape=(2,)), prog.input("P", shape=(2,)), prog.input("th", (2,))
    prog.define(
        "f",
        (X[0] - P[0] * th[0]) ** 2 + sp.sin(X[1] * th[1]) + X[0] ** 2 * X[1] * th[0] + th[0] ** 2,
    )
    prog.subject_to(X[0] ** 2 + X[1] ** 2 * th[1] <= 1, name="disc")
    prog.subject_to(th[0] ** 2 + th[1] <= 3)
    x0 = {"X": rng.normal(size=(5, 2)), "th": rng.normal(size=2)}
    problem = _Problem(prog, x0, {"P": rng.normal(size=(5, 2))}, "min", {})
    nlp = _ReducedNLP(problem, None)
    assert nlp.structured and nlp.shapes == [(5,), ()] and nlp.m_rows == 6
    v, y = problem.pack(problem.x0), rng.normal(size=nlp.is_eq.size)
    W = nlp.hess(v, 0.7, y).toarray()
    nlp.structured = False
    np.testing.assert_allclose(W, nlp.hess(v, 0.7, y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("number", [9, 30, 47])
def test_line_search_failure_at_a_feasible_point_is_retried(number):
    # a line search without backtracking or corrections fails at feasible points of
    # these problems; the filter reset with a more regularized step recovers (without
    # the retries the run stalls there, in a restoration that has nothing to restore)
    p, prog, x0 = _hs(number)
    crippled = {"max_backtracks": 0, "soc": False}
    stalled = lad.minimize(prog, x0, options={**crippled, "feasible_retries": 0})
    assert stalled.status == 2 and stalled.maxcv <= 1e-8
    res = lad.minimize(prog, x0, options=crippled)
    assert res.success, res.message
    assert abs(res.fun - p.fstar) <= 1e-6 * (1 + abs(p.fstar))
