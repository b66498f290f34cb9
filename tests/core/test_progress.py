"""Progress of long builds, parses and compiles: callbacks, and the tqdm bar."""

from __future__ import annotations

import io
import re

import sympy as sp

import lagrangian_ad as lad
import lagrangian_ad.core._progress as progress


def _chain(n: int) -> lad.Program:
    prog = lad.Program()
    x = prog.input("x")
    z = x
    for k in range(n):
        z = prog.define(f"z{k}", sp.sin(z + x))
    return prog


def test_callback_sees_every_stage_in_order():
    calls = []
    _chain(600).compile(progress=lambda *a: calls.append(a))
    stages = [c[0] for c in calls]
    assert stages[0] == "analysing the graph" and stages[-1] == "done"
    forms = [c for c in calls if c[0].startswith("deriving forms")]
    assert [c[1] for c in forms] == [0, 256, 512] and all(c[2] == 600 for c in forms)
    assert "compiling the generated source" in stages and "grouping" in stages
    elapsed = [c[3] for c in calls]
    assert elapsed == sorted(elapsed)


def test_status_line_only_after_the_delay(monkeypatch):
    quiet = io.StringIO()
    report = progress.Progress(True, stream=quiet)
    report("deriving forms", 1, 10)
    report.done("10 constraints")
    assert quiet.getvalue() == ""  # a short compile prints nothing
    monkeypatch.setattr(progress, "DELAY", 0.0)
    loud = io.StringIO()
    report = progress.Progress(True, stream=loud)
    report("deriving forms", 3, 10)
    report.done("10 constraints")
    text = loud.getvalue()
    assert "lagrangian_ad: deriving forms:  30%" in text and "3/10" in text
    assert re.search(r"\rlagrangian_ad: compiled 10 constraints in \d+\.\d s *\n$", text)
    never = io.StringIO()
    report = progress.Progress(False, stream=never)
    report("deriving forms", 3, 10)
    report.done("x")
    assert never.getvalue() == ""


def test_building_reports_every_define_then_done():
    calls = []
    prog = lad.Program(progress=lambda *a: calls.append(a))
    x = prog.input("x")
    z = x
    for k in range(300):
        z = prog.define(f"z{k}", sp.sin(z + x))
    prog.define("v", sp.Matrix([z, 2 * z, 3 * z]))  # an array: three constraints
    assert [c[:3] for c in calls] == [("building", k, 0) for k in range(1, 301)] + [
        ("building", 303, 0)
    ]
    prog.output(z)
    prog.compile(progress=False)  # reading the program ends the build
    assert calls[-1][:3] == ("done", 1, 1)
    elapsed = [c[3] for c in calls]
    assert elapsed == sorted(elapsed)


def test_a_pause_starts_a_new_build(monkeypatch):
    monkeypatch.setattr(progress, "PAUSE", 0.0)  # every call comes "after a pause"
    calls = []
    prog = lad.Program(progress=lambda *a: calls.append(a[:3]))
    x = prog.input("x")
    prog.define("a", sp.exp(x))
    prog.define("b", sp.sin(x))
    assert calls == [("building", 1, 0), ("done", 1, 1), ("building", 1, 0)]


def test_parse_reports_its_stages_and_the_program_keeps_the_setting():
    calls = []
    report = lambda *a: calls.append(a[:3])  # noqa: E731
    lines = ["input x", *(f"z{k} = sin(x + {k})" for k in range(40)), "u**3 + u = z39"]
    prog = lad.parse("\n".join(["var u", *lines]) + "\n", progress=report)
    reading = [c for c in calls if c[0] == "reading expressions"]
    assert reading == [("reading expressions", k, 41) for k in range(41)]
    assert [c for c in calls if c[0] == "defining"] == [("defining", k, 40) for k in range(40)]
    assert calls[-1] == ("done", 1, 1) and not [c for c in calls if c[0] == "building"]
    assert prog.progress is report
    prog.define("y", sp.Symbol("u", real=True) ** 2)
    assert calls[-1] == ("building", 1, 0)


def test_the_bar_on_stderr_after_the_delay(monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY", 0.0)
    prog = lad.Program(progress=True)
    x = prog.input("x")
    for k in range(5):
        prog.define(f"z{k}", sp.cos(x) + k)
    assert "lagrangian_ad: building: 1 [00:00]" in capsys.readouterr().err
    str(prog)  # printing reads the program: the build's last line
    last = capsys.readouterr().err
    assert re.search(r"\rlagrangian_ad: built 5 constraints in \d+\.\d s *\n$", last)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_default_shows_only_where_someone_watches(monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY", 0.0)
    assert not progress.Progress(None, stream=io.StringIO()).enabled  # a log file
    assert progress.Progress(None, stream=_Terminal()).enabled
    monkeypatch.setattr(progress, "_in_jupyter", lambda: True)
    assert progress.Progress(None).enabled  # a notebook's stderr is no terminal
    monkeypatch.setattr(progress, "_in_jupyter", lambda: False)
    _chain(5).compile()  # pytest's stderr is not a terminal: nothing drawn
    assert capsys.readouterr().err == ""
