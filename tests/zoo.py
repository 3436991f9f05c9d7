"""A shared zoo of named, parametrized CVXPY problems used by the core, torch (and jax)
tests. Each entry builds (problem, parameters, variables, values) with values drawn from
a seeded RNG at a point where the solution is unique and the map is smooth (strict
complementarity), so central finite differences are a valid reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import numpy as np


@dataclass
class ZooProblem:
    name: str
    problem: cp.Problem
    parameters: list
    variables: list
    values: list  # numpy arrays, one per parameter (may carry a leading batch axis)
    # The independent solver of the finite-difference reference: Clarabel (1e-12) for
    # LP/QP; SCS at eps 1e-12 for SOC, PSD and exponential cones, where Clarabel's
    # answers carried a ~1e-5 relative bias (measured: 2.7e-3 error in a directional
    # derivative of the entropy problem, against 1e-9 with SCS).
    fd_solver: str = "CLARABEL"


def lp(rng: np.random.Generator) -> ZooProblem:
    """min cᵀx s.t. Gx ≤ h, 0 ≤ x ≤ 1 (a random LP with a nondegenerate vertex)."""
    n, m = 8, 5
    G = rng.standard_normal((m, n))
    c, h = cp.Parameter(n), cp.Parameter(m)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(c @ x), [G @ x <= h, x >= 0, x <= 1])
    return ZooProblem("lp", prob, [c, h], [x], [rng.standard_normal(n), rng.uniform(0.5, 1.5, m)])


def qp(rng: np.random.Generator) -> ZooProblem:
    """min ½‖Lx‖² + qᵀx s.t. Gx ≤ h (quadratic objective kept as P)."""
    n, m = 6, 4
    L = rng.standard_normal((2 * n, n))
    G = rng.standard_normal((m, n))
    q, h = cp.Parameter(n), cp.Parameter(m)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ x) + q @ x), [G @ x <= h])
    return ZooProblem("qp", prob, [q, h], [x], [3 * rng.standard_normal(n), rng.uniform(0, 1, m)])


def least_squares(rng: np.random.Generator) -> ZooProblem:
    """min ‖Ax − b‖² + ‖x‖² (closed form (AᵀA + I)⁻¹Aᵀb), A and b both parameters."""
    m, n = 12, 5
    A, b = cp.Parameter((m, n)), cp.Parameter(m)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + cp.sum_squares(x)))
    return ZooProblem("least_squares", prob, [A, b], [x],
                      [rng.standard_normal((m, n)), rng.standard_normal(m)])


def socp(rng: np.random.Generator) -> ZooProblem:
    """min cᵀx s.t. ‖Aᵢx + bᵢ‖ ≤ 1, ‖x‖ ≤ 2 (second-order cones)."""
    n, K, k = 5, 3, 3
    As = [rng.standard_normal((k, n)) for _ in range(K)]
    c = cp.Parameter(n)
    B = cp.Parameter((K, k))
    x = cp.Variable(n)
    cons = [cp.norm(As[i] @ x + B[i, :]) <= 1 for i in range(K)] + [cp.norm(x) <= 2]
    prob = cp.Problem(cp.Minimize(c @ x), cons)
    return ZooProblem("socp", prob, [c, B], [x],
                      [rng.standard_normal(n), 0.1 * rng.standard_normal((K, k))], fd_solver="SCS")


def sdp(rng: np.random.Generator) -> ZooProblem:
    """Nearest correlation matrix: min ‖X − C‖²_F s.t. X ⪰ 0, diag X = 1 (4×4 PSD var)."""
    n = 4
    C = cp.Parameter((n, n))
    X = cp.Variable((n, n), PSD=True)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - C)), [cp.diag(X) == 1])
    M = rng.standard_normal((n, n))
    value = (M + M.T) / 2 + np.eye(n)
    return ZooProblem("sdp", prob, [C], [X], [value], fd_solver="SCS")


def entropy(rng: np.random.Generator) -> ZooProblem:
    """max Σ entr(x) + aᵀx s.t. Fx ≤ g, Σx = 1 (exponential cones)."""
    n, p = 5, 2
    F = rng.standard_normal((p, n))
    a, g = cp.Parameter(n), cp.Parameter(p)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Maximize(cp.sum(cp.entr(x)) + a @ x), [F @ x <= g, cp.sum(x) == 1])
    g0 = F @ np.full(n, 1.0 / n) + rng.uniform(0.2, 0.5, p)
    return ZooProblem("entropy", prob, [a, g], [x], [rng.standard_normal(n), g0],
                      fd_solver="SCS")


def logistic(rng: np.random.Generator) -> ZooProblem:
    """Regularized logistic regression: data matrix and λ are parameters (exp cones)."""
    N, n = 8, 2
    X = cp.Parameter((N, n))
    lam = cp.Parameter(nonneg=True)
    labels = (rng.uniform(size=N) > 0.5).astype(float)
    w = cp.Variable(n)
    loss = cp.sum(cp.multiply(labels, X @ w)) - cp.sum(cp.logistic(X @ w))
    prob = cp.Problem(cp.Minimize(-loss / N + lam * cp.sum_squares(w)))
    return ZooProblem("logistic", prob, [X, lam], [w],
                      [rng.standard_normal((N, n)), np.array(0.1)], fd_solver="SCS")


def matrix_variable(rng: np.random.Generator) -> ZooProblem:
    """min ‖AX − B‖²_F + ‖X‖²_F s.t. X ≥ −1 with a 4×3 matrix variable."""
    m, n, k = 6, 4, 3
    A = rng.standard_normal((m, n))
    B = cp.Parameter((m, k))
    X = cp.Variable((n, k))
    prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ X - B) + cp.sum_squares(X)), [X >= -0.2])
    return ZooProblem("matrix_variable", prob, [B], [X], [rng.standard_normal((m, k))])


def batched_qp(rng: np.random.Generator) -> ZooProblem:
    """The QP with a batch of 3 linear terms and a broadcast (unbatched) right-hand side."""
    z = qp(rng)
    q0, h0 = z.values
    z.values = [q0 + 0.5 * rng.standard_normal((3, q0.size)), h0]
    z.name = "batched_qp"
    return z


def batched_socp(rng: np.random.Generator) -> ZooProblem:
    """The SOCP with both parameters batched (batch of 2)."""
    z = socp(rng)
    c0, B0 = z.values
    z.values = [np.stack([c0, c0 + 0.3 * rng.standard_normal(c0.size)]),
                np.stack([B0, B0 + 0.05 * rng.standard_normal(B0.shape)])]
    z.name = "batched_socp"
    return z


BUILDERS = {f.__name__: f for f in (
    lp, qp, least_squares, socp, sdp, entropy, logistic, matrix_variable, batched_qp,
    batched_socp,
)}


def make(name: str, seed: int = 0) -> ZooProblem:
    return BUILDERS[name](np.random.default_rng(seed))


def reference_solution(z: ZooProblem, values: list[np.ndarray]) -> list[np.ndarray]:
    """Solve with CVXPY and an independent solver at tight tolerance, instance by
    instance; outputs stacked over the batch as (B, *shape) if any value is batched."""
    batch = None
    for p, v in zip(z.parameters, values):
        if np.ndim(v) == len(p.shape) + 1:
            batch = np.shape(v)[0]
    outs = []
    for k in range(batch or 1):
        for p, v in zip(z.parameters, values):
            p.value = v[k] if (batch is not None and np.ndim(v) == len(p.shape) + 1) else v
        if z.fd_solver == "SCS":
            z.problem.solve(solver=cp.SCS, eps_abs=1e-12, eps_rel=1e-12, max_iters=200_000)
        else:
            z.problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12,
                            tol_feas=1e-12, tol_ktratio=1e-10, max_iter=500)
        outs.append([np.asarray(v.value, dtype=float) for v in z.variables])
    stacked = [np.stack([o[i] for o in outs]) for i in range(len(z.variables))]
    return stacked if batch is not None else [s[0] for s in stacked]
