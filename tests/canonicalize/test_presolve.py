"""canonicalize.presolve: fixing bounded epigraph variables removes exactly the variables
and rows it should, leaves the optimal outputs (primal and dual) unchanged, and gives the
same gradients; the harmless null space of U it removes is gone.

The reference for values is CVXPY solving the user's problem itself (its own
canonicalization, SCS at 1e-12, no refinement); for gradients, the unpresolved program's
and a closed form."""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest

from canonicalize import compile_problem
from canonicalize.presolve import fix_bounded_epigraphs, fixable_epigraphs
from canonicalize.substitute import substitute_defined_variables
from conelayers.exceptions import ConelayersWarning, NonsmoothPointWarning
from conelayers.layer import LayerCore
from tests.canonicalize.reference import TIGHT, VALUE_ATOL, reference_solve


def _family(name: str):
    """(problem, parameters, outputs, values, fixed count) of a family of bounds."""
    rng = np.random.default_rng(7)
    x = cp.Variable(4, name="x")
    p = cp.Parameter(4, name="p")
    if name == "norm_ball":  # projection onto ‖x‖ ≤ 1, p outside: the bound is active
        prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [cp.norm(x) <= 1])
        return prob, [p], [x], [np.array([1.0, -2.0, 0.5, 0.3])], 1
    if name == "parametric_radius":  # ‖x‖ ≤ r: the fixed value is a parameter
        r = cp.Parameter(nonneg=True, name="r")
        prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [cp.norm(x) <= r])
        return prob, [p, r], [x], [np.array([1.0, -2.0, 0.5, 0.3]), np.array(1.3)], 1
    if name == "several_socs":  # the benchmark's socp: inactive and active bounds mixed
        As = [rng.standard_normal((3, 4)) for _ in range(4)]
        B = cp.Parameter((4, 3), name="B")
        cons = [cp.norm(As[i] @ x + B[i]) <= 1 for i in range(4)] + [cp.norm(x) <= 2]
        prob = cp.Problem(cp.Minimize(p @ x), cons)
        return prob, [p, B], [x], [rng.standard_normal(4), 0.2 * rng.standard_normal((4, 3))], 5
    if name == "abs_bound":  # |x| ≤ 0.4 elementwise: t enters two loosening rows each
        prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [cp.abs(x) <= 0.4])
        return prob, [p], [x], [np.array([1.0, -0.2, 0.5, -0.9])], 4
    if name == "qp_with_bound":  # P stays, with its columns renumbered
        M = rng.standard_normal((6, 4))
        prob = cp.Problem(
            cp.Minimize(cp.sum_squares(M @ x) + p @ x), [cp.norm(x - 0.1) <= 0.5, x[0] == 0.2]
        )
        return prob, [p], [x], [rng.standard_normal(4) * 3], 1
    if name == "maximize":
        prob = cp.Problem(cp.Maximize(p @ x), [cp.norm(x, 2) <= 1, cp.sum(x) <= 0.5])
        return prob, [p], [x], [np.array([1.0, 0.3, -0.2, 0.4])], 1
    raise ValueError(name)


FAMILIES = ["norm_ball", "parametric_radius", "several_socs", "abs_bound", "qp_with_bound",
            "maximize"]


@pytest.mark.parametrize("name", FAMILIES)
def test_fixes_the_epigraph_variables_and_their_bound_rows(name):
    prob, params, outs, _, count = _family(name)
    raw = compile_problem(prob, params, outs, presolve=False)
    program, fixed = fix_bounded_epigraphs(raw)
    assert len(fixed) == count
    assert (program.n, program.m) == (raw.n - count, raw.m - count)
    assert program.dims.size == program.m
    assert program.dims.nonneg == raw.dims.nonneg - count
    # The default presolves (and then substitutes defined variables, test_substitute.py).
    assert compile_problem(prob, params, outs).n == substitute_defined_variables(program).n


@pytest.mark.parametrize("name", FAMILIES)
def test_outputs_equal_the_unpresolved_program_and_cvxpy(name):
    prob, params, outs, values, _ = _family(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConelayersWarning)
        fixed = LayerCore(prob, params, outs).forward(values, TIGHT).outputs[0][0]
        raw = LayerCore(prob, params, outs, presolve=False).forward(values, TIGHT).outputs[0][0]
    for par, v in zip(params, values):
        par.value = v
    reference_solve(prob)
    np.testing.assert_allclose(fixed, raw, atol=VALUE_ATOL)
    np.testing.assert_allclose(fixed, outs[0].value, atol=VALUE_ATOL)


@pytest.mark.parametrize("name", FAMILIES)
def test_gradients_equal_the_unpresolved_program(name):
    """Same derivative of Σ w·x: presolve changes the program, not the solution map."""
    prob, params, outs, values, _ = _family(name)
    w = [np.linspace(1.0, 2.0, 4)[None]]
    grads = []
    for presolve in (True, False):
        core = LayerCore(prob, params, outs, presolve=presolve)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConelayersWarning)
            result = core.forward(values, TIGHT)
            grads.append(core.vjp(result, w))
    for g_fixed, g_raw in zip(*grads):
        np.testing.assert_allclose(g_fixed, g_raw, atol=1e-7)


def test_parametric_radius_gradient_is_the_closed_form():
    """x* = r p/‖p‖ for p outside the ball: dx*/dr = p/‖p‖; r reaches b only through
    the fixed variable, so this checks the transfer of b's parametrization."""
    prob, params, outs, values, _ = _family("parametric_radius")
    core = LayerCore(prob, params, outs)
    p = values[0]
    w = np.array([0.3, -1.0, 2.0, 0.7])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConelayersWarning)
        result = core.forward(values, TIGHT)
        _, g_r = core.vjp(result, [w[None]])
    assert float(np.ravel(g_r)[0]) == pytest.approx(w @ p / np.linalg.norm(p), abs=1e-8)


def test_not_fixed_when_the_variable_is_an_output_costs_or_is_pinned():
    x = cp.Variable(3, name="x")
    t = cp.Variable(name="t")
    p = cp.Parameter(3, name="p")
    base = [cp.norm(x) <= t, t <= 1]
    cases = {
        "output": (cp.Problem(cp.Minimize(cp.sum_squares(x - p)), base), [x, t]),
        "cost": (cp.Problem(cp.Minimize(cp.sum_squares(x - p) + t), base), [x]),
        "equality": (cp.Problem(cp.Minimize(cp.sum_squares(x - p)), base + [t == 0.5]), [x]),
        "two_upper_bounds": (
            cp.Problem(cp.Minimize(cp.sum_squares(x - p)), base + [t <= 2]), [x]),
    }
    # ‖x‖'s own epigraph variable meets t in the row t_norm ≤ t (two variables: no
    # single-variable bound), so t is the only candidate, and each case rules it out.
    for name, (prob, outs) in cases.items():
        program = compile_problem(prob, [p], outs, presolve=False)
        assert fixable_epigraphs(program)[0].size == 0, name
    # The user's t alone, not an output and free of cost: fixed like an epigraph.
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), base)
    assert fixable_epigraphs(compile_problem(prob, [p], [x], presolve=False))[0].size == 1


def test_requested_dual_of_the_bound_keeps_it_and_other_duals_move_with_their_rows():
    """The bound's own dual asked for: not fixed (its row is read). Another constraint's
    dual, in a row after the removed ones: re-indexed, and equal to CVXPY's."""
    x = cp.Variable(3, name="x")
    p = cp.Parameter(3, name="p")
    bound = cp.norm(x) <= 1
    lower = x >= -0.1
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [bound, lower, cp.sum(x) == 0.3])
    values = [np.array([2.0, -1.0, 0.5])]
    for p_val in values:
        p.value = p_val
    reference_solve(prob)
    # Asking for the bound's dual keeps its row (sum_squares' variables are substituted).
    kept = compile_problem(prob, [p], [x, bound.dual_variables[0]])
    raw = compile_problem(prob, [p], [x], presolve=False)
    assert kept.n == substitute_defined_variables(raw).n < raw.n
    # Asking for another row's dual: the bound is fixed, the dual comes out right.
    core = LayerCore(prob, [p], [x, lower.dual_variables[0]])
    assert core.program.n == kept.n - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConelayersWarning)
        x_out, dual = core.forward(values, TIGHT).outputs
    np.testing.assert_allclose(x_out[0], x.value, atol=VALUE_ATOL)
    np.testing.assert_allclose(dual[0], lower.dual_value, atol=VALUE_ATOL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConelayersWarning)
        _, bound_dual = LayerCore(prob, [p], [x, bound.dual_variables[0]]).forward(
            values, TIGHT).outputs
    np.testing.assert_allclose(bound_dual[0], bound.dual_value, atol=VALUE_ATOL)


def test_interior_point_of_the_ball_has_a_regular_U_once_presolved():
    """Without the presolve, U is singular at an interior point of the ball (the
    epigraph variable is not unique; tests/conelayers/test_checks.py); with it, U is
    regular and dx/dp = I, with no warning."""
    p = cp.Parameter(5, name="p")
    x = cp.Variable(5, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [cp.norm(x) <= 2])
    core = LayerCore(prob, [p], [x])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConelayersWarning)
        result = core.forward([np.array([0.3, -0.2, 0.5, 0.1, 0.0])])
        (gp,) = core.vjp(result, [np.ones((1, 5))])
    np.testing.assert_allclose(gp, np.ones(5), atol=1e-9)
    sv = np.linalg.svd(result.derivative(0).U.todense(), compute_uv=False)
    assert sv[-1] > 1e-6 * sv[0]
    check = result.reports[0].selections[0]
    assert check.decoupled == 0 and check.nullity == 0


def test_a_kink_of_the_fixed_cone_names_the_users_bound():
    p = cp.Parameter(5, name="p")
    x = cp.Variable(5, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [cp.norm(x) <= 2])
    core = LayerCore(prob, [p], [x])
    u = np.array([1.0, 2.0, -1.0, 0.5, 1.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = core.forward([2 * u / np.linalg.norm(u)])
        core.vjp(result, [np.ones((1, 5))])
    messages = [str(w.message) for w in caught if issubclass(w.category, NonsmoothPointWarning)]
    assert messages and "constraints[0]" in messages[0] and "PnormApprox" in messages[0]
