"""Derivative (jvp) and adjoint (vjp) of a cone program's solution in its data.

At a solution z = (x, y − s) of N(z) = 0 with U = ∂N/∂z (a Clarke selection):

    ∂N[dP, dA, db, dc] = (dP·x + dAᵀy + dc, −dA·x + db)
    jvp:  dz = −U⁻¹ ∂N[...];  dx = du, dy = J dv, ds = J dv − dv
    vjp:  ḡ = (x̄, J(ȳ + s̄) − s̄),  Uᵀr = ḡ;
          c̄ = −r_u, b̄ = −r_v, Ā = r_v xᵀ − y r_uᵀ, P̄ = −r_u xᵀ  (on the stored patterns)

Matrices enter only through their stored entries (``*_values`` aligned with a fixed CSC
pattern): nothing here is dense in (m × n).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from conelayers.residual import LinearSolveInfo, ResidualJacobian


@dataclass(frozen=True)
class Pattern:
    """Row and column of each stored entry of a sparse matrix, in storage order."""

    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]

    def matvec(self, values: np.ndarray, w: np.ndarray) -> np.ndarray:
        """(M w) for the matrix M with these stored ``values``."""
        return np.bincount(self.rows, values * w[self.cols], minlength=self.shape[0])

    def rmatvec(self, values: np.ndarray, w: np.ndarray) -> np.ndarray:
        """(Mᵀ w)."""
        return np.bincount(self.cols, values * w[self.rows], minlength=self.shape[1])

    def outer(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Stored entries of left·rightᵀ; with one factor of shape (·, k), the stored
        entries of k such products, shape (nnz, k)."""
        lv, rv = left[self.rows], right[self.cols]
        if lv.ndim != rv.ndim:
            lv, rv = (lv[:, None], rv) if lv.ndim == 1 else (lv, rv[:, None])
        return lv * rv


def data_cotangent(
    r: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    A_pattern: Pattern | None,
    P_pattern: Pattern | None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray | None]:
    """−(∂N/∂data)ᵀ r as (Ā values, b̄, c̄, P̄ values): Ā = r_v xᵀ − y r_uᵀ, b̄ = −r_v,
    c̄ = −r_u, P̄ = −r_u xᵀ on the stored patterns (n = x.size splits r); Ā (P̄) is None
    without a pattern (a constant matrix: no parameter to pass it back to). ``r`` may
    hold several vectors as columns; each output then has one column per vector (with
    x and y either one vector for all, or one column each)."""
    ru, rv = r[: x.shape[0]], r[x.shape[0] :]
    A_bar = None
    if A_pattern is not None:
        A_bar = A_pattern.outer(rv, x) - A_pattern.outer(y, ru)
    P_bar = -P_pattern.outer(ru, x) if P_pattern is not None else None
    return A_bar, -rv, -ru, P_bar


class SolutionDerivative:
    """jvp and vjp of (x, y, s) at one solved instance."""

    def __init__(
        self,
        jacobian: ResidualJacobian,
        x: np.ndarray,
        y: np.ndarray,
        s: np.ndarray,
        A_pattern: Pattern,
        P_pattern: Pattern | None,
        method: str = "auto",
        visible: np.ndarray | None = None,
        constant: tuple[bool, bool] = (False, False),
    ) -> None:
        self.U = jacobian
        # Coordinates of z the caller reads (the requested outputs): solves may skip
        # the blocks of U decoupled from them (ResidualJacobian.solve).
        self.visible = visible
        # (A, P) constant in the parameters: the vjp skips their cotangents.
        self.constant = constant
        self.x, self.y, self.s = x, y, s
        self.A_pattern, self.P_pattern = A_pattern, P_pattern
        self.n, self.m = x.size, y.size
        self.method = method
        self.last_solve: LinearSolveInfo | None = None

    def jvp(
        self,
        dA_values: np.ndarray,
        db: np.ndarray,
        dc: np.ndarray,
        dP_values: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dx, dy, ds) for a perturbation of the data."""
        top = self.A_pattern.rmatvec(dA_values, self.y) + dc
        if dP_values is not None and self.P_pattern is not None:
            top = top + self.P_pattern.matvec(dP_values, self.x)
        bottom = db - self.A_pattern.matvec(dA_values, self.x)
        dz, self.last_solve = self.U.solve(
            -np.concatenate([top, bottom]), method=self.method, visible=self.visible
        )
        du, dv = dz[: self.n], dz[self.n :]
        dy = self.U.J.matvec(dv)
        return du, dy, dy - dv

    def vjp(
        self, dx: np.ndarray, dy: np.ndarray, ds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(Ā values, b̄, c̄, P̄ values) for the gradient (x̄, ȳ, s̄) on the solution."""
        g = np.concatenate([dx, self.U.J.matvec(dy + ds) - ds])
        r, self.last_solve = self.U.solve(
            g, transpose=True, method=self.method, visible=self.visible
        )
        A_pattern = None if self.constant[0] else self.A_pattern
        P_pattern = None if self.constant[1] else self.P_pattern
        return data_cotangent(r, self.x, self.y, A_pattern, P_pattern)


BATCH_SOLVE_RTOL = 1e-8
"""Relative residual a batched solve must reach; an instance above it is solved again
on its own (``ResidualJacobian.solve``), as a direct solve that misses it is there."""


def vjp_many(
    derivatives: Sequence[SolutionDerivative], dX: np.ndarray, dY: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray | None]:
    """``vjp`` of several instances at once (gradients on x and y as columns, s̄ = 0),
    each with a regular dense LU (``ResidualJacobian.regular_dense_lu``): the solves with
    Uᵀ use the LAPACK factors directly, refined twice against the stacked U, and the data
    cotangents come out as columns (one per instance). On small programs this replaces
    ~0.15 ms of per-instance Python (qp/small) by a few stacked products."""
    lus = [d.U.regular_dense_lu() for d in derivatives]
    G = np.stack([
        np.concatenate([dX[:, i], d.U.J.matvec(dY[:, i])]) for i, d in enumerate(derivatives)
    ])
    U = np.stack([lu.U for lu in lus])

    def solve(rhs: np.ndarray) -> np.ndarray:
        return np.stack([lu.solve_factor(r, transpose=True) for lu, r in zip(lus, rhs)])

    def apply(W: np.ndarray) -> np.ndarray:  # Uᵀw per row
        return np.matmul(W[:, None, :], U)[:, 0, :]

    W = solve(G)
    for _ in range(2):
        W += solve(G - apply(W))
    scale = np.maximum(np.linalg.norm(G, axis=1), 1e-300)
    res = np.linalg.norm(G - apply(W), axis=1) / scale
    for i, d in enumerate(derivatives):
        if not res[i] <= BATCH_SOLVE_RTOL:  # also NaN
            W[i], d.last_solve = d.U.solve(G[i], transpose=True, method=d.method,
                                           visible=d.visible)
        else:
            d.last_solve = LinearSolveInfo("direct", float(res[i]))
    first = derivatives[0]
    X = np.stack([d.x for d in derivatives], axis=1)
    Y = np.stack([d.y for d in derivatives], axis=1)
    A_pattern = None if first.constant[0] else first.A_pattern
    P_pattern = None if first.constant[1] else first.P_pattern
    return data_cotangent(W.T, X, Y, A_pattern, P_pattern)
