"""value_and_grad of an MLP over 10^7 samples on a Dask cluster: time and memory per worker.

    python -m benchmarks.dask_batches [--samples 10000000] [--sweep-samples 1000000]
                                      [--chunks 10000 25000 50000] [--hidden 256]
                                      [--out benchmarks/DASK.md]

The README's MLP, 784-hidden-10 with tanh and softmax cross-entropy, one array
constraint per layer, compiled once. Its inputs x (uniform pixels) and t (one-hot
labels) are made chunk by chunk on the workers by `dask.array.random` — never whole,
anywhere — and ``fn.value_and_grad(inputs, wrt=weights)`` runs each chunk on a
`distributed.LocalCluster` of two worker processes with one thread each (the nanny
pins BLAS to one thread too): the weights' gradients come back as NumPy arrays, summed
over the chunks by Dask's tree reduction, and the per-sample loss as a Dask array held
by the workers (8 bytes a sample), of which the total loss is computed.

First the gradient is checked against the NumPy run of the same (small) batch in this
process. Then, for each chunk size, on a fresh cluster (a clean heap), a thread
in each samples its resident memory every 5 ms during the call, and the wall time and
each worker's peak are recorded, with its resident memory before the call. The chunk
sizes run at ``--sweep-samples``; the chunk size in the middle of the list also at
``--samples``, so that the same chunk size is measured at two data sizes: if memory
follows the chunk size and not the data, its peaks agree but for the per-sample losses
the workers keep (``8 · samples / workers`` bytes, reported beside them).
"""

from __future__ import annotations

import argparse
import platform
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sympy as sp

import lagrangian_ad as lad

HERE = Path(__file__).resolve().parent
N_IN, CLASSES = 784, 10
WEIGHTS = ("W1", "b1", "W2", "b2")


def program(hidden: int) -> lad.CompiledProgram:
    """The MLP N_IN-hidden-CLASSES with softmax cross-entropy, as an array program."""
    prog = lad.Program()
    x = prog.input("x", (N_IN,), array=True)
    t = prog.input("t", (CLASSES,), array=True)
    W1, b1 = prog.input("W1", (hidden, N_IN), array=True), prog.input("b1", (hidden,), array=True)
    W2 = prog.input("W2", (CLASSES, hidden), array=True)
    b2 = prog.input("b2", (CLASSES,), array=True)
    h = prog.define("h", lad.tanh(W1 @ x + b1))
    y = prog.define("y", W2 @ h + b2)
    lse = prog.define("lse", sp.log(lad.sum(lad.exp(y))))
    prog.define("loss", lse - lad.sum(lad.mul(t, y)))
    return prog.compile()


def weights(hidden: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.standard_normal((hidden, N_IN)) / np.sqrt(N_IN),
        "b1": 0.1 * rng.standard_normal(hidden),
        "W2": rng.standard_normal((CLASSES, hidden)) / np.sqrt(hidden),
        "b2": 0.1 * rng.standard_normal(CLASSES),
    }


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(CLASSES)[labels]


def data(samples: int, chunk: int, seed: int = 1) -> dict:
    """x and t as Dask arrays made chunk by chunk where they are used."""
    import dask.array as da

    rng = da.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(samples, N_IN), chunks=(chunk, N_IN))
    labels = rng.integers(0, CLASSES, size=samples, chunks=chunk)
    t = labels.map_blocks(
        _one_hot, new_axis=1, chunks=(labels.chunks[0], (CLASSES,)), dtype=np.float64
    )
    return {"x": x, "t": t}


# --------------------------------------------------------------------------- memory


def _start_sampling(dask_worker) -> int:
    """In a worker: a thread recording the peak resident memory from now on."""
    import psutil

    proc = psutil.Process()
    state = {"peak": proc.memory_info().rss, "stop": False}

    def sample() -> None:
        while not state["stop"]:
            state["peak"] = max(state["peak"], proc.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    dask_worker._lad_memory = (state, thread)
    return state["peak"]


def _stop_sampling(dask_worker) -> int:
    state, thread = dask_worker._lad_memory
    state["stop"] = True
    thread.join()
    return state["peak"]


def _warm(dask_worker) -> None:
    """Import what a chunk needs (so that imports do not count as the call's memory)."""
    import dask.array  # noqa: F401

    import lagrangian_ad.solving._dask  # noqa: F401


# --------------------------------------------------------------------------- runs


def check(client, fn, params: dict) -> float:
    """The cluster's gradient against the NumPy run of the same batch: max rel. error."""
    inputs = {**data(3_000, 1_000, seed=7), **params}
    value, grad = fn.value_and_grad(inputs, wrt=WEIGHTS)
    local = {k: np.asarray(v.compute()) for k, v in inputs.items() if k in ("x", "t")}
    value0, grad0 = fn.value_and_grad({**local, **params}, wrt=WEIGHTS)
    errors = [np.max(np.abs(value.compute() - value0)) / np.max(np.abs(value0))]
    errors += [np.max(np.abs(grad[k] - grad0[k])) / np.max(np.abs(grad0[k])) for k in WEIGHTS]
    worst = float(max(errors))
    if worst > 1e-10:
        raise SystemExit(f"the cluster's gradient differs from NumPy's: {worst:.2e}")
    return worst


def _cluster():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        dashboard_address=None,
        memory_limit=None,
    )
    return cluster, Client(cluster)


def measure(fn, params: dict, samples: int, chunk: int) -> dict:
    """One row, on a cluster of its own (fresh worker processes: a clean heap)."""
    cluster, client = _cluster()
    with cluster, client:
        return _measure(client, fn, params, samples, chunk)


def _measure(client, fn, params: dict, samples: int, chunk: int) -> dict:
    client.run(_warm)
    before = client.run(_start_sampling)
    t0 = time.perf_counter()
    value, grad = fn.value_and_grad({**data(samples, chunk), **params}, wrt=WEIGHTS)
    total = float(value.sum().compute())
    seconds = time.perf_counter() - t0
    peaks = client.run(_stop_sampling)
    assert all(np.isfinite(g).all() for g in grad.values()) and np.isfinite(total)
    workers = sorted(peaks)
    return {
        "samples": samples,
        "chunk": chunk,
        "chunks": -(-samples // chunk),
        "seconds": seconds,
        "loss": total / samples,
        "before_mb": [before[w] / 2**20 for w in workers],
        "peak_mb": [peaks[w] / 2**20 for w in workers],
        "chunk_mb": chunk * (N_IN + CLASSES) * 8 / 2**20,
        "kept_mb": 8 * samples / len(workers) / 2**20,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| samples | chunk | chunks | one chunk of x, t | time | samples/s | "
        "peak RSS per worker | above start | losses kept per worker |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = " / ".join(f"{p:,.0f}" for p in r["peak_mb"])
        above = " / ".join(
            f"{p - b:,.0f}" for p, b in zip(r["peak_mb"], r["before_mb"], strict=True)
        )
        lines.append(
            f"| {r['samples']:,} | {r['chunk']:,} | {r['chunks']:,} | {r['chunk_mb']:,.0f} MB "
            f"| {r['seconds']:,.1f} s | {r['samples'] / r['seconds']:,.0f} | {peak} MB "
            f"| {above} MB | {r['kept_mb']:,.1f} MB |"
        )
    return "\n".join(lines)


def report(rows: list[dict], args, error: float, compile_s: float) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""# An MLP over {args.samples:,} samples on a Dask cluster

Measured {when} by `python -m benchmarks.dask_batches` (see its docstring), on
{platform.machine()} with {_cores()} cores: a `distributed.LocalCluster` of 2 worker
processes, one thread each. The program is the README's MLP with {args.hidden} hidden
units, {N_IN}-{args.hidden}-{CLASSES} (tanh, softmax cross-entropy; one array constraint per
layer, compiled in {compile_s:.2f} s); each call is
`fn.value_and_grad(inputs, wrt=["W1", "b1", "W2", "b2"])` with x and t Dask arrays made
chunk by chunk on the workers (`dask.array.random`, never whole), then the total loss
from the per-sample losses it returns. Before the runs, the
cluster's value and weight gradients matched the NumPy run of the same 3,000 samples to
{error:.1e} (max relative error).

Time is wall time for the call and the total loss, generating the data included. Peak
RSS is each worker's resident memory, sampled every 5 ms during the call (the workers
fresh for each row); "above start" subtracts its level before the call (the
interpreter, NumPy, Dask, lagrangian_ad). "Losses kept" is what the per-sample losses
the call returns take on each worker (8 bytes a sample): the one part of the memory
that grows with the data.

{table(rows)}

{_reading(rows, args)}
"""


def _reading(rows: list[dict], args) -> str:
    """What the rows say about memory: peaks in units of one chunk of x and t."""

    def in_chunks(r: dict) -> str:
        return " / ".join(
            f"{(p - b) / r['chunk_mb']:.1f}"
            for p, b in zip(r["peak_mb"], r["before_mb"], strict=True)
        )

    sweep = [r for r in rows if r["samples"] == args.sweep_samples]
    text = "Above its start, each worker's peak is " + "; ".join(
        f"{in_chunks(r)} chunks of x and t at chunk size {r['chunk']:,}" for r in sweep
    )
    text += (
        f" ({args.sweep_samples:,} samples): the peak follows the chunk size, a few chunks "
        "held at once (the one being run, the next ones made ahead of it, and the "
        "program's temporaries)."
    )
    same = [r for r in rows if r["chunk"] == args.pair_chunk]
    if len(same) >= 2:
        small, large = sorted(same, key=lambda r: r["samples"])[:: len(same) - 1]
        data_gb = large["samples"] * (N_IN + CLASSES) * 8 / 2 / 2**30
        grow = max(large["peak_mb"]) - max(small["peak_mb"])
        text += (
            f" At chunk size {args.pair_chunk:,}, {large['samples'] // small['samples']}× the "
            f"data ({small['samples']:,} → {large['samples']:,} samples, {data_gb:,.1f} GB of "
            f"x and t per worker at the larger size) moved the larger worker peak by "
            f"{grow:+,.0f} MB ({in_chunks(small)} → {in_chunks(large)} chunks), of which "
            f"{large['kept_mb'] - small['kept_mb']:,.0f} MB are the per-sample losses kept: "
            "memory per worker is bounded by a few chunks, not by the data."
        )
    return text + (f"\n\n{args.note}" if args.note else "")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--sweep-samples", type=int, default=1_000_000)
    parser.add_argument("--chunks", type=int, nargs="+", default=[10_000, 25_000, 50_000])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--out", type=Path, default=HERE / "DASK.md")
    parser.add_argument("--note", default="", help="a paragraph added to the report")
    args = parser.parse_args(argv)
    args.pair_chunk = args.chunks[len(args.chunks) // 2]
    t0 = time.perf_counter()
    fn = program(args.hidden)
    compile_s = time.perf_counter() - t0
    params = weights(args.hidden)
    cluster, client = _cluster()
    with cluster, client:
        error = check(client, fn, params)
    print(f"checked against NumPy: max relative error {error:.1e}")
    plan = [(args.sweep_samples, c) for c in args.chunks]
    if args.samples != args.sweep_samples:
        plan.append((args.samples, args.pair_chunk))
    rows = []
    for samples, chunk in plan:
        rows.append(measure(fn, params, samples, chunk))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        args.out.write_text(report(rows, args, error, compile_s))  # each row kept at once
    print(table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
