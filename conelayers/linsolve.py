"""Sparse direct solves with U that stay meaningful when U is (numerically) singular.

Harmless singularity is common (auxiliary variables of the canonicalization that are
not unique), and so are genuinely singular points. A plain LU returns a huge null-space
component in both cases. ``NullSpaceLU`` instead

1. factorizes U: sparse LU (SuperLU, COLAMD on U's own pattern) or, for small U, a
   dense LAPACK LU, which costs less than building and ordering a sparse one; an
   exactly singular U is factorized shifted by a tiny multiple of I instead,
2. runs block inverse iteration with that factorization to estimate the smallest
   singular values of U and, where they fall below ``rtol·‖U‖``, orthonormal bases R
   and L of the right and left numerical null spaces; where the LU has tiny pivots, on
   the Ruiz equilibration D_r U D_c instead (tiny pivots of a badly scaled but regular
   U are scaling, not singularity), with the null vectors mapped back,
3. solves the bordered system [[U, L], [Rᵀ, 0]] [w; μ] = [rhs; 0], which is
   nonsingular: w is the minimum-norm solution of the consistent part and ‖μ‖ measures
   how far rhs is from range(U) (0 for a consistent system).

The null-space bases are what the trust checks weigh against the user-visible
coordinates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.linalg.lapack import dgetrs as getrs
from scipy.sparse import csgraph

from conelayers._threads import ThreadBound, release_handed_back

SINGULAR_RTOL = 1e-10
"""σ/‖U‖ below which a direction counts as in the numerical null space."""


def _orthonormal(Y: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(Y)
    return q


def estimate_norm(U: sp.spmatrix | np.ndarray, iterations: int = 8, seed: int = 0) -> float:
    """σ_max(U) by power iteration on UᵀU (a few products; for a small dense U, with
    UᵀU formed once), from a start fixed by ``seed`` and the size."""
    x = power_start(U.shape[1], seed)
    if isinstance(U, np.ndarray) and U.shape[0] <= 200:
        gram = U.T @ U
        for _ in range(iterations - 1):
            x = gram @ x
            scale = float(np.sqrt(x @ x))
            if scale == 0.0:
                return 0.0
            x = x / scale
        return float(np.sqrt(max(float(x @ (gram @ x)), 0.0)))
    sigma = 0.0
    for _ in range(iterations):
        x = x / np.linalg.norm(x)
        y = U @ x
        sigma = float(np.linalg.norm(y))
        if sigma == 0.0:
            return 0.0
        x = U.T @ y
    return sigma


@lru_cache(maxsize=32)
def power_start(size: int, seed: int = 0) -> np.ndarray:
    """The power iteration's start vector, of unit norm (read-only, kept per size)."""
    out = np.random.default_rng(seed).standard_normal(size)
    out /= np.linalg.norm(out) if size else 1.0
    out.setflags(write=False)
    return out


def shift_for(norm: float) -> float:
    """δ = 1e-13‖U‖, the shift of an LU where one is needed (see _SparseLU/_DenseLU).
    Solves refine iteratively against U itself, so the shift costs no accuracy where U
    is regular (the error contracts by ≈ δ·cond(U) per step)."""
    return 1e-13 * (norm if norm > 0 else 1.0)


def refine_iteratively(
    solve: Callable[[np.ndarray], np.ndarray],
    apply: Callable[[np.ndarray], np.ndarray],
    rhs: np.ndarray,
    max_steps: int,
    min_shrink: float = 1.0,
) -> tuple[np.ndarray, float, int]:
    """Iterative refinement w ← w + solve(rhs − apply(w)) from w = solve(rhs), with
    ``solve`` an approximate inverse (a shifted or nearby LU) and ``apply`` the exact
    operator. Stops at rounding level (‖r‖ ≤ 1e-15‖rhs‖), after ``max_steps``, or at
    the first step that shrinks ‖r‖ by less than ``min_shrink`` (kept if it shrank at
    all). Returns w, ‖rhs − apply(w)‖ and the steps tried."""
    w = solve(rhs)
    res = rhs - apply(w)
    norm = float(np.linalg.norm(res))
    floor = 1e-15 * float(np.linalg.norm(rhs))
    steps = 0
    while steps < max_steps and norm > floor:
        w_new = w + solve(res)
        res_new = rhs - apply(w_new)
        norm_new = float(np.linalg.norm(res_new))
        steps += 1
        fast_enough = norm_new < min_shrink * norm
        if norm_new < norm:
            w, res, norm = w_new, res_new, norm_new
        if not fast_enough:
            break
    return w, norm, steps


def coupled_coordinates(U: sp.spmatrix | np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Mask of the coordinates in the connected components of U's sparsity graph that
    hold a ``visible`` coordinate.

    After a permutation U is block diagonal over its components, so a solve whose right
    side lives on these coordinates has its (minimum-norm) solution there too, and what
    happens in the other blocks (a non-unique auxiliary variable, say) cannot reach the
    visible coordinates."""
    if not sp.issparse(U):
        # Small dense U: grow the visible set along the pattern of U + Uᵀ (a few boolean
        # sweeps; converting to a sparse graph costs more).
        adjacent = (U != 0) | (U.T != 0)
        reach = np.asarray(visible, dtype=bool).copy()
        while True:
            grown = reach | adjacent[:, reach].any(axis=1)
            if np.array_equal(grown, reach):
                return reach
            reach = grown
    # Weak components of the directed graph of U = components of the pattern of U + Uᵀ.
    _, labels = csgraph.connected_components(U, directed=True, connection="weak")
    return np.isin(labels, np.unique(labels[visible]))


@dataclass
class FactorizationHints:
    """What earlier sparse factorizations of one layer's U learned, for the next ones
    (Newton steps, derivatives, the rest of the batch, later calls).

    ``permc_spec``: the faster column ordering. Neither wins everywhere (measured on the
    benchmark: COLAMD 1 ms vs NATURAL 48 ms on projection_simplex/medium, but 65 vs
    28 ms on sdp/medium and 385 vs 49 ms on lasso/large), so the first factorization
    that takes longer than ``TRIAL_S`` times both and keeps the faster.
    ``shift_first``: most factorizations of U itself failed (SuperLU raises on an
    exactly singular U), so factor U + δI straight away instead of failing first. Not
    after a single failure: the shifted matrix orders worse (lp/medium: 5.8 vs 1.8 ms,
    where 5 of 32 instances were exactly singular), so failing first is cheaper unless
    failures are the rule."""

    permc_spec: str | None = None
    plain_tries: int = 0
    plain_failures: int = 0
    # Schur-complement fixed blocks by (A, P) (see conelayers.schur): only for layers
    # whose A and P are constant (one block, built once); off by default.
    schur_blocks: dict = field(default_factory=dict, repr=False)
    constant_matrices: bool = False
    # The last small U judged on its coupled block had tiny pivots there in full but
    # a regular coupled block (socp: a harmless auxiliary null space): factorize the
    # coupled block straight away, not the whole U first.
    coupled_first: bool = False

    TRIAL_S = 0.005

    @property
    def shift_first(self) -> bool:
        return self.plain_tries >= 2 and 2 * self.plain_failures > self.plain_tries

    def record_plain(self, failed: bool) -> None:
        self.plain_tries += 1
        self.plain_failures += int(failed)


NATURAL_MAX_ENVELOPE = 20.0
"""The natural order is tried only if M's envelope is at most this many times COLAMD's
fill. Its fill stays inside the envelope (up to pivoting), so the bound caps the trial's
cost: on the benchmark the envelope is 2.4–6.6 × COLAMD's fill where the natural order
competes (lasso/large 43 vs 250 ms, qp/large 72 vs 120), and 334 and 1667 × on
projection_simplex medium and large, whose dense sum row the natural order fills in
(55 vs 7.5 ms, and 6.6 s vs 7.4 ms: the trial was a 6.5 s first call)."""


def envelope(M: sp.spmatrix) -> int:
    """Entries between the diagonal and the first nonzero of each row and column (the
    variable band of M in its natural order), which contains an unpivoted LU's fill."""
    size = M.shape[0]
    total = 0
    for compressed in (sp.csc_matrix(M), sp.csr_matrix(M)):
        counts = np.diff(compressed.indptr)
        first = np.arange(size)
        filled = counts > 0
        if compressed.nnz:
            starts = compressed.indptr[:-1][filled]
            first[filled] = np.minimum.reduceat(compressed.indices, starts)
        total += int(np.maximum(np.arange(size) - first, 0).sum())
    return total


def _splu(M: sp.csc_matrix, hints: FactorizationHints) -> ThreadBound:
    """SuperLU of M (column ordering from the hints, or timed here), held so that it is
    freed in this thread (``_threads.ThreadBound``)."""
    release_handed_back()
    if hints.permc_spec is not None:
        return ThreadBound(spla.splu(M, permc_spec=hints.permc_spec))
    t0 = time.perf_counter()
    lu = spla.splu(M, permc_spec="COLAMD")
    t_colamd = time.perf_counter() - t0
    if t_colamd < FactorizationHints.TRIAL_S or envelope(M) > NATURAL_MAX_ENVELOPE * lu.nnz:
        hints.permc_spec = "COLAMD"
        return ThreadBound(lu)
    t0 = time.perf_counter()
    try:
        other = spla.splu(M, permc_spec="NATURAL")
    except RuntimeError:
        hints.permc_spec = "COLAMD"
        return ThreadBound(lu)
    faster = time.perf_counter() - t0 < t_colamd
    hints.permc_spec = "NATURAL" if faster else "COLAMD"
    return ThreadBound(other if faster else lu)


class _SparseLU:
    """SuperLU of a sparse U, with solves and the pivots of its U factor."""

    def __init__(
        self, U: sp.csc_matrix, shift: float | Callable[[], float],
        hints: FactorizationHints | None = None, singular: bool = False,
    ) -> None:
        """``shift``: δ, or a function giving it (called only if a shift is needed);
        ``singular``: U is known to be singular, so factor U + δI at once."""
        hints = hints if hints is not None else FactorizationHints()

        def shifted() -> sp.csc_matrix:
            delta = shift() if callable(shift) else shift
            return (U + delta * sp.identity(U.shape[0], format="csc")).tocsc()

        # U's own pattern first: adding δI puts entries on every structurally zero
        # diagonal position, which can order far worse (lasso/medium: 4.8 ms unshifted
        # vs 50 ms shifted). An exactly singular U (harmless auxiliary non-uniqueness is
        # common) makes SuperLU raise; then factor U + δI. (Before it raises, SuperLU's
        # BLAS calls on the zero pivot's supernode print "On entry to DTRSV parameter
        # number 6 had an illegal value" to stderr: U known to be singular skips it.)
        self.shifted = True  # U + δI factorized: U exactly (or known) singular
        if singular or hints.shift_first:
            self._lu = _splu(shifted(), hints)
        else:
            try:
                self._lu = _splu(U, hints)
                hints.record_plain(failed=False)
                self.shifted = False
            except RuntimeError:
                hints.record_plain(failed=True)
                self._lu = _splu(shifted(), hints)
        self.pivots = np.abs(self._lu.value.U.diagonal())
        if not np.all(np.isfinite(self.pivots)) or self.pivots.min(initial=1.0) == 0.0:
            self._lu = _splu(shifted(), hints)
            self.pivots = np.abs(self._lu.value.U.diagonal())
            self.shifted = True

    def solve(self, rhs: np.ndarray, transpose: bool) -> np.ndarray:
        return self._lu.value.solve(rhs, trans="T" if transpose else "N")


class _DenseLU:
    """LAPACK LU (partial pivoting) of a dense U + δI (the shift keeps an exactly
    singular U factorizable; solves refine against U itself), or one factorized already
    (``factors``: what ``scipy.linalg.lu_factor`` returned for U + δI)."""

    shifted = False  # δI is always added, and says nothing of U's singularity

    def __init__(
        self, U: np.ndarray, shift: float, factors: tuple[np.ndarray, np.ndarray] | None = None
    ) -> None:
        if factors is None:
            factors = sla.lu_factor(U + shift * np.eye(U.shape[0]), check_finite=False)
        self._lu = factors
        self.pivots = np.abs(np.diagonal(self._lu[0]))

    def solve(self, rhs: np.ndarray, transpose: bool) -> np.ndarray:
        # LAPACK's getrs itself: scipy.linalg.lu_solve's checks and batching wrapper cost
        # more than the solve at the sizes this is used for (~25 vs ~4 µs at order 100).
        out, info = getrs(*self._lu, rhs, trans=1 if transpose else 0)
        if info != 0:
            raise ValueError(f"LAPACK getrs failed (info = {info})")
        return out


TINY_PIVOT_RTOL = 1e-9
"""|pivot| ≤ this × the largest: the LU's sign of a (numerically) singular U."""


def _tiny(pivots: np.ndarray) -> int:
    return int(np.count_nonzero(pivots <= TINY_PIVOT_RTOL * max(pivots.max(initial=0.0),
                                                                1e-300)))


def equilibrate(U: sp.spmatrix | np.ndarray, iterations: int = 10) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Ruiz scalings (r, c) with rows and columns of diag(r) U diag(c) of max-norm ≈ 1
    (empty rows and columns keep 1)."""
    dense = isinstance(U, np.ndarray)
    absU = np.abs(U) if dense else abs(sp.csr_matrix(U))
    r, c = np.ones(U.shape[0]), np.ones(U.shape[1])
    for _ in range(iterations):
        if dense:
            M = absU * r[:, None] * c[None, :]
            rows, cols = M.max(axis=1), M.max(axis=0)
        else:
            M = sp.diags(r) @ absU @ sp.diags(c)
            rows, cols = M.max(axis=1).toarray().ravel(), M.max(axis=0).toarray().ravel()
        r /= np.sqrt(np.where(rows > 0, rows, 1.0))
        c /= np.sqrt(np.where(cols > 0, cols, 1.0))
    return r, c


class _ScaledLU:
    """Solves with U = D_r⁻¹ Û D_c⁻¹ from an LU of Û: U w = b ⇔ w = D_c Û⁻¹ D_r b, and
    Uᵀ w = b ⇔ w = D_r Û⁻ᵀ D_c b. Pivots are Û's."""

    def __init__(self, inner: _DenseLU | _SparseLU, r: np.ndarray, c: np.ndarray) -> None:
        self.inner, self.r, self.c = inner, r, c
        self.pivots = inner.pivots

    def solve(self, rhs: np.ndarray, transpose: bool) -> np.ndarray:
        left, right = (self.c, self.r) if transpose else (self.r, self.c)
        scale_in = left[:, None] if rhs.ndim == 2 else left
        scale_out = right[:, None] if rhs.ndim == 2 else right
        return scale_out * self.inner.solve(scale_in * rhs, transpose)


class NullSpaceLU:
    """LU of a square U (sparse, or dense ndarray for small U) with numerical null
    spaces split off (see module doc)."""

    def __init__(
        self, U: sp.spmatrix | np.ndarray, rtol: float = SINGULAR_RTOL, block: int = 4,
        seed: int = 0, hints: FactorizationHints | None = None,
        dense_factors: tuple[float, tuple[np.ndarray, np.ndarray]] | None = None,
        singular: bool = False,
    ) -> None:
        """``dense_factors``: (‖U‖ estimate, LAPACK LU of U + shift_for(‖U‖)·I) computed
        already (a whole batch factorized at once, ``conelayers.batch_refine``).
        ``singular``: U is known to be singular (structurally): the sparse LU factors
        U + δI straight away."""
        self.dense = isinstance(U, np.ndarray)
        U = np.asarray(U, dtype=np.float64) if self.dense else sp.csc_matrix(U)
        self.U = U
        self.size = U.shape[0]
        self._norm = None if dense_factors is None else dense_factors[0]
        self.rtol = rtol
        self._hints = hints
        if dense_factors is not None:
            self._lu = _DenseLU(U, self.shift, dense_factors[1])
        elif self.dense:
            self._lu = _DenseLU(U, self.shift)
        else:
            # The norm only matters if U must be shifted or its null space is analyzed:
            # estimated then (8 pairs of sparse products: 1.1 of 7 ms on qp/medium).
            self._lu = _SparseLU(U, lambda: self.shift, hints, singular)
        # Tiny pivots of the LU estimate the nullity, so one block usually suffices.
        self.tiny_pivots = _tiny(self._lu.pivots)
        # What the singularity is judged on: U itself, or U equilibrated (below).
        self._judged: tuple[sp.spmatrix | np.ndarray, _DenseLU | _SparseLU, float] | None
        self._judged = None
        self._scales: tuple[np.ndarray, np.ndarray] | None = None
        if self.tiny_pivots and not singular and not self._lu.shifted:
            self._try_equilibrated(hints)
        self._block, self._seed = max(block, self.tiny_pivots + 2), seed
        self._analyzed = False

    def _try_equilibrated(self, hints: FactorizationHints | None) -> None:
        """Tiny pivots may be bad scaling, not singularity (1e6·sum_squares(x) with
        Σx = 1: σ_min/σ_max = 7.5e-13, yet D_r U D_c is well conditioned). Factorize
        Û = D_r U D_c (``equilibrate``): the null-space analysis judges Û (scale-free) and
        maps its null vectors back; if Û's LU has no tiny pivot, U is regular and solves
        go through that LU. (An exactly singular sparse U, shifted, is judged as it is.)"""
        r, c = equilibrate(self.U)
        if self.dense:
            scaled = r[:, None] * self.U * c[None, :]
            norm = estimate_norm(scaled)
            inner: _DenseLU | _SparseLU = _DenseLU(scaled, shift_for(norm))
        else:
            scaled = sp.csc_matrix(sp.diags(r) @ self.U @ sp.diags(c))
            norm = estimate_norm(scaled)
            # Its own hints: this trial must not count as a failure of the layer's U.
            order = hints.permc_spec if hints is not None else None
            inner = _SparseLU(scaled, lambda: shift_for(norm), FactorizationHints(order))
        self._judged = (scaled, inner, norm)
        self._scales = (r, c)
        if not _tiny(inner.pivots):
            self._lu = _ScaledLU(inner, r, c)
            self.tiny_pivots = 0

    @property
    def norm(self) -> float:
        """Estimate of ‖U‖₂ (``estimate_norm``), made on first need."""
        if self._norm is None:
            self._norm = estimate_norm(self.U)
        return self._norm

    @property
    def shift(self) -> float:
        """δ = 1e-13‖U‖ (``shift_for``)."""
        return shift_for(self.norm)

    def _analyze(self) -> None:
        """Find the null spaces and factor the bordered system (on first need)."""
        if self._analyzed:
            return
        rng = np.random.default_rng(self._seed)
        right, self._sigma_right = self._null_space(rng, self._block, transpose=False)
        left, self._sigma_left = self._null_space(rng, self._block, transpose=True)
        k = min(right.shape[1], left.shape[1])
        # A square matrix has null spaces of equal dimension; numerically keep the common
        # count, taking the directions with the smallest singular values on each side.
        self._right, self._left, self._nullity = right[:, :k], left[:, :k], k
        self._bordered = None
        if k:
            if self.dense:
                B = np.block([[self.U, self._left], [self._right.T, np.zeros((k, k))]])
                self._bordered = _DenseLU(B, 0.0)
            else:
                B = sp.bmat(
                    [[self.U, sp.csc_matrix(self._left)], [sp.csc_matrix(self._right.T), None]],
                    format="csc",
                )
                order = self._hints.permc_spec if self._hints is not None else None
                self._bordered = _SparseLU(B, self.shift, FactorizationHints(order))
        self._analyzed = True

    @property
    def right_null(self) -> np.ndarray:
        """Orthonormal basis (columns) of the numerical null space of U."""
        self._analyze()
        return self._right

    @property
    def left_null(self) -> np.ndarray:
        """Orthonormal basis (columns) of the numerical null space of Uᵀ."""
        self._analyze()
        return self._left

    @property
    def nullity(self) -> int:
        self._analyze()
        return self._nullity

    @property
    def pivot_ratio(self) -> float:
        """min |u_ii| / max |u_ii| of the LU: a free (rough) indicator of conditioning."""
        pivots = self._lu.pivots
        if pivots.size == 0:
            return 1.0
        return float(pivots.min() / max(pivots.max(), 1e-300))

    @property
    def analyzed(self) -> bool:
        return self._analyzed

    @property
    def sigma_min(self) -> float:
        """Estimate of the smallest singular value of U (of Û where U was judged
        equilibrated; see ``sigma_ratio``)."""
        self._analyze()
        return float(min(self._sigma_right.min(), self._sigma_left.min()))

    @property
    def sigma_ratio(self) -> float:
        """σ_min/σ_max of the matrix the singularity is judged on (U, or Û)."""
        norm = self._judged[2] if self._judged is not None else self.norm
        return self.sigma_min / norm if norm > 0 else 0.0

    @property
    def equilibrated(self) -> bool:
        """Whether U is judged on its equilibration Û (its plain LU had tiny pivots)."""
        return self._scales is not None

    def _null_space(self, rng, block: int, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
        """Orthonormal basis of the numerical null space of U (or Uᵀ), and the estimated
        smallest singular values, by two steps of block inverse iteration."""
        N = self.size
        matrix, lu, norm = self._judged or (self.U, self._lu, self.norm)
        op = matrix.T if transpose else matrix
        k = min(block, N)
        while True:
            X = _orthonormal(rng.standard_normal((N, k)))
            for _ in range(2):
                X = _orthonormal(lu.solve(X, transpose))
            # Rayleigh–Ritz: singular vectors of U restricted to span(X).
            _, s, vt = np.linalg.svd(op @ X, full_matrices=False)
            order = np.argsort(s)
            s, vecs = s[order], X @ vt[order].T
            small = s <= self.rtol * max(norm, 1e-300)
            if small.all() and k < N:
                k = min(2 * k, N)
                continue
            vecs = vecs[:, small]
            if self._scales is not None and vecs.shape[1]:
                # Û n̂ = 0 ⇔ U (D_c n̂) = 0; Ûᵀ l̂ = 0 ⇔ Uᵀ (D_r l̂) = 0.
                r, c = self._scales
                vecs = _orthonormal((r if transpose else c)[:, None] * vecs)
            return vecs, s

    def _refined_solve(self, rhs: np.ndarray, transpose: bool, steps: int = 4) -> np.ndarray:
        """Solve with the shifted LU, then iterative refinement against U."""
        op = self.U.T if transpose else self.U
        w, _, _ = refine_iteratively(
            lambda r: self._lu.solve(r, transpose), lambda v: op @ v, rhs, steps
        )
        return w

    def solve_factor(self, rhs: np.ndarray, transpose: bool = False) -> np.ndarray:
        """One solve with the (possibly shifted) LU, unrefined: the preconditioner step
        when this factorization stands in for a nearby matrix."""
        return self._lu.solve(rhs, transpose)

    def solve_unanalyzed(self, rhs: np.ndarray) -> np.ndarray:
        """A solution of U w = rhs from the LU alone (iteratively refined against U),
        without the null-space analysis: exact where U is regular; where it is singular,
        w may carry a large null-space component, which a Newton line search rejects."""
        return self._refined_solve(rhs, False)

    def solve(self, rhs: np.ndarray, transpose: bool = False) -> tuple[np.ndarray, float]:
        """Minimum-norm w with U w = rhs (Uᵀ w = rhs) on the consistent part, and the
        norm of the inconsistent part of rhs (0 when rhs ∈ range). Without tiny pivots
        (the common, regular case) this is a plain LU solve, and the null-space search
        waits until a check asks for it."""
        if not self._analyzed and self.tiny_pivots == 0:
            return self._refined_solve(rhs, transpose), 0.0
        self._analyze()
        if self._bordered is None:
            return self._refined_solve(rhs, transpose), 0.0
        ext = np.concatenate([rhs, np.zeros(self.nullity)])
        sol = self._bordered.solve(ext, transpose)
        return sol[: self.size], float(np.linalg.norm(sol[self.size :]))
