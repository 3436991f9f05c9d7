"""canonicalize: the compiled affine map reproduces CVXPY's own SCS data, its adjoint is
the transpose, and bad problems get errors naming the offender."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

from canonicalize import CanonicalizationError, compile_problem
from tests import zoo
from tests.conftest import ZOO_NAMES


def _theta(program, values):
    theta = np.zeros(program.num_theta)
    for slot, v in zip(program.parameters, values):
        theta[slot.offset : slot.offset + slot.size] = np.asarray(v).ravel(order="F")
    return theta


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_data_matches_cvxpy(name):
    z = zoo.make(name)
    values = [v[0] if np.ndim(v) == len(p.shape) + 1 else v
              for p, v in zip(z.parameters, z.values)]
    # CVXPY's own program, before the presolve (tests/canonicalize/test_presolve.py).
    program = compile_problem(z.problem, z.parameters, z.variables, presolve=False)
    for p, v in zip(z.parameters, values):
        p.value = v
    data, _, _ = z.problem.get_problem_data(cp.SCS)
    ours = program.data(_theta(program, values))
    np.testing.assert_allclose(program.A.matrix(ours["A_values"]).toarray(),
                               data["A"].toarray(), atol=1e-12)
    np.testing.assert_allclose(ours["b"], data["b"], atol=1e-12)
    np.testing.assert_allclose(ours["c"], data["c"], atol=1e-12)
    if "P" in data and data["P"].nnz:
        np.testing.assert_allclose(program.P.matrix(ours["P_values"]).toarray(),
                                   data["P"].toarray(), atol=1e-12)
    assert program.dims.size == data["A"].shape[0]


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_data_adjoint_is_transpose(name):
    z = zoo.make(name)
    program = compile_problem(z.problem, z.parameters, z.variables)
    rng = np.random.default_rng(0)
    dtheta = rng.standard_normal(program.num_theta)
    d = program.data(dtheta)
    lin = {k: d[k] - program.data(np.zeros_like(dtheta))[k]
           for k in ("A_values", "b", "c")}
    bars = {k: rng.standard_normal(lin[k].shape) for k in lin}
    P_lin = P_bar = None
    if program.P is not None:
        P_lin = d["P_values"] - program.data(np.zeros_like(dtheta))["P_values"]
        P_bar = rng.standard_normal(P_lin.shape)
    lhs = sum(float(bars[k] @ lin[k]) for k in lin) + (
        float(P_bar @ P_lin) if P_bar is not None else 0.0)
    rhs = float(program.data_adjoint(bars["A_values"], bars["b"], bars["c"], P_bar) @ dtheta)
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def test_symmetric_variable_recovery():
    z = zoo.make("sdp")
    program = compile_problem(z.problem, z.parameters, z.variables)
    rec = program.recoveries[0]
    n = z.variables[0].shape[0]
    assert rec.matrix.shape == (n * n, program.n)
    # An upper-triangle vector maps to a symmetric matrix.
    v = np.arange(program.n, dtype=float)
    X = rec.apply(v).reshape((n, n), order="F")
    np.testing.assert_array_equal(X, X.T)


def _simple():
    x = cp.Variable(2, name="x")
    p = cp.Parameter(2, name="p")
    return x, p, cp.Problem(cp.Minimize(cp.sum_squares(x - p)))


def test_error_not_dcp():
    x, p, _ = _simple()
    prob = cp.Problem(cp.Maximize(cp.sum_squares(x - p)))
    with pytest.raises(CanonicalizationError, match="not DCP"):
        compile_problem(prob, [p], [x])


def test_error_not_dpp():
    x = cp.Variable(2)
    p, q = cp.Parameter(2, name="p"), cp.Parameter(name="q")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p * q)))
    with pytest.raises(CanonicalizationError, match="not DPP"):
        compile_problem(prob, [p, q], [x])


def test_error_not_dpp_only_once_canonicalized_is_ours_with_a_rewrite():
    """quad_form(x − p, G) passes is_dpp() and fails inside CVXPY's reductions: the
    error is ours (not CVXPY's DPPError) and says how to write it; the rewrite works."""
    x, p = cp.Variable(2, name="x"), cp.Parameter(2, name="p")
    G = np.array([[2.0, 0.5], [0.5, 1.0]])
    prob = cp.Problem(cp.Minimize(cp.quad_form(x - p, G)))
    assert prob.is_dpp()
    with pytest.raises(CanonicalizationError, match="not DPP once CVXPY.*sum_squares"):
        compile_problem(prob, [p], [x])
    L = np.linalg.cholesky(G).T  # G = LᵀL
    rewritten = cp.Problem(cp.Minimize(cp.sum_squares(L @ (x - p))))
    assert compile_problem(rewritten, [p], [x]).n >= 2


def test_error_parameter_mismatch_names_parameter():
    x, p, prob = _simple()
    other = cp.Parameter(3, name="other")
    with pytest.raises(CanonicalizationError, match="missing from the list: 'p'"):
        compile_problem(prob, [], [x])
    with pytest.raises(CanonicalizationError, match="not in the problem: 'other'"):
        compile_problem(prob, [p, other], [x])


def test_error_variable_not_in_problem():
    x, p, prob = _simple()
    y = cp.Variable(3, name="y")
    with pytest.raises(CanonicalizationError, match="variable 'y'.*subset of problem"):
        compile_problem(prob, [p], [x, y])


def test_error_wrong_container_types():
    x, p, prob = _simple()
    with pytest.raises(CanonicalizationError, match="list or tuple"):
        compile_problem(prob, p, [x])
    with pytest.raises(CanonicalizationError, match="cvxpy.Problem"):
        compile_problem("not a problem", [p], [x])


def test_constraint_rows_name_the_users_constraints_by_position():
    """Rows of a user's constraint are labelled with its index in problem.constraints and
    its text without the zero CVXPY adds to X >> 0; canonicalization's own rows are
    labelled auxiliary. The rows of each label cover exactly that constraint's cone.
    (CVXPY's program: the presolve substitutes the auxiliary rows of sum_squares out.)"""
    C = cp.Parameter((3, 3), name="C")
    X = cp.Variable((3, 3), symmetric=True, name="X")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - C)), [X >> 0, cp.diag(X) == 1])
    program = compile_problem(prob, [C], [X], presolve=False)
    by_label = {c.label: c for c in program.constraints}
    assert "constraints[0]: X >> 0" in by_label
    assert by_label["constraints[0]: X >> 0"].stop - by_label["constraints[0]: X >> 0"].start == 6
    diag = [c for c in program.constraints if c.label.startswith("constraints[1]: ")]
    assert len(diag) == 1 and diag[0].stop - diag[0].start == 3
    assert all("Promote" not in c.label for c in program.constraints)
    assert any(not c.user and c.label.startswith("auxiliary") for c in program.constraints)


# -- variables with attributes, discrete variables, problems without constraints ----------

TIGHT = {"eps": 1e-9, "max_iters": 50_000}


def _fd_gradient(core, value, weight, h=1e-6):
    """Central differences of ⟨weight, output⟩ along each coordinate of the value."""
    out = np.zeros_like(value)
    for i in range(value.size):
        e = np.zeros_like(value)
        e.flat[i] = h
        plus = core.forward([value + e], TIGHT).outputs[0][0]
        minus = core.forward([value - e], TIGHT).outputs[0][0]
        out.flat[i] = float(np.sum(weight * (plus - minus))) / (2 * h)
    return out


@pytest.mark.parametrize("attrs", [{"nonneg": True}, {"nonpos": True}, {"pos": True},
                                   {"bounds": [-0.2, 0.6]}])
def test_variables_with_attributes_are_outputs(attrs):
    """CVXPY replaces such a variable by a plain one plus constraints (CvxAttr2Constr);
    the layer reads the replacement: values against CVXPY's own solve (Clarabel), the
    gradient against central differences (smooth point: no coordinate at a bound)."""
    from conelayers.layer import LayerCore

    z, b = cp.Variable(4, **attrs), cp.Parameter(4)
    core = LayerCore(cp.Problem(cp.Minimize(cp.sum_squares(z - b))), [b], [z])
    value = np.array([0.5, -0.3, 0.1, 0.9])
    ref = cp.Variable(4, **attrs)
    cp.Problem(cp.Minimize(cp.sum_squares(ref - value))).solve(solver=cp.CLARABEL)
    result = core.forward([value], TIGHT)
    np.testing.assert_allclose(result.outputs[0][0], ref.value, atol=1e-7)
    w = np.array([1.0, -2.0, 0.5, 3.0])
    (grad,) = core.vjp(result, [w[None]])
    np.testing.assert_allclose(grad, _fd_gradient(core, value, w), atol=1e-5)


@pytest.mark.parametrize("attr", ["integer", "boolean"])
def test_discrete_variables_are_rejected_by_name(attr):
    from conelayers.exceptions import ProblemError
    from conelayers.layer import LayerCore

    z, b = cp.Variable(2, name="choice", **{attr: True}), cp.Parameter(2)
    with pytest.raises(ProblemError, match="integer or boolean variables.*'choice'"):
        LayerCore(cp.Problem(cp.Minimize(cp.sum_squares(z - b))), [b], [z])


def test_problem_without_constraints():
    """min ‖x‖² + qᵀx: x = −q/2 and d(Σx)/dq = −½ (SCS needs a cone row: the program
    gets an always-slack one, which must not show in values, gradients or warnings)."""
    import warnings

    from conelayers.layer import LayerCore

    x, q = cp.Variable(3), cp.Parameter(3)
    core = LayerCore(cp.Problem(cp.Minimize(cp.sum_squares(x) + q @ x)), [q], [x])
    value = np.array([1.0, -2.0, 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = core.forward([value])
        (grad,) = core.vjp(result, [np.ones((1, 3))])
    np.testing.assert_allclose(result.outputs[0][0], -value / 2, atol=1e-9)
    np.testing.assert_allclose(grad, -0.5 * np.ones(3), atol=1e-9)
