"""Progress of long compiles: callback and status line."""

from __future__ import annotations

import io

import sympy as sp

import lagrangian_ad as lad
import lagrangian_ad._progress as progress


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
    assert "deriving forms 3/10" in text and "compiled 10 constraints in" in text
    never = io.StringIO()
    report = progress.Progress(False, stream=never)
    report("deriving forms", 3, 10)
    report.done("x")
    assert never.getvalue() == ""
