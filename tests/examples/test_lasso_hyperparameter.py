"""The Lasso example on a reduced run: gradient descent through the layer ends within
0.1 in log10 λ of the minimizer of the validation-error grid (computed with the same
layer, spacing 0.1, so the grid itself resolves the minimum to ±0.05)."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conelayers.exceptions import ConelayersWarning, NonUniqueSolutionWarning

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from conelayers.torch import CvxpyLayer  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lasso_hyperparameter.py"


def _load():
    spec = importlib.util.spec_from_file_location("lasso_hyperparameter", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_descent_reaches_grid_minimizer(tmp_path):
    example = _load()
    with warnings.catch_warnings():
        # Every solve is accurate and every gradient justified: no warning at all.
        warnings.simplefilter("error", ConelayersWarning)
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
    X, y, X_val, _ = example.diabetes_split()
    problem, lam_param, beta, prediction = example.lasso_problem(X, y, X_val)
    layer = CvxpyLayer(problem, parameters=[lam_param], variables=[beta, prediction])
    for lam in (1.0, 100.0, 750.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonUniqueSolutionWarning)
            beta_hat, pred = layer(torch.tensor(lam, dtype=torch.float64))
        b = cp.Variable(X.shape[1])
        prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(X @ b - y) + lam * cp.norm1(b)))
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        b_hat = beta_hat.numpy()
        ours = 0.5 * np.sum((X @ b_hat - y) ** 2) + lam * np.abs(b_hat).sum()
        assert ours == pytest.approx(prob.value, rel=1e-9)
        # Predictions are unique even though β̂ is not (duplicated feature).
        scale = np.abs(pred.numpy()).max()
        np.testing.assert_allclose(pred.numpy(), X_val @ b.value, atol=1e-5 * scale)


def test_beta_output_warns_non_unique():
    """Requesting β̂ itself: the duplicated feature makes it non-unique, and the layer
    says so before returning the gradient."""
    import torch

    example = _load()
    X, y, X_val, _ = example.diabetes_split()
    problem, lam_param, beta, _ = example.lasso_problem(X, y, X_val)
    layer = CvxpyLayer(problem, parameters=[lam_param], variables=[beta])
    lam = torch.tensor(400.0, dtype=torch.float64, requires_grad=True)
    (beta_hat,) = layer(lam)
    with pytest.warns(NonUniqueSolutionWarning, match="instance 0"):
        beta_hat.sum().backward()
