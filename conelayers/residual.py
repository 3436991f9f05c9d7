"""The residual map N(z) = (Q − I)Π(z) + V + z of a cone program and its z-Jacobian U.

For min ½xᵀPx + cᵀx s.t. Ax + s = b, s ∈ K, with z = (u, v) ∈ ℝⁿ × ℝᵐ,
Π(z) = (u, Π_{K*}(v)), Q = [[P, Aᵀ], [−A, 0]] and V = (c, b):

    N(z) = (Pu + AᵀΠ_{K*}(v) + c,  b − Au − Π_{K*}(v) + v),

which vanishes exactly at z = (x, y − s) for a KKT point (x, y, s). For a Clarke
Jacobian element J of Π_{K*} at v,

    U = (Q − I)·blkdiag(I, J) + I = [[P, AᵀJ], [−A, I − J]].

U is singular only where something real happens (a non-unique or degenerate point, or a
non-unique auxiliary variable), unlike the homogeneous embedding's map, which is
singular at every solution (DESIGN.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from conelayers._identity_cache import IdentityCache
from conelayers.cones import ConeJacobian, ProductCone, Selection
from conelayers.linsolve import (
    FactorizationHints,
    NullSpaceLU,
    coupled_coordinates,
    refine_iteratively,
)
from conelayers.schur import SchurKrylov, SchurLU, fixed_block
from conelayers.solvers.scs import ConeProgram

DIRECT_MAX_SIZE = 4000
"""Largest n + m for which U is always factorized directly (sparse LU) instead of LSQR."""
SPARSE_DIRECT_MAX_SIZE = 100_000
SPARSE_DIRECT_MAX_NNZ = 1_000_000
"""Above DIRECT_MAX_SIZE, U is still factorized directly up to this n + m when the
bound on its stored entries, nnz(P) + nnz(A)(1 + largest cone block) + Σ block², is
within this budget: very sparse programs (projection_simplex/medium, N = 4001: backward
2.2 → 0.9 ms and 99 → 27 ms at batch 32 against LSQR). Dense cone blocks (a PSD cone of
order 60 alone is 1830² entries) stay with LSQR."""
DIRECT_MAX_PSD_BLOCK = 1000
"""Widest PSD cone (svec size) for which U is factorized directly when the Schur-Krylov
solver applies instead: the cone's Jacobian block is dense, and its share of a sparse LU
of U grows as its cube (sdp/large, one order-60 cone of 1830 rows: 430 ms per LU, against
~15 ms for a Newton step with GMRES on the Schur complement)."""
DENSE_MAX_SIZE = 200
"""Largest n + m for which U is factorized as a dense matrix (LAPACK): below it, building
and ordering a sparse LU costs more than the dense O(N³) factorization (measured on the
benchmark's small families)."""


@dataclass(frozen=True)
class LinearSolveInfo:
    """How a system with U (or Uᵀ) was solved: method, LSQR stop reason, residual."""

    method: str
    relative_residual: float
    iterations: int = 0
    lsqr_istop: int | None = None
    nullity: int = 0  # dimension of U's numerical null space (direct solves)
    inconsistency: float = 0.0  # relative part of rhs outside range(U) (direct solves)


class _Operators:
    """A, Aᵀ and P of a program in the form that multiplies fastest: dense arrays for
    small programs (a SciPy sparse product costs ~10 µs of Python overhead, more than
    the arithmetic there), the sparse matrices otherwise."""

    def __init__(
        self, program: ConeProgram, hints: FactorizationHints | None = None
    ) -> None:
        self.hints = hints if hints is not None else FactorizationHints()
        m, n = program.A.shape
        self.direct = prefers_direct(program) and not _krylov_preferred(program, self.hints)
        if n + m <= DENSE_MAX_SIZE:
            self.A = program.A.toarray()
            self.AT = self.A.T
            self.P = program.P.toarray() if program.P is not None else None
        else:
            self.A, self.AT, self.P = program.A, program.A.T.tocsr(), program.P


def prefers_direct(program: ConeProgram) -> bool:
    """Whether solves with U use the sparse LU (else LSQR); see SPARSE_DIRECT_MAX_NNZ."""
    m, n = program.A.shape
    if n + m <= DIRECT_MAX_SIZE:
        return True
    if n + m > SPARSE_DIRECT_MAX_SIZE:
        return False
    dims = program.dims
    blocks = [*dims.soc, *(k * (k + 1) // 2 for k in dims.psd)]
    blocks += [3] * (dims.exp + dims.exp_dual)
    widest = max(blocks, default=1)
    bound = program.A.nnz * (1 + widest) + sum(b * b for b in blocks)
    bound += dims.zero + dims.nonneg + (program.P.nnz if program.P is not None else 0)
    return bound <= SPARSE_DIRECT_MAX_NNZ


def _krylov_preferred(program: ConeProgram, hints: FactorizationHints) -> bool:
    """A PSD cone wider than DIRECT_MAX_PSD_BLOCK and a fixed, regular K for the
    Schur-Krylov solver (built once per layer, ``conelayers.schur``)."""
    widest = max((k * (k + 1) // 2 for k in program.dims.psd), default=0)
    if widest <= DIRECT_MAX_PSD_BLOCK or not hints.constant_matrices:
        return False
    return fixed_block(program, hints.schur_blocks, dense=False) is not None


class _Blocks:
    """What assembling U = [[P, Aᵀ diag(q)], [−A, I − diag(q)]] needs of one (A, P): the
    left columns [P; −A] and the rows of A (the right columns are A's rows scaled by q)."""

    def __init__(self, A: sp.csc_matrix, P: sp.csc_matrix | None) -> None:
        m, n = A.shape
        P_block = P if P is not None else sp.csc_matrix((n, n))
        self.left = sp.vstack([P_block, -A], format="csc")
        self.left.sort_indices()
        rows = A.tocsr()
        rows.sort_indices()
        self.indices, self.data = rows.indices, rows.data
        self.row_len = np.diff(rows.indptr)
        self.entry_row = np.repeat(np.arange(m), self.row_len)
        self.offset = np.arange(rows.nnz) - rows.indptr[self.entry_row]


_blocks_cache: IdentityCache[_Blocks] = IdentityCache()


def _blocks(program: ConeProgram) -> _Blocks:
    """``_Blocks`` of the program's (A, P), kept for the last few pairs of objects: a layer
    with fixed A and P assembles every instance's U from one."""
    A, P = program.A, program.P
    return _blocks_cache.get((A, P), lambda: _Blocks(A, P))


def assemble_diagonal(program: ConeProgram, q: np.ndarray) -> sp.csc_matrix:
    """U for a diagonal cone Jacobian diag(q), straight in CSC: column n + i holds row i
    of A scaled by qᵢ (where qᵢ ≠ 0) and 1 − qᵢ on the diagonal (where that is ≠ 0).
    Without the sparse products and block stacking of the general assembly (qp/medium:
    2.3 → ~0.2 ms), and with the same entries."""
    b = _blocks(program)
    m, n = program.A.shape
    keep = q != 0.0
    diag = 1.0 - q
    keep_diag = diag != 0.0
    counts = np.where(keep, b.row_len, 0) + keep_diag
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    sel = keep[b.entry_row]
    rows_sel = b.entry_row[sel]
    pos_a = indptr[rows_sel] + b.offset[sel]
    diag_rows = np.flatnonzero(keep_diag)
    pos_d = indptr[diag_rows] + np.where(keep[diag_rows], b.row_len[diag_rows], 0)
    indices = np.empty(indptr[-1], dtype=np.int64)
    data = np.empty(indptr[-1])
    indices[pos_a] = b.indices[sel]
    data[pos_a] = b.data[sel] * q[rows_sel]
    indices[pos_d] = n + diag_rows
    data[pos_d] = diag[diag_rows]
    left = b.left
    U = sp.csc_matrix(
        (
            np.concatenate([left.data, data]),
            np.concatenate([left.indices.astype(np.int64), indices]),
            np.concatenate([left.indptr.astype(np.int64), left.nnz + indptr[1:]]),
        ),
        shape=(n + m, n + m),
    )
    U.has_sorted_indices = True
    return U


class ResidualMap:
    """N(z) for one cone program, with helpers between z and (x, y, s)."""

    def __init__(
        self,
        program: ConeProgram,
        cone: ProductCone | None = None,
        hints: FactorizationHints | None = None,
    ) -> None:
        self.program = program
        self.cone = cone if cone is not None else ProductCone(program.dims)
        self.n = program.A.shape[1]
        self.m = program.A.shape[0]
        self.ops = _Operators(program, hints)
        # The last evaluation: (z, N(z), the terms of N's rows for row_scales, Π(v)).
        self._last: tuple[np.ndarray, np.ndarray, tuple, np.ndarray] | None = None

    def z_from_solution(self, x: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
        return np.concatenate([x, y - s])

    def solution_from_z(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, s) = (u, Π(v), Π(v) − v); Π(v) from the last evaluation of N at z when
        there is one (the refined point is read by the outputs, the derivative and the
        checks: a PSD projection is an eigendecomposition each time)."""
        u, v = z[: self.n], z[self.n :]
        last = self._last
        if last is not None and last[0].shape == z.shape and np.array_equal(last[0], z):
            y = last[3].copy()
        else:
            y = self.cone.project_dual(v)
        return u.copy(), y, y - v

    def __call__(self, z: np.ndarray) -> np.ndarray:
        # The refined point is evaluated by refinement, the accuracy message, the kink
        # tolerance and the checks: remember the last evaluation.
        last = self._last
        if last is not None and last[0].shape == z.shape and np.array_equal(last[0], z):
            return last[1].copy()
        prog, ops = self.program, self.ops
        u, v = z[: self.n], z[self.n :]
        y = self.cone.project_dual(v)
        ATy = ops.AT @ y
        top = ATy + prog.c
        Pu = None
        if ops.P is not None:
            Pu = ops.P @ u
            top = top + Pu
        Au = ops.A @ u
        out = np.concatenate([top, prog.b - Au - y + v])
        self._last = (np.array(z, dtype=np.float64), out.copy(), (ATy, Pu, Au, y - v), y)
        return out

    def remember(self, z: np.ndarray, value: np.ndarray, terms: tuple, y: np.ndarray) -> None:
        """Take N(z), its terms (ATy, Pu, Au, s) and Π(v) = y as evaluated elsewhere (a
        batch evaluated at once), as if this map had evaluated them."""
        self._last = (np.array(z, dtype=np.float64), np.array(value), terms, np.array(y))

    def row_scales(self, z: np.ndarray) -> np.ndarray:
        """Per row of N(z), 1 + the magnitudes of its terms: |c| + |Pu| + |AᵀΠ(v)| for the
        dual rows, |b| + |Au| + |s| for the primal ones (s = Π(v) − v). From the terms
        the evaluation of N(z) kept (only the accuracy judgement needs them)."""
        self(z)
        ATy, Pu, Au, s = self._last[2]
        prog = self.program
        top = 1.0 + np.abs(prog.c) + np.abs(ATy)
        if Pu is not None:
            top += np.abs(Pu)
        return np.concatenate([top, 1.0 + np.abs(prog.b) + np.abs(Au) + np.abs(s)])

    def jacobian(
        self, z: np.ndarray, selection: Selection = "lower", kink_tol: float = 0.0
    ) -> ResidualJacobian:
        J = self.cone.jacobian_dual(z[self.n :], selection=selection, kink_tol=kink_tol)
        return ResidualJacobian(self.program, J, self.ops)


class ResidualJacobian:
    """U = [[P, AᵀJ], [−A, I − J]] as a matrix-free operator, with solves."""

    def __init__(
        self,
        program: ConeProgram,
        J: ConeJacobian,
        ops: _Operators | None = None,
        preconditioner: NullSpaceLU | None = None,
        factorization: NullSpaceLU | None = None,
    ) -> None:
        """``factorization``: U's LU made already (a batch factorized at once)."""
        self.program = program
        self.J = J
        self.ops = ops if ops is not None else _Operators(program)
        self.n = program.A.shape[1]
        self.m = program.A.shape[0]
        self.size = self.n + self.m
        self._lu: NullSpaceLU | SchurLU | None = factorization
        # The LU of a nearby U (a Newton Jacobian a refinement step away): solves with
        # this U then refine against it instead of factorizing again (see solve).
        self.preconditioner = (
            preconditioner if preconditioner is not None and preconditioner.tiny_pivots == 0
            else None
        )
        self._contraction: float | None = None
        self._coupled: tuple[np.ndarray, np.ndarray | None, NullSpaceLU] | None = None
        self._assembled: sp.csc_matrix | np.ndarray | None = None
        self._krylov: SchurKrylov | None | bool = False  # False: not looked for yet

    # -- products -------------------------------------------------------------------
    def matvec(self, w: np.ndarray) -> np.ndarray:
        """U w."""
        ops = self.ops
        A, P = ops.A, ops.P
        wu, wv = w[: self.n], w[self.n :]
        Jwv = self.J.matvec(wv)
        top = ops.AT @ Jwv
        if P is not None:
            top = top + P @ wu
        return np.concatenate([top, -(A @ wu) + wv - Jwv])

    def rmatvec(self, w: np.ndarray) -> np.ndarray:
        """Uᵀ w (P and J are symmetric)."""
        ops = self.ops
        A, P = ops.A, ops.P
        wu, wv = w[: self.n], w[self.n :]
        top = -(ops.AT @ wv)
        if P is not None:
            top = top + P @ wu
        return np.concatenate([top, self.J.matvec(A @ wu - wv) + wv])

    def operator(self, transpose: bool = False) -> spla.LinearOperator:
        mv, rmv = (self.rmatvec, self.matvec) if transpose else (self.matvec, self.rmatvec)
        return spla.LinearOperator(
            (self.size, self.size), matvec=mv, rmatvec=rmv, dtype=np.float64
        )

    def tosparse(self) -> sp.csc_matrix:
        """U as a sparse matrix."""
        q = self.J.diagonal()
        if q is not None:
            return assemble_diagonal(self.program, q)
        A = self.program.A
        P = self.program.P
        Jm = self.J.tosparse()
        P_block = P if P is not None else sp.csc_matrix((self.n, self.n))
        U = sp.bmat(
            [[P_block, A.T @ Jm], [-A, sp.identity(self.m, format="csc") - Jm]],
            format="csc",
        )
        return U

    def todense(self) -> np.ndarray:
        """U as a dense array (small systems)."""
        A = self.ops.A if isinstance(self.ops.A, np.ndarray) else self.program.A.toarray()
        Jd = self.J.todense()
        n = self.n
        U = np.empty((self.size, self.size))
        if self.program.P is not None:
            P = self.ops.P
            U[:n, :n] = P if isinstance(P, np.ndarray) else P.toarray()
        else:
            U[:n, :n] = 0.0
        U[:n, n:] = A.T @ Jd
        U[n:, :n] = -A
        U[n:, n:] = np.eye(self.m) - Jd
        return U

    # -- solves -----------------------------------------------------------------------
    def regular_dense_lu(self) -> NullSpaceLU | None:
        """U's own dense LU if it is held, has no tiny pivot and, if the checks analyzed
        it, no numerical null space (a solve with it is then the whole direct solve, as
        in ``NullSpaceLU.solve``), else None."""
        lu = self._lu
        if (
            isinstance(lu, NullSpaceLU) and lu.dense and lu.tiny_pivots == 0
            and (not lu.analyzed or lu.nullity == 0)
        ):
            return lu
        return None

    @property
    def factorized(self) -> bool:
        """Whether U has been factorized (a reusable LU is held)."""
        return self._lu is not None

    def contraction(self) -> float:
        """Estimate of ρ = ‖I − M⁻¹U‖ for the preconditioner M (a few power steps; ∞
        without one). ρ < 1 makes U regular (U = M(I − E), ‖E‖ < 1) and the refined
        solves converge like ρᵏ."""
        if self.preconditioner is None:
            return np.inf
        if self._contraction is None:
            x = np.random.default_rng(0).standard_normal(self.size)
            rho = 0.0
            for _ in range(3):
                x /= np.linalg.norm(x)
                x = x - self.preconditioner.solve_factor(self.matvec(x))
                rho = float(np.linalg.norm(x))
                if not np.isfinite(rho) or rho == 0.0:
                    break
            self._contraction = rho if np.isfinite(rho) else np.inf
        return self._contraction

    def certifying_preconditioner(self) -> NullSpaceLU | None:
        """The preconditioner, if it contracts (ρ ≤ 1/2): then U is regular and within
        a factor 2 of the preconditioner in conditioning, whose LU has no tiny pivot,
        so its pivots speak for U's regularity without a factorization of U."""
        if self._lu is None and self.contraction() <= PRECONDITIONED_MAX_CONTRACTION:
            return self.preconditioner
        return None

    def coupled_factorization(
        self, visible: np.ndarray | None
    ) -> tuple[np.ndarray | None, NullSpaceLU]:
        """(mask, LU of U restricted to mask) for the coordinates coupled to the
        ``visible`` ones (``coupled_coordinates``): what happens in the other blocks (a
        non-unique auxiliary variable, an inactive constraint) cannot reach them, and
        their LU is never formed. (None, U's own LU) when everything is coupled, when
        no mask is given, or when U is factorized already and regular. A small (dense)
        U is factorized first: its LAPACK LU costs less than finding the components,
        which are then needed only if it has tiny pivots."""
        layer_hints = self.ops.hints
        small = self.size <= DENSE_MAX_SIZE
        if self._lu is None and small and not (visible is not None and layer_hints.coupled_first):
            self.factorization()
        if visible is None or (self._lu is not None and self._lu.tiny_pivots == 0):
            return None, self.factorization()
        cached = self._coupled
        if cached is not None and np.array_equal(cached[0], visible):
            return cached[1], cached[2]
        U = self._matrix()
        mask = coupled_coordinates(U, visible)
        if mask.all():
            out: tuple[np.ndarray | None, NullSpaceLU] = (None, self.factorization())
        else:
            idx = np.flatnonzero(mask)
            dense = isinstance(U, np.ndarray)
            sub = U[np.ix_(idx, idx)] if dense else U[idx][:, idx]
            hints = FactorizationHints(permc_spec=layer_hints.permc_spec)
            out = (mask, NullSpaceLU(sub, hints=None if dense else hints))
        if small:
            # Worth skipping the whole U's LU next time only if it was singular (it
            # was factorized: tiny pivots) and the coupled block is smaller and regular.
            layer_hints.coupled_first = out[0] is not None and out[1].tiny_pivots == 0
        self._coupled = (visible, *out)
        return out

    def structurally_singular(self) -> bool:
        """Whether U is singular for its pattern alone, read off a diagonal J (zero and
        nonnegative cones) in O(m): a row i with J_ii = 1 is [−A_i, 0], so more such rows
        than the n columns of u leave one unmatched; and without P the first n rows
        [0, AᵀJ] reach only the columns with J_ii ≠ 0, so fewer of those than n leave
        one unmatched. (On an LP, a single constraint too many or too few read as active
        makes U singular this way; a Newton step from a rough point meets it often.)"""
        d = self.J.diagonal()
        if d is None:
            return False
        if np.count_nonzero(d == 1.0) > self.n:
            return True
        return self.program.P is None and np.count_nonzero(d) < self.n

    def _apply(self, w: np.ndarray, transpose: bool) -> np.ndarray:
        return self.rmatvec(w) if transpose else self.matvec(w)

    def _matrix(self) -> sp.csc_matrix | np.ndarray:
        """U assembled (dense for small U), once."""
        if self._assembled is None:
            if isinstance(self._lu, NullSpaceLU):
                return self._lu.U  # the LU holds U (a batch's, or a factorization's)
            small = self.size <= DENSE_MAX_SIZE
            self._assembled = self.todense() if small else self.tosparse()
        return self._assembled

    def factorization(self) -> NullSpaceLU | SchurLU:
        """The LU of U with its numerical null spaces (computed once); through the
        Schur complement on the non-zero-cone rows where that applies and U is regular
        (``conelayers.schur``)."""
        hints = self.ops.hints
        if (
            self._lu is None and self.ops.direct and self.size > DENSE_MAX_SIZE
            and hints.constant_matrices
        ):
            fixed = fixed_block(self.program, hints.schur_blocks)
            if fixed is not None:
                lu = SchurLU(fixed, self.J, self._apply, self._matrix)
                if lu.tiny_pivots == 0:
                    self._lu = lu
        if self._lu is None:
            U = self._matrix()
            hints = None if isinstance(U, np.ndarray) else self.ops.hints
            self._lu = NullSpaceLU(U, hints=hints, singular=self.structurally_singular())
            self._assembled = None  # the LU holds it
        return self._lu

    def solve(
        self,
        rhs: np.ndarray,
        transpose: bool = False,
        method: str = "auto",
        visible: np.ndarray | None = None,
    ) -> tuple[np.ndarray, LinearSolveInfo]:
        """Solve U w = rhs (or Uᵀ w = rhs), minimum-norm where U is singular.

        ``method`` is "direct" (sparse LU with the null space split off, see
        ``NullSpaceLU``), "lsqr" (matrix-free) or "auto": direct for
        n + m ≤ DIRECT_MAX_SIZE or a sparse enough U (``prefers_direct``), otherwise
        GMRES on the Schur complement of the zero-cone rows where that block is fixed
        and regular (``SchurKrylov``), and LSQR on U as the fallback of both.

        With a ``visible`` mask and rhs vanishing outside the coordinates coupled to
        the visible ones, a direct solve with a singular U runs on those coordinates
        alone (``coupled_factorization``): the minimum-norm solution is 0 elsewhere.
        """
        rhs = np.asarray(rhs, dtype=np.float64)
        rhs_norm = float(np.linalg.norm(rhs))
        if rhs_norm == 0.0:
            return np.zeros(self.size), LinearSolveInfo("trivial", 0.0)
        if not np.isfinite(rhs_norm):
            # A NaN/Inf cotangent or tangent: NaN out, as autograd propagates it, without
            # an iterative solve that would fail and blame U.
            return np.full(self.size, np.nan), LinearSolveInfo("nonfinite", np.nan)
        use_direct = method == "direct" or (method == "auto" and self.ops.direct)
        if use_direct and self._lu is None and self.preconditioner is not None:
            w, res, steps = self._preconditioned_solve(rhs, transpose, rhs_norm)
            if res <= PRECONDITIONED_RTOL:
                return w, LinearSolveInfo("preconditioned", res, iterations=steps)
        if use_direct:
            mask, lu = self.coupled_factorization(visible)
            if mask is not None and np.any(rhs[~mask]):
                mask, lu = None, self.factorization()
            if mask is None:
                w, inconsistency = lu.solve(rhs, transpose=transpose)
            else:
                w = np.zeros(self.size)
                w[mask], inconsistency = lu.solve(rhs[mask], transpose=transpose)
            res = float(np.linalg.norm(self._apply(w, transpose) - rhs)) / rhs_norm
            nullity = lu.nullity if lu.analyzed else 0
            info = LinearSolveInfo(
                "direct", res, nullity=nullity, inconsistency=inconsistency / rhs_norm
            )
            if np.all(np.isfinite(w)) and (res < 1e-8 or nullity):
                return w, info
            if method == "direct":
                return w, info
        elif method == "auto":
            krylov = self.schur_krylov()
            if krylov is not None:
                before = krylov.iterations
                w = krylov.solve(rhs, transpose)
                res = float(np.linalg.norm(self._apply(w, transpose) - rhs)) / rhs_norm
                if np.isfinite(res) and res <= KRYLOV_ACCEPT_RTOL:
                    return w, LinearSolveInfo(
                        "schur-gmres", res, iterations=krylov.iterations - before
                    )
        return self._lsqr(rhs, transpose, rhs_norm)

    def schur_krylov(self) -> SchurKrylov | None:
        """The matrix-free Schur solver for this U, if the layer's (A, P) are fixed and
        K is regular (``conelayers.schur``), else None."""
        if self._krylov is False:
            hints = self.ops.hints
            fixed = (
                fixed_block(self.program, hints.schur_blocks, dense=False)
                if hints.constant_matrices else None
            )
            self._krylov = SchurKrylov(fixed, self.J) if fixed is not None else None
        return self._krylov or None

    def _preconditioned_solve(
        self, rhs: np.ndarray, transpose: bool, rhs_norm: float, max_steps: int = 12
    ) -> tuple[np.ndarray, float, int]:
        """Iterative refinement w ← w + M⁻¹(rhs − Uw) with the preconditioner's LU,
        stopped at rounding level or when the residual stops shrinking fast (then the
        caller factorizes U itself). Returns w, its relative residual, the steps."""
        M = self.preconditioner
        w, norm, steps = refine_iteratively(
            lambda r: M.solve_factor(r, transpose),
            lambda v: self._apply(v, transpose), rhs, max_steps, min_shrink=0.5,
        )
        if not np.all(np.isfinite(w)):
            return w, np.inf, steps
        return w, norm / rhs_norm, steps

    def _lsqr(self, rhs, transpose, rhs_norm):
        op = self.operator(transpose)
        out = spla.lsqr(
            op, rhs, atol=1e-14, btol=1e-14, conlim=1e16, iter_lim=max(20 * self.size, 2000)
        )
        w, istop, itn = out[0], int(out[1]), int(out[2])
        res = float(np.linalg.norm(self._apply(w, transpose) - rhs)) / rhs_norm
        return w, LinearSolveInfo("lsqr", res, iterations=itn, lsqr_istop=istop)


PRECONDITIONED_RTOL = 1e-12
"""Relative residual a preconditioned (refined) solve must reach to be used; otherwise
U is factorized itself. The direct path reaches ~1e-15; 1e-12 keeps the derivative
error far below the 1e-5 the benchmark asks while accepting a few slow steps."""
KRYLOV_ACCEPT_RTOL = 1e-10
"""Relative residual on U itself at which a Schur–GMRES solution is used (else LSQR):
GMRES stops at 1e-12 on S; the back-substitution through K loses at most a little."""
PRECONDITIONED_MAX_CONTRACTION = 0.5
"""ρ = ‖I − M⁻¹U‖ up to which the preconditioner's pivots stand for U's regularity."""


KINK_RTOL = 1e-7
"""Kink tolerance relative to 1 + ‖z‖∞ (plus 10‖N(z)‖: kinks closer than the solution's
own accuracy cannot be told apart from exact ones)."""


def kink_tolerance(residual: ResidualMap, z: np.ndarray) -> float:
    """Cones within this distance of a kink count as at the kink (checks, selections)."""
    return KINK_RTOL * (1.0 + float(np.abs(z).max(initial=0.0))) + 10.0 * float(
        np.linalg.norm(residual(z))
    )


def relative_residual(residual: ResidualMap, z: np.ndarray) -> float:
    """max over rows of |N(z)ᵢ| / (1 + the magnitudes of row i's terms) (``row_scales``).

    Row by row, not against the largest entry of b and c: with s = 1e9·(1, 0, −1) in a
    projection onto the simplex, b holds ±1e9 while the row of Σz = 1 has b = 1, and SCS
    returned z = (¼, ¼, ¼) as "solved" with ‖N‖ = 0.5, i.e. 5e-10 against ‖b‖∞ but 0.2
    on its own row; that is what this measure reports."""
    N = residual(z)
    return float(np.max(np.abs(N) / residual.row_scales(z), initial=0.0))


@dataclass(frozen=True)
class RefinementInfo:
    """What Newton refinement did: steps taken, ‖N(z)‖ before and after, and the last
    Jacobian it factorized with the point where it did (reusable for the derivative
    when that point is the refined one up to rounding)."""

    steps: int
    residual_before: float
    residual_after: float
    jacobian: ResidualJacobian | None = None
    jacobian_point: np.ndarray | None = None


def newton_refine(
    residual: ResidualMap,
    z: np.ndarray,
    max_steps: int = 3,
    tol: float = 1e-12,
    selection: Selection = "lower",
) -> tuple[np.ndarray, RefinementInfo]:
    """Semismooth Newton steps on N(z) = 0, z ← z − U⁻¹N(z) (least squares where U is
    singular), kept only while they decrease ‖N‖, until ‖N‖ ≤ tol·(1 + ‖b‖ + ‖c‖).
    Takes an SCS solution at its default tolerance to machine accuracy in a step or two
    when the point is regular. Where the steps stall on a singular piece of a
    polyhedral cone (a wrong active set), a kink crossing (``_kink_crossing``) moves to
    the next piece, up to MAX_KINK_CROSSINGS times."""
    best = np.asarray(z, dtype=np.float64).copy()
    r0 = float(np.linalg.norm(residual(best)))
    scale = 1.0 + float(np.linalg.norm(residual.program.b)) + float(
        np.linalg.norm(residual.program.c)
    )
    best_norm, steps, crossings = r0, 0, 0
    jac = jac_point = None
    while steps < max_steps and best_norm > tol * scale:
        r = residual(best)
        accepted = None
        if jac is not None and jac.factorized:
            # Chord step with the last LU (on curved cones the Jacobian moves with z, and
            # a factorization costs far more than a solve): it contracts ‖N‖ by about
            # ‖I − U₀⁻¹U‖ ≪ 1 this close to the solution; a new Jacobian only if not.
            accepted = _plain_lu_step(residual, best, best_norm, r, jac)
        if accepted is None:
            jac, jac_point, accepted = _newton_step(
                residual, best, best_norm, r, selection, previous=jac
            )
        if accepted is None and crossings < MAX_KINK_CROSSINGS:
            crossings += 1
            crossed = _kink_crossing(residual, best, best_norm, jac, selection)
            if crossed is not None:
                jac, jac_point, accepted = crossed
                steps -= 1  # a crossing has its own budget
        if accepted is None:
            break
        best, best_norm = accepted
        steps += 1
    return best, RefinementInfo(steps + crossings, r0, best_norm, jac, jac_point)


MAX_KINK_CROSSINGS = 4
"""Kink crossings one refinement may make (lp/medium, 32 draws: 7 stalled, on singular
pieces of nullity 1 to 3; 6 of them reached rounding level after 1 to 3 crossings)."""


def _kink_crossing(
    residual: ResidualMap, z: np.ndarray, norm: float, jac: ResidualJacobian,
    selection: Selection,
) -> tuple[ResidualJacobian, np.ndarray, tuple[np.ndarray, float]] | None:
    """A way out of a stall of Newton on a singular piece of the nonnegative orthant.

    On an LP, one constraint too many read as active (its dual entry slightly positive
    where the solution's is slightly negative) makes U singular, and the least-squares
    step then ends where N's linear piece leaves a residual in the left null space: a
    local minimum of ‖N‖ that no descent step leaves, so refinement fell back on a
    second SCS solve. N is flat along a null direction d of U as long as the piece holds;
    moving along ±d to the nearest sign change of a nonnegative-cone entry of v (a ratio
    test, as in the simplex method) changes the piece without changing N, and Newton
    from there is on the next piece. Tried for each null direction and sign, nearest
    crossing first; kept only if it lowers ‖N‖ below the stall's. None when U is regular,
    was not factorized with its null space, or no crossing helps."""
    lu = jac.factorization() if jac is not None and jac.factorized else None
    nonneg = residual.cone.slices.get("nonneg")
    if not isinstance(lu, NullSpaceLU) or not lu.analyzed or lu.nullity == 0 or nonneg is None:
        return None
    rows = np.arange(residual.n + nonneg.start, residual.n + nonneg.stop)
    v = z[rows]
    margin = 2.0 * KINK_RTOL * (1.0 + float(np.abs(z).max(initial=0.0)))
    candidates = []
    for d in lu.right_null.T:
        for sign in (1.0, -1.0):
            dv = sign * d[rows]
            with np.errstate(divide="ignore", invalid="ignore"):
                t = -v / dv
            t[~np.isfinite(t) | (t <= 0.0) | (np.abs(v) <= margin)] = np.inf
            j = int(np.argmin(t)) if t.size else 0
            if t.size and np.isfinite(t[j]):
                candidates.append((float(t[j]), sign, j, d))
    for t, sign, j, d in sorted(candidates, key=lambda c: c[0])[:MAX_CROSSING_TRIES]:
        crossed = z + (sign * t) * d
        crossed[rows[j]] = -np.copysign(margin, v[j])  # just across the kink
        r = residual(crossed)
        found = _newton_step(residual, crossed, float(np.linalg.norm(r)), r, selection)
        if found[2] is not None and found[2][1] < norm:
            return found
    return None


MAX_CROSSING_TRIES = 2
"""Crossings tried per stall (each costs a factorization): the nearest one in each
direction usually, and on lp/medium the first or second one always, when any, helped."""


def _newton_step(
    residual: ResidualMap, z: np.ndarray, norm: float, r: np.ndarray, selection: Selection,
    previous: ResidualJacobian | None = None,
) -> tuple[ResidualJacobian, np.ndarray, tuple[np.ndarray, float] | None]:
    """One semismooth Newton step from z (with N(z) = r): the Jacobian used, the point
    where it was taken, and the accepted (point, ‖N‖), or None. ``previous``, the last
    step's Jacobian, is used again when U is the same matrix (a diagonal J, as on the
    orthant, that did not change: the same piece), with its factorization."""
    # Newton reads the pieces from the point as it is (a tolerance tied to ‖N‖ would
    # misassign the many near-zero entries of a rough SCS point and make U singular);
    # only rounding-level kinks get the named selection, as the derivative does.
    jac = residual.jacobian(
        z, selection=selection, kink_tol=KINK_RTOL * (1.0 + float(np.abs(z).max()))
    )
    same = previous is not None and previous.factorized and _same_diagonal(previous, jac)
    if same:
        jac = previous
    # A Newton step needs no exact solve (the line search guards it): no LSQR fallback,
    # and first the plain LU solve, which skips the null-space analysis of a singular U
    # (harmless auxiliary null spaces are common); the minimum-norm step if that one is
    # not small (a null-space component blown up by the LU) or the line search rejects it.
    # (With the previous LU, the caller's chord step was that plain LU step already.)
    direct = jac.ops.direct
    accepted = _plain_lu_step(residual, z, norm, r, jac) if direct and not same else None
    if accepted is None:
        step, _ = jac.solve(r, method="direct" if direct else "auto")
        accepted = _line_search(residual, z, norm, step)
    return jac, z, accepted


def _same_diagonal(a: ResidualJacobian, b: ResidualJacobian) -> bool:
    """Whether both J are diagonal and equal (then so are the two U)."""
    da = a.J.diagonal()
    if da is None:
        return False
    db = b.J.diagonal()
    return db is not None and np.array_equal(da, db)


def _plain_lu_step(
    residual: ResidualMap, z: np.ndarray, norm: float, r: np.ndarray, jac: ResidualJacobian
) -> tuple[np.ndarray, float] | None:
    """The step −U⁻¹N(z) from the LU of ``jac`` alone (no null-space analysis), kept only
    if it is small (a null-space component blown up by the LU is not) and, taken in full,
    lowers ‖N‖ tenfold: near a degenerate solution (a singular U that matters) the LU
    step can lower ‖N‖ slowly while drifting along the flat direction, away from it."""
    step = jac.factorization().solve_unanalyzed(r)
    if np.abs(step).max(initial=0.0) > 1.0 + float(np.abs(z).max(initial=0.0)):
        return None
    return _line_search(residual, z, norm, step, alphas=(1.0,), decrease=0.1)


def _line_search(
    residual: ResidualMap,
    z: np.ndarray,
    norm: float,
    step: np.ndarray,
    alphas: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125),
    decrease: float | None = None,
) -> tuple[np.ndarray, float] | None:
    """Backtracking on ‖N‖ (a full step can overshoot across pieces of the projection):
    the first of z − α·step that decreases ‖N‖ enough (Armijo-like, or below
    ``decrease``·‖N‖ when given), or None."""
    if not np.all(np.isfinite(step)):
        return None
    for alpha in alphas:
        candidate = z - alpha * step
        cand_norm = float(np.linalg.norm(residual(candidate)))
        bound = decrease * norm if decrease is not None else (1.0 - 1e-4 * alpha) * norm
        if np.isfinite(cand_norm) and cand_norm < bound:
            return candidate, cand_norm
    return None
