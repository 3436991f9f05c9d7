"""The interface every cone implements: projection onto the dual cone, a Clarke
Jacobian of that projection as a linear operator, and the distance to its kinks.

A *block* is a run of cones of one kind laid out contiguously (all nonnegative rows,
all second-order cones, ...), so that each kind can vectorize over its cones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

_FLOAT64 = np.dtype(np.float64)

Selection = Literal["lower", "upper"]
"""Which element of the Clarke Jacobian to use at (or within ``kink_tol`` of) a kink.

``"lower"`` (the default) takes the smallest element in the Loewner order among the
adjacent smooth pieces (for the nonnegative cone, q = 0 at v = 0, as autograd of relu);
``"upper"`` the largest (q = 1).
"""

SELECTIONS: tuple[Selection, ...] = ("lower", "upper")


class ConeJacobian(LinearOperator):
    """A symmetric Clarke-Jacobian element J of a cone projection, as an operator.

    ``matvec``/``rmatvec`` are matrix-free; ``tosparse`` gives the same matrix as a
    SciPy sparse matrix (for direct factorizations of small systems).
    """

    def __init__(self, size: int) -> None:
        # What LinearOperator.__init__ sets, without its validation: Jacobians are
        # built per instance and Newton step, and the checks cost more than the rest.
        self.dtype = _FLOAT64
        self.shape = (size, size)

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """J x; a 1-D float64 vector goes straight to ``_matvec`` (the products run in
        every residual and Newton step, where LinearOperator's checks dominate)."""
        if isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype == _FLOAT64:
            if x.shape[0] != self.shape[1]:
                raise ValueError(f"dimension mismatch: J is {self.shape}, x has {x.shape}")
            return self._matvec(x)
        return super().matvec(x)

    def rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self.matvec(x)  # J is symmetric

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._matvec(x)

    def _adjoint(self) -> ConeJacobian:
        return self

    @abstractmethod
    def tosparse(self) -> sp.csc_matrix:
        """J as a sparse CSC matrix."""

    def todense(self) -> np.ndarray:
        """J as a dense array (small systems)."""
        return self.tosparse().toarray()

    def diagonal(self) -> np.ndarray | None:
        """J's diagonal if J is a diagonal matrix (zero and nonnegative cones), else
        None: U is then assembled by scaling columns (``residual.assemble_diagonal``)."""
        return None

    def dense_blocks(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per group of equal-size blocks: (row indices (c, s), dense blocks (c, s, s))."""
        raise NotImplementedError

    def _fill_dense(self) -> np.ndarray:
        """``todense`` from ``dense_blocks``: blocks on contiguous rows (every cone's
        rows are) by slices, which costs a fraction of a fancy-index scatter (PSD cone
        of order 30: 0.2 vs 3.5 ms)."""
        out = np.zeros(self.shape)
        for idx, M in self.dense_blocks():
            k = idx.shape[1]
            starts = idx[:, 0]
            if k and np.array_equal(idx, starts[:, None] + np.arange(k)):
                for start, block in zip(starts.tolist(), M):
                    out[start : start + k, start : start + k] = block
            else:
                out[idx[:, :, None], idx[:, None, :]] = M
        return out


class ConeBlock(ABC):
    """A run of cones of one kind, ``size`` rows in all."""

    size: int

    @abstractmethod
    def project_dual(self, v: np.ndarray) -> np.ndarray:
        """Π_{K*}(v), the Euclidean projection onto the dual cone."""

    @abstractmethod
    def project(self, v: np.ndarray) -> np.ndarray:
        """Π_K(v), the Euclidean projection onto the cone itself."""

    @abstractmethod
    def jacobian_dual(
        self, v: np.ndarray, selection: Selection = "lower", kink_tol: float = 0.0
    ) -> ConeJacobian:
        """An element of the Clarke Jacobian of Π_{K*} at v.

        Points within ``kink_tol`` (see ``kink_distance``) of a kink are treated as on
        it, and get the element named by ``selection``.
        """

    @abstractmethod
    def kink_distance(self, v: np.ndarray) -> np.ndarray:
        """Distance of v to the kink set of Π_{K*}, one entry per elementary cone
        (per row for the nonnegative cone, per cone otherwise); 0 on a kink, ``inf``
        for cones with no kinks."""
