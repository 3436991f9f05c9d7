"""The framework-free core on the zoo: solutions against an independent solver,
gradients against central finite differences, jvp against vjp."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

from conelayers.exceptions import ParameterError, SettingsError
from conelayers.layer import LayerCore
from tests import zoo
from tests.conftest import ZOO_NAMES, central_difference, random_like

TIGHT = {"eps": 1e-9}


def _squeeze(result):
    return result.outputs if result.batch is not None else [o[0] for o in result.outputs]


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_solution_matches_independent_solver(name):
    z = zoo.make(name)
    core = LayerCore(z.problem, z.parameters, z.variables)
    result = core.forward(z.values, TIGHT)
    reference = zoo.reference_solution(z, z.values)
    for out, ref in zip(_squeeze(result), reference):
        # Both solutions are accurate to ~1e-9 or better; outputs are O(1).
        np.testing.assert_allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_vjp_matches_central_differences(name):
    z = zoo.make(name)
    core = LayerCore(z.problem, z.parameters, z.variables)
    result = core.forward(z.values, TIGHT)
    rng = np.random.default_rng(7)
    weights = random_like(rng, _squeeze(result))
    grads = core.vjp(result, [w if result.batch is not None else w[None] for w in weights])
    for _ in range(2):
        directions = random_like(rng, z.values)
        fd = central_difference(z, weights, directions)
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, directions))
        assert abs(analytic - fd) <= 1e-4 * max(abs(fd), 1e-3), (analytic, fd)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_jvp_is_adjoint_of_vjp(name):
    """⟨w, J d⟩ = ⟨Jᵀw, d⟩ (dot-product test) on random w and d."""
    z = zoo.make(name)
    core = LayerCore(z.problem, z.parameters, z.variables)
    result = core.forward(z.values, TIGHT)
    rng = np.random.default_rng(3)
    weights = random_like(rng, result.outputs)
    directions = random_like(rng, z.values)
    grads = core.vjp(result, weights)
    tangents = core.jvp(result, directions)
    lhs = sum(float((w * t).sum()) for w, t in zip(weights, tangents))
    rhs = sum(float((g * d).sum()) for g, d in zip(grads, directions))
    assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_default_tolerance_gradient_is_refined(name):
    """At SCS's default eps = 1e-4, Newton refinement makes the gradient agree with the
    eps = 1e-9 gradient to 1e-5 relative."""
    z = zoo.make(name)
    core = LayerCore(z.problem, z.parameters, z.variables)
    rng = np.random.default_rng(5)
    tight = core.forward(z.values, TIGHT)
    loose = core.forward(z.values)
    weights = random_like(rng, tight.outputs)
    g_tight = np.concatenate([g.ravel() for g in core.vjp(tight, weights)])
    g_loose = np.concatenate([g.ravel() for g in core.vjp(loose, weights)])
    assert np.linalg.norm(g_loose - g_tight) <= 1e-5 * np.linalg.norm(g_tight)


def test_least_squares_gradient_matches_closed_form():
    """min ‖Ax − b‖² + ‖x‖²: x = (AᵀA + I)⁻¹Aᵀb, so for the loss wᵀx,
    ∂/∂b = A(AᵀA + I)⁻¹w and ∂/∂A = b uᵀ − A(u xᵀ + x uᵀ) with u = (AᵀA + I)⁻¹w."""
    z = zoo.make("least_squares")
    A, b = z.values
    core = LayerCore(z.problem, z.parameters, z.variables)
    result = core.forward(z.values, TIGHT)
    M = A.T @ A + np.eye(A.shape[1])
    x = np.linalg.solve(M, A.T @ b)
    np.testing.assert_allclose(result.outputs[0][0], x, atol=1e-9)
    w = np.random.default_rng(0).standard_normal(x.size)
    gA, gb = core.vjp(result, [w[None]])
    u = np.linalg.solve(M, w)
    np.testing.assert_allclose(gb, A @ u, atol=1e-9)
    np.testing.assert_allclose(gA, np.outer(b, u) - A @ (np.outer(u, x) + np.outer(x, u)),
                               atol=1e-9)


@pytest.mark.parametrize(
    ("solver_args", "named"),
    [({"max_iter": 10}, "max_iter"), ({"mode": "lsqr"}, "mode"),
     ({"eps": -1.0}, "eps_abs"), ({"max_iters": 0}, "max_iters"),
     ({"eps_rel": "abc"}, "eps_rel"), ({"on_failure": "ignore"}, "on_failure"),
     ({"checks": "fastest"}, "checks"), ({"selection": "middle"}, "selection"),
     ({"n_jobs": 0}, "n_jobs"), ({"refine": "yes"}, "refine"),
     ([("eps", 1e-3)], "solver_args must be a dict")],
)
def test_bad_solver_args_raise_settings_error_naming_the_key(solver_args, named):
    """Unknown keys and invalid values are a SettingsError (a ConelayersError and a
    ValueError) naming the setting, raised before anything is solved."""
    x = cp.Variable(2)
    p = cp.Parameter(2)
    core = LayerCore(cp.Problem(cp.Minimize(cp.sum_squares(x - p))), [p], [x])
    with pytest.raises(SettingsError, match=named):
        core.forward([np.ones(2)], solver_args)


def test_nan_in_a_batch_names_the_instances():
    x = cp.Variable(2)
    p = cp.Parameter(2, name="p")
    core = LayerCore(cp.Problem(cp.Minimize(cp.sum_squares(x - p))), [p], [x])
    values = np.ones((4, 2))
    values[1, 0] = np.nan
    values[3, 1] = np.inf
    with pytest.raises(ParameterError, match=r"parameter 'p' contains NaN or Inf in batch "
                                             r"instance\(s\) 1, 3"):
        core.forward([values])


def test_fixed_matrices_keep_the_scs_workspace_across_calls(monkeypatch):
    """A projection onto the simplex (only the point is a parameter, so A and P are
    fixed): later calls reuse the first call's SCS setup and still match the
    sort-based closed form; a layer whose A holds a parameter keeps nothing."""
    import conelayers.solvers.scs as scs_mod

    built = []
    real = scs_mod._workspace
    monkeypatch.setattr(scs_mod, "_workspace", lambda p, s: built.append(1) or real(p, s))
    n = 8
    point = cp.Parameter(n)
    x = cp.Variable(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - point)), [x >= 0, cp.sum(x) == 1])
    core = LayerCore(problem, [point], [x])
    args = {"adaptive_scale": False}  # the scale cannot move: the workspace is kept
    rng = np.random.default_rng(5)
    for _ in range(4):
        p = rng.standard_normal(n)
        out = core.forward([p], args).outputs[0][0]
        u = np.sort(p)[::-1]
        css = np.cumsum(u) - 1.0
        rho = np.nonzero(u - css / np.arange(1, n + 1) > 0)[0][-1]
        np.testing.assert_allclose(out, np.maximum(p - css[rho] / (rho + 1.0), 0), atol=1e-8)
    assert len(built) == 1 and len(core.scs_workspaces) == 1

    z = zoo.make("least_squares")  # A is a parameter: a setup per call, none kept
    varying = LayerCore(z.problem, z.parameters, z.variables)
    built.clear()
    for _ in range(2):
        varying.forward(z.values, args)
    assert len(built) == 2 and len(varying.scs_workspaces) == 0


@pytest.mark.parametrize(("solver_args", "named"), [
    ({"alpha": 5.0}, "alpha"), ({"scale": 0.0}, "scale"), ({"rho_x": 0.0}, "rho_x"),
    ({"acceleration_lookback": -5}, "acceleration_lookback"),
    ({"acceleration_interval": 0}, "acceleration_interval"),
    ({"verbose": 2}, "verbose"), ({"normalize": "yes"}, "normalize"),
    ({"adaptive_scale": "no"}, "adaptive_scale"), ({"verbose": [1]}, "verbose"),
    ({"write_data_filename": 3}, "write_data_filename"),
])
def test_values_scs_would_reject_raise_settings_error(solver_args, named):
    """Each of these reached SCS and came back as a bare ValueError/TypeError (or, for
    a list, a TypeError from hashing the workspace pool's key)."""
    z = zoo.make("least_squares")
    core = LayerCore(z.problem, z.parameters, z.variables)
    with pytest.raises(SettingsError, match=named):
        core.forward(z.values, solver_args)


def test_file_writing_settings_solve_the_batch_in_one_thread(tmp_path, monkeypatch):
    """write_data_filename: SCS writes the file at each setup; the batch then runs in one
    thread, so two workspaces never write the same path at once."""
    import threading

    import conelayers.solvers.scs as scs_mod

    seen = set()
    real = scs_mod._workspace
    monkeypatch.setattr(scs_mod, "_workspace",
                        lambda p, s: seen.add(threading.get_ident()) or real(p, s))
    n = 4
    p = cp.Parameter(n)
    x = cp.Variable(n)
    core = LayerCore(cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0]), [p], [x])
    values = np.random.default_rng(0).standard_normal((6, n))
    out = core.forward([values], {"write_data_filename": str(tmp_path / "d.bin"),
                                  "n_jobs": 2}).outputs[0]
    np.testing.assert_allclose(out, np.maximum(values, 0), atol=1e-8)
    assert len(seen) == 1 and (tmp_path / "d.bin").exists()
