"""The Lasso example on a reduced run: gradient descent through the layer ends within
0.1 in log10 λ of the minimizer of the validation-error grid (computed with the same
layer, spacing 0.1, so the grid itself resolves the minimum to ±0.05)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lasso_hyperparameter.py"


def _load():
    spec = importlib.util.spec_from_file_location("lasso_hyperparameter", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_descent_reaches_grid_minimizer(tmp_path):
    example = _load()
    result = example.run(steps=25, grid=51, verbose=False)
    assert abs(result.final - result.grid_best) <= 0.1
    # The minimum is interior and clearly below both ends of λ ∈ [0.1, 1e4].
    assert 0 < np.argmin(result.grid_error) < len(result.grid_error) - 1
    assert result.grid_error.min() < 0.6 * min(result.grid_error[0], result.grid_error[-1])
    # Descent decreased the validation error.
    assert result.path_error[-1] < result.path_error[0]
    out = tmp_path / "lasso.png"
    example.plot(result, str(out))
    assert out.stat().st_size > 10_000


def test_layer_solution_matches_clarabel():
    """The ill-conditioned design (cond ≈ 3e14) is where an SOC-only reformulation went
    wrong; with the quadratic objective kept, the layer's objective value matches an
    interior-point solver to 1e-9 relative."""
    import cvxpy as cp
    import torch

    example = _load()
    X, y, _, _ = example.diabetes_split()
    layer = example.lasso_layer(X, y)
    for lam in (1.0, 100.0, 750.0):
        (beta,) = layer(torch.tensor(lam, dtype=torch.float64))
        b = cp.Variable(X.shape[1])
        prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(X @ b - y) + lam * cp.norm1(b)))
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        ours = 0.5 * np.sum((X @ beta.numpy() - y) ** 2) + lam * np.abs(beta.numpy()).sum()
        assert ours == pytest.approx(prob.value, rel=1e-9)
