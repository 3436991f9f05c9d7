"""Solves with U through a Schur complement on the rows whose cone Jacobian varies.

Order z = (F, V) with F = (u, v_zero) and V the rows of every other cone. On the zero
cone Π_{K*} is the identity (J = I there), so

    U = [[K, B], [C, D]],   K = [[P, A_zᵀ], [−A_z, 0]],   B = [A_Vᵀ J_V; 0],
    C = [−A_V, 0],          D = I − J_V,

and K does not depend on the point. With G = [A_V 0] K⁻¹ [A_Vᵀ; 0] (once per layer),
the Schur complement is the dense S = I − J_V + G J_V. Where J_V has dense blocks (PSD
cones: a cone of order 30 is a 465² block) factorizing K once and S per point costs far
less than a sparse LU of U, whose fill those blocks dominate (sdp/medium: 1.8 ms LU of
S against ~35 ms of assembling and factorizing U).

Only for a regular K and S (no tiny pivots): anything singular goes to ``NullSpaceLU``,
which owns the null-space analysis; ``SchurLU`` builds one on demand for that.

Where S is too large to form (more than SCHUR_MAX_ROWS other rows), ``SchurKrylov``
applies it matrix-free (G v = A_V K⁻¹ [A_Vᵀ v; 0] by a solve with K's LU, J_V by its
blocks) and solves with GMRES: the system has the other rows' size only and, unlike
LSQR on U, is not squared (sdp/large: S of order 1830, condition 4.2, 26 GMRES
iterations at 0.4 ms each against 260 LSQR iterations on U of order 10920).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from conelayers.cones import ConeJacobian
from conelayers.linsolve import TINY_PIVOT_RTOL, NullSpaceLU, refine_iteratively
from conelayers.solvers.scs import ConeProgram

SCHUR_MAX_ROWS = 1500
"""Largest number of non-zero-cone rows for a dense Schur complement."""
SCHUR_MAX_FIXED_ENTRIES = 10_000_000
"""Bound on (n + zero rows) × (other rows): the dense K⁻¹[A_Vᵀ; 0] built once."""
KRYLOV_RTOL = 1e-12
"""GMRES stops at this relative residual of the Schur system; the assembled solution is
then checked against U itself (``ResidualJacobian.solve``)."""
KRYLOV_RESTART = 200
KRYLOV_MAX_ITERS = 1000
"""GMRES restart length and total iteration budget on S (then LSQR on U takes over)."""
FIXED_MAX_NNZ = 1_000_000
"""Bound on nnz(P) + 2 nnz(A_zero) for factorizing K at all (the sparse-direct budget)."""


def schur_applies(program: ConeProgram) -> bool:
    """The dense Schur complement pays: PSD cones present (dense Jacobian blocks, where
    the sparse LU of U is costly), few enough other rows, and zero-cone rows to
    eliminate."""
    dims = program.dims
    m, n = program.A.shape
    rows_v = m - dims.zero
    return (
        bool(dims.psd)
        and 0 < rows_v <= SCHUR_MAX_ROWS
        and (n + dims.zero) * rows_v <= SCHUR_MAX_FIXED_ENTRIES
    )


def krylov_applies(program: ConeProgram) -> bool:
    """Zero-cone rows to eliminate, other rows left, and K within the sparse budget."""
    dims = program.dims
    m = program.A.shape[0]
    if not 0 < dims.zero < m:
        return False
    nnz_P = program.P.nnz if program.P is not None else 0
    return nnz_P + 2 * program.A[: dims.zero].nnz <= FIXED_MAX_NNZ


class FixedBlock:
    """LU of K for one (A, P), and G when a dense Schur complement is wanted; shared by
    every instance and thread of a layer."""

    def __init__(self, program: ConeProgram) -> None:
        A = sp.csc_matrix(program.A)
        m, n = A.shape
        mz = program.dims.zero
        self.n, self.mz, self.mv = n, mz, m - mz
        self.A_V = sp.csr_matrix(A[mz:])
        self.A_VT = self.A_V.T.tocsr()
        P = program.P if program.P is not None else sp.csc_matrix((n, n))
        A_z = A[:mz]
        K = sp.bmat([[P, A_z.T], [-A_z, None]], format="csc") if mz else sp.csc_matrix(P)
        self.lu = spla.splu(K)  # raises RuntimeError when K is exactly singular
        self.pivots = np.abs(self.lu.U.diagonal())
        self._G: np.ndarray | None = None
        self._G_lock = threading.Lock()

    @property
    def G(self) -> np.ndarray:
        """[A_V 0] K⁻¹ [A_Vᵀ; 0] as a dense array (built on first use, once)."""
        with self._G_lock:
            if self._G is None:
                E = np.zeros((self.n + self.mz, self.mv))
                E[: self.n] = self.A_VT.toarray()
                self._G = self.A_V @ self.lu.solve(E)[: self.n]
            return self._G

    def apply_G(self, w: np.ndarray, transpose: bool) -> np.ndarray:
        """G w (or Gᵀ w) without forming G: one solve with K's LU."""
        e = np.zeros(self.n + self.mz)
        e[: self.n] = self.A_VT @ w
        return self.A_V @ self.solve_K(e, transpose)[: self.n]

    @property
    def regular(self) -> bool:
        p = self.pivots
        return bool(p.size) and np.all(np.isfinite(p)) and p.min() > TINY_PIVOT_RTOL * p.max()

    def solve_K(self, rhs: np.ndarray, transpose: bool) -> np.ndarray:
        return self.lu.solve(rhs, trans="T" if transpose else "N")

    def eliminate(
        self,
        rhs: np.ndarray,
        transpose: bool,
        solve_S: Callable[[np.ndarray, bool], np.ndarray],
        apply_J_V: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """U w = rhs (or Uᵀ w = rhs) by block elimination of K, given a solve with the
        Schur complement S (or Sᵀ) and the product with J_V (``SchurLU``: an LU of S;
        ``SchurKrylov``: GMRES)."""
        nf = self.n + self.mz
        r_F, r_V = rhs[:nf], rhs[nf:]
        y = self.solve_K(r_F, transpose)
        corr = np.zeros(nf)
        if not transpose:
            # S w_V = r_V − C y = r_V + A_V y_u;  w_F = K⁻¹(r_F − [A_Vᵀ J_V w_V; 0])
            w_V = solve_S(r_V + self.A_V @ y[: self.n], False)
            corr[: self.n] = self.A_VT @ apply_J_V(w_V)
            w_F = y - self.solve_K(corr, False)
        else:
            # Sᵀ w_V = r_V − Bᵀ y = r_V − J_V A_V y_u;  w_F = K⁻ᵀ(r_F + [A_Vᵀ w_V; 0])
            w_V = solve_S(r_V - apply_J_V(self.A_V @ y[: self.n]), True)
            corr[: self.n] = self.A_VT @ w_V
            w_F = y + self.solve_K(corr, True)
        return np.concatenate([w_F, w_V])


_lock = threading.Lock()


def fixed_block(
    program: ConeProgram, cache: dict, dense: bool = True
) -> FixedBlock | None:
    """The layer's ``FixedBlock`` for this program's (A, P) (built once: ``cache`` lives
    in the layer's FactorizationHints), or None if K is singular or it does not apply
    (``schur_applies`` for the dense Schur complement, ``krylov_applies`` otherwise)."""
    if not (schur_applies(program) if dense else krylov_applies(program)):
        return None
    key = (id(program.A), id(program.P))
    with _lock:
        hit = cache.get(key)
        if hit is not None and hit[0] is program.A and hit[1] is program.P:
            return hit[2]
        try:
            block: FixedBlock | None = FixedBlock(program)
        except RuntimeError:
            block = None
        if block is not None and not block.regular:
            block = None
        # Keep A and P alive with the entry, so their ids cannot be reused; a layer with
        # constant A and P has one entry (bounded anyway).
        if len(cache) >= 4:
            cache.clear()
        cache[key] = (program.A, program.P, block)
        return block


def _gram_factor(J: ConeJacobian, start: int, size: int) -> np.ndarray | None:
    """R (size × r) with J[start:, start:] = R Rᵀ when every block there is a PSD cone
    (``PsdJacobian.gram_factors``), else None. With r < size (pairs of negative
    eigenvalues drop out) S = I + ((G − I) R) Rᵀ costs 2·size²·r instead of the
    size³ of G J_V plus forming J_V."""
    from conelayers.cones.psd import PsdJacobian

    blocks = []
    for sl, part in J.parts:  # BlockDiagonalJacobian
        if sl.stop <= start:
            continue
        if not isinstance(part, PsdJacobian):
            return None
        for idx, factors in part.gram_factors():
            blocks += [(sl.start - start + int(rows[0]), R) for rows, R in zip(idx, factors)]
    width = sum(R.shape[1] for _, R in blocks)
    out = np.zeros((size, width))
    col = 0
    for row, R in blocks:
        out[row : row + R.shape[0], col : col + R.shape[1]] = R
        col += R.shape[1]
    return out


def _dense_rows(J: ConeJacobian, start: int, size: int) -> np.ndarray:
    """The diagonal block J[start:, start:] (the non-zero-cone rows) as a dense array."""
    out = np.zeros((size, size))
    for sl, part in J.parts:  # BlockDiagonalJacobian
        if sl.stop <= start:
            continue
        lo, hi = sl.start - start, sl.stop - start
        out[lo:hi, lo:hi] = part.todense()
    return out


class SchurLU:
    """Solves with U from the fixed block and an LU of the dense Schur complement, with
    the interface of ``NullSpaceLU`` for a regular U (refined against U itself)."""

    analyzed = False

    def __init__(
        self,
        fixed: FixedBlock,
        J: ConeJacobian,
        apply: Callable[[np.ndarray, bool], np.ndarray],
        assemble: Callable[[], sp.csc_matrix],
    ) -> None:
        self.fixed = fixed
        R = _gram_factor(J, fixed.mz, fixed.mv)
        self._R: np.ndarray | None = None
        self._M: np.ndarray | None = None
        if R is not None and R.shape[1]:
            # J_V = R Rᵀ (PSD rows only): S = I + M Rᵀ with M = (G − I)R, solved by
            # Woodbury through C = I_r + RᵀM (det S = det C, so S is singular exactly
            # when C is): 2·mv·r² + r³ flops instead of 2·mv²·r + mv³ (sdp/medium,
            # mv = 465, r = 234: 6.5 → 3.5 ms per point, residuals alike, cond S 3.5 and
            # cond C 3.2 there). The solves refine against U itself.
            M = fixed.G @ R
            M -= R
            C = R.T @ M
            C[np.diag_indices_from(C)] += 1.0
            self._R, self._M, self.J_V = R, M, None
            factor = C
        else:
            self.J_V = (
                _dense_rows(J, fixed.mz, fixed.mv) if R is None else np.zeros((fixed.mv,) * 2)
            )
            factor = np.eye(fixed.mv) - self.J_V + fixed.G @ self.J_V
        self._S = sla.lu_factor(factor, check_finite=False)  # of C or of S
        self._apply, self._assemble = apply, assemble
        self._exact: NullSpaceLU | None = None
        pivots = np.concatenate([fixed.pivots, np.abs(np.diagonal(self._S[0]))])
        self.pivots = pivots
        finite = np.all(np.isfinite(pivots))
        top = pivots.max(initial=0.0) if finite else np.inf
        self.tiny_pivots = (
            int(np.count_nonzero(pivots <= TINY_PIVOT_RTOL * top)) if finite else pivots.size
        )
        self.size = fixed.n + fixed.mz + fixed.mv

    # -- the factorization's solves ------------------------------------------------------
    def solve_factor(self, rhs: np.ndarray, transpose: bool = False) -> np.ndarray:
        """One solve through the Schur complement (exact up to rounding)."""
        return self.fixed.eliminate(rhs, transpose, self._solve_S, self._apply_J_V)

    def _solve_S(self, rhs: np.ndarray, transpose: bool) -> np.ndarray:
        trans = 1 if transpose else 0
        if self._M is None:
            return sla.lu_solve(self._S, rhs, trans=trans, check_finite=False)
        R, M = self._R, self._M
        if not transpose:  # S⁻¹b = b − M C⁻¹ Rᵀ b
            return rhs - M @ sla.lu_solve(self._S, R.T @ rhs, check_finite=False)
        # Sᵀ = I + R Mᵀ: S⁻ᵀb = b − R C⁻ᵀ Mᵀ b
        return rhs - R @ sla.lu_solve(self._S, M.T @ rhs, trans=1, check_finite=False)

    def _apply_J_V(self, w: np.ndarray) -> np.ndarray:
        if self._R is not None:
            return self._R @ (self._R.T @ w)
        return self.J_V @ w

    def _refined(self, rhs: np.ndarray, transpose: bool, steps: int = 3) -> np.ndarray:
        w, _, _ = refine_iteratively(
            lambda r: self.solve_factor(r, transpose),
            lambda v: self._apply(v, transpose), rhs, steps,
        )
        return w

    def solve_unanalyzed(self, rhs: np.ndarray) -> np.ndarray:
        return self._refined(rhs, False)

    def solve(self, rhs: np.ndarray, transpose: bool = False) -> tuple[np.ndarray, float]:
        if self.tiny_pivots:
            return self.exact.solve(rhs, transpose)
        return self._refined(rhs, transpose), 0.0

    @property
    def pivot_ratio(self) -> float:
        p = self.pivots
        return float(p.min() / max(p.max(), 1e-300)) if p.size else 1.0

    # -- the null-space analysis, from U's own LU --------------------------------------
    @property
    def exact(self) -> NullSpaceLU:
        """``NullSpaceLU`` of the assembled U (for the null-space analysis)."""
        if self._exact is None:
            self._exact = NullSpaceLU(self._assemble())
        return self._exact

    @property
    def U(self) -> sp.csc_matrix:
        return self.exact.U

    @property
    def dense(self) -> bool:
        return False

    @property
    def norm(self) -> float:
        return self.exact.norm

    @property
    def sigma_ratio(self) -> float:
        return self.exact.sigma_ratio

    @property
    def nullity(self) -> int:
        return self.exact.nullity

    @property
    def right_null(self) -> np.ndarray:
        return self.exact.right_null

    @property
    def left_null(self) -> np.ndarray:
        return self.exact.left_null

    @property
    def sigma_min(self) -> float:
        return self.exact.sigma_min


class SchurKrylov:
    """Solves with U through the Schur complement S = I − J_V + G J_V applied
    matrix-free and solved by GMRES (module doc), for one cone Jacobian J."""

    def __init__(self, fixed: FixedBlock, J: ConeJacobian) -> None:
        self.fixed = fixed
        mz = fixed.mz
        # The blocks of J on the other rows, in their coordinates (the zero cone's block
        # is the identity on rows [0, mz) and is eliminated).
        self.parts = [
            (slice(sl.start - mz, sl.stop - mz), part)
            for sl, part in J.parts if sl.start >= mz
        ]
        self.iterations = 0

    def J_V(self, w: np.ndarray) -> np.ndarray:
        out = np.zeros_like(w)
        for sl, part in self.parts:
            out[sl] = part.matvec(w[sl])
        return out

    def _operator(self, transpose: bool) -> spla.LinearOperator:
        f = self.fixed
        if transpose:  # Sᵀ w = w − J_V w + J_V Gᵀ w (J_V symmetric)

            def apply(w: np.ndarray) -> np.ndarray:
                return w - self.J_V(w - f.apply_G(w, True))
        else:

            def apply(w: np.ndarray) -> np.ndarray:
                Jw = self.J_V(w)
                return w - Jw + f.apply_G(Jw, False)

        return spla.LinearOperator((f.mv, f.mv), matvec=apply, dtype=np.float64)

    def _gmres(self, rhs: np.ndarray, transpose: bool) -> np.ndarray:
        count = [0]

        def tick(_residual: float) -> None:
            count[0] += 1

        restart = min(self.fixed.mv, KRYLOV_RESTART)
        w, _ = spla.gmres(
            self._operator(transpose), rhs, rtol=KRYLOV_RTOL, atol=0.0, restart=restart,
            maxiter=max(1, KRYLOV_MAX_ITERS // restart), callback=tick,
            callback_type="pr_norm",
        )
        self.iterations += count[0]
        return w

    def solve(self, rhs: np.ndarray, transpose: bool = False) -> np.ndarray:
        """U w = rhs (or Uᵀ w = rhs) by block elimination of K, as ``SchurLU``."""
        return self.fixed.eliminate(rhs, transpose, self._gmres, self.J_V)
