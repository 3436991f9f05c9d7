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
    hold several vectors as columns; each output then has one column per vector."""
    ru, rv = r[: x.size], r[x.size :]
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
