"""The README's Python code blocks run as written, and what they claim holds."""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _run(block: str) -> dict:
    namespace: dict = {}
    with warnings.catch_warnings():
        exec(compile(block, str(README), "exec"), namespace)
    return namespace


def test_readme_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    block = BLOCKS[index]
    if "import jax" in block and importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    ns = _run(block)
    if "A_t" in ns:  # the quick start: gradients were written
        assert ns["A_t"].grad is not None and ns["b_t"].grad is not None
    if "sens" in ns:  # the sensitivity example: d p*/dh is the constraint's dual
        prob = ns["problem"]
        import cvxpy as cp

        prob.solve(solver=cp.CLARABEL)
        assert ns["sens"].objective_gradient()["h"] == pytest.approx(
            float(prob.constraints[0].dual_value), rel=1e-6)
        assert ns["sens"].report.verdict == "ok"
    if "batched" in ns:  # the JAX sparsemax Jacobians: rows sum to 0 on the simplex
        np.testing.assert_allclose(np.asarray(ns["batched"]).sum(axis=1), 0.0, atol=1e-8)
