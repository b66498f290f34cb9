"""The benchmark suite's problems and peers, at tiny sizes: every gradient agrees with ours.

This keeps ``benchmarks/`` from rotting. Each available implementation runs each problem
at batch 1 (one sample, no batch axis) and at a batch of 3, and its value and gradient
must match lagrangian_ad's to 1e-8 — or, where lagrangian_ad cannot run the problem yet
(and for the equilibrium models, whose reference is the dense implicit solve), the
hand-written NumPy adjoint's, which lagrangian_ad itself is checked against and which is
checked against central differences here. Peers that are not installed, and
lagrangian_ad's array programs until the array API is there, are skipped with the
reason. Speed is never asserted.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import problems
from benchmarks.implementations import IMPLEMENTATIONS, Unsupported, load
from benchmarks.runner import (
    TOLERANCE,
    RunConfig,
    check,
    parse_args,
    rel_error,
    run_row,
)

# The benchmark problems, shrunk where their size only costs time.
SMALL = {
    "blog": problems.blog,
    "mlp": problems.mlp,
    "chain": lambda: problems.chain(steps=50),
    "equilibrium": lambda: problems.equilibrium(n=12, d=4),
    "mlp784": lambda: problems.mlp784(n_in=12, hidden=8, classes=4),
    "deq": lambda: problems.deq(n=10, d=4),
}
BATCHES = (1, 3)

_results: dict[tuple[str, str, int], object] = {}


def _result(impl: str, name: str, batch: int):
    """(value, grads) of one implementation, or the Unsupported it raised (cached)."""
    key = (impl, name, batch)
    if key not in _results:
        module, info = load(impl)
        if module is None:
            _results[key] = Unsupported(info)
        else:
            problem = SMALL[name]()
            builder = module.BUILDERS.get(problem.kind)
            try:
                if builder is None:
                    raise Unsupported("n/a")
                bench = builder(problem, problem.inputs(batch), batch)
                _results[key] = bench.to_numpy(bench.value_and_grad())
            except Unsupported as exc:
                _results[key] = exc
    return _results[key]


def _reference(impl: str, name: str, batch: int):
    """What ``impl`` is checked against: lagrangian_ad, else (and for ours) NumPy by hand."""
    if impl != "lad" and SMALL[name]().reference == "lad":
        ours = _result("lad", name, batch)
        if not isinstance(ours, Unsupported):
            return "lad", ours
    return "numpy", _result("numpy", name, batch)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("name", list(SMALL))
def test_gradient_agrees_with_reference(name, impl, batch):
    got = _result(impl, name, batch)
    if isinstance(got, Unsupported):
        pytest.skip(f"{IMPLEMENTATIONS[impl].label} on {name}: {got}")
    if impl == "numpy":
        ref_name, ref = "lad", _result("lad", name, batch)
        if isinstance(ref, Unsupported):
            pytest.skip(f"NumPy by hand is the reference for {name}")
    else:
        ref_name, ref = _reference(impl, name, batch)
    problem = SMALL[name]()
    inputs = problem.inputs(batch)
    value, grads = got
    assert np.shape(value) == (() if batch == 1 else (batch,))
    wanted = set(inputs) if problem.wrt is None else set(problem.wrt)  # all, or the weights
    assert set(grads) == wanted
    for key in wanted:
        assert np.shape(grads[key]) == np.shape(inputs[key]), key
    err = rel_error(ref, got)
    assert err <= TOLERANCE, f"{impl} vs {ref_name} on {name}, batch {batch}: rel. error {err:.2e}"


def _central_difference(problem, inputs, key, direction, eps=1e-6):
    """d/dε of Σ value(inputs with inputs[key] + ε direction), by central differences."""
    module = load("numpy")[0]
    builder = module.BUILDERS[problem.kind]

    def total(step):
        moved = {**inputs, key: inputs[key] + step * direction}
        return float(np.sum(builder(problem, moved, 3).value()))

    return (total(eps) - total(-eps)) / (2 * eps)


@pytest.mark.parametrize("name", ["mlp784", "deq"])
def test_numpy_references_of_the_array_problems_agree_with_differences(name):
    """The hand-written backward passes (the references) against central differences."""
    problem = SMALL[name]()
    inputs = problem.inputs(3)
    _, grads = _result("numpy", name, 3)
    rng = np.random.default_rng(7)
    assert set(grads) == set(problem.wrt)  # the weights only
    for key in problem.wrt:
        direction = rng.standard_normal(np.shape(inputs[key]))
        fd = _central_difference(problem, inputs, key, direction)
        assert np.sum(grads[key] * direction) == pytest.approx(fd, rel=1e-6, abs=1e-9), key


def test_the_equilibrium_peers_stop_at_the_common_tolerance():
    """deq_steps is the first iteration count whose residual is within DEQ_TOL, and the
    unrolled peers (which take that many steps) differ from the dense reference by about
    that much: more than rounding, far less than the check's tolerance."""
    problem = SMALL["deq"]()
    inputs = problem.inputs(3)
    k = problems.deq_steps(inputs)
    W, U, b = inputs["W"], inputs["U"], inputs["b"]
    C = inputs["x"] @ U.T + b
    H = np.zeros_like(C)
    for _ in range(k - 1):
        H = np.tanh(H @ W.T + C)
    residual = np.max(np.abs(np.tanh(H @ W.T + C) - H))
    assert residual <= problems.DEQ_TOL < np.max(np.abs(np.tanh(C)))
    assert problems.deq_steps(inputs, tol=1e-6) < k
    got = _result("torch", "deq", 3)
    if isinstance(got, Unsupported):
        pytest.skip(f"PyTorch: {got}")
    err = rel_error(_result("numpy", "deq", 3), got)
    assert 1e-15 < err <= 1e3 * problems.DEQ_TOL


def test_the_array_problems_are_unsupported_cells_until_the_array_api_exists():
    """Until lagrangian_ad has docs/design.md's array API, its array cells read "not supported
    yet" and name what is missing; once it has it, they must agree (tested above)."""
    from benchmarks import impl_lad

    missing = impl_lad.missing_array_api()
    got = _result("lad", "mlp784", 1)
    if missing:
        assert isinstance(got, Unsupported) and str(got) == "not supported yet"
        assert "array=True" in str(got.__cause__) or "lad." in str(got.__cause__)
    else:
        assert not isinstance(got, Unsupported), got


def test_rel_error_catches_wrong_and_misshapen_gradients():
    ref = (np.array([1.0, 2.0]), {"x": np.array([3.0, -4.0])})
    assert rel_error(ref, ref) == 0.0
    nudged = (ref[0], {"x": np.array([3.0, -4.0 + 1e-6])})
    assert 1e-8 < rel_error(ref, nudged) < 1e-6
    assert rel_error(ref, (ref[0], {"x": np.array([3.0])})) == np.inf
    assert rel_error(ref, (ref[0], {})) == np.inf
    assert rel_error(ref, (ref[0], {"x": np.array([np.nan, 0.0])})) == np.inf


def test_check_uses_ours_as_reference_and_numpy_for_ours():
    good = (np.array(1.0), {"x": np.array(2.0)})
    bad = (np.array(1.0), {"x": np.array(2.1)})
    errs = check({"lad": good, "numpy": good, "torch": bad})
    assert errs["lad"] == (0.0, "numpy") and errs["numpy"] == (0.0, "lad")
    assert errs["torch"][1] == "lad" and errs["torch"][0] > TOLERANCE
    errs = check({"numpy": good, "jax": good})  # ours could not run: NumPy is the reference
    assert errs == {"jax": (0.0, "numpy")}
    errs = check({"lad": good, "numpy": good, "torch": bad}, reference="numpy")
    assert errs["lad"] == (0.0, "numpy") and errs["torch"][1] == "numpy"
    assert "numpy" not in errs


def test_runner_row_and_report_end_to_end():
    """One row through the runner (setup, check, timing, memory) and the Markdown report."""
    from benchmarks import report

    problem = problems.blog()
    modules = {n: m for n in ("lad", "numpy") if (m := load(n)[0]) is not None}
    config = RunConfig(target=1e-3, min_runs=1, verbose=False)
    row = run_row(problem, 2, ["lad", "numpy", "casadi"], {**modules}, config)
    for name in ("lad", "numpy"):
        cell = row.cells[name]
        assert cell.status == "ok", cell
        assert cell.value.median > 0 and cell.value_and_grad.median > 0 and cell.cold > 0
        assert cell.memory.nbytes is not None and cell.error <= TOLERANCE
    assert row.cells["casadi"].status == "missing"  # not passed in: reported, not run
    machine = report.machine_info()
    text = report.markdown(
        [row],
        ["lad", "numpy", "casadi"],
        {"lad": "x", "numpy": "y", "casadi": "— (z)"},
        machine,
        True,
        1.0,
        ["benchmarks"],
    )
    assert "| blog (6 scalar ops) | 2 |" in text
    assert "ratios between implementations measured side by side" in text
    assert machine["cpu"] in text


def test_command_line_options():
    args = parse_args(["--quick", "--problems", "blog,chain", "--batches", "1,1e3"])
    assert args.quick and args.problems == ["blog", "chain"] and args.batches == [1, 1000]
    with pytest.raises(SystemExit):
        parse_args(["--problems", "nope"])
    args = parse_args(["--problems", "blog,deq,deq500"])  # a group expands, once each
    assert args.problems == ["blog", "deq100", "deq500", "deq1000"]
    assert parse_args([]).problems == list(problems.PROBLEMS)
    with pytest.raises(SystemExit):
        parse_args(["--impls", "matlab"])


def test_a_problem_we_cannot_solve_yet_is_a_cell_not_a_crash():
    """Until the engine solves a problem, its cell reads "not supported yet"."""
    import dataclasses

    import lagrangian_ad as lad

    class Cyclic:
        def compile(self):
            raise lad.ProgramError("h[0] depends on itself; cyclic programs are not supported yet")

    problem = dataclasses.replace(problems.blog(), program=Cyclic, sizes={"variant": 1})
    modules = {"lad": load("lad")[0], "numpy": load("numpy")[0]}
    config = RunConfig(target=1e-3, min_runs=1, verbose=False)
    row = run_row(problem, 1, ["lad", "numpy"], modules, config)
    cell = row.cells["lad"]
    assert (cell.status, cell.text) == ("unsupported", "not supported yet")
    assert "ProgramError" in cell.detail
    assert row.cells["numpy"].status == "ok"  # and the peers run regardless


def test_a_wrong_result_of_ours_marks_only_our_cell():
    good = (np.array(1.0), {"x": np.array(2.0)})
    bad = (np.array(1.0), {"x": np.array(2.1)})
    errs = check({"lad": bad, "numpy": good, "torch": good})
    assert errs["lad"][0] > TOLERANCE
    assert errs["torch"] == (0.0, "numpy")


def test_results_json_round_trips_a_tiny_run(tmp_path, capsys):
    """One tiny run writes RESULTS.md and results.json; the JSON reads back as its cells."""
    import json
    import math

    from benchmarks import records, report
    from benchmarks.cells import Cell, fmt_time
    from benchmarks.runner import main

    out = tmp_path / "RESULTS.md"
    argv = ["--quick", "--problems", "blog", "--batches", "2", "--impls", "lad,numpy", "--out"]
    assert main([*argv, str(out)]) == 0
    assert "results.json" in capsys.readouterr().out
    data = records.read(tmp_path / "results.json")
    assert data["run"]["quick"] and set(data["run"]["versions"]) == {"lad", "numpy"}
    assert [(r["problem"], r["batch"], r["impl"]) for r in data["records"]] == [
        ("blog", 2, "lad"),
        ("blog", 2, "numpy"),
    ]
    markdown = out.read_text(encoding="utf-8")
    for rec in data["records"]:  # the same run: the report shows the JSON's times
        assert rec["status"] == "ok" and rec["error"] <= TOLERANCE
        assert f"| {fmt_time(rec['value_and_grad_s'])} |" in markdown
        assert rec["ratio"] == rec["value_and_grad_s"] / rec["value_s"]

    # Round trip through the writer, with a WRONG cell whose error is infinite (a
    # misshapen gradient) and a missing one: strict JSON, and the same records back.
    row = run_row(
        problems.blog(),
        2,
        ["numpy"],
        {"numpy": load("numpy")[0]},
        RunConfig(target=1e-3, min_runs=1, verbose=False),
    )
    row.cells["torch"] = Cell("torch", "wrong", "WRONG", error=math.inf, checked_against="lad")
    row.cells["casadi"] = Cell("casadi", "missing", "not installed")
    impls = ["numpy", "torch", "casadi"]
    versions = {"numpy": "1", "torch": "2", "casadi": "— (not installed)"}
    machine = report.machine_info()
    written = records.results([row], impls, versions, machine, True, 0.5, ["x"], RunConfig())
    path = tmp_path / "again.json"
    records.write(path, written)
    json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda c: pytest.fail(c))
    back = records.read(path)
    assert back["run"] == written["run"]
    expected = [records.record(row, row.cells[name]) for name in impls]
    expected[1]["error"] = math.inf  # written as "inf", read back as a float
    assert back["records"] == expected
    numpy_rec, torch_rec, casadi_rec = back["records"]
    assert numpy_rec["value_s"] == row.cells["numpy"].value.median
    assert (torch_rec["status"], torch_rec["value_s"]) == ("wrong", None)
    assert (casadi_rec["status"], casadi_rec["text"]) == ("missing", "not installed")


def test_compile_curve_counts_couplings(tmp_path):
    """The compile-time curve: couplings are the graph's edges (2 per chain step but the
    first; 2n + 2d + 1 per equilibrium row plus n for the output), and a table is written."""
    from benchmarks import compile_curve

    r = compile_curve.measure("chain", 500)
    assert r["constraints"] == 500 and r["couplings"] == 2 * 500 - 1
    r = compile_curve.measure("equilibrium", 25)
    assert r["couplings"] == 25 * (2 * 25 + 2 * 20 + 1) + 25
    out = tmp_path / "COMPILE.md"
    compile_curve.main(["--max", "5000", "--out", str(out)])
    text = out.read_text()
    assert "| chain | 500 |" in text and "compile time ∝ couplings^" in text


def test_report_ratios_and_issue12_targets():
    """The ratio table and issue 12's verdicts, from hand-made cells with known times."""
    from benchmarks import report
    from benchmarks.cells import Cell, Row
    from benchmarks.timing import Timing

    def ok(impl, seconds, **setup):
        t = Timing(seconds, 5, 1, 1.0)
        return Cell(impl, "ok", value=t, value_and_grad=t, cold=1.0, setup=setup)

    mlp, deq1000 = problems.mlp784(), problems.deq(1_000)
    rows = []
    for batch, lad_s in ((1, 1.0), (128, 3.5), (10_000, 2.0)):
        row = Row(mlp, batch)
        setup = {"build_s": 0.3, "build_rss": 50e6, "compile_s": 0.4, "compile_rss": 90e6}
        row.cells = {"lad": ok("lad", lad_s, **setup), "torch": ok("torch", 4.0)}
        row.cells["jax"] = ok("jax", 3.0)
        rows.append(row)
    row = Row(deq1000, 100)
    row.cells = {
        "lad": ok("lad", 5.0, build_s=0.1, build_rss=1e6, compile_s=2.5, compile_rss=1e6),
        "jax_root": ok("jax_root", 4.0),
    }
    rows.append(row)
    text = "\n".join(report._issue12_targets(rows))
    assert "batch 128, JAX jit: met" in text  # 3.5 ≤ 1.2 × 3.0, and JAX is the faster peer
    assert "batch 10,000, JAX jit: met" in text
    assert "batch 1, PyTorch eager: met" in text and "batch 1, JAX jit: met" in text
    assert "n = 1,000, JAX custom_root: MISSED" in text
    assert "n = 500, JAX custom_root: not measured in this run" in text
    assert "mlp784: met — build+compile 0.70 s, peak RSS Δ 90 MB" in text
    assert "deq1000: MISSED — compile 2.50 s" in text
    ratios = report._ratios(rows, ["lad", "torch", "jax", "jax_root"])
    assert ratios[3].endswith("| 128 | 1.17 | 1.33 | 1.00 | — |")
    assert ratios[-1].endswith("| 100 | 1.25 | — | — | 1.00 |")
    rows[1].cells["jax"] = Cell("jax", "wrong", "WRONG")  # then PyTorch is the faster peer
    assert "batch 128, PyTorch eager: met" in "\n".join(report._issue12_targets(rows))


def test_setup_memory_is_measured_in_a_fresh_process_and_traced():
    """The setup of the array MLP: its build and compile each measured by the resident
    mark and by tracemalloc (here in this process; `fresh_setup` runs the same in new
    ones), and the report shows both; a problem not at its benchmark size is left to
    the in-process measurement."""
    from benchmarks import impl_lad, report
    from benchmarks.cells import Cell, Row
    from benchmarks.timing import Timing

    timed = impl_lad.measure_setup("mlp784")
    assert set(timed) == {"build_s", "build_rss", "compile_s", "compile_rss"}
    assert timed["build_s"] > 0 and timed["compile_s"] > 0
    traced = impl_lad.measure_setup("mlp784", traced=True)
    assert set(traced) == {"build_traced", "compile_traced"}
    assert traced["compile_traced"] > 1e5  # the generated code and its forms at least
    assert impl_lad.fresh_setup(problems.mlp784(hidden=8)) is None
    t = Timing(1.0, 5, 1, 1.0)
    setup = {**timed, "build_rss": 1e6, "compile_rss": 5e6, **traced}
    row = Row(problems.mlp784(), 1)
    row.cells = {"lad": Cell("lad", "ok", value=t, value_and_grad=t, setup=setup)}
    text = report._setup_target([row], "mlp784", "build+compile", 1.0, 200e6)
    assert "peak RSS Δ 5 MB, traced peak" in text and "/ traced " in text


def test_compile_curve_of_the_array_programs_at_a_tiny_size(tmp_path):
    """One array point per family, in this process: lagrangian_ad's build and compile
    (or why not), JAX's cold start beside it; and a point run in a fresh process."""
    from benchmarks import compile_curve, impl_jax, impl_lad

    jax_ok, _ = impl_jax.available()
    rows = [compile_curve.measure_array("mlp784", 8), compile_curve.measure_array("deq", 12)]
    assert rows[0]["parameters"] == 8 * 784 + 8 + 8 * 8 + 8 + 10 * 8 + 10
    assert rows[1]["parameters"] == 12 * 12 + 12 * 50 + 12 + 12
    for r in rows:
        if impl_lad.missing_array_api():
            assert r["lad"] == "not supported yet" and r["lad_detail"].startswith("needs ")
        else:
            assert r["build"] > 0 and r["compile"] > 0, r
        assert (r["jax_cold"] > 0) == jax_ok
    table = compile_curve.array_table(rows)
    assert table[2].startswith("| mlp784 | 8 | 6,442 | ")
    assert table[3].startswith("| deq | 12 | 768 | ")
    fresh = compile_curve._run_point("deq", 12, timeout=120)
    assert fresh["family"] == "deq" and fresh["parameters"] == rows[1]["parameters"]
