"""A parametrized problem in the Python-file convention of canonicalize.readers:
a module-level `problem` whose parameters all have values."""

import cvxpy as cp
import numpy as np

n = 3
mu = cp.Parameter(n, name="mu", value=np.array([1.0, 0.6, 0.3]))
gamma = cp.Parameter(nonneg=True, name="gamma", value=2.0)
B = cp.Parameter((2, n), name="B", value=np.array([[1.0, 0.0, 1.0], [0.0, 2.0, 1.0]]))
d = cp.Parameter(2, name="d", value=np.array([0.8, 1.5]))
Sigma_half = np.array([[0.5, 0.1, 0.0], [0.0, 0.4, 0.1], [0.0, 0.0, 0.3]])

w = cp.Variable(n, name="w")
problem = cp.Problem(
    cp.Maximize(mu @ w - gamma * cp.sum_squares(Sigma_half @ w)),
    [cp.sum(w) == 1, w >= 0, B @ w <= d],
)

if __name__ == "__main__":  # not run by the reader
    raise SystemExit("run as a script")
