"""The zero cone {0} (equality rows). Its dual is the free cone ℝᵐ, so Π_{K*} = I."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from conelayers.cones._util import as_vector, check_selection
from conelayers.cones.base import ConeBlock, ConeJacobian, Selection


class IdentityJacobian(ConeJacobian):
    """J = I (the Jacobian of the identity map)."""

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return np.array(np.ravel(x), dtype=np.float64)

    def tosparse(self) -> sp.csc_matrix:
        return sp.identity(self.shape[0], dtype=np.float64, format="csc")

    def todense(self) -> np.ndarray:
        return np.eye(self.shape[0])

    def diagonal(self) -> np.ndarray:
        return np.ones(self.shape[0])


class ZeroCone(ConeBlock):
    """K = {0} ⊂ ℝ^size; K* = ℝ^size. No kinks."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"size must be nonnegative, got {size}")
        self.size = int(size)

    def __repr__(self) -> str:
        return f"ZeroCone({self.size})"

    def project_dual(self, v: np.ndarray) -> np.ndarray:
        return as_vector(v, self.size).copy()

    def project(self, v: np.ndarray) -> np.ndarray:
        as_vector(v, self.size)
        return np.zeros(self.size)

    def jacobian_dual(
        self, v: np.ndarray, selection: Selection = "lower", kink_tol: float = 0.0
    ) -> IdentityJacobian:
        as_vector(v, self.size)
        check_selection(selection, kink_tol)
        return IdentityJacobian(self.size)

    def kink_distance(self, v: np.ndarray) -> np.ndarray:
        """``inf`` per row: the identity has no kinks."""
        as_vector(v, self.size)
        return np.full(self.size, np.inf)
