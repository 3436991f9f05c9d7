"""Solves through the Schur complement on the non-zero-cone rows (conelayers.schur),
against dense solves of the same U, and the layer's gradients through it against
central finite differences and against the sparse-LU path."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

import conelayers.residual as residual_mod
from conelayers.layer import LayerCore
from conelayers.linsolve import NullSpaceLU
from conelayers.residual import ResidualMap, newton_refine
from conelayers.schur import SchurKrylov, SchurLU, fixed_block
from conelayers.solvers.scs import solve

TIGHT = {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 50_000}


def _nearest_correlation(n: int = 14) -> LayerCore:
    """min ‖X − C‖²_F s.t. X ⪰ 0, diag X = 1: P ≻ 0 on null(A_zero), so K is regular.
    (n = 14: U of size 224, above DENSE_MAX_SIZE once the presolve substitutes X − C.)"""
    C = cp.Parameter((n, n), name="C")
    X = cp.Variable((n, n), symmetric=True, name="X")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - C)), [X >> 0, cp.diag(X) == 1])
    return LayerCore(prob, [C], [X])


def _max_cut_relaxation(n: int = 12) -> LayerCore:
    """min tr(CX) s.t. X ⪰ 0, diag X = 1: no quadratic term, K is singular."""
    C = cp.Parameter((n, n), name="C")
    X = cp.Variable((n, n), symmetric=True, name="X")
    prob = cp.Problem(cp.Minimize(cp.trace(C @ X)), [X >> 0, cp.diag(X) == 1])
    return LayerCore(prob, [C], [X])


def _value(n: int, seed: int) -> np.ndarray:
    M = np.random.default_rng(seed).standard_normal((n, n))
    return (M + M.T) / 2


def _refined_jacobian(core: LayerCore, value: np.ndarray):
    theta, _, _ = core.parameter_values([value])
    program = core.instances(theta)[0]
    residual = ResidualMap(program, core.cone, core.factor_hints)
    sol = solve(program, {**TIGHT, "verbose": False})
    z, _ = newton_refine(residual, residual.z_from_solution(sol.x, sol.y, sol.s))
    return residual, residual.jacobian(z)


@pytest.mark.parametrize("transpose", [False, True])
def test_schur_solve_matches_dense(transpose):
    core = _nearest_correlation()
    _, jac = _refined_jacobian(core, _value(14, 0))
    assert jac.size > residual_mod.DENSE_MAX_SIZE  # the sparse regime, where it applies
    lu = jac.factorization()
    assert isinstance(lu, SchurLU) and lu.tiny_pivots == 0
    U = jac.todense()
    rhs = np.random.default_rng(1).standard_normal(jac.size)
    ref = np.linalg.solve(U.T if transpose else U, rhs)
    raw = lu.solve_factor(rhs, transpose)  # the Schur formula itself, unrefined
    np.testing.assert_allclose(raw, ref, atol=1e-9 * np.abs(ref).max())
    w, info = jac.solve(rhs, transpose=transpose)
    assert info.method == "direct"
    np.testing.assert_allclose(w, ref, atol=1e-11 * np.abs(ref).max())
    # Its pivots are those of an LU of U in the order (u, v_zero | other rows): the
    # ratio bounds U's conditioning from below (σ_min/σ_max ≥ ratio / N, roughly).
    s = np.linalg.svd(U, compute_uv=False)
    assert 0 < lu.pivot_ratio and s[-1] / s[0] > 1e-3 * lu.pivot_ratio


def test_null_space_analysis_is_delegated_to_the_lu_of_u():
    core = _nearest_correlation()
    _, jac = _refined_jacobian(core, _value(14, 2))
    lu = jac.factorization()
    assert isinstance(lu, SchurLU)
    s = np.linalg.svd(jac.todense(), compute_uv=False)
    assert lu.nullity == 0
    # The estimate is the one NullSpaceLU makes on U itself (two steps of block inverse
    # iteration: an upper bound on σ_min by Rayleigh–Ritz, within a small factor).
    assert lu.sigma_min == NullSpaceLU(jac.tosparse()).sigma_min
    assert s[-1] * (1 - 1e-9) <= lu.sigma_min <= 10 * s[-1]


def test_singular_fixed_block_falls_back_to_the_sparse_lu():
    core = _max_cut_relaxation()
    residual, jac = _refined_jacobian(core, _value(12, 3))
    assert fixed_block(residual.program, core.factor_hints.schur_blocks) is None
    assert isinstance(jac.factorization(), NullSpaceLU)


def _gradient(core: LayerCore, value: np.ndarray, weight: np.ndarray) -> np.ndarray:
    result = core.forward([value], TIGHT)
    (grad,) = core.vjp(result, [weight[None]])
    return grad


def _assert_central_differences(core, C0, W, g, draws: int) -> None:
    """⟨g, D⟩ against central differences of ⟨W, X*(C)⟩ along random D (step 1e-5: the
    truncation error is O(h²) ≈ 1e-10 and the solve error ~1e-9/h ≈ 1e-4 of a
    difference, so 1e-5 relative)."""
    n = C0.shape[0]
    h = 1e-5
    rng = np.random.default_rng(6)
    for _ in range(draws):
        D = rng.standard_normal((n, n))
        plus = core.forward([C0 + h * D], TIGHT).outputs[0][0]
        minus = core.forward([C0 - h * D], TIGHT).outputs[0][0]
        fd = float(np.sum(W * (plus - minus))) / (2 * h)
        assert float(np.sum(g * D)) == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_gradient_matches_finite_differences_and_the_sparse_path(monkeypatch):
    """A smooth point of the nearest-correlation map (no zero eigenvalue of the
    projection's argument): the gradient of ⟨W, X*(C)⟩ against central differences
    of tight re-solves (step 1e-5: the truncation error is O(h²) ≈ 1e-10 and the solve
    error ~1e-9/h ≈ 1e-4 of a difference, so 1e-5 relative), and against the same
    layer with the Schur path switched off (the same U, another factorization)."""
    n = 14
    C0 = _value(n, 4)
    W = _value(n, 5)
    core = _nearest_correlation(n)
    g = _gradient(core, C0, W)
    assert isinstance(core.forward([C0], TIGHT).derivative(0).U.factorization(), SchurLU)
    _assert_central_differences(core, C0, W, g, draws=3)
    monkeypatch.setattr(residual_mod, "fixed_block", lambda program, cache: None)
    sparse_core = _nearest_correlation(n)
    g_sparse = _gradient(sparse_core, C0, W)
    assert isinstance(
        sparse_core.forward([C0], TIGHT).derivative(0).U.factorization(), NullSpaceLU
    )
    np.testing.assert_allclose(g, g_sparse, rtol=1e-9, atol=1e-11)


def test_no_schur_block_when_a_parameter_enters_a():
    """The fixed block is per (A, P) and built once: a layer whose A moves with the
    parameters keeps the sparse LU (and no block is cached)."""
    n = 12
    a = cp.Parameter(n, pos=True, name="a")
    X = cp.Variable((n, n), symmetric=True, name="X")
    C = _value(n, 7)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - C)),
                      [X >> 0, cp.multiply(a, cp.diag(X)) == 1])
    core = LayerCore(prob, [a], [X])
    assert not core.factor_hints.constant_matrices
    result = core.forward([np.linspace(0.5, 2.0, n)], TIGHT)
    assert isinstance(result.derivative(0).U.factorization(), NullSpaceLU)
    assert not core.factor_hints.schur_blocks


# -- the matrix-free Schur complement with GMRES (large programs) -------------------------


@pytest.mark.parametrize("transpose", [False, True])
def test_schur_krylov_solve_matches_dense(transpose):
    core = _nearest_correlation()
    _, jac = _refined_jacobian(core, _value(14, 8))
    fixed = fixed_block(jac.program, core.factor_hints.schur_blocks, dense=False)
    assert fixed is not None
    krylov = SchurKrylov(fixed, jac.J)
    U = jac.todense()
    rhs = np.random.default_rng(9).standard_normal(jac.size)
    ref = np.linalg.solve(U.T if transpose else U, rhs)
    w = krylov.solve(rhs, transpose)
    # GMRES stops at 1e-12 relative on S; cond(U) of this problem is ~1e2.
    np.testing.assert_allclose(w, ref, atol=1e-9 * np.abs(ref).max())
    assert 0 < krylov.iterations < fixed.mv  # converged well before n steps


def _iterative(monkeypatch) -> None:
    """Send every program to the iterative path (as above DIRECT_MAX_SIZE)."""
    monkeypatch.setattr(residual_mod, "prefers_direct", lambda program: False)


def _direct_then_iterative(monkeypatch, make, C0, W):
    """The gradient of ⟨W, X*(C0)⟩ on the direct path, then with every program sent to
    the iterative path: (direct gradient, iterative core, its forward result, its
    gradient)."""
    g_direct = _gradient(make(C0.shape[0]), C0, W)
    _iterative(monkeypatch)
    core = make(C0.shape[0])
    result = core.forward([C0], TIGHT)
    (g,) = core.vjp(result, [W[None]])
    return g_direct, core, result, g


def test_iterative_path_uses_schur_gmres_and_matches_finite_differences(monkeypatch):
    """The same nearest-correlation gradient as above, through Schur–GMRES (Newton
    steps and the vjp): against central differences (tolerances as above) and against
    the direct path's gradient (one U, two solvers: 1e-8)."""
    n = 12
    C0, W = _value(n, 4), _value(n, 5)
    g_direct, core, result, g = _direct_then_iterative(monkeypatch, _nearest_correlation,
                                                       C0, W)
    info = result.derivative(0).last_solve
    assert info.method == "schur-gmres" and info.relative_residual <= 1e-10
    np.testing.assert_allclose(g, g_direct, rtol=1e-8, atol=1e-10)
    _assert_central_differences(core, C0, W, g, draws=2)


def test_iterative_path_falls_back_to_lsqr_when_k_is_singular(monkeypatch):
    """Max-cut relaxation: no quadratic term, K singular, so no Schur solver; LSQR on U
    gives the gradient, equal to the direct path's."""
    n = 12
    C0, W = _value(n, 10), _value(n, 11)
    g_direct, _, result, g = _direct_then_iterative(monkeypatch, _max_cut_relaxation,
                                                    C0, W)
    assert result.derivative(0).U.schur_krylov() is None
    assert result.derivative(0).last_solve.method == "lsqr"
    np.testing.assert_allclose(g, g_direct, rtol=1e-6, atol=1e-8)


def test_wide_psd_cone_takes_schur_gmres_below_the_direct_size(monkeypatch):
    """A PSD cone wider than DIRECT_MAX_PSD_BLOCK (lowered here to 50 < svec(12) = 78)
    sends U to Schur–GMRES where K is regular, with the direct path's gradient; where K
    is singular (max-cut) the sparse LU stays (LSQR would be the only alternative)."""
    n = 12
    C0, W = _value(n, 4), _value(n, 5)
    g_direct = _gradient(_nearest_correlation(n), C0, W)
    monkeypatch.setattr(residual_mod, "DIRECT_MAX_PSD_BLOCK", 50)
    core = _nearest_correlation(n)
    result = core.forward([C0], TIGHT)
    (g,) = core.vjp(result, [W[None]])
    derivative = result.derivative(0)
    assert not derivative.U.ops.direct
    assert derivative.last_solve.method == "schur-gmres"
    np.testing.assert_allclose(g, g_direct, rtol=1e-8, atol=1e-10)
    max_cut = _max_cut_relaxation(n)
    result = max_cut.forward([_value(n, 10)], TIGHT)
    max_cut.vjp(result, [W[None]])
    assert result.derivative(0).U.ops.direct
    assert result.derivative(0).last_solve.method != "lsqr"
