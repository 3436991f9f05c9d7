"""Tune the Lasso's regularization weight by gradient descent through a conelayers layer.

Data: scikit-learn's bundled diabetes set (no download), expanded to its 65 degree-2
features (the 10 raw ones, their squares and pairwise products), standardized on 150
training samples; the remaining 292 samples are the validation set. The layer solves

    β̂(λ) = argmin_β ½‖Xβ − y‖² + λ‖β‖₁

and gradient descent on t = log₁₀ λ lowers the validation error ‖X_val β̂ − y_val‖²/n_val.
The design is ill-conditioned (cond(X) ≈ 3e14: the 'sex' feature takes two values, so its
square duplicates it up to an affine map). So β̂ itself is not unique: weight can move
between those two coefficients, and a layer that outputs β̂ warns with
NonUniqueSolutionWarning, rightly. The validation predictions X_val β̂ are unique, and
they are what the loss needs: the layer outputs them, the trust checks find that the
null direction has no weight on them (DESIGN.md §4), and no warning fires.

Run: python examples/lasso_hyperparameter.py [--steps N] [--grid N] [--out FILE.png]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
import torch
from sklearn.datasets import load_diabetes
from sklearn.preprocessing import PolynomialFeatures

from conelayers.torch import CvxpyLayer


@dataclass
class LassoRun:
    grid_log_lambda: np.ndarray
    grid_error: np.ndarray
    path_log_lambda: list[float]
    path_error: list[float]

    @property
    def grid_best(self) -> float:
        return float(self.grid_log_lambda[np.argmin(self.grid_error)])

    @property
    def final(self) -> float:
        return self.path_log_lambda[-1]


def diabetes_split(n_train: int = 150, seed: int = 0):
    """Degree-2 features, standardized with training statistics; centered targets."""
    X, y = load_diabetes(return_X_y=True)
    X = PolynomialFeatures(degree=2, include_bias=False).fit_transform(X)
    perm = np.random.default_rng(seed).permutation(len(y))
    train, val = perm[:n_train], perm[n_train:]
    mean, std = X[train].mean(axis=0), X[train].std(axis=0)
    y_mean = y[train].mean()
    return ((X[train] - mean) / std, y[train] - y_mean,
            (X[val] - mean) / std, y[val] - y_mean)


def lasso_problem(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray):
    """The Lasso with the validation predictions as a variable: (problem, λ, β, X_val β)."""
    beta = cp.Variable(X_train.shape[1], name="beta")
    prediction = cp.Variable(X_val.shape[0], name="prediction")
    lam = cp.Parameter(nonneg=True, name="lam")
    objective = 0.5 * cp.sum_squares(X_train @ beta - y_train) + lam * cp.norm1(beta)
    problem = cp.Problem(cp.Minimize(objective), [prediction == X_val @ beta])
    return problem, lam, beta, prediction


def lasso_layer(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray) -> CvxpyLayer:
    """λ ↦ the validation predictions X_val β̂(λ)."""
    problem, lam, _beta, prediction = lasso_problem(X_train, y_train, X_val)
    return CvxpyLayer(problem, parameters=[lam], variables=[prediction])


def run(steps: int = 40, grid: int = 61, start: float = 0.0, lr: float = 0.6,
        seed: int = 0, verbose: bool = True) -> LassoRun:
    """Grid of the validation error over λ ∈ [0.1, 1e4], then gradient descent on
    log₁₀ λ from ``start`` with step ``lr`` on the log of the validation error."""
    X_tr, y_tr, X_val, y_val = diabetes_split(seed=seed)
    layer = lasso_layer(X_tr, y_tr, X_val)
    yv = torch.tensor(y_val)

    def validation_error(log_lambda: torch.Tensor) -> torch.Tensor:
        (prediction,) = layer(10.0 ** log_lambda)
        return ((prediction - yv) ** 2).mean(dim=-1)

    grid_t = np.linspace(-1.0, 4.0, grid)
    with torch.no_grad():  # one batched call: the whole grid is one batch
        grid_err = validation_error(torch.tensor(grid_t)).numpy()

    t = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    path_t, path_err = [], []
    for k in range(steps):
        err = validation_error(t)
        (grad,) = torch.autograd.grad(torch.log(err), t)
        path_t.append(t.item())
        path_err.append(err.item())
        if verbose:
            print(f"step {k:3d}  log10(lambda) = {t.item():7.4f}  validation MSE = "
                  f"{err.item():9.2f}  d log(MSE)/d log10(lambda) = {grad.item():+.4f}")
        with torch.no_grad():
            t -= lr * grad
    path_t.append(t.item())
    with torch.no_grad():
        path_err.append(validation_error(t).item())
    return LassoRun(grid_t, grid_err, path_t, path_err)


def plot(result: LassoRun, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.grid_log_lambda, result.grid_error, "-", color="0.4",
            label="validation MSE (grid, same layer)")
    ax.plot(result.path_log_lambda, result.path_error, "o-", color="C3", ms=3,
            label="gradient descent on log10 λ")
    ax.axvline(result.grid_best, color="0.6", ls=":", label="grid minimizer")
    ax.set_xlabel("log10 λ")
    ax.set_ylabel("validation mean squared error")
    ax.set_title("Lasso on diabetes (65 degree-2 features): tuning λ through the layer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> LassoRun:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--grid", type=int, default=61)
    parser.add_argument("--start", type=float, default=0.0, help="initial log10 lambda")
    parser.add_argument("--out", default="lasso_hyperparameter.png")
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    t0 = time.perf_counter()
    result = run(steps=args.steps, grid=args.grid, start=args.start)
    plot(result, args.out)
    print(f"grid minimizer: log10(lambda) = {result.grid_best:.3f}; descent reached "
          f"{result.final:.3f} (|difference| = {abs(result.final - result.grid_best):.3f}); "
          f"{time.perf_counter() - t0:.1f} s; figure: {args.out}")
    return result


if __name__ == "__main__":
    main()
