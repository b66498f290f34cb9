"""The no-argument demo: the blog's example end to end, checked against SymPy."""

from __future__ import annotations

import math
import re

from lagrangian_ad.using._demo import run_demo


def test_demo_prints_every_stage_and_agrees(capsys):
    assert run_demo(0.5) is True
    out = capsys.readouterr().out
    for stage in (
        "The program",
        "Lagrangian",
        "Stationarity conditions",
        "def adjoint",
        "multiplier",
        "SymPy's flat derivative",
    ):
        assert stage in out
    # the multiplier of c printed in the table is exp(c) + cos(c) at c = e^0.5 + e
    c = math.exp(0.5) + math.exp(1.0)
    row = next(line for line in out.splitlines() if re.fullmatch(r"\s+c(\s+\S+){2}", line))
    assert float(row.split()[2]) == float(f"{math.exp(c) + math.cos(c):.16g}")
