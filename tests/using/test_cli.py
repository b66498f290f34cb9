"""Tests of the lagrangian-ad command line: subprocesses for the real thing (exit codes,
JSON compared with values computed another way), in-process calls for the many errors."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import lagrangian_ad as lad
from lagrangian_ad.building._parse import parse_expression
from lagrangian_ad.using._cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


# x has 2 entries where network.lad declares x[3]: a program (shape) error, exit 1.
BAD_NETWORK_POINT = (
    *("--at", "x=[1,2]", "--at", "W=[[1,2,3],[4,5,6]]", "--at", "b=[0,0]"),
    *("--at", "v=[1,1]", "--at", "t=0"),
)


def run(*args: str) -> subprocess.CompletedProcess:
    """``python -m lagrangian_ad ARGS`` in the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "lagrangian_ad", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def run_json(*args: str) -> dict:
    proc = run(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"value", "grad", "values", "multipliers"}
    return doc


def run_all(*argvs: Sequence[str]) -> list[subprocess.CompletedProcess]:
    """``run`` of several command lines at once (each spends a second importing)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lagrangian_ad", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for argv in argvs
    ]
    done = []
    for argv, proc in zip(argvs, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return done


def assert_one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("lagrangian-ad: error: ")
    assert lines[0].count("lagrangian-ad:") == 1, lines[0]  # the prefix once
    return lines[0]


# ------------------------------------------------------------------ solve, grad, lagrangian


def test_solve_blog_json_matches_the_blog_and_sympy():
    x0 = 0.5
    doc = run_json("solve", "examples/blog.lad", "--at", f"x={x0}")
    # The blog's multipliers by hand ...
    a = math.exp(x0)
    b = a * a
    c = a + b
    lam_c = math.exp(c) + math.cos(c)
    want_values = {"x": x0, "a": a, "b": b, "c": c, "d": math.exp(c), "e": math.sin(c)}
    want_values["f"] = want_values["d"] + want_values["e"]
    for k, v in want_values.items():
        assert doc["values"][k] == pytest.approx(v, rel=1e-13)
    want_lam = {"f": 1, "d": 1, "e": 1, "c": lam_c, "b": lam_c, "a": lam_c * (1 + 2 * a)}
    for k, v in want_lam.items():
        assert doc["multipliers"][k] == pytest.approx(v, rel=1e-13)
    # ... and SymPy's derivative of the flat expression.
    xs = sp.Symbol("x")
    flat = sp.exp(sp.exp(xs) + sp.exp(xs) ** 2) + sp.sin(sp.exp(xs) + sp.exp(xs) ** 2)
    assert doc["value"] == pytest.approx(float(flat.subs(xs, x0)), rel=1e-13)
    assert doc["grad"]["x"] == pytest.approx(float(sp.diff(flat, xs).subs(xs, x0)), rel=1e-13)


def _network_by_hand(x, W, b, v, t):
    """The forward and backward pass of examples/network.lad, written out in NumPy."""
    z = x @ W.T + b
    h = np.tanh(z)
    y = h @ v
    r = y - t
    loss = r**2 / 2
    lam_y = r
    lam_h = lam_y[..., None] * v
    lam_z = lam_h * (1 - h**2)
    batch = tuple(range(x.ndim - 1))
    grad = {
        "x": lam_z @ W,
        "W": lam_z.reshape(-1, 2).T @ x.reshape(-1, 3),
        "b": lam_z.sum(axis=batch),
        "v": (lam_y[..., None] * h).sum(axis=batch),
        "t": -r.sum() if np.ndim(t) == 0 else -r,  # t shared, or one per sample
    }
    return loss, grad, {"z": z, "h": h, "y": y}, {"z": lam_z, "h": lam_h, "y": lam_y}


def test_solve_network_with_a_batch_matches_numpy_backprop():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 3))  # a batch of four samples; the parameters are shared
    W, b, v, t = rng.normal(size=(2, 3)), rng.normal(size=2), rng.normal(size=2), 0.25
    doc = run_json(
        "solve",
        "examples/network.lad",
        "--at",
        f"x={json.dumps(x.tolist())}",
        "--at",
        f"W={json.dumps(W.tolist())}",
        "--at",
        f"b={json.dumps(b.tolist())}",
        "--at",
        f"v={json.dumps(v.tolist())}",
        "--at",
        f"t={t}",
    )
    loss, grad, values, lams = _network_by_hand(x, W, b, v, t)
    np.testing.assert_allclose(doc["value"], loss, rtol=1e-12)
    for k, g in grad.items():
        np.testing.assert_allclose(doc["grad"][k], g, rtol=1e-11, atol=1e-14, err_msg=k)
        assert np.shape(doc["grad"][k]) == np.shape({"x": x, "W": W, "b": b, "v": v}.get(k, t))
    for k in values:
        np.testing.assert_allclose(doc["values"][k], values[k], rtol=1e-12, err_msg=k)
        np.testing.assert_allclose(doc["multipliers"][k], lams[k], rtol=1e-11, err_msg=k)
    np.testing.assert_allclose(doc["multipliers"]["loss"], np.ones(4))


def test_grad_of_an_expression_matches_sympy():
    xs, ys = sp.symbols("x y")
    flat = sp.exp(xs) * sp.sin(ys) + xs**2 / ys - sp.atan2(ys, xs)
    x0, y0 = 0.5, [1.0, 2.0, -0.5]
    doc = run_json(
        "grad",
        "exp(x)*sin(y) + x**2/y - atan2(y, x)",
        "--at",
        f"x={x0}",
        "--at",
        f"y={json.dumps(y0)}",
    )
    at = [{xs: x0, ys: yk} for yk in y0]
    np.testing.assert_allclose(doc["value"], [float(flat.subs(p)) for p in at], rtol=1e-13)
    dx = sum(float(sp.diff(flat, xs).subs(p)) for p in at)  # x is shared: summed over y's
    dy = [float(sp.diff(flat, ys).subs(p)) for p in at]
    np.testing.assert_allclose(doc["grad"]["x"], dx, rtol=1e-12)
    np.testing.assert_allclose(doc["grad"]["y"], dy, rtol=1e-12)
    assert doc["values"]["x"] == x0 and doc["values"]["y"] == y0


def test_lagrangian_prints_the_lagrangian_and_conditions():
    proc = run("lagrangian", "examples/blog.lad")
    assert proc.returncode == 0, proc.stderr
    first, *rest = proc.stdout.splitlines()
    assert first.startswith("L = ")
    # The printed Lagrangian is the program's, term by term.
    names = {n: sp.Symbol(n, real=True) for n in ["x", "a", "b", "c", "d", "e", "f"]}
    lam = {n: sp.Symbol(f"lambda_{n}", real=True) for n in names}
    a, b, c, d, e, f, x = (names[n] for n in "abcdefx")
    want = f - (
        lam["a"] * (a - sp.exp(x))
        + lam["b"] * (b - a**2)
        + lam["c"] * (c - a - b)
        + lam["d"] * (d - sp.exp(c))
        + lam["e"] * (e - sp.sin(c))
        + lam["f"] * (f - d - e)
    )
    lagrangian = lad.load(EXAMPLES / "blog.lad").lagrangian()
    assert first == f"L = {lagrangian}"
    assert sp.expand(lagrangian - want) == 0
    text = "\n".join(rest)
    assert "lambda_c = lambda_d*exp(c) + lambda_e*cos(c)" in text.replace("λ", "lambda_")
    assert "dL/dx = lambda_a*exp(x)" in text


def test_lagrangian_latex(capsys):
    assert main(["lagrangian", str(EXAMPLES / "blog.lad"), "--latex"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("L = ")
    assert r"\lambda_{a}" in out and r"\begin{aligned}" in out and r"\end{aligned}" in out


def test_solve_prints_a_readable_table(capsys):
    assert main(["solve", str(EXAMPLES / "blog.lad"), "--at", "x=0.5"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    value = math.exp(math.exp(0.5) + math.exp(1.0)) + math.sin(math.exp(0.5) + math.exp(1.0))
    assert lines[0].split() == ["value", "f", "=", f"{value:.12g}"]
    assert "gradient" in out and "values" in out and "multipliers" in out
    assert any(ln.split()[:2] == ["b", "="] for ln in lines)


def test_grad_prints_the_decomposed_program(capsys):
    assert main(["grad", "exp(x)*sin(x)", "--at", "x=0.5"]) == 0
    out = capsys.readouterr().out
    assert "z1 = exp(x)" in out and "z2 = sin(x)" in out
    want = math.exp(0.5) * (math.sin(0.5) + math.cos(0.5))
    assert f"x = {want:.12g}" in out


def test_no_arguments_runs_the_blog_demo():
    proc = run()
    assert proc.returncode == 0, proc.stderr
    assert "exp" in proc.stdout and len(proc.stdout.splitlines()) > 5


# --------------------------------------------------------------- cyclic and implicit files


def test_solve_fixed_point_file():
    x0 = 0.3
    h = 0.0
    for _ in range(200):  # a contraction with slope at most 1/2
        h = math.tanh(0.5 * h + x0)
    doc = run_json("solve", "examples/fixed_point.lad", "--at", f"x={x0}")
    assert doc["value"] == pytest.approx(h, rel=1e-10)
    s = 1 - h * h
    assert doc["grad"]["x"] == pytest.approx(s / (1 - 0.5 * s), rel=1e-8)


def test_solve_implicit_file():
    x0 = 0.5
    roots = np.roots([1.0, 0.0, 1.0, -x0])
    u = float(roots[np.abs(roots.imag) < 1e-12].real[0])
    doc = run_json("solve", "examples/implicit.lad", "--at", f"x={x0}")
    assert doc["values"]["u"] == pytest.approx(u, rel=1e-10)
    assert doc["value"] == pytest.approx(u * u, rel=1e-10)
    assert doc["grad"]["x"] == pytest.approx(2 * u / (3 * u * u + 1), rel=1e-8)


# --------------------------------------------------------------------------- errors and exit codes


def test_parse_error_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.lad"
    bad.write_text("input x\ny = foo(x) + 1\n")
    proc = run("solve", str(bad), "--at", "x=1")
    assert proc.returncode == 2
    line = assert_one_line_error(proc.stderr)
    assert f"{bad}, line 2, column 5: unknown function 'foo'" in line
    assert "known functions:" in line
    assert proc.stdout == ""


def test_program_error_exits_1_with_one_line():
    proc = run(
        "solve",
        "examples/network.lad",
        *BAD_NETWORK_POINT,
    )
    assert proc.returncode == 1
    line = assert_one_line_error(proc.stderr)
    assert "'x'" in line and "(3,)" in line


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["solve"], "required: FILE"),
        (["solve", "examples/blog.lad"], "missing a value for input x"),
        (["solve", "examples/blog.lad", "--at", "x"], "expected NAME=VALUE"),
        (["solve", "examples/blog.lad", "--at", "x=abc"], "not a number"),
        (["solve", "examples/blog.lad", "--at", "x=[1,[2]]"], "not rectangular"),
        (["solve", "examples/blog.lad", "--at", "x=[]"], "list of numbers"),
        (["solve", "examples/blog.lad", "--at", "x=true"], "list of numbers"),
        (["solve", "examples/blog.lad", "--at", 'x="1"'], "list of numbers"),
        (["solve", "examples/blog.lad", "--at", "x=NaN"], "finite"),
        (["solve", "examples/blog.lad", "--at", "x=inf"], "finite"),
        (["solve", "examples/blog.lad", "--at", "x=__import__('os')"], "not a number"),
        (["solve", "examples/blog.lad", "--at", "x=1", "--at", "x=2"], "given twice"),
        (["solve", "examples/blog.lad", "--at", "x=1", "--at", "y=2"], "not an input"),
        (["solve", "examples/network.lad", "--at", "x=[1,2,3]"], "W[2,3]"),
        (["solve", "examples/nope.lad", "--at", "x=1"], "cannot read"),
        (["grad", "exp(x", "--at", "x=1"], "line 1, column 6: expected ')'"),
        (["grad", "x.real", "--at", "x=1"], "unexpected character '.'"),
        (["grad", "W[0]", "--at", "W=1"], "scalar names only"),
        (["grad", "exp(x)"], "missing a value for input x"),
        (["lagrangian"], "required: FILE"),
        (["frobnicate"], "invalid choice"),
        (["solve", "examples/blog.lad", "--at", "x=1", "--bogus"], "unrecognized arguments"),
    ],
)
def test_usage_and_parse_errors_exit_2(argv, words, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    captured = capsys.readouterr()
    line = assert_one_line_error(captured.err)
    assert words in line
    assert captured.out == ""


def test_errors_of_the_program_exit_1(capsys, tmp_path):
    cyclic_array = tmp_path / "out.lad"
    cyclic_array.write_text("input x\nvar v[2]\nv[0] = x\nv[1] = x\n")  # no scalar output
    assert main(["lagrangian", str(cyclic_array)]) == 2  # caught while parsing
    capsys.readouterr()
    assert main(["grad", "x - x + lambda_q"]) == 2
    capsys.readouterr()
    assert main(["solve", str(EXAMPLES / "blog.lad"), "--at", "x=[[1,2],[3]]"]) == 2
    capsys.readouterr()
    assert (
        main(
            [
                "solve",
                str(EXAMPLES / "network.lad"),
                "--at",
                "x=[1,2,3]",
                "--at",
                "W=[1,2,3]",
                "--at",
                "b=[0,0]",
                "--at",
                "v=[1,1]",
                "--at",
                "t=0",
            ]
        )
        == 1
    )
    line = assert_one_line_error(capsys.readouterr().err)
    assert "'W'" in line and "(2, 3)" in line


def test_debug_shows_the_traceback(capsys):
    assert (
        main(
            [
                "solve",
                str(EXAMPLES / "network.lad"),
                "--debug",
                *BAD_NETWORK_POINT,
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "Traceback" in err and "ProgramError" in err
    assert err.strip().splitlines()[-1].startswith("lagrangian-ad: error: ")


@pytest.mark.parametrize("command", [[], ["solve"], ["grad"], ["lagrangian"], ["demo"]])
def test_help_on_every_command(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lagrangian-ad")
    assert "--debug" in out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_non_finite_result_is_an_error_naming_the_constraint(capsys):
    """log(0) = −inf: exit 1 with one line naming where it happened, not JSON nulls."""
    assert main(["grad", "log(x)", "--at", "x=[1, 0]", "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    line = assert_one_line_error(captured.err)
    assert "non-finite" in line or "not finite" in line


# --------------------------------------------------------------------- issue 11, item 8
# Each through a subprocess, as a user meets it (the hang cases under a timeout); the
# neighbouring cases that need no real process are in-process calls of main().


def test_every_example_in_grad_help_runs(capsys):
    """The examples of ``grad --help`` run as printed, ``grad -- "-x**2" --at x=1`` too."""
    assert main(["grad", "--help"]) == 0
    examples = [
        shlex.split(line.strip())[1:]
        for line in capsys.readouterr().out.splitlines()
        if line.strip().startswith("lagrangian-ad grad ")
    ]
    assert ["grad", "--", "-x**2", "--at", "x=1"] in examples
    for argv, proc in zip(examples, run_all(*[[*a, "--json"] for a in examples]), strict=True):
        assert proc.returncode == 0, (argv, proc.stderr)
        doc = json.loads(proc.stdout)
        expr, symbols = parse_expression(argv[2] if argv[1] == "--" else argv[1])
        at = {s: doc["values"][s.name] for s in symbols}
        assert doc["value"] == pytest.approx(float(expr.subs(at)), rel=1e-13)
        for s in symbols:
            want = float(sp.diff(expr, s).subs(at))
            assert doc["grad"][s.name] == pytest.approx(want, rel=1e-13), argv


def test_double_dash_marks_only_the_expression_options_may_follow(capsys):
    """In-process: the help's example above runs the same through a subprocess."""
    assert main(["grad", "--", "-x**3 + y", "--at", "x=2", "--at", "y=0.5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["value"] == -7.5 and doc["grad"] == {"x": -12.0, "y": 1.0}
    assert main(["grad", "--at", "x=2", "--json", "--", "-x**2"]) == 0  # at the end, as before
    doc = json.loads(capsys.readouterr().out)
    assert doc["value"] == -4.0 and doc["grad"] == {"x": -4.0}
    assert main(["grad", "--json", "--at", "x=2", "--"]) == 2  # nothing after --: no EXPR
    assert "required: EXPR" in assert_one_line_error(capsys.readouterr().err)


DEEP = "[" * 5000 + "1" + "]" * 5000
needs_fifo = pytest.mark.skipif(sys.platform != "linux", reason="FIFOs as Linux has them")


def test_bad_command_lines_get_one_line_with_the_prefix_once():
    """What used to be a traceback, a value taken wrongly, a prefix printed twice and a
    message without the file's name: one line each, exit status 2."""
    cases = {
        # was "lagrangian-ad: error: lagrangian-ad solve: the following arguments …"
        ("solve", "--at", "x=1"): "error: the following arguments are required: FILE",
        # a RecursionError traceback from the JSON decoder
        ("solve", "examples/blog.lad", "--at", f"x={DEEP}"): "nested 5000 deep",
        # Python's float() reads it as 10; neither JSON nor a number literal does
        ("solve", "examples/blog.lad", "--at", "x=1_0"): "x=1_0: the value is not a number",
        # was "cannot read the file: Input/output error"
        ("solve", "/proc/self/mem", "--at", "x=1"): "cannot read /proc/self/mem: ",
    }
    for proc in run_all(*cases):
        argv = tuple(proc.args)
        assert proc.returncode == 2, (argv, proc.stderr)
        line = assert_one_line_error(proc.stderr)  # also: the prefix once
        assert cases[argv] in line, (argv, line)
        assert len(line) < 300, line  # the 10,000 characters of a value are not echoed
        assert proc.stdout == ""


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["solve", "--at", "x=" + "{" * 5000], "nested 5000 deep"),
        (["solve", "--at", "x=[" * 33 + "1" + "]" * 33], "nested 33 deep (at most 32 axes)"),
        (["solve", "--at", "x=\u0661"], "is not a number"),  # float() reads it as 1
        (["solve", "--at", "x=1e5_0"], "is not a number"),
        (["solve", "--at", "x=[1" + "0" * 400 + "]"], "must be finite"),  # was OverflowError
        (["solve", "--at", "x=1" + "0" * 5000], "must be finite"),
        (["solve", "--at", "x=-Infinity"], "must be finite"),
        (["solve", "--at", "x=[1, NaN]"], "must be finite"),
        (["lagrangian", "."], "cannot read .: Is a directory"),
        (["solve", "--at", "x=1", "--bogus"], "error: unrecognized arguments: --bogus (see"),
    ],
)
def test_more_bad_command_lines_exit_2(argv, words, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    if argv[0] == "solve":
        argv = [argv[0], "examples/blog.lad", *argv[1:]]
    assert main(argv) == 2
    line = assert_one_line_error(capsys.readouterr().err)
    assert words in line
    assert len(line) < 300, line


def test_a_value_nested_as_deep_as_allowed_is_read(capsys):
    at = "x=" + "[" * 32 + "0.5" + "]" * 32  # 32 axes of one entry: a batch of one
    assert main(["solve", str(EXAMPLES / "blog.lad"), "--at", at, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    grad = np.asarray(doc["grad"]["x"])
    assert grad.shape == (1,) * 32
    a = math.exp(0.5)
    c = a + a * a
    assert float(grad.ravel()[0]) == pytest.approx((math.exp(c) + math.cos(c)) * (1 + 2 * a) * a)


@needs_fifo
def test_a_fifo_with_no_writer_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / "prog.lad"
    os.mkfifo(fifo)
    proc = subprocess.run(
        [sys.executable, "-m", "lagrangian_ad", "solve", str(fifo), "--at", "x=0.5"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,  # it used to wait for a writer for ever
    )
    assert proc.returncode == 2
    line = assert_one_line_error(proc.stderr)
    assert f"cannot read {fifo}: a FIFO with no writer" in line


@needs_fifo
def test_a_fifo_with_a_writer_is_read(tmp_path, capsys):
    """``solve <(cat prog.lad)``: a pipe whose writer is there is read to its end, also
    when the writer has not written yet as the command opens it."""
    fifo = tmp_path / "prog.lad"
    os.mkfifo(fifo)
    text = (EXAMPLES / "blog.lad").read_bytes()
    writer = os.open(fifo, os.O_RDWR)  # Linux: a writer there before the command opens

    def write_then_close() -> None:
        time.sleep(0.2)
        os.write(writer, text)
        deadline = time.monotonic() + 60
        while _unread(writer) and time.monotonic() < deadline:  # until the command read it
            time.sleep(0.01)
        os.close(writer)  # the end of the file

    thread = threading.Thread(target=write_then_close, daemon=True)
    thread.start()
    assert main(["solve", str(fifo), "--at", "x=0.5", "--json"]) == 0
    thread.join(timeout=60)
    doc = json.loads(capsys.readouterr().out)
    xs = sp.Symbol("x")
    flat = sp.exp(sp.exp(xs) + sp.exp(xs) ** 2) + sp.sin(sp.exp(xs) + sp.exp(xs) ** 2)
    assert doc["grad"]["x"] == pytest.approx(float(sp.diff(flat, xs).subs(xs, 0.5)), rel=1e-13)


def _unread(fd: int) -> int:
    """The bytes in a pipe that no reader has taken yet."""
    import fcntl  # POSIX only, as the FIFO tests are
    import termios

    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


def test_a_closed_stdout_ends_quietly_with_the_status_of_sigpipe():
    """``lagrangian-ad | head -1``: stdout's reader is gone before the first write."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lagrangian_ad"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    proc.stdout.close()  # the reader exits first, as head does after one line
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 128 + 13, stderr  # what the shell reports for SIGPIPE
    assert stderr == ""


class _ClosedPipe:
    """A stdout whose reader has gone: every write fails as a closed pipe's does."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        pass


def test_a_closed_stdout_mid_output_is_not_a_file_error(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["solve", str(EXAMPLES / "blog.lad"), "--at", "x=0.5"]) == 128 + 13
    assert capsys.readouterr().err == ""


def test_the_gradient_heading_says_which_gradients_are_per_sample(capsys):
    rng = np.random.default_rng(11)
    x, t = rng.normal(size=(3, 3)), rng.normal(size=3)  # per sample
    W, b, v = rng.normal(size=(2, 3)), rng.normal(size=2), rng.normal(size=2)  # shared
    at = {"x": x, "W": W, "b": b, "v": v, "t": t}
    argv = [arg for k, a in at.items() for arg in ("--at", f"{k}={json.dumps(a.tolist())}")]
    proc = run("solve", "examples/network.lad", *argv)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "summed over any batch" not in out
    heading = out[out.index("gradient") : out.index("\n  x = ")]
    assert "sum of loss over the batch" in heading
    assert "per sample: x, t" in heading
    assert "summed over the batch: W, b, v" in heading
    # The rows say the same: x's and t's gradients per sample, W's summed (by hand).
    _, grad, _, _ = _network_by_hand(x, W, b, v, t)
    rows = _printed_rows(out[out.index("gradient") : out.index("\nvalues")])
    for name in at:
        np.testing.assert_allclose(rows[name], grad[name], rtol=1e-9, atol=1e-12)
    # x broadcast along the second batch axis, y along the first: summed over those.
    assert main(["grad", "x*y", "--at", "x=[[1],[2]]", "--at", "y=[1,2,3]"]) == 0
    out = capsys.readouterr().out
    assert "summed over the batch axes it is broadcast along: x, y" in out
    rows = _printed_rows(out[out.index("gradient") : out.index("\nvalues")])
    np.testing.assert_array_equal(rows["x"], [[6.0], [6.0]])  # d/dx Σ_ij x_i y_j = Σ_j y_j
    np.testing.assert_array_equal(rows["y"], [3.0, 3.0, 3.0])
    assert main(["solve", str(EXAMPLES / "blog.lad"), "--at", "x=0.5"]) == 0
    assert "gradient     df/d(input)\n" in capsys.readouterr().out  # no batch to speak of


def _printed_rows(text: str) -> dict[str, np.ndarray]:
    """``name = [[…], …]`` rows of the text table (continuation lines indented)."""
    rows: dict[str, str] = {}
    name = None
    for line in text.splitlines()[1:]:
        if line.startswith("  ") and not line.startswith("   "):
            name, _, body = line.strip().partition(" = ")
            rows[name] = body
        elif name is not None:
            rows[name] += line.strip()
    # NumPy prints 6. for 6.0, which JSON does not read
    return {k: np.array(json.loads(re.sub(r"\.(?![0-9])", ".0", v))) for k, v in rows.items()}


def test_an_overflow_is_one_line_and_exit_1():
    proc = run("solve", "examples/blog.lad", "--at", "x=1e308")  # exp(1e308) = inf
    assert proc.returncode == 1, proc.stderr
    line = assert_one_line_error(proc.stderr)
    assert re.search(r"'a'|\ba = exp\(x\)", line), line  # the first non-finite value
