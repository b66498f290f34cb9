"""PyTorch eager on the CPU, float64, one thread: ``torch.autograd.grad`` of the batch sum.

Inputs become leaf tensors once (``torch.from_numpy``, no copy); each timed
value_and_grad call runs the forward pass and ``torch.autograd.grad(y.sum(), leaves)``.
``value`` runs under ``torch.no_grad()``. Peak memory is read from the profiler's
allocator events (``profile_memory=True``): the highest level of live CPU tensor memory
during one call, above the level before it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

import numpy as np

from . import array_models
from .implementations import Bench, Memory
from .problems import Inputs, Problem, deq_steps

LABEL = "PyTorch eager"


def available() -> tuple[bool, str]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False, "not installed (pip install torch==2.13.0)"
    return True, ""


def version() -> str:
    import torch

    return torch.__version__


def _torch():
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # allowed only before any parallel work
        torch.set_num_interop_threads(1)
    return torch


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ chatter on file descriptor 2."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _profiled_peak(fn) -> Memory:
    _torch()
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = fn()
        del result
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "trace.json")
            prof.export_chrome_trace(path)
            with open(path) as fh:
                trace = json.load(fh)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    if not mem:
        return Memory(0, "profiler")
    # "Total Allocated" counts every live CPU tensor, those from before the call included:
    # measure from the level just before the call's first allocation.
    base = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return Memory(max(e["args"]["Total Allocated"] for e in mem) - base, "profiler")


def _bench(f, inputs: Inputs, note: str = "", wrt: tuple[str, ...] | None = None) -> Bench:
    """``f(**leaves)`` and the gradients of its batch sum for the inputs in ``wrt`` (all
    by default; the others are tensors that do not require grad)."""
    torch = _torch()
    leaves = {
        name: torch.from_numpy(np.array(a, dtype=np.float64)).requires_grad_(
            wrt is None or name in wrt
        )
        for name, a in inputs.items()
    }
    names = [n for n in leaves if wrt is None or n in wrt]

    def value():
        with torch.no_grad():
            return f(**leaves)

    def value_and_grad():
        y = f(**leaves)
        grads = torch.autograd.grad(y.sum(), [leaves[n] for n in names])
        return y.detach(), dict(zip(names, grads, strict=True))

    def to_numpy(result: Any):
        y, grads = result
        return y.numpy(), {n: g.numpy() for n, g in grads.items()}

    return Bench(
        value=value,
        value_and_grad=value_and_grad,
        to_numpy=to_numpy,
        memory=lambda: _profiled_peak(value_and_grad),
        note=note,
    )


def blog(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    torch = _torch()
    return _bench(lambda x: array_models.blog(torch, x), inputs)


def mlp(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    torch = _torch()
    return _bench(lambda **a: array_models.mlp(torch, **a), inputs, note="matrix ops")


def chain(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    torch = _torch()
    steps = problem.sizes["steps"]

    def f(x):
        z = x
        for _ in range(steps):
            z = torch.sin(z + x)
        return z

    return _bench(f, inputs, note="Python loop")


def equilibrium(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    torch = _torch()
    steps = problem.sizes["unroll"]
    return _bench(
        lambda **a: array_models.equilibrium_unrolled(torch, steps=steps, **a),
        inputs,
        note=f"backprop through {steps} unrolled iterations",
    )


def mlp784(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    torch = _torch()

    def lse(y):
        return torch.logsumexp(y, dim=-1)

    return _bench(
        lambda **a: array_models.mlp_softmax(torch, lse, **a),
        inputs,
        note="matrix ops, torch.logsumexp",
        wrt=problem.wrt,
    )


def deq(problem: Problem, inputs: Inputs, batch: int) -> Bench:
    torch = _torch()
    steps = deq_steps(inputs)
    return _bench(
        lambda **a: array_models.deq_unrolled(torch, steps=steps, **a),
        inputs,
        note=f"backprop through {steps} unrolled iterations (the forward tolerance)",
        wrt=problem.wrt,
    )


BUILDERS = {
    "blog": blog,
    "mlp": mlp,
    "chain": chain,
    "equilibrium": equilibrium,
    "mlp784": mlp784,
    "deq": deq,
}
