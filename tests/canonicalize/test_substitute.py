"""canonicalize.substitute: variables defined by a two-entry equality (CVXPY's t = x − p of
``sum_squares(x − p)``) are substituted out; the solution map does not change.

References: CVXPY solving the user's problem itself (its own canonicalization, SCS at
1e-12), and the same layer on CVXPY's program (presolve=False) for gradients; the
optimal value and its gradient against CVXPY's value and central differences of it."""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest

from canonicalize import compile_problem
from canonicalize.presolve import fix_bounded_epigraphs
from canonicalize.substitute import substitutable, substitute_defined_variables
from conelayers.exceptions import ConelayersWarning
from conelayers.layer import LayerCore
from conelayers.sensitivity import analyze
from tests.canonicalize.reference import TIGHT, VALUE_ATOL, reference_solve


def _family(name: str):
    """(problem, parameters, outputs, values, substituted count)."""
    rng = np.random.default_rng(3)
    if name == "projection_simplex":  # t = x − p: 6 variables and 6 rows go
        x, p = cp.Variable(6, name="x"), cp.Parameter(6, name="p")
        prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [cp.sum(x) == 1, x >= 0])
        # Support {0, 1, 3, 4} (τ = 0.0125): a nonzero, non-kink Jacobian.
        return prob, [p], [x], [np.array([0.4, 0.3, -0.2, 0.25, 0.1, -0.5])], 6
    if name == "nearest_correlation":  # t = svec(X − C), a PSD cone on X
        X, C = cp.Variable((4, 4), symmetric=True, name="X"), cp.Parameter((4, 4), name="C")
        prob = cp.Problem(cp.Minimize(cp.sum_squares(X - C)), [X >> 0, cp.diag(X) == 1])
        M = rng.standard_normal((4, 4))
        return prob, [C], [X], [(M + M.T) / 2], 16
    if name == "scaled_and_constant_p":  # t = 2x − p next to a constant P on x
        x, p = cp.Variable(5, name="x"), cp.Parameter(5, name="p")
        G = rng.standard_normal((5, 5))
        prob = cp.Problem(
            cp.Minimize(cp.sum_squares(2 * x - p) + cp.quad_form(x, G @ G.T) + cp.sum(x)),
            [cp.norm(x, 1) <= 1.5],
        )
        return prob, [p], [x], [3 * rng.standard_normal(5)], 5
    if name == "maximize_with_dual":  # another row's dual is read: it moves with its rows
        x, p = cp.Variable(4, name="x"), cp.Parameter(4, name="p")
        lower = x >= 0.1
        prob = cp.Problem(cp.Maximize(-cp.sum_squares(x - p)), [lower, cp.sum(x) <= 1])
        return prob, [p], [x, lower.dual_variables[0]], [rng.standard_normal(4)], 4
    raise ValueError(name)


FAMILIES = ["projection_simplex", "nearest_correlation", "scaled_and_constant_p",
            "maximize_with_dual"]


def _compile_both(prob, params, outs):
    raw = compile_problem(prob, params, outs, presolve=False)
    return raw, compile_problem(prob, params, outs)


@pytest.mark.parametrize("name", FAMILIES)
def test_removes_exactly_the_defined_variables_and_their_rows(name):
    prob, params, outs, _, count = _family(name)
    raw, program = _compile_both(prob, params, outs)
    fixed = fix_bounded_epigraphs(raw)[0]
    t, r, x = substitutable(fixed)
    assert t.size == count
    assert np.all(r < fixed.dims.zero)  # defining rows are equalities
    assert not np.intersect1d(t, x).size  # partners stay
    assert (program.n, program.m) == (fixed.n - count, fixed.m - count)
    assert program.dims.zero == fixed.dims.zero - count and program.dims.size == program.m
    assert program.A.shape == (program.m, program.n)


@pytest.mark.parametrize("name", FAMILIES)
def test_outputs_equal_cvxpy_and_the_unsubstituted_program(name):
    prob, params, outs, values, _ = _family(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConelayersWarning)
        new = LayerCore(prob, params, outs).forward(values, TIGHT).outputs
        raw = LayerCore(prob, params, outs, presolve=False).forward(values, TIGHT).outputs
    for par, v in zip(params, values):
        par.value = v
    reference_solve(prob)
    for got, old, ref in zip(new, raw, [o.value for o in outs]):
        np.testing.assert_allclose(got[0], old[0], atol=VALUE_ATOL)
        np.testing.assert_allclose(got[0], ref, atol=VALUE_ATOL)


@pytest.mark.parametrize("name", FAMILIES)
def test_gradients_equal_the_unsubstituted_program(name):
    """Same derivative of Σ w·output: the substitution changes the program, not the
    solution map (both sides refined to ~1e-12, so 1e-7 is loose)."""
    prob, params, outs, values, _ = _family(name)
    rng = np.random.default_rng(11)
    w = [rng.standard_normal((1,) + tuple(o.shape)) for o in outs]
    grads = []
    for presolve in (True, False):
        core = LayerCore(prob, params, outs, presolve=presolve)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConelayersWarning)
            result = core.forward(values, TIGHT)
            grads.append(core.vjp(result, w))
    for g_new, g_raw in zip(*grads):
        assert np.linalg.norm(g_raw) > 1e-3  # a gradient that can fail
        np.testing.assert_allclose(g_new, g_raw, atol=1e-7)


@pytest.mark.parametrize("name", FAMILIES)
def test_optimal_value_and_its_gradient_keep_the_quadratic_constant(name):
    """The substituted constant ½θ̃ᵀQθ̃ (‖p‖² of sum_squares(x − p)) is in the optimal
    value and in its gradient: CVXPY's value, and central differences of it (step 1e-4:
    the truncation error of a quadratic-in-p value is ~0, the solve error 1e-12/1e-4)."""
    prob, params, outs, values, _ = _family(name)
    assert compile_problem(prob, params, outs).offset_quadratic is not None
    for par, v in zip(params, values):
        par.value = v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConelayersWarning)
        sens = analyze(prob, params, [o for o in outs if isinstance(o, cp.Variable)],
                       solver_args=TIGHT)
    reference_solve(prob)
    assert sens.objective == pytest.approx(prob.value, rel=1e-9, abs=1e-9)
    grads = sens.objective_gradient()
    d = [np.random.default_rng(5).standard_normal(np.shape(v)) for v in values]
    h = 1e-4

    def value(vals):
        for par, v in zip(params, vals):
            par.value = v
        reference_solve(prob)
        return prob.value

    fd = (value([v + h * di for v, di in zip(values, d)])
          - value([v - h * di for v, di in zip(values, d)])) / (2 * h)
    analytic = sum(float((grads[p.name()] * di).sum()) for p, di in zip(params, d))
    assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_batched_offset_is_each_instances_offset():
    prob, params, outs, _, _ = _family("projection_simplex")
    program = compile_problem(prob, params, outs)
    theta = np.random.default_rng(2).standard_normal((program.num_theta, 3))
    batched = program.data(theta)["offset"]
    assert batched.shape == (1, 3)
    for k in range(3):
        single = program.data(theta[:, k])["offset"]
        assert single.shape == (1,)
        # ‖x − p‖² = xᵀx − 2pᵀx + ‖p‖²: the constant is ‖p‖².
        assert single[0] == pytest.approx(batched[0, k], rel=1e-14)
        assert single[0] == pytest.approx(float(theta[:, k] @ theta[:, k]), rel=1e-12)


def test_not_substituted_where_the_variable_or_its_row_is_read():
    """y defined by y == x − p: substituted when y is internal; kept when the user asks
    for y, or for the dual of its defining constraint."""
    x, y, p = cp.Variable(3, name="x"), cp.Variable(3, name="y"), cp.Parameter(3, name="p")
    define = y == x - p
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y) + cp.sum(x)), [define, x >= 0])
    raw = compile_problem(prob, [p], [x], presolve=False)
    assert compile_problem(prob, [p], [x]).n == raw.n - 3
    assert compile_problem(prob, [p], [x, y]).n == raw.n
    assert compile_problem(prob, [p], [x, define.dual_variables[0]]).n == raw.n
    for par, v in zip([p], [np.array([0.5, -1.0, 2.0])]):
        par.value = v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConelayersWarning)
        out = LayerCore(prob, [p], [x, define.dual_variables[0]]).forward([p.value], TIGHT)
    reference_solve(prob)
    np.testing.assert_allclose(out.outputs[0][0], x.value, atol=VALUE_ATOL)
    np.testing.assert_allclose(out.outputs[1][0], define.dual_value, atol=VALUE_ATOL)


def test_no_substitution_leaves_the_program_as_it_is():
    """An LP has no defining rows: the program object comes back unchanged."""
    x, c = cp.Variable(3, name="x"), cp.Parameter(3, name="c")
    prob = cp.Problem(cp.Minimize(c @ x), [x >= 0, cp.sum(x) == 1])
    raw = compile_problem(prob, [c], [x], presolve=False)
    assert substitute_defined_variables(raw) is raw


@pytest.mark.parametrize("k", [0.05, 2.0, 300.0, 1000.0])
def test_scaled_definitions_keep_the_closed_form_gradient(k):
    """sum_squares(k·x − p) s.t. Σx = 1: dx*/dp = (I − 11ᵀ/3)/k. Substituting t = kx − p
    puts 2k² into P; beyond MAX_GAIN (k = 300: σ_min/σ_max of U below 1e-10, judged
    singular) the gradient came out as w/k, as if Σx = 1 were absent, so such rows keep
    CVXPY's form. 1e-7 relative: refined solves, a regular U."""
    x, p = cp.Variable(3, name="x"), cp.Parameter(3, name="p")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(k * x - p)), [cp.sum(x) == 1])
    raw = compile_problem(prob, [p], [x], presolve=False)
    substituted = compile_problem(prob, [p], [x]).n < raw.n
    assert substituted == (1 / 10 <= k <= 10)
    w = np.array([1.0, 2.0, 3.0])
    core = LayerCore(prob, [p], [x])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConelayersWarning)
        result = core.forward([np.array([0.5, -1.0, 2.0])], TIGHT)
        (g,) = core.vjp(result, [w[None]])
    exact = (np.eye(3) - 1.0 / 3.0) @ w / k
    np.testing.assert_allclose(np.ravel(g), exact, rtol=1e-7, atol=1e-9 / k)
