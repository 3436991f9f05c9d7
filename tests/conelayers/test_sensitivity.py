"""The sensitivity API: optimal-value sensitivities against central differences of
CVXPY's optimal value (envelope theorem), jvp/vjp/jacobian consistency, names."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

from conelayers.exceptions import ParameterError
from conelayers.sensitivity import analyze
from tests import zoo

UNBATCHED = ["lp", "qp", "least_squares", "socp", "sdp", "entropy", "logistic",
             "matrix_variable"]


def _set(z):
    for p, v in zip(z.parameters, z.values):
        p.value = v


@pytest.mark.parametrize("name", UNBATCHED)
def test_objective_gradient_matches_finite_differences(name):
    z = zoo.make(name)
    _set(z)
    sens = analyze(z.problem, z.parameters, z.variables, solver_args={"eps": 1e-9})
    z.problem.solve(solver=cp.CLARABEL if z.fd_solver == "CLARABEL" else cp.SCS,
                    **({"eps": 1e-12, "max_iters": 200_000} if z.fd_solver == "SCS" else {}))
    assert sens.objective == pytest.approx(z.problem.value, rel=1e-7, abs=1e-8)
    grads = sens.objective_gradient()
    rng = np.random.default_rng(0)
    d = [rng.standard_normal(np.shape(v)) for v in z.values]
    h = 1e-4

    def value(vals):
        for p, v in zip(z.parameters, vals):
            p.value = v
        if z.fd_solver == "SCS":
            z.problem.solve(solver=cp.SCS, eps=1e-12, max_iters=200_000)
        else:
            z.problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12,
                            tol_feas=1e-12)
        return z.problem.value

    fd = (value([v + h * di for v, di in zip(z.values, d)])
          - value([v - h * di for v, di in zip(z.values, d)])) / (2 * h)
    analytic = sum(float((grads[p.name()] * di).sum()) for p, di in zip(z.parameters, d))
    assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_lp_value_sensitivity_is_the_dual():
    """min cᵀx s.t. Gx ≤ h, 0 ≤ x ≤ 1: ∂p*/∂c = x and ∂p*/∂h = −λ (the multiplier of
    Gx ≤ h, as CVXPY reports it)."""
    z = zoo.make("lp")
    _set(z)
    sens = analyze(z.problem, z.parameters, z.variables, solver_args={"eps": 1e-9})
    grads = sens.objective_gradient()
    x = sens.values[z.variables[0].name()]
    z.problem.solve(solver=cp.CLARABEL)
    np.testing.assert_allclose(grads[z.parameters[0].name()], x, atol=1e-8)
    np.testing.assert_allclose(grads[z.parameters[1].name()],
                               -z.problem.constraints[0].dual_value, atol=1e-7)


def test_jacobian_consistent_with_jvp_and_named():
    z = zoo.make("qp")
    _set(z)
    sens = analyze(z.problem, z.parameters, z.variables)
    q, h = z.parameters
    x = z.variables[0]
    jac = sens.jacobian()
    assert jac[(x.name(), q.name())].shape == x.shape + q.shape
    d = np.random.default_rng(1).standard_normal(q.shape)
    np.testing.assert_allclose(jac[(x.name(), q.name())] @ d,
                               sens.jvp({q.name(): d})[x.name()], atol=1e-10)
    g = sens.vjp({x.name(): np.ones(x.shape)})
    np.testing.assert_allclose(g[h.name()], jac[(x.name(), h.name())].sum(axis=0), atol=1e-10)
    assert sens.report.verdict == "ok"


def test_errors_name_the_offender():
    z = zoo.make("qp")
    _set(z)
    sens = analyze(z.problem, z.parameters, z.variables)
    with pytest.raises(ParameterError, match="unknown parameter"):
        sens.jvp({"nope": np.zeros(2)})
    with pytest.raises(ParameterError, match=f"parameter '{z.parameters[0].name()}'"):
        sens.jvp({z.parameters[0].name(): np.zeros(99)})
    z.parameters[0].value = None
    with pytest.raises(ParameterError, match="without a value"):
        analyze(z.problem)


def test_parameters_sharing_a_name_are_ambiguous():
    from conelayers.exceptions import ProblemError

    p1, p2 = cp.Parameter(name="p", value=1.0), cp.Parameter(name="p", value=2.0)
    y = cp.Variable(2, name="y")
    with pytest.raises(ProblemError, match="share the name.*'p'"):
        analyze(cp.Problem(cp.Minimize(cp.sum_squares(y - p1) + p2 * cp.sum(y))))


def test_non_numeric_tangent_names_the_parameter():
    c = cp.Parameter(3, name="c", value=np.array([1.0, 2.0, 3.0]))
    x = cp.Variable(3, name="x")
    sens = analyze(cp.Problem(cp.Minimize(c @ x + cp.sum_squares(x))))
    with pytest.raises(ParameterError, match="parameter 'c': expected numbers"):
        sens.jvp({"c": "a"})


def test_nan_tangent_gives_nan_without_a_false_diagnosis():
    """A NaN tangent propagates (NaN out, as autograd does), without an iterative solve
    that fails and blames U (it ran 2000 LSQR iterations and warned before)."""
    import warnings

    from conelayers.exceptions import TrustWarning

    c = cp.Parameter(3, name="c", value=np.array([1.0, 2.0, 3.0]))
    x = cp.Variable(3, name="x")
    sens = analyze(cp.Problem(cp.Minimize(c @ x + cp.sum_squares(x))))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrustWarning)
        out = sens.jvp({"c": [np.nan, 0.0, 0.0]})
        grads = sens.vjp({"x": [np.nan, 1.0, 1.0]})
    assert np.all(np.isnan(out["x"])) and np.all(np.isnan(grads["c"]))


def test_log_log_convex_objective_and_gradient_are_the_users_closed_forms():
    """gp=True: the cone program minimizes log f, and the value and its gradient are
    reported for f itself. min a·x + b/x = 2√(ab) (d/da = √(b/a), d/db = √(a/b)); max x·y
    s.t. a·x + b·y ≤ 1 is 1/(4ab) (d/da = −1/(4a²b)). Tight solves: 1e-7 relative."""
    x, y = cp.Variable(pos=True, name="x"), cp.Variable(pos=True, name="y")
    a, b = cp.Parameter(pos=True, name="a"), cp.Parameter(pos=True, name="b")
    a.value, b.value = 2.0, 3.0
    tight = {"eps": 1e-10, "max_iters": 100_000}
    prob = cp.Problem(cp.Minimize(a * x + b / x))
    sens = analyze(prob, [a, b], [x], solver_args=tight, gp=True)
    assert sens.objective == pytest.approx(2 * np.sqrt(6.0), rel=1e-7)
    grads = sens.objective_gradient()
    assert float(grads["a"]) == pytest.approx(np.sqrt(3.0 / 2.0), rel=1e-7)
    assert float(grads["b"]) == pytest.approx(np.sqrt(2.0 / 3.0), rel=1e-7)
    prob = cp.Problem(cp.Maximize(x * y), [a * x + b * y <= 1])
    sens = analyze(prob, [a, b], [x, y], solver_args=tight, gp=True)
    assert sens.objective == pytest.approx(1 / 24, rel=1e-7)
    assert float(sens.objective_gradient()["a"]) == pytest.approx(-1 / 48, rel=1e-7)
