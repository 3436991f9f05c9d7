"""The residual map's Jacobian solves: preconditioned by a nearby LU, restricted to the
coordinates coupled to the outputs, and the chord steps of Newton refinement. Every
answer is compared with a dense solve of the same U (NumPy's lstsq / pinv)."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import scipy.sparse as sp

import conelayers.linsolve as linsolve
from canonicalize.cones import ConeDims
from conelayers.checks import visible_coordinates
from conelayers.layer import LayerCore
from conelayers.refine import refine_solution
from conelayers.residual import (
    PRECONDITIONED_RTOL,
    ResidualMap,
    newton_refine,
    prefers_direct,
)
from conelayers.solvers.scs import ConeProgram, solve


def _socp_core(n: int = 30, k: int = 4, cones: int = 20, seed: int = 0) -> LayerCore:
    """min cᵀx s.t. ‖A_i x + b_i‖ ≤ 1, ‖x‖ ≤ 2 (curved cones: J moves with z)."""
    rng = np.random.default_rng(seed)
    c = cp.Parameter(n, name="c")
    x = cp.Variable(n, name="x")
    # cp.SOC directly: no epigraph variables (whose non-uniqueness would make U
    # singular, see the ball test below).
    cons = [cp.SOC(cp.Constant(2.0), x)]
    for _ in range(cones):
        cons.append(cp.SOC(cp.Constant(3.0), rng.standard_normal((k, n)) @ x
                           + rng.standard_normal(k)))
    return LayerCore(cp.Problem(cp.Minimize(c @ x), cons), [c], [x])


def _solved(core: LayerCore, value: np.ndarray, eps: float = 1e-4):
    theta, _, _ = core.parameter_values([value])
    program = core.instances(theta)[0]
    residual = ResidualMap(program, core.cone)
    sol = solve(program, {"eps_abs": eps, "eps_rel": eps, "verbose": False})
    return residual, residual.z_from_solution(sol.x, sol.y, sol.s), sol


@pytest.fixture(scope="module")
def socp():
    core = _socp_core()
    c = np.random.default_rng(1).standard_normal(30)
    residual, z_scs, _ = _solved(core, c)
    z, _ = newton_refine(residual, z_scs)
    # A point 1e-3 away, as a rough solver answer would be: its J differs from z's.
    z0 = z + 1e-3 * np.random.default_rng(8).standard_normal(z.size)
    return core, residual, z0, z


@pytest.mark.parametrize("transpose", [False, True])
def test_preconditioned_solve_matches_dense(socp, transpose):
    """U at the refined point, solved with the LU of U at the SCS point (1e-4 away)."""
    _, residual, z0, z = socp
    near = residual.jacobian(z0)
    jac = residual.jacobian(z)
    jac_pc = type(jac)(residual.program, jac.J, residual.ops, near.factorization())
    assert jac_pc.preconditioner is not None
    # ‖I − M⁻¹U‖: the nearby LU is a good preconditioner, and not U's own LU.
    assert 1e-8 < jac_pc.contraction() < 0.5
    rhs = np.random.default_rng(2).standard_normal(jac.size)
    w, info = jac_pc.solve(rhs, transpose=transpose)
    U = jac.todense()
    ref = np.linalg.solve(U.T if transpose else U, rhs)
    assert info.method == "preconditioned" and info.relative_residual <= PRECONDITIONED_RTOL
    assert not jac_pc.factorized  # no factorization of U itself was needed
    np.testing.assert_allclose(w, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def test_far_preconditioner_falls_back_to_own_lu(socp):
    """A preconditioner from an unrelated point does not contract: U is factorized."""
    core, residual, _, z = socp
    other_res, other_z0, _ = _solved(core, np.random.default_rng(7).standard_normal(30))
    far = ResidualMap(residual.program, core.cone).jacobian(other_z0)
    jac = residual.jacobian(z)
    jac_pc = type(jac)(residual.program, jac.J, residual.ops, far.factorization())
    rhs = np.random.default_rng(3).standard_normal(jac.size)
    w, info = jac_pc.solve(rhs)
    np.testing.assert_allclose(jac.matvec(w), rhs, atol=1e-10 * np.abs(rhs).max())
    assert jac_pc.contraction() > 0.5  # ‖I − M⁻¹U‖ ≈ 27 here: not a preconditioner
    assert info.method == "direct" and jac_pc.factorized


def test_chord_refinement_factorizes_once(monkeypatch):
    """From a rough SCS point on curved cones, Newton needs the Jacobian once: later
    steps reuse its LU (chord steps), and the derivative's Jacobian at the refined point
    is solved with that LU as preconditioner, to the same answer as a dense solve."""
    core = _socp_core(seed=3)
    residual, z0, sol = _solved(core, np.random.default_rng(4).standard_normal(30), 1e-3)
    count = {"lu": 0}
    original = linsolve.NullSpaceLU.__init__

    def counting(self, *args, **kwargs):
        count["lu"] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(linsolve.NullSpaceLU, "__init__", counting)
    scale = 1 + np.linalg.norm(residual.program.b) + np.linalg.norm(residual.program.c)
    z, info = newton_refine(residual, z0)
    assert np.linalg.norm(residual(z)) <= 1e-11 * scale
    assert info.steps >= 2 and count["lu"] == 1
    count["lu"] = 0
    z, jac = refine_solution(residual, sol, {"eps_abs": 1e-3, "eps_rel": 1e-3})
    assert jac.preconditioner is not None and not jac.factorized
    rhs = np.random.default_rng(5).standard_normal(jac.size)
    w, info = jac.solve(rhs, transpose=True)
    assert info.method == "preconditioned"
    ref = np.linalg.solve(residual.jacobian(z).todense().T, rhs)
    np.testing.assert_allclose(w, ref, atol=1e-9 * np.abs(ref).max())
    assert count["lu"] == 1


def _ball_core() -> LayerCore:
    p = cp.Parameter(5, name="p")
    x = cp.Variable(5, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [cp.norm(x) <= 2])
    # CVXPY's program as is: the presolve would fix the epigraph variable of ‖x‖, whose
    # harmless null space these tests are about.
    return LayerCore(prob, [p], [x], presolve=False)


@pytest.mark.parametrize("transpose", [True, False])
def test_coupled_solve_is_the_minimum_norm_solution(transpose):
    """Projection onto a ball from inside: the epigraph variable of ‖x‖ is not unique,
    so U is singular, in a block decoupled from x. A right side supported on the
    coupled coordinates is solved there alone, and the answer is the minimum-norm
    solution of the whole system (pinv); a right side reaching the decoupled block
    takes the full solve, with the same minimum-norm answer."""
    core = _ball_core()
    residual, z0, _ = _solved(core, np.array([0.3, -0.2, 0.5, 0.1, 0.0]))
    z, _ = newton_refine(residual, z0)
    jac = residual.jacobian(z)
    U = jac.todense()
    s = np.linalg.svd(U, compute_uv=False)
    assert s[-1] < 1e-10 * s[0]  # singular
    visible = visible_coordinates(core.program)
    mask, _ = jac.coupled_factorization(visible)
    assert mask is not None and mask[visible].all() and not mask.all()
    pinv = np.linalg.pinv(U.T if transpose else U)
    rng = np.random.default_rng(6)
    inside = np.where(mask, rng.standard_normal(jac.size), 0.0)
    # A consistent right side on the coupled coordinates: the image of a vector there.
    apply = jac.rmatvec if transpose else jac.matvec
    rhs = apply(inside)
    assert not np.any(rhs[~mask])
    w, _ = jac.solve(rhs, transpose=transpose, visible=visible)
    np.testing.assert_allclose(w, pinv @ rhs, atol=1e-9 * np.abs(pinv @ rhs).max())
    assert not np.any(w[~mask])
    spread = apply(rng.standard_normal(jac.size))  # consistent, reaches every block
    w, _ = jac.solve(spread, transpose=transpose, visible=visible)
    np.testing.assert_allclose(w, pinv @ spread, atol=1e-8 * np.abs(pinv @ spread).max())


def _identity_program(m: int, dims: ConeDims) -> ConeProgram:
    eye = sp.identity(m, format="csc")
    return ConeProgram(A=eye, b=np.zeros(m), c=np.zeros(m), dims=dims, P=eye)


@pytest.mark.parametrize(
    ("dims", "direct"),
    [
        (ConeDims(nonneg=100), True),  # small: always direct
        (ConeDims(zero=1000, nonneg=4000), True),  # N = 10000 but U as sparse as A
        (ConeDims(zero=10, psd=(80,)), False),  # N = 6500 with a dense 3240² block
        (ConeDims(nonneg=60_000), False),  # beyond the sparse-direct size limit
    ],
)
def test_direct_or_lsqr_by_size_and_sparsity(dims, direct):
    prog = _identity_program(dims.size, dims)
    assert prefers_direct(prog) is direct
    # What the Jacobian then uses; U = [[I, J], [−I, I − J]] is regular (Schur: I).
    if dims.size <= 10_000:
        residual = ResidualMap(prog)
        z = np.random.default_rng(0).standard_normal(2 * dims.size)
        jac = residual.jacobian(z)
        rhs = np.random.default_rng(1).standard_normal(jac.size)
        w, info = jac.solve(rhs)
        assert info.method == ("direct" if direct else "lsqr")
        np.testing.assert_allclose(jac.matvec(w), rhs, atol=1e-8 * np.abs(rhs).max())


@pytest.mark.parametrize("newton_failures", [1, 2])
def test_polish_goes_to_1e_9_only_when_newton_fails_from_1e_6(monkeypatch, newton_failures):
    """Newton made to fail from SCS's point (as at a singular U, a wrong active set), and
    optionally once more: the polish warm-starts SCS at 1e-6, and at 1e-9 only after a
    second failure; the answer is the projection onto the ball, 2p/‖p‖ (p outside)."""
    import conelayers.refine as refine_mod
    from conelayers.checks import ACCURACY_RTOL
    from conelayers.residual import RefinementInfo, relative_residual

    core = _ball_core()
    p = np.array([1.5, -2.0, 0.5, 1.0, -0.3])
    residual, z0, sol = _solved(core, p, eps=1e-2)
    assert relative_residual(residual, z0) > ACCURACY_RTOL  # a rough point to refine
    eps_used: list[float] = []
    real_solve, real_newton = refine_mod.solve, refine_mod.newton_refine
    monkeypatch.setattr(refine_mod, "solve", lambda prog, st, warm_start=None: (
        eps_used.append(st["eps_abs"]) or real_solve(prog, st, warm_start=warm_start)))
    failures = {"left": newton_failures}

    def newton(res, z, selection="lower"):
        if failures["left"]:
            failures["left"] -= 1
            r = float(np.linalg.norm(res(z)))
            return z, RefinementInfo(0, r, r)  # no progress
        return real_newton(res, z, selection=selection)

    monkeypatch.setattr(refine_mod, "newton_refine", newton)
    z, _ = refine_solution(residual, sol, {"eps_abs": 1e-2, "eps_rel": 1e-2, "verbose": False})
    assert eps_used == [1e-6, 1e-9][:newton_failures]
    assert relative_residual(residual, z) <= ACCURACY_RTOL
    x = core.program.recoveries[0].apply(residual.solution_from_z(z)[0])
    np.testing.assert_allclose(x, 2 * p / np.linalg.norm(p), atol=1e-9)


def test_solution_from_z_reuses_the_last_projection_without_aliasing(socp):
    """After N(z) is evaluated, (x, y, s) at z come from its projection (no second one),
    equal to a fresh computation, and mutating them does not reach the kept copy."""
    core, residual, _, z = socp
    residual(z)
    calls = []
    original = residual.cone.project_dual

    def counting(v):
        calls.append(1)
        return original(v)

    residual.cone.project_dual = counting
    try:
        x, y, s = residual.solution_from_z(z)
        assert not calls
        y_ref = original(z[residual.n :])
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(s, y_ref - z[residual.n :])
        np.testing.assert_array_equal(x, z[: residual.n])
        y[:] = np.nan
        _, y_again, _ = residual.solution_from_z(z)
        np.testing.assert_array_equal(y_again, y_ref)
        residual.solution_from_z(z + 1e-3)  # another point: projected afresh
        assert calls
    finally:
        del residual.cone.project_dual


def _lp_core(n: int, m: int, seed: int) -> tuple[LayerCore, list[np.ndarray]]:
    """The benchmark's LP: min cᵀx s.t. Ax ≤ b, 0 ≤ x ≤ 1 (a vertex solution, strictly
    complementary for random data: n of the m + 2n rows active)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    c, b, x = cp.Parameter(n, name="c"), cp.Parameter(m, name="b"), cp.Variable(n, name="x")
    core = LayerCore(cp.Problem(cp.Minimize(c @ x), [A @ x <= b, x >= 0, x <= 1]), [c, b], [x])
    return core, [rng.standard_normal(n), A @ np.full(n, 0.5) + rng.uniform(0.1, 1.0, m)]


def _lp_one_row_too_many(n: int, m: int, seed: int):
    """The LP's exact solution z* and a point near it where the inactive row nearest to
    its kink reads as active (its dual entry +|w*_i| instead of −|w*_i|), as SCS's rough
    answer had it on 7 of 32 lp/medium draws."""
    core, values = _lp_core(n, m, seed)
    theta, _, _ = core.parameter_values(values)
    residual = ResidualMap(core.instances(theta)[0], core.cone)
    sol = solve(residual.program, {"eps_abs": 1e-9, "eps_rel": 1e-9, "verbose": False})
    z_star, _ = newton_refine(residual, residual.z_from_solution(sol.x, sol.y, sol.s))
    w = z_star[residual.n :]
    inactive = np.flatnonzero(w < 0)
    i = residual.n + inactive[np.argmax(w[inactive])]
    z0 = z_star.copy()
    z0[i] = -z0[i]
    z0 += 1e-6 * np.random.default_rng(seed).standard_normal(z0.size)
    return residual, z_star, z0


@pytest.mark.parametrize("n, m", [(20, 10), (100, 60)])  # dense U (70), sparse U (360)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kink_crossing_leaves_a_singular_lp_piece(monkeypatch, n, m, seed):
    """One row too many read as active makes U singular (n + 1 rows [−A_i, 0]) and the
    least-squares Newton step stalls at a local minimum of ‖N‖ on that piece; the kink
    crossing moves to the next piece and Newton ends at z* to rounding."""
    residual, z_star, z0 = _lp_one_row_too_many(n, m, seed)
    jac = residual.jacobian(z0)
    assert jac.structurally_singular()
    assert np.linalg.matrix_rank(jac.todense()) < jac.size
    scale = 1 + np.linalg.norm(residual.program.b) + np.linalg.norm(residual.program.c)
    z, info = newton_refine(residual, z0)
    assert np.linalg.norm(residual(z)) <= 1e-12 * scale
    np.testing.assert_allclose(z, z_star, atol=1e-8 * (1 + np.abs(z_star).max()))
    # Without the crossing the same start stalls far above rounding.
    monkeypatch.setattr("conelayers.residual.MAX_KINK_CROSSINGS", 0)
    _, stalled = newton_refine(residual, z0)
    assert stalled.residual_after > 1e-6 * scale


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("with_P", [False, True])
def test_structurally_singular_only_for_singular_u(seed, with_P):
    """The O(m) pattern test never calls a regular U singular: on random 0/1 diagonals J
    with too many, too few and exactly n entries of 1, every U it flags has a rank
    deficit (dense rank), and on an LP it flags every count of 1s other than n."""
    rng = np.random.default_rng(seed)
    n, m = 8, 20
    A = sp.csc_matrix(rng.standard_normal((m, n)))
    P = sp.csc_matrix(np.eye(n)) if with_P else None
    program = ConeProgram(A, rng.standard_normal(m), rng.standard_normal(n),
                          ConeDims(nonneg=m), P)
    residual = ResidualMap(program)
    for active in (n - 2, n - 1, n, n + 1, n + 3):
        v = -np.ones(m)
        v[rng.choice(m, active, replace=False)] = 1.0
        jac = residual.jacobian(np.concatenate([np.zeros(n), v]))
        rank = np.linalg.matrix_rank(jac.todense())
        if jac.structurally_singular():
            assert rank < n + m
        if not with_P:
            assert jac.structurally_singular() == (active != n)
            assert (rank == n + m) == (active == n)


def test_structurally_singular_u_is_factorized_shifted_at_once(capfd):
    """A sparse U known to be singular is factorized with the shift straight away: no
    failed plain attempt (SuperLU prints BLAS argument errors to stderr before it
    raises on some of them), and the null space is still found."""
    residual, _, z0 = _lp_one_row_too_many(100, 60, 0)
    jac = residual.jacobian(z0)
    assert jac.size > 200 and jac.structurally_singular()  # the sparse LU path
    lu = jac.factorization()
    assert residual.ops.hints.plain_tries == 0
    assert lu.nullity == 1
    assert "illegal value" not in capfd.readouterr().err
