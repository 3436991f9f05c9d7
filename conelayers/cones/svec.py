"""SCS's vectorization of symmetric matrices (``svec``) and its inverse (``smat``).

SCS 3.x (and CVXPY's SCS interface: ``PSD_TRIANGLE_KIND = LOWER``,
``PSD_SQRT2_SCALING = True``) stores an n×n symmetric X as its lower triangle, column
by column, with off-diagonal entries scaled by √2:

    svec(X) = (X11, √2 X21, ..., √2 Xn1, X22, √2 X32, ..., Xnn).

The √2 makes svec an isometry (⟨svec X, svec Y⟩ = tr(XY)), so projections and their
Jacobians in svec coordinates are the matrix ones, and symmetric operators stay symmetric.
All helpers accept leading batch dimensions.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

_SQRT2 = np.sqrt(2.0)


def svec_size(n: int) -> int:
    """Length n(n+1)/2 of the svec of an n×n matrix."""
    if n < 0:
        raise ValueError(f"matrix order must be nonnegative, got {n}")
    return n * (n + 1) // 2


def order_from_svec_size(k: int) -> int:
    """The order n with n(n+1)/2 == k; ValueError if k is not a triangular number."""
    if k < 0:
        raise ValueError(f"svec length must be nonnegative, got {k}")
    n = (math.isqrt(8 * k + 1) - 1) // 2
    if svec_size(n) != k:
        raise ValueError(f"{k} is not the svec length n(n+1)/2 of any matrix order n")
    return n


@cache
def lower_colmajor(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, scale) of the lower triangle in column-major order: svec's entries.

    Column-major lower order equals row-major upper order with the indices swapped.
    """
    cols, rows = np.triu_indices(n)
    scale = np.where(rows == cols, 1.0, _SQRT2)
    for a in (rows, cols, scale):
        a.setflags(write=False)
    return rows, cols, scale


def svec(X: np.ndarray) -> np.ndarray:
    """SCS svec of symmetric X, shape (..., n, n) -> (..., n(n+1)/2).

    Only the lower triangle of X is read.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim < 2 or X.shape[-1] != X.shape[-2]:
        raise ValueError(f"expected square matrices (..., n, n), got shape {X.shape}")
    rows, cols, scale = lower_colmajor(X.shape[-1])
    return X[..., rows, cols] * scale


def smat(v: np.ndarray) -> np.ndarray:
    """Inverse of ``svec``: shape (..., n(n+1)/2) -> symmetric (..., n, n)."""
    v = np.asarray(v, dtype=np.float64)
    if v.ndim < 1:
        raise ValueError("expected a vector (..., n(n+1)/2), got a scalar")
    n = order_from_svec_size(v.shape[-1])
    rows, cols, scale = lower_colmajor(n)
    X = np.zeros(v.shape[:-1] + (n, n))
    vals = v / scale
    X[..., rows, cols] = vals
    X[..., cols, rows] = vals
    return X
