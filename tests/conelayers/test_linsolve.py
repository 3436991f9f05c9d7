"""NullSpaceLU: minimum-norm solves and null spaces of (possibly singular) U, checked
against dense SVD / pseudo-inverse computations; the dense and sparse paths agree."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import conelayers.linsolve as linsolve
from conelayers.linsolve import FactorizationHints, NullSpaceLU, coupled_coordinates


def _random_sparse(n: int, rank: int, seed: int) -> np.ndarray:
    """A sparse-looking n×n matrix of the given rank (rank < n: exactly singular)."""
    rng = np.random.default_rng(seed)
    left = rng.standard_normal((n, rank)) * (rng.random((n, rank)) < 0.4)
    right = rng.standard_normal((rank, n)) * (rng.random((rank, n)) < 0.4)
    M = left @ right
    if rank == n:
        M += 3.0 * np.eye(n)
    return M


def _as(kind: str, M: np.ndarray):
    return M if kind == "dense" else sp.csc_matrix(M)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_regular_solve_matches_numpy(kind):
    M = _random_sparse(30, 30, seed=1)
    rhs = np.random.default_rng(2).standard_normal(30)
    lu = NullSpaceLU(_as(kind, M))
    w, inconsistency = lu.solve(rhs)
    ref = np.linalg.solve(M, rhs)
    # Backward-stable solve of a matrix with cond ~ 1e2: ~1e-13 relative error.
    np.testing.assert_allclose(w, ref, rtol=1e-10, atol=1e-12)
    assert inconsistency == 0.0
    wt, _ = lu.solve(rhs, transpose=True)
    np.testing.assert_allclose(wt, np.linalg.solve(M.T, rhs), rtol=1e-10, atol=1e-12)
    assert lu.nullity == 0
    np.testing.assert_allclose(lu.solve_unanalyzed(rhs), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("rank", [27, 29])
def test_singular_min_norm_solve_and_null_spaces(kind, rank):
    """On a consistent rhs, the minimum-norm solution is the pseudo-inverse's; the
    null-space bases span what the SVD says; an inconsistent rhs is measured."""
    n = 30
    M = _random_sparse(n, rank, seed=rank)
    rng = np.random.default_rng(5)
    rhs = M @ rng.standard_normal(n)  # in range(M)
    lu = NullSpaceLU(_as(kind, M))
    assert lu.nullity == n - rank
    w, inconsistency = lu.solve(rhs)
    ref = np.linalg.pinv(M) @ rhs
    np.testing.assert_allclose(w, ref, rtol=1e-7, atol=1e-8 * np.abs(ref).max())
    assert inconsistency <= 1e-8 * np.linalg.norm(rhs)
    # Null spaces: orthonormal, annihilated by M (M Rᵀ), orthogonal to range(Mᵀ).
    U_svd, s, Vt = np.linalg.svd(M)
    right_ref, left_ref = Vt[rank:].T, U_svd[:, rank:]
    for basis, ref_basis, op in ((lu.right_null, right_ref, M), (lu.left_null, left_ref, M.T)):
        np.testing.assert_allclose(basis.T @ basis, np.eye(n - rank), atol=1e-10)
        assert np.linalg.norm(op @ basis) <= 1e-9 * s[0]
        # Same subspace: projecting onto the reference basis keeps each vector.
        np.testing.assert_allclose(
            np.linalg.norm(ref_basis.T @ basis, axis=0), 1.0, atol=1e-9
        )
    # The part of rhs outside range(M) is reported, not silently absorbed.
    off = left_ref[:, 0]
    _, inconsistency = lu.solve(rhs + off)
    assert inconsistency == pytest.approx(1.0, rel=1e-6)


def test_dense_and_sparse_paths_agree_on_a_singular_matrix():
    M = _random_sparse(40, 36, seed=7)
    rhs = M @ np.random.default_rng(8).standard_normal(40)
    w_dense, _ = NullSpaceLU(M).solve(rhs)
    w_sparse, _ = NullSpaceLU(sp.csc_matrix(M)).solve(rhs)
    np.testing.assert_allclose(w_dense, w_sparse, rtol=1e-7, atol=1e-9)


def test_hints_remember_ordering_and_singularity():
    """The first sparse factorization fixes a column ordering; an exactly singular U
    (SuperLU fails on it) makes later ones shift straight away once failures are the
    rule; solves stay exact either way."""
    hints = FactorizationHints()
    M = _random_sparse(30, 28, seed=3)
    M[:, 0] = 0.0  # structurally singular: SuperLU raises on U itself
    M[0, 0] = 0.0
    rhs = M @ np.random.default_rng(4).standard_normal(30)
    lu = NullSpaceLU(sp.csc_matrix(M), hints=hints)
    assert hints.permc_spec in ("COLAMD", "NATURAL")
    assert not hints.shift_first  # one failure is not the rule yet
    NullSpaceLU(sp.csc_matrix(M), hints=hints)
    assert hints.shift_first  # two out of two
    w, _ = lu.solve(rhs)
    np.testing.assert_allclose(w, np.linalg.pinv(M) @ rhs, rtol=1e-7, atol=1e-9)
    # A regular matrix with the same hints: shifted by δ = 1e-13‖U‖ but refined
    # against U, so the solve is still exact.
    R = _random_sparse(30, 30, seed=5)
    w2, _ = NullSpaceLU(sp.csc_matrix(R), hints=hints).solve(rhs)
    np.testing.assert_allclose(w2, np.linalg.solve(R, rhs), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_pivot_ratio_of_a_diagonal_matrix(kind):
    """The LU of diag(d) has the pivots d: the ratio is min |d| / max |d|."""
    d = np.array([4.0, -0.5, 2.0, 1e-3, 3.0])
    lu = NullSpaceLU(_as(kind, np.diag(d)))
    assert lu.tiny_pivots == 0
    assert lu.pivot_ratio == pytest.approx(1e-3 / 4.0, rel=1e-12)


def test_coupled_coordinates_are_the_components_holding_visible_ones():
    """Blocks {0, 1, 2} (a chain through a one-way entry), {3, 4} and {5}: only the
    blocks with a visible coordinate count, whatever the direction of the entries, and
    the dense and sparse paths agree (also on random patterns)."""
    U = np.zeros((6, 6))
    U[0, 1] = U[2, 1] = 1.0  # 0 - 1 - 2 weakly connected
    U[3, 4] = U[4, 3] = 2.0
    U[5, 5] = 1.0
    for visible, expected in [([0], [0, 1, 2]), ([2, 5], [0, 1, 2, 5]), ([4], [3, 4])]:
        mask = np.zeros(6, dtype=bool)
        mask[visible] = True
        for M in (U, sp.csc_matrix(U)):
            assert np.flatnonzero(coupled_coordinates(M, mask)).tolist() == expected
    rng = np.random.default_rng(0)
    for _ in range(50):
        N = int(rng.integers(2, 40))
        R = (rng.random((N, N)) < 0.05) * rng.standard_normal((N, N))
        vis = rng.random(N) < 0.15
        np.testing.assert_array_equal(
            coupled_coordinates(R, vis), coupled_coordinates(sp.csc_matrix(R), vis)
        )


@pytest.mark.parametrize("seed", range(3))
def test_envelope_counts_the_band_of_each_row_and_column(seed):
    """envelope(M) = Σ_i (i − first nonzero column of row i)⁺ + Σ_j (j − first nonzero
    row of column j)⁺, counted here entry by entry on a dense copy."""
    rng = np.random.default_rng(seed)
    M = sp.random(60, 60, density=0.05, random_state=seed, format="csc")
    M = M + sp.diags((rng.random(60) > 0.3).astype(float))  # some rows, columns stay empty
    D = M.toarray() != 0
    expected = 0
    for i in range(60):
        for line in (D[i], D[:, i]):
            nz = np.flatnonzero(line)
            if nz.size:
                expected += max(i - nz[0], 0)
    assert linsolve.envelope(M) == expected


def test_natural_order_not_tried_where_it_would_fill_the_envelope(monkeypatch):
    """An arrow matrix with its dense row and column first (the simplex constraint of a
    projection) fills completely in its natural order; COLAMD moves them last. Its
    envelope is far above COLAMD's fill, so the natural order is never factorized,
    whatever COLAMD took. A banded matrix is still timed both ways."""
    monkeypatch.setattr(FactorizationHints, "TRIAL_S", 0.0)  # always consider the trial
    orders = []
    real = linsolve.spla.splu

    def recording(M, permc_spec=None, **kwargs):
        orders.append(permc_spec)
        return real(M, permc_spec=permc_spec, **kwargs)

    monkeypatch.setattr(linsolve.spla, "splu", recording)
    n = 2000
    arrow = sp.lil_matrix((n, n))
    arrow.setdiag(4.0)
    arrow[0, :] = 1.0
    arrow[:, 0] = 1.0
    arrow[0, 0] = float(n)
    hints = FactorizationHints()
    lu = NullSpaceLU(sp.csc_matrix(arrow), hints=hints)
    assert orders == ["COLAMD"] and hints.permc_spec == "COLAMD" and lu.tiny_pivots == 0
    orders.clear()
    band = sp.diags([1.0, 4.0, 1.0], [-1, 0, 1], shape=(n, n), format="csc")
    NullSpaceLU(band, hints=FactorizationHints())
    assert orders == ["COLAMD", "NATURAL"]


def _badly_scaled(M: np.ndarray, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """D_r M D_c with diagonal scales spread over ``spread`` decades, and the scales."""
    rng = np.random.default_rng(seed)
    r = 10.0 ** rng.uniform(-spread / 2, spread / 2, M.shape[0])
    c = 10.0 ** rng.uniform(-spread / 2, spread / 2, M.shape[1])
    return r[:, None] * M * c[None, :], r, c


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_badly_scaled_regular_matrix_is_regular(kind):
    """Scales over 12 decades give σ_min/σ_max far below 1e-10 and tiny LU pivots, but
    the matrix is regular: judged on its equilibration (no null space, a σ ratio near
    unscaled matrix's), and solves match numpy (relative to the solution: the
    equilibrated system's condition is ~6e2)."""
    M = _random_sparse(30, 30, seed=5)
    S, _, _ = _badly_scaled(M, 12.0, seed=6)
    s = np.linalg.svd(S, compute_uv=False)
    assert s[-1] / s[0] < 1e-12
    lu = NullSpaceLU(_as(kind, S))
    assert lu.equilibrated and lu.tiny_pivots == 0
    assert lu.nullity == 0 and lu.sigma_ratio > 1e-8
    rhs = np.random.default_rng(7).standard_normal(30)
    for transpose in (False, True):
        w, inconsistency = lu.solve(rhs, transpose)
        ref = np.linalg.solve(S.T if transpose else S, rhs)
        op = S.T if transpose else S
        assert inconsistency == 0.0
        # Componentwise backward error (Oettli–Prager): a normwise residual means little
        # at these scales (‖S‖‖w‖ ~ 1e15).
        bound = np.abs(op) @ np.abs(w) + np.abs(rhs)
        assert np.all(np.abs(op @ w - rhs) <= 1e-12 * bound)
        np.testing.assert_allclose(w, ref, rtol=1e-6)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_badly_scaled_singular_matrix_stays_singular(kind):
    """Rank 28 of 30, scaled over 8 decades: still judged singular (nullity 2), with
    null vectors of the matrix itself (mapped back from the equilibrated one where it
    was used)."""
    M = _random_sparse(30, 28, seed=8)
    S, _, _ = _badly_scaled(M, 8.0, seed=9)
    lu = NullSpaceLU(_as(kind, S))
    assert lu.nullity == 2
    R, L = lu.right_null, lu.left_null
    scale = np.abs(S).max()
    assert np.linalg.norm(S @ R) <= 1e-8 * scale and np.linalg.norm(S.T @ L) <= 1e-8 * scale
    np.testing.assert_allclose(R.T @ R, np.eye(2), atol=1e-12)
