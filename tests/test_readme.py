"""The README's examples run as written and say what they compute."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_array_example_runs_and_its_gradient_is_backprop(capsys):
    namespace: dict = {}
    exec(compile(_blocks()[0], "README.md", "exec"), namespace)  # our own file, not user text
    d = namespace["data"]
    h = np.tanh(d["x"] @ d["W1"].T + d["b1"])
    y = h @ d["W2"].T + d["b2"]
    p = np.exp(y - y.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    gy = p - d["t"]
    ga = (gy @ d["W2"]) * (1 - h**2)
    np.testing.assert_allclose(namespace["grad"]["W1"], ga.T @ d["x"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(namespace["grad"]["b2"], gy.sum(0), rtol=1e-10, atol=1e-12)
    assert "matmul" in capsys.readouterr().out  # the printed adjoint is array code


def test_the_constrained_example_holds_its_comments():
    block = next(b for b in _blocks() if "subject_to" in b)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # our own file, not user text
    res = namespace["res"]
    # the nearest point of the unit disc to (2, 1) is (2, 1)/√5; there ∇f = −μ ∇g gives
    # μ = √5 − 1, and f* = (√5 − √r)² has ∂f*/∂r = −(√5 − 1) at r = 1
    mu = np.sqrt(5) - 1
    assert res.success
    np.testing.assert_allclose([res.x["x"], res.x["y"]], np.array([2, 1]) / np.sqrt(5), atol=1e-8)
    np.testing.assert_allclose(res.multipliers["disc"], mu, atol=1e-7)
    np.testing.assert_allclose(res.multipliers["g2"], 0, atol=1e-7)
    np.testing.assert_allclose(res.sensitivity["r"], -mu, atol=1e-7)


def test_the_batched_constraint_example_holds_its_comments():
    block = [b for b in _blocks() if "subject_to" in b][1]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # our own file, not user text
    res, points = namespace["res"], namespace["points"]
    assert res.success
    mu = res.multipliers["upper"]
    assert mu.shape == points.shape and np.min(mu) >= 0
    assert isinstance(res.multipliers["gain"], float)
    w = res.x["w"]
    y = w[2] * np.tanh(w[0] * points + w[1]) + w[3]
    assert np.max(y) <= 0.8 + 1e-8  # the bound holds at every point
    binding = np.abs(y - 0.8) <= 1e-6
    assert binding.any() and not binding.all()
    assert np.all(mu[~binding] <= 1e-6)  # nonzero only where the bound binds


def test_the_estimators_example_holds_its_comments():
    block = next(b for b in _blocks() if "energy_program" in b)
    namespace: dict = {"np": np, "lad": __import__("lagrangian_ad")}
    exec(compile(block, "README.md", "exec"), namespace)  # our own file, not user text
    ep, inputs = namespace["ep"], namespace["inputs"]
    _, exact = ep.value_and_grad(inputs)
    est = namespace["grad"]
    g = np.concatenate([np.ravel(exact[k]) for k in exact])
    e = np.concatenate([np.ravel(est[k]) for k in exact])
    rel = np.linalg.norm(e - g) / np.linalg.norm(g)
    assert 1e-8 < rel < 1e-6  # "about 1e-7": O(β²) at β = 1e-3, not rounding
    assert 0 < namespace["rep"].cosine_all <= 1
