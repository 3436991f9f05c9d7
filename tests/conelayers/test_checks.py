"""Trust checks on the reference paper's cases (Section 5, Proposition 5, Remark 4) and
DESIGN.md §4: each warns exactly where the conservative implicit function theorem fails,
and stays silent where only auxiliary variables of the canonicalization are non-unique."""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest

from conelayers.exceptions import (
    ConelayersWarning,
    NonsmoothPointWarning,
    NonUniqueSolutionWarning,
    SingularJacobianWarning,
    TrustWarning,
)
from conelayers.layer import LayerCore


def _gradient(core: LayerCore, values, solver_args=None, weights=None):
    """Solve, then the vjp of Σ outputs (checks run and warn inside the vjp)."""
    result = core.forward(values, solver_args)
    ws = weights or [np.ones((1,) + o.shape[1:]) for o in result.outputs]
    return result, core.vjp(result, ws)


def _no_trust_warning(core, values, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConelayersWarning)
        return _gradient(core, values, **kw)


# -- the cyclic bilevel problem (Section 5, Appendix E.1) ---------------------------------

def _cyclic():
    x, y = cp.Parameter(name="x"), cp.Parameter(name="y")
    a, b = cp.Variable(name="a"), cp.Variable(name="b")
    t = -3 * x + y + 2
    prob = cp.Problem(cp.Maximize(a * t + b * t), [a >= 0, a <= 3, b >= 0, b <= 5])
    return LayerCore(prob, [x, y], [a, b])


def test_cyclic_warns_at_t_zero():
    core = _cyclic()
    with pytest.warns((NonUniqueSolutionWarning, SingularJacobianWarning), match="instance 0"):
        _gradient(core, [np.array(1.0), np.array(1.0)])  # t = -3 + 1 + 2 = 0


@pytest.mark.parametrize("t", [1e-3, -1e-3, 1.0, -1.0, 0.5])
def test_cyclic_silent_and_correct_away_from_zero(t):
    """For t ≠ 0 the solution is the vertex (3, 5) or (0, 0): locally constant, so the
    exact gradient of a + b is 0."""
    core = _cyclic()
    result, (gx, gy) = _no_trust_warning(core, [np.array(1.0), np.array(1.0 + t)])
    expected = (3.0, 5.0) if t > 0 else (0.0, 0.0)
    assert result.outputs[0][0] == pytest.approx(expected[0], abs=1e-8)
    assert result.outputs[1][0] == pytest.approx(expected[1], abs=1e-8)
    assert abs(gx) < 1e-10 and abs(gy) < 1e-10


@pytest.mark.parametrize("jvp", [False, True])
def test_cyclic_on_the_iterative_path_warns_at_t_zero(monkeypatch, jvp):
    """With U too large to factorize (forced here), the fast checks have no LU to
    analyze; an inconsistent system at t = 0 leaves LSQR a large residual (it returns a
    least-squares answer: gradient 0, silently wrong without this warning), and the
    warning comes before the gradient (raised with the filter set to "error")."""
    import conelayers.residual as residual_mod

    monkeypatch.setattr(residual_mod, "prefers_direct", lambda program: False)
    core = _cyclic()
    values = [np.array(1.0), np.array(1.0)]  # t = 0

    def derivative(result):
        if jvp:
            return core.jvp(result, [np.array(1.0), np.array(0.0)])
        return core.vjp(result, [np.ones(1), np.ones(1)])

    result = core.forward(values)
    with pytest.warns(SingularJacobianWarning, match=r"instance 0: the iterative solve"):
        derivative(result)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingularJacobianWarning)
        with pytest.raises(SingularJacobianWarning, match="LSQR stop"):
            derivative(core.forward(values))
    # Away from t = 0 the same path is silent and exact (a locally constant solution).
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConelayersWarning)
        result = core.forward([np.array(1.0), np.array(2.0)])
        grads = derivative(result)
    assert all(abs(float(np.ravel(g)[0])) < 1e-10 for g in grads)


# -- the Lorenz-like problem (Section 5, eq. (14)) ----------------------------------------

def test_lorenz_like_warns_at_random_points():
    p = cp.Parameter(3, name="p")
    s = cp.Variable(3, name="s")
    core = LayerCore(cp.Problem(cp.Minimize(cp.sum(cp.power(s - p, 4)))), [p], [s])
    rng = np.random.default_rng(0)
    for _ in range(10):
        u = rng.standard_normal(3)
        # F(u), the Lorenz vector field with (σ, ρ, β) = (10, 28, 8/3), is the parameter.
        F = np.array([10 * (u[1] - u[0]), u[0] * (28 - u[2]) - u[1], u[0] * u[1] - 8 / 3 * u[2]])
        with pytest.warns(SingularJacobianWarning, match="not justified"):
            _gradient(core, [F])


# -- linear programs ----------------------------------------------------------------------

def _lp():
    c = cp.Parameter(2, name="c")
    x = cp.Variable(2, name="x")
    return LayerCore(cp.Problem(cp.Minimize(c @ x), [cp.sum(x) >= 1, x >= 0]), [c], [x])


def test_degenerate_lp_warns():
    """min x₁ + x₂ s.t. x₁ + x₂ ≥ 1, x ≥ 0: the whole segment is optimal."""
    with pytest.warns(NonUniqueSolutionWarning):
        _gradient(_lp(), [np.array([1.0, 1.0])])


def test_nondegenerate_lp_vertex_is_silent():
    result, (gc,) = _no_trust_warning(_lp(), [np.array([1.0, 2.0])])
    np.testing.assert_allclose(result.outputs[0][0], [1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(gc, 0.0, atol=1e-10)  # a vertex does not move with c


# -- projection onto a ball: auxiliary non-uniqueness is harmless ---------------------------

def _ball(presolve: bool = False):
    """Projection onto the ball ‖x‖ ≤ 2; by default CVXPY's program as is, whose
    epigraph variable of ‖x‖ the presolve would fix."""
    p = cp.Parameter(5, name="p")
    x = cp.Variable(5, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [cp.norm(x) <= 2])
    return LayerCore(prob, [p], [x], presolve=presolve)


def test_ball_interior_point_is_silent():
    """The epigraph variable of ‖x‖ is not unique, so U is singular, but its null
    vector has no weight on x: no warning, and dx/dp = I."""
    core = _ball()
    p = np.array([0.3, -0.2, 0.5, 0.1, 0.0])
    result, (gp,) = _no_trust_warning(core, [p])
    np.testing.assert_allclose(result.outputs[0][0], p, atol=1e-10)
    np.testing.assert_allclose(gp, np.ones(5), atol=1e-9)
    # U itself is singular (SVD of the dense matrix) ...
    U = result.derivative(0).U.todense()
    sv = np.linalg.svd(U, compute_uv=False)
    assert sv[-1] < 1e-10 * sv[0]
    # ... in a block the outputs never see, which the checks set aside: the part
    # coupled to x is regular (or its null space has no weight on x).
    check = result.reports[0].selections[0]
    assert check.decoupled >= 1 and check.nullity == 0
    assert check.output_weight < 1e-8 and check.parameter_weight < 1e-8
    # The coupled part's pivot ratio bounds its conditioning away from singular.
    assert 1e-8 < check.sigma_min <= 1.0


def test_ball_sphere_point_is_only_nonsmooth():
    core = _ball()
    u = np.array([1.0, 2.0, -1.0, 0.5, 1.0])
    p = 2 * u / np.linalg.norm(u)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, _ = _gradient(core, [p])
    kinds = {type(w.message) for w in caught if issubclass(w.category, ConelayersWarning)}
    assert kinds == {NonsmoothPointWarning}
    assert "PnormApprox" in str(caught[0].message)  # names the user's constraint
    # Both one-sided selections are justified, and they differ: the two one-sided
    # derivatives of the projection (identity from inside, the tangent projection
    # from outside).
    grads = {}
    for sel in ("lower", "upper"):
        _, (g,) = _gradient(core, [p], solver_args={"selection": sel},
                            weights=[np.eye(5)[None, 0]])
        grads[sel] = g
    n = p / 2
    tangent = (np.eye(5) - np.outer(n, n))[0]
    assert {tuple(np.round(g, 8)) for g in grads.values()} == {
        tuple(np.round(np.eye(5)[0], 8)), tuple(np.round(tangent, 8))}


# -- the Lasso: Proposition 5 and Remark 4 -------------------------------------------------

def _lasso(X, y):
    lam = cp.Parameter(nonneg=True, name="lam")
    beta = cp.Variable(X.shape[1], name="beta")
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(X @ beta - y) + lam * cp.norm1(beta)))
    return LayerCore(prob, [lam], [beta])


def _lasso_dbeta(core, lam, solver_args=None):
    """dβ̂/dλ for the paper's parametrization e^λ (so d/dλ = e^λ · d/d lam), by jvp."""
    result = core.forward([np.array(lam)], solver_args)
    (tangent,) = core.jvp(result, [np.array(lam)])
    return result.outputs[0][0], tangent[0]


def test_lasso_derivative_matches_closed_form():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 10))
    y = X @ np.r_[rng.standard_normal(4), np.zeros(6)] + 0.1 * rng.standard_normal(40)
    lam = 5.0
    core = _lasso(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConelayersWarning)
        beta, dbeta = _lasso_dbeta(core, lam)
    E = np.abs(X.T @ (y - X @ beta)) >= lam * (1 - 1e-8)
    assert 0 < E.sum() < X.shape[1]
    XE = X[:, E]
    closed = np.zeros(X.shape[1])
    closed[E] = -lam * np.linalg.solve(XE.T @ XE, np.sign(XE.T @ (y - X @ beta)))
    np.testing.assert_allclose(dbeta, closed, rtol=1e-6, atol=1e-9)


def test_lasso_kink_selections_are_lars_and_weak_derivative():
    """At λ where a variable j₀ is about to enter (j₀ ∈ E \\ supp β̂), the two extreme
    selections give Remark 4's LARS (qᵢ = 1 on E) and weak (qᵢ = 0 off supp) derivatives."""
    rng = np.random.default_rng(1)
    n, p, lam = 30, 6, 2.0
    X = rng.standard_normal((n, p))
    S, j0 = [0, 1, 2], 3
    beta = np.zeros(p)
    beta[S] = [1.5, -1.0, 0.8]
    signs = np.r_[np.sign(beta[S]), 1.0]
    XE = X[:, S + [j0]]
    r = XE @ np.linalg.solve(XE.T @ XE, lam * signs)  # X_Eᵀ r = λ·signs exactly
    assert np.all(np.abs(np.delete(X.T @ r, S + [j0])) < lam)
    y = X @ beta + r
    core = _lasso(X, y)
    lars = np.zeros(p)
    lars[S + [j0]] = -lam * np.linalg.solve(XE.T @ XE, signs)
    weak = np.zeros(p)
    XS = X[:, S]
    weak[S] = -lam * np.linalg.solve(XS.T @ XS, signs[:3])
    with pytest.warns(NonsmoothPointWarning):
        b_low, d_low = _lasso_dbeta(core, lam, {"selection": "lower", "eps": 1e-9})
    with pytest.warns(NonsmoothPointWarning):
        b_up, d_up = _lasso_dbeta(core, lam, {"selection": "upper", "eps": 1e-9})
    np.testing.assert_allclose(b_low, beta, atol=1e-8)
    np.testing.assert_allclose(d_low, lars, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(d_up, weak, rtol=1e-6, atol=1e-8)


def test_lasso_duplicated_column_warns():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 5))
    X = np.c_[X, X[:, 0]]
    y = 3 * X[:, 0] + rng.standard_normal(30)
    core = _lasso(X, y)
    with pytest.warns(TrustWarning) as caught:
        _gradient(core, [np.array(1.0)])
    assert any(issubclass(w.category, (NonUniqueSolutionWarning, SingularJacobianWarning))
               for w in caught)


def test_checks_off_is_silent_and_reports_nothing():
    core = _lp()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrustWarning)
        result, _ = _gradient(core, [np.array([1.0, 1.0])], solver_args={"checks": "off"})
    assert result.reports[0].verdict == "ok" and result.reports[0].selections == ()


def test_singular_block_decoupled_from_outputs_is_silent():
    """w is not unique (c₂ = 0) and not differentiable in c₂, but no equation ties it to
    the requested x: U is block diagonal, x's block is regular, and ∂x/∂(p, c) is exact."""
    p, c = cp.Parameter(3, name="p"), cp.Parameter(2, name="c")
    x, w = cp.Variable(3, name="x"), cp.Variable(2, name="w")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p) + c @ w), [w >= 0, w <= 1])
    core = LayerCore(prob, [p, c], [x])
    _, (gp, gc) = _no_trust_warning(core, [np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.0])])
    np.testing.assert_allclose(gp, np.ones(3), atol=1e-10)
    np.testing.assert_allclose(gc, 0.0, atol=1e-10)
    # Requesting w itself does warn: it is the non-unique part.
    core_w = LayerCore(prob, [p, c], [w])
    with pytest.warns((NonUniqueSolutionWarning, SingularJacobianWarning)):
        _gradient(core_w, [np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.0])])


@pytest.mark.parametrize("checks", ["fast", "full"])
@pytest.mark.parametrize("k", [10.0, 1e3, 1e4])
def test_badly_scaled_regular_problem_is_not_reported_singular(k, checks):
    """min k²‖x‖² − 2k pᵀx s.t. Σx = 1: U's σ_min/σ_max is ~7.5e-7/k² (7.5e-13 at
    k = 1e3), yet its equilibration is well conditioned. Judged on that, no warning, and
    the gradient is the closed form dx*/dp = (I − 11ᵀ/3)/k (it was w/k, the constraint
    dropped as a "null space", with a SingularJacobianWarning). 1e-7 relative."""
    x, p = cp.Variable(3, name="x"), cp.Parameter(3, name="p")
    prob = cp.Problem(cp.Minimize(k**2 * cp.sum_squares(x) - 2 * k * p @ x),
                      [cp.sum(x) == 1])
    core = LayerCore(prob, [p], [x], presolve=False, checks=checks)
    w = np.array([1.0, 2.0, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConelayersWarning)
        result = core.forward([np.array([0.5, -1.0, 2.0])],
                              {"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iters": 200_000})
        (g,) = core.vjp(result, [w[None]])
    exact = (np.eye(3) - 1.0 / 3.0) @ w / k
    np.testing.assert_allclose(np.ravel(g), exact, rtol=1e-7, atol=1e-9 / k)
