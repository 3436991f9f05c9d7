"""Second-order cones {(t, w): ‖w‖ ≤ t} (self-dual), vectorized over cones of equal size.

Projection of (t, w): itself if ‖w‖ ≤ t, 0 if ‖w‖ ≤ −t, else ½(1 + t/‖w‖)(‖w‖, w).
Every Clarke-Jacobian element used here has the form

    J (x₀, x_w) = (c₀ x₀ + c₁ ŵᵀx_w,  c₁ x₀ ŵ + c₂ x_w + c₃ ŵ (ŵᵀx_w)),

so matvec costs O(size) per cone: I is (1, 0, 1, 0), 0 is (0, 0, 0, 0) and the
"else" branch with r = t/‖w‖ is (½, ½, ½(1 + r), −½r).

Kinks: ‖w‖ = t (boundary of K: hull of I and the else branch with r = 1), ‖w‖ = −t
(boundary of the polar: hull of 0 and the else branch with r = −1) and the origin (hull
of everything). "lower" takes the Loewner-smallest adjacent piece (else branch, 0, 0
respectively), "upper" the largest (I, else branch, I); a cone is at the origin kink when
both its distances (to ‖w‖ = t and to ‖w‖ = −t) are <= kink_tol. A point within ``kink_tol`` of a
kink gets the element at the nearest kink point (r = ±1 exactly), which is a true Clarke
element there and stays bounded when ‖w‖ is tiny.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import scipy.sparse as sp

from conelayers.cones._util import as_vector, check_selection
from conelayers.cones.base import ConeBlock, ConeJacobian, Selection

_INV_SQRT2 = 1.0 / np.sqrt(2.0)


@dataclass(frozen=True)
class _Group:
    """Cones of one size s: ``cones`` are their positions in the block, ``idx`` (c, s)
    their row indices."""

    dim: int
    cones: np.ndarray
    idx: np.ndarray


@dataclass(frozen=True)
class _GroupJacobian:
    """Coefficients (c₀..c₃ per cone) and unit directions ŵ of one group."""

    idx: np.ndarray
    coef: np.ndarray  # (c, 4)
    what: np.ndarray  # (c, s - 1)


def dense_group_blocks(coef: np.ndarray, what: np.ndarray) -> np.ndarray:
    """The dense blocks (..., c, s, s) of a group's Jacobian elements from their
    coefficients (..., c, 4) and directions ŵ (..., c, s − 1)."""
    s = what.shape[-1] + 1
    c0, c1, c2, c3 = np.moveaxis(coef, -1, 0)
    M = np.zeros((*what.shape[:-1], s, s))
    M[..., 0, 0] = c0
    M[..., 0, 1:] = c1[..., None] * what
    M[..., 1:, 0] = c1[..., None] * what
    M[..., 1:, 1:] = c3[..., None, None] * what[..., :, None] * what[..., None, :]
    diag = np.arange(1, s)
    M[..., diag, diag] += c2[..., None]
    return M


class SocJacobian(ConeJacobian):
    """Block-diagonal Clarke-Jacobian element of the SOC projections (matrix-free)."""

    def __init__(self, size: int, groups: list[_GroupJacobian]) -> None:
        super().__init__(size)
        self.groups = groups

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        x = np.ravel(x)
        out = np.zeros(self.shape[0], dtype=np.float64)
        for g in self.groups:
            X = x[g.idx]
            c0, c1, c2, c3 = g.coef.T
            x0, xw = X[:, 0], X[:, 1:]
            dot = np.einsum("ij,ij->i", g.what, xw)
            Y = np.empty_like(X)
            Y[:, 0] = c0 * x0 + c1 * dot
            Y[:, 1:] = (c1 * x0 + c3 * dot)[:, None] * g.what + c2[:, None] * xw
            out[g.idx] = Y
        return out

    def dense_blocks(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per group: (row indices (c, s), dense blocks (c, s, s))."""
        return [(g.idx, dense_group_blocks(g.coef, g.what)) for g in self.groups]

    def todense(self) -> np.ndarray:
        return self._fill_dense()

    def tosparse(self) -> sp.csc_matrix:
        n = self.shape[0]
        rows, cols, vals = [], [], []
        for idx, M in self.dense_blocks():
            rows.append(np.broadcast_to(idx[:, :, None], M.shape).ravel())
            cols.append(np.broadcast_to(idx[:, None, :], M.shape).ravel())
            vals.append(M.ravel())
        if not rows:
            return sp.csc_matrix((n, n), dtype=np.float64)
        J = sp.coo_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
        ).tocsc()
        J.eliminate_zeros()
        return J


class SecondOrderCones(ConeBlock):
    """A run of second-order cones of the given sizes (each size counts t)."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = tuple(int(s) for s in sizes)
        if any(s < 1 for s in self.sizes):
            raise ValueError(f"second-order cone sizes must be >= 1, got {self.sizes}")
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)])
        self.size = int(self.offsets[-1])
        sizes_arr = np.asarray(self.sizes, dtype=np.int64)
        self._groups: list[_Group] = []
        for dim in np.unique(sizes_arr):
            cones = np.flatnonzero(sizes_arr == dim)
            idx = self.offsets[cones][:, None] + np.arange(dim)[None, :]
            self._groups.append(_Group(int(dim), cones, idx))

    def __repr__(self) -> str:
        return f"SecondOrderCones({list(self.sizes)})"

    def cone_slices(self) -> list[slice]:
        """Row slice of each cone within the block."""
        return [slice(int(a), int(b)) for a, b in pairwise(self.offsets)]

    @staticmethod
    def _parts(v: np.ndarray, g: _Group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(V, t, ‖w‖) of one group's cones: V of shape (..., c, s) for v of shape
        (..., size) (a stack of points has leading axes)."""
        V = v[..., g.idx]
        W = V[..., 1:]
        return V, V[..., 0], np.sqrt(np.einsum("...j,...j->...", W, W))

    def project_dual(self, v: np.ndarray) -> np.ndarray:
        return self.project_dual_stack(as_vector(v, self.size))

    def project_dual_stack(self, v: np.ndarray) -> np.ndarray:
        """Π_{K*} of each row of v (shape (..., size)): the batch refinement's form."""
        out = np.empty(v.shape)
        for g in self._groups:
            V, t, nw = self._parts(v, g)
            interior = nw <= t
            polar = nw <= -t
            safe = np.where(interior | polar, 1.0, nw)
            alpha = np.where(interior, 1.0, np.where(polar, 0.0, 0.5 * (1.0 + t / safe)))
            P = alpha[..., None] * V
            P[..., 0] = np.where(interior, t, alpha * nw)
            out[..., g.idx] = P
        return out

    def project(self, v: np.ndarray) -> np.ndarray:
        """Π_K = Π_{K*}: the second-order cone is self-dual."""
        return self.project_dual(v)

    def _distances(self, t: np.ndarray, nw: np.ndarray, dim: int) -> tuple[np.ndarray, ...]:
        """Distances to the boundary of K and of the polar (|t| for size-1 cones, where
        both are the point t = 0)."""
        scale = 1.0 if dim == 1 else _INV_SQRT2
        return np.abs(nw - t) * scale, np.abs(nw + t) * scale

    def kink_distance(self, v: np.ndarray) -> np.ndarray:
        """Per cone, min(|‖w‖ − t|, |‖w‖ + t|)/√2: the distance to the kink set
        (|t| for size-1 cones)."""
        v = as_vector(v, self.size)
        out = np.empty(len(self.sizes))
        for g in self._groups:
            _, t, nw = self._parts(v, g)
            d_k, d_p = self._distances(t, nw, g.dim)
            out[g.cones] = np.minimum(d_k, d_p)
        return out

    def jacobian_dual(
        self, v: np.ndarray, selection: Selection = "lower", kink_tol: float = 0.0
    ) -> SocJacobian:
        v = as_vector(v, self.size)
        check_selection(selection, kink_tol)
        return self.jacobian_from(self.jacobian_coefficients(v, selection, kink_tol))

    @property
    def group_rows(self) -> list[np.ndarray]:
        """Per group of equal-size cones, their row indices (c, s) within the block."""
        return [g.idx for g in self._groups]

    def jacobian_from(self, coefficients: list[tuple[np.ndarray, np.ndarray]]) -> SocJacobian:
        """The Jacobian element with these per-group coefficients and directions (one
        point's, as ``jacobian_coefficients`` gives them)."""
        groups = [
            _GroupJacobian(g.idx, coef, what)
            for g, (coef, what) in zip(self._groups, coefficients)
        ]
        return SocJacobian(self.size, groups)

    def jacobian_coefficients(
        self, v: np.ndarray, selection: Selection, kink_tol: float | np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per group, (c₀..c₃ per cone, ŵ per cone) of the Jacobian element at each row of
        v (shape (..., size); ``kink_tol`` broadcasts against (..., cones of the group))."""
        upper = selection == "upper"
        eye = np.array([1.0, 0.0, 1.0, 0.0])
        zero = np.zeros(4)
        out = []
        for g in self._groups:
            V, t, nw = self._parts(v, g)
            d_k, d_p = self._distances(t, nw, g.dim)
            on_k, on_p = d_k <= kink_tol, d_p <= kink_tol
            origin = on_k & on_p
            k_bd = on_k & ~origin
            p_bd = on_p & ~origin
            smooth = ~(on_k | on_p)
            interior = smooth & (t > nw)
            polar = smooth & (t < -nw)
            other = smooth & ~interior & ~polar

            # r = t/‖w‖ on the else branch; ±1 at the boundary kinks (nearest kink point).
            r = np.where(other, t / np.where(other, nw, 1.0), 0.0)
            r = np.where(k_bd, 1.0, np.where(p_bd, -1.0, r))
            half = np.full_like(r, 0.5)
            else_coef = np.stack([half, half, 0.5 * (1.0 + r), -0.5 * r], axis=-1)

            use_else = other | (k_bd & (not upper)) | (p_bd & upper)
            use_eye = interior | (upper & (k_bd | origin))
            coef = np.where(
                use_else[..., None], else_coef, np.where(use_eye[..., None], eye, zero)
            )

            W = V[..., 1:]
            pos = nw > 0
            what = np.zeros_like(W)
            what[pos] = W[pos] / nw[pos][..., None]
            if W.shape[-1]:
                what[~pos, 0] = 1.0  # any unit vector: ŵ is arbitrary when w = 0
            out.append((coef, what))
        return out
