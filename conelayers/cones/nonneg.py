"""The nonnegative orthant ℝᵐ₊ (self-dual): Π(v) = max(v, 0), J = diag(1[v > 0])."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from conelayers.cones._util import as_vector, check_selection
from conelayers.cones.base import ConeBlock, ConeJacobian, Selection


class DiagonalJacobian(ConeJacobian):
    """J = diag(q)."""

    def __init__(self, q: np.ndarray) -> None:
        super().__init__(q.shape[0])
        self.q = q

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self.q * np.ravel(x)

    def tosparse(self) -> sp.csc_matrix:
        return sp.diags(self.q, format="csc")

    def todense(self) -> np.ndarray:
        return np.diag(self.q)

    def diagonal(self) -> np.ndarray:
        return self.q


class NonnegCone(ConeBlock):
    """K = K* = ℝ^size₊. Kinks at vᵢ = 0, where qᵢ ∈ [0, 1]: "lower" takes 0 (as autograd
    of relu), "upper" takes 1."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"size must be nonnegative, got {size}")
        self.size = int(size)

    def __repr__(self) -> str:
        return f"NonnegCone({self.size})"

    def project_dual(self, v: np.ndarray) -> np.ndarray:
        return np.maximum(as_vector(v, self.size), 0.0)

    def project(self, v: np.ndarray) -> np.ndarray:
        return np.maximum(as_vector(v, self.size), 0.0)

    def jacobian_dual(
        self, v: np.ndarray, selection: Selection = "lower", kink_tol: float = 0.0
    ) -> DiagonalJacobian:
        v = as_vector(v, self.size)
        check_selection(selection, kink_tol)
        return DiagonalJacobian(self.jacobian_diagonal(v, selection, kink_tol))

    @staticmethod
    def jacobian_diagonal(
        v: np.ndarray, selection: Selection, kink_tol: float | np.ndarray
    ) -> np.ndarray:
        """The diagonal q of the Jacobian element at v; also for a stack of points
        (rows of a 2-d v, with one tolerance per row as a column)."""
        q = (v > kink_tol).astype(np.float64)
        if selection == "upper":
            q[np.abs(v) <= kink_tol] = 1.0
        return q

    def kink_distance(self, v: np.ndarray) -> np.ndarray:
        """|vᵢ| per row."""
        return np.abs(as_vector(v, self.size))
