"""Refinement of a whole batch at once (small polyhedral programs) against the
per-instance path it replaces and against an independent solver: the same refined
points, Jacobians that give the same derivatives, gradients equal to central differences
of Clarabel re-solves, and the instances it cannot settle left to the per-instance path."""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest

from conelayers.batch_refine import applies, refine_batch
from conelayers.exceptions import TrustWarning
from conelayers.layer import LayerCore
from conelayers.refine import refine_solution
from conelayers.residual import ResidualMap
from conelayers.solvers.scs import normalize_settings, solve_batch


def _lp(rng):
    """min cᵀx s.t. Gx ≤ b, 0 ≤ x ≤ 1 (vertex solutions: piecewise-constant in c)."""
    n, m = 8, 5
    G = rng.standard_normal((m, n))
    x, c, b = cp.Variable(n), cp.Parameter(n), cp.Parameter(m)
    prob = cp.Problem(cp.Minimize(c @ x), [G @ x <= b, x >= 0, x <= 1])
    return prob, [c, b], [x], lambda r: [r.standard_normal(n),
                                         G @ (0.5 * np.ones(n)) + r.uniform(0.1, 1, m)]


def _qp_eq(rng):
    """min ½‖Lx‖² + qᵀx s.t. Gx ≤ b, 1ᵀx = 1 (zero and nonnegative rows, fixed P)."""
    n, m = 6, 4
    L = rng.standard_normal((2 * n, n))
    G = rng.standard_normal((m, n))
    x, q, b = cp.Variable(n), cp.Parameter(n), cp.Parameter(m)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ x) + q @ x),
                      [G @ x <= b, cp.sum(x) == 1])
    return prob, [q, b], [x], lambda r: [r.standard_normal(n),
                                         G @ np.full(n, 1 / n) + r.uniform(0.1, 1, m)]


def _lasso(rng):
    """min ½‖Xβ − y‖² + λ‖β‖₁ (kinks at β = 0: the Lasso's sparsity pattern)."""
    m, n = 12, 5
    X = rng.standard_normal((m, n))
    beta, y, lam = cp.Variable(n), cp.Parameter(m), cp.Parameter(nonneg=True)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(X @ beta - y) + lam * cp.norm1(beta)))
    return prob, [y, lam], [beta], lambda r: [r.standard_normal(m), np.array(r.uniform(1, 3))]


def _factor_qp(rng):
    """min ½‖Fx‖² + 0.1‖x‖² + qᵀx s.t. Gx ≤ b with F a parameter: A differs per instance."""
    n, m = 5, 3
    G = rng.standard_normal((m, n))
    x, F, q, b = cp.Variable(n), cp.Parameter((2 * n, n)), cp.Parameter(n), cp.Parameter(m)
    prob = cp.Problem(
        cp.Minimize(0.5 * cp.sum_squares(F @ x) + 0.1 * cp.sum_squares(x) + q @ x),
        [G @ x <= b],
    )
    return prob, [F, q, b], [x], lambda r: [r.standard_normal((2 * n, n)) / 3,
                                            r.standard_normal(n), r.uniform(0.1, 1, m)]


FAMILIES = {"lp": _lp, "qp_eq": _qp_eq, "lasso": _lasso, "factor_qp": _factor_qp}
BATCH = 6


def _setup(name, seed=0):
    rng = np.random.default_rng(seed)
    prob, params, variables, sample = FAMILIES[name](rng)
    core = LayerCore(prob, params, variables)
    draws = [sample(rng) for _ in range(BATCH)]
    values = [np.stack([d[i] for d in draws]) for i in range(len(params))]
    theta, _, _ = core.parameter_values(values)
    programs = core.instances(theta)
    settings = normalize_settings(None)
    solutions = solve_batch(programs, settings)
    residuals = [ResidualMap(p, core.cone, core.factor_hints) for p in programs]
    return prob, params, variables, core, values, programs, residuals, solutions, settings


@pytest.mark.parametrize("name", list(FAMILIES))
def test_batch_refinement_matches_the_per_instance_path(name):
    """Same refined points (1e-9: both are Newton solutions to ~1e-12) and Jacobians
    whose solves give the same derivative direction (1e-9)."""
    _, _, _, core, _, _, residuals, solutions, settings = _setup(name)
    assert applies(residuals)
    at_once = refine_batch(residuals, solutions, range(BATCH))
    assert sorted(at_once) == list(range(BATCH))  # regular points: all settled
    rng = np.random.default_rng(5)
    for k, (z, jac) in at_once.items():
        fresh = ResidualMap(residuals[k].program, core.cone)
        z_ref, _ = refine_solution(fresh, solutions[k], settings)
        assert np.abs(z - z_ref).max() <= 1e-9 * (1 + np.abs(z_ref).max())
        ref_jac = fresh.jacobian(z_ref, kink_tol=1e-7 * (1 + np.abs(z_ref).max()))
        rhs = rng.standard_normal(z.size)
        for transpose in (False, True):
            w, _ = jac.solve(rhs, transpose=transpose)
            w_ref = np.linalg.solve(ref_jac.todense().T if transpose else ref_jac.todense(),
                                    rhs)
            assert np.abs(w - w_ref).max() <= 1e-9 * (1 + np.abs(w_ref).max())


@pytest.mark.parametrize("name", ["lp", "qp_eq", "factor_qp"])
def test_batched_layer_gradient_matches_central_differences(name):
    """The batch's vjp against central differences of Clarabel re-solves (h = 1e-5 on
    smooth points; the references are accurate to ~1e-10, so ~1e-5 relative noise)."""
    prob, params, variables, core, values, *_ = _setup(name, seed=3)
    rng = np.random.default_rng(11)
    result = core.forward(values)
    weights = [rng.standard_normal(o.shape) for o in result.outputs]
    grads = core.vjp(result, weights)

    def loss(vals):
        total = 0.0
        for k in range(BATCH):
            for p, v in zip(params, vals):
                p.value = v[k]
            prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12,
                       tol_feas=1e-12)
            total += sum(float(np.sum(w[k] * var.value)) for w, var in zip(weights, variables))
        return total

    h = 1e-5
    for _ in range(2):
        d = [rng.standard_normal(v.shape) for v in values]
        fd = (loss([v + h * e for v, e in zip(values, d)])
              - loss([v - h * e for v, e in zip(values, d)])) / (2 * h)
        ours = sum(float(np.sum(g * e)) for g, e in zip(grads, d))
        assert abs(ours - fd) <= 1e-5 * max(1.0, abs(fd))


def test_degenerate_instance_keeps_its_point_and_its_warning():
    """The cyclic example at t = 0 (every point of the box optimal, U singular): SCS's
    interior point already solves N(z) = 0, so the batch path keeps it as the
    per-instance path does, the regular instances beside it reach their vertex (3, 5),
    and the layer still warns about the degenerate one before returning a gradient."""
    a, b = cp.Variable(), cp.Variable()
    x, y = cp.Parameter(), cp.Parameter()
    prob = cp.Problem(cp.Maximize((a + b) * (-3 * x + y + 2)), [a >= 0, a <= 3, b >= 0, b <= 5])
    core = LayerCore(prob, [x, y], [a, b])
    xs = np.array([1.0, 0.2, 1.0])
    ys = np.array([1.0, 0.0, 3.0])  # t = 0, 1.4, 2
    theta, _, _ = core.parameter_values([xs, ys])
    programs = core.instances(theta)
    settings = normalize_settings(None)
    solutions = solve_batch(programs, settings)
    residuals = [ResidualMap(p, core.cone, core.factor_hints) for p in programs]
    at_once = refine_batch(residuals, solutions, range(3))
    z_ref, _ = refine_solution(ResidualMap(programs[0], core.cone), solutions[0], settings)
    np.testing.assert_allclose(at_once[0][0], z_ref, atol=1e-12)
    for k in (1, 2):
        np.testing.assert_allclose(at_once[k][0][:2], [3.0, 5.0], atol=1e-9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = core.forward([xs, ys])
        core.vjp(result, [np.ones(3), np.ones(3)])
    flagged = [str(c.message) for c in caught if issubclass(c.category, TrustWarning)]
    assert any("instance 0" in m or "instances 0" in m for m in flagged), flagged


def test_exponential_cones_and_single_instances_are_not_batched():
    """Exponential cones and single instances stay on the per-instance path."""
    x, c = cp.Variable(3), cp.Parameter(3)
    core = LayerCore(cp.Problem(cp.Minimize(c @ x - cp.sum(cp.log(x))), [cp.sum(x) <= 3]),
                     [c], [x])
    theta, _, _ = core.parameter_values([np.ones((2, 3))])
    programs = core.instances(theta)
    residuals = [ResidualMap(p, core.cone) for p in programs]
    assert not applies(residuals)
    _, _, _, _, _, _, residuals, solutions, _ = _setup("lp")
    assert refine_batch(residuals, solutions, [0]) == {}


def _nearest_correlation(rng):
    """min ‖X − C‖²_F s.t. X ⪰ 0, diag X = 1 (a PSD cone of order 4)."""
    n = 4
    W = rng.standard_normal((n, 2 * n))
    S = W @ W.T
    d = np.sqrt(np.diag(S))
    corr = S / np.outer(d, d)
    X, C = cp.Variable((n, n), PSD=True), cp.Parameter((n, n))
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - C)), [cp.diag(X) == 1])

    def sample(r):
        E = r.standard_normal((n, n))
        return [corr + 0.3 * (E + E.T) / 2]

    return prob, [C], [X], sample


FAMILIES["psd"] = _nearest_correlation


def _socp(rng):
    """min cᵀx s.t. ‖Aᵢx + bᵢ‖ ≤ 1, ‖x‖ ≤ 2 (curved cones; CVXPY's epigraph variables of
    inactive constraints are not unique: U is singular off the outputs)."""
    n, K, k = 6, 4, 3
    As = [rng.standard_normal((k, n)) / np.sqrt(n) for _ in range(K)]
    x, c, B = cp.Variable(n), cp.Parameter(n), cp.Parameter((K, k))
    cons = [cp.norm(As[i] @ x + B[i], 2) <= 1.0 for i in range(K)] + [cp.norm(x, 2) <= 2.0]

    def sample(r):
        d = r.standard_normal((K, k))
        d *= (r.uniform(0.0, 0.5, K) / np.linalg.norm(d, axis=1))[:, None]
        return [r.standard_normal(n), d]

    return cp.Problem(cp.Minimize(c @ x), cons), [c, B], [x], sample


FAMILIES["socp"] = _socp


@pytest.mark.parametrize("name", ["socp", "psd"])
def test_curved_batch_matches_the_per_instance_path_on_the_outputs(name):
    """Second-order and PSD cones: the refined outputs of every instance as the
    per-instance path's (1e-9; auxiliary variables may differ where not unique)."""
    _, _, _, core, _, _, residuals, solutions, settings = _setup(name, seed=1)
    assert applies(residuals)
    at_once = refine_batch(residuals, solutions, range(BATCH))
    assert sorted(at_once) == list(range(BATCH))
    recovery = core.program.recoveries[0]
    for k, (z, _) in at_once.items():
        z_ref, _ = refine_solution(ResidualMap(residuals[k].program, core.cone),
                                   solutions[k], settings)
        got = recovery.apply(residuals[k].solution_from_z(z)[0][:, None])
        want = recovery.apply(residuals[k].solution_from_z(z_ref)[0][:, None])
        np.testing.assert_allclose(got, want, atol=1e-9)


@pytest.mark.parametrize(("name", "solver", "h", "rtol"), [
    ("socp", "CLARABEL", 1e-4, 1e-4),  # Clarabel's SOC answers: ~1e-6..1e-5 bias
    ("psd", "SCS", 1e-3, 1e-5),  # Clarabel's PSD bias reached 3.5e-4 here; SCS at 1e-12
])
def test_curved_batched_gradient_matches_central_differences(name, solver, h, rtol):
    """The batch's vjp against central differences of independent re-solves (the
    shared benchmark's choice of reference per cone: Clarabel where it is accurate,
    SCS at eps 1e-12 with h = 1e-3 on PSD)."""
    prob, params, variables, core, values, *_ = _setup(name, seed=2)
    rng = np.random.default_rng(13)
    result = core.forward(values)
    weights = [rng.standard_normal(o.shape) for o in result.outputs]
    grads = core.vjp(result, weights)
    options = (
        {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
        if solver == "CLARABEL" else {"eps_abs": 1e-12, "eps_rel": 1e-12, "max_iters": 200_000}
    )

    def loss(vals):
        total = 0.0
        for k in range(BATCH):
            for p, v in zip(params, vals):
                p.value = v[k]
            prob.solve(solver=getattr(cp, solver), **options)
            total += sum(float(np.sum(w[k] * var.value)) for w, var in zip(weights, variables))
        return total

    for _ in range(2):
        d = [rng.standard_normal(v.shape) for v in values]
        fd = (loss([v + h * e for v, e in zip(values, d)])
              - loss([v - h * e for v, e in zip(values, d)])) / (2 * h)
        ours = sum(float(np.sum(g * e)) for g, e in zip(grads, d))
        assert abs(ours - fd) <= rtol * max(1.0, abs(fd))


def test_unusable_points_are_left_to_the_per_instance_path():
    """A point the batch cannot refine (here NaN; in practice a rejected step or an
    inaccurate end point) is not settled; the others are, unaffected."""
    from dataclasses import replace

    _, _, _, _, _, _, residuals, solutions, _ = _setup("qp_eq")
    solutions = list(solutions)
    solutions[2] = replace(solutions[2], x=np.full_like(solutions[2].x, np.nan))
    at_once = refine_batch(residuals, solutions, range(BATCH))
    assert 2 not in at_once and len(at_once) == BATCH - 1


def test_large_batches_are_refined_in_chunks(monkeypatch):
    """Batches beyond CHUNK go in parts (bounded memory) with the same results; a last
    part of one instance is left to the per-instance path."""
    import conelayers.batch_refine as batch_refine

    _, _, _, _, _, _, residuals, solutions, _ = _setup("lasso")
    whole = refine_batch(residuals, solutions, range(BATCH))
    monkeypatch.setattr(batch_refine, "CHUNK", 2)
    parts = refine_batch(residuals, solutions, range(BATCH))
    assert sorted(parts) == list(range(BATCH))
    for k in range(BATCH):
        np.testing.assert_allclose(parts[k][0], whole[k][0], rtol=0, atol=1e-12)
    monkeypatch.setattr(batch_refine, "CHUNK", 5)
    assert sorted(refine_batch(residuals, solutions, range(BATCH))) == list(range(5))


@pytest.mark.parametrize("name", ["lasso", "factor_qp"])
def test_batched_vjp_matches_instance_by_instance(name, monkeypatch):
    """vjp_many (stacked solves with Uᵀ) gives each instance's own vjp (1e-10), and
    instances whose stacked solve misses BATCH_SOLVE_RTOL are solved again alone with
    the same result."""
    import conelayers.derivative as derivative
    from conelayers.derivative import vjp_many

    _, _, _, core, values, *_ = _setup(name, seed=4)
    result = core.forward(values)
    rng = np.random.default_rng(2)
    derivs = [result.derivative(k) for k in range(BATCH)]
    assert all(d.U.regular_dense_lu() is not None for d in derivs)
    dX = rng.standard_normal((core.program.n, BATCH))
    dY = rng.standard_normal((core.program.m, BATCH))
    for rtol in (derivative.BATCH_SOLVE_RTOL, -1.0):  # -1: every instance falls back
        monkeypatch.setattr(derivative, "BATCH_SOLVE_RTOL", rtol)
        many = vjp_many(derivs, dX, dY)
        for k, d in enumerate(derivs):
            one = d.vjp(dX[:, k], dY[:, k], np.zeros(core.program.m))
            for got, want in zip(many, one):
                if want is None:
                    assert got is None
                else:
                    np.testing.assert_allclose(got[:, k], want, rtol=1e-10, atol=1e-12)
