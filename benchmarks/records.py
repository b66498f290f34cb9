"""The measurements as data: one JSON record per problem × batch × implementation.

``python -m benchmarks`` writes ``results.json`` beside its Markdown report, from the same
run, so that plots and checks (notebooks/04_performance.ipynb) read numbers rather than
parse a table. The file is one object::

    {"schema": 1,
     "run": {date, cpu, cpus, memory, os, python, numpy, scipy, sympy, commit, threads,
             load_start, load_end, quick, elapsed_s, command, versions, config},
     "records": [{problem, title, sizes, batch, impl, label, status, text,
                  value_s, value_runs, value_and_grad_s, value_and_grad_runs, ratio,
                  cold_s, memory_bytes, memory_how, rss_peak_bytes, cpu_per_wall,
                  error, checked_against, note, detail, setup}, ...]}

Times are seconds per call (medians); ``ratio`` is value_and_grad_s / value_s; ``error``
is the max-norm relative error against ``checked_against`` (None for the reference
itself); ``setup`` holds an implementation's own setup measurements (lagrangian_ad:
``build_s``, ``compile_s``, ``build_rss``, ``compile_rss``; empty for the others). A
field that was not measured — any timing of a cell whose ``status`` is not ``"ok"`` —
is null. JSON has no infinity, so a non-finite number is written as the string
``"inf"`` (or ``"nan"``) and `read` turns it back into a float.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .cells import Cell, Row, RunConfig
from .implementations import IMPLEMENTATIONS

__all__ = ["SCHEMA", "read", "record", "results", "write"]

SCHEMA = 1
_NUMBERS = ("value_s", "value_and_grad_s", "ratio", "cold_s", "cpu_per_wall", "error")


def _number(x: float | None) -> float | str | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else str(x)


def record(row: Row, cell: Cell) -> dict[str, Any]:
    """One cell of the results as a flat dict of JSON values."""
    value, vag, mem = cell.value, cell.value_and_grad, cell.memory
    return {
        "problem": row.problem.name,
        "title": row.problem.title,
        "sizes": dict(row.problem.sizes),
        "batch": row.batch,
        "impl": cell.impl,
        "label": IMPLEMENTATIONS[cell.impl].label,
        "status": cell.status,
        "text": cell.text,
        "value_s": _number(value.median if value else None),
        "value_runs": value.runs if value else None,
        "value_and_grad_s": _number(vag.median if vag else None),
        "value_and_grad_runs": vag.runs if vag else None,
        "ratio": _number(cell.ratio),
        "cold_s": _number(cell.cold),
        "memory_bytes": mem.nbytes if mem else None,
        "memory_how": mem.how if mem else None,
        "rss_peak_bytes": vag.rss_peak if vag else None,
        "cpu_per_wall": _number(vag.cpu_per_wall if vag else None),
        "error": _number(cell.error),
        "checked_against": cell.checked_against or None,
        "note": cell.note,
        "detail": cell.detail,
        "setup": {k: _number(v) for k, v in cell.setup.items()},
    }


def results(
    rows: list[Row],
    impls: list[str],
    versions: dict[str, str],
    machine: dict[str, Any],
    quick: bool,
    elapsed: float,
    argv: list[str],
    config: RunConfig,
) -> dict[str, Any]:
    """The whole run as one JSON-ready dict: its metadata and a record per cell."""
    run = {
        **machine,
        "quick": quick,
        "elapsed_s": elapsed,
        "command": " ".join(["python -m benchmarks", *argv[1:]]),
        "versions": {name: versions[name] for name in impls},
        "config": asdict(config),
    }
    records = [record(row, row.cells[name]) for row in rows for name in impls if name in row.cells]
    return {"schema": SCHEMA, "run": run, "records": records}


def write(path: Path, data: dict[str, Any]) -> None:
    """Write `results` output as strict JSON (no NaN or Infinity literals), UTF-8."""
    text = json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False)
    Path(path).write_text(text + "\n", encoding="utf-8")


def read(path: Path) -> dict[str, Any]:
    """Read a results file back, with ``"inf"``/``"nan"`` numbers as floats again."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("schema") != SCHEMA:
        raise ValueError(
            f"{path}: results schema {data.get('schema')!r}, this reader knows {SCHEMA}; "
            "rerun `python -m benchmarks` to write it again"
        )
    for rec in data["records"]:
        for key in _NUMBERS:
            if isinstance(rec.get(key), str):
                rec[key] = float(rec[key])
    return data
