"""Batched SCS solves that share A and P reuse one workspace per thread; the answers
must match independent solves (to SCS's tolerance, and to the closed form where one
exists), and a failed instance must not disturb the rest of the batch."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import conelayers.solvers.scs as scs_mod
from canonicalize.cones import ConeDims
from conelayers.solvers.scs import ConeProgram, normalize_settings, solve, solve_batch

TIGHT = {**normalize_settings(None), "eps_abs": 1e-9, "eps_rel": 1e-9}


def _simplex_projection_programs(points: np.ndarray, with_P: bool) -> list[ConeProgram]:
    """min ½‖x‖² − pᵀx (i.e. ½‖x − p‖²) s.t. 1ᵀx = 1, x ≥ 0, one instance per row of
    ``points``, all sharing the same A and P objects."""
    k = points.shape[1]
    A = sp.vstack([sp.csr_matrix(np.ones((1, k))), -sp.identity(k)], format="csc")
    b = np.concatenate([[1.0], np.zeros(k)])
    P = sp.identity(k, format="csc") if with_P else None
    dims = ConeDims(zero=1, nonneg=k)
    return [ConeProgram(A, b.copy(), -p, dims, P) for p in points]


def _project_simplex(p: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (sort-based closed form)."""
    u = np.sort(p)[::-1]
    css = np.cumsum(u) - 1.0
    rho = np.nonzero(u - css / np.arange(1, p.size + 1) > 0)[0][-1]
    return np.maximum(p - css[rho] / (rho + 1.0), 0.0)


@pytest.fixture
def update_calls(monkeypatch):
    """Count the b/c updates the shared-workspace path makes."""
    calls = {"update": 0}
    real = scs_mod._workspace

    class Counting:
        def __init__(self, solver):
            self._solver = solver

        def update(self, **kw):
            calls["update"] += 1
            return self._solver.update(**kw)

        def solve(self, **kw):
            return self._solver.solve(**kw)

    monkeypatch.setattr(scs_mod, "_workspace", lambda prog, st: Counting(real(prog, st)))
    return calls


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_shared_workspace_matches_closed_form(update_calls, n_jobs):
    rng = np.random.default_rng(0)
    points = rng.standard_normal((8, 6))
    programs = _simplex_projection_programs(points, with_P=True)
    sols = solve_batch(programs, TIGHT, n_jobs=n_jobs)
    # Every instance after the first in each thread's chunk went through update().
    assert update_calls["update"] == len(programs) - n_jobs
    for p, sol in zip(points, sols, strict=True):
        assert sol.status == "solved"
        # eps 1e-9 on a well-scaled QP: the solution to ~1e-7.
        np.testing.assert_allclose(sol.x, _project_simplex(p), atol=1e-6)


def test_shared_workspace_matches_independent_solves(update_calls):
    rng = np.random.default_rng(1)
    points = rng.standard_normal((5, 10))
    programs = _simplex_projection_programs(points, with_P=False)  # an LP over the simplex
    settings = normalize_settings(None)
    batched = solve_batch(programs, settings, n_jobs=1)
    assert update_calls["update"] == len(programs) - 1
    for prog, sol in zip(programs, batched, strict=True):
        alone = solve(prog, settings)
        assert sol.status == alone.status == "solved"
        # An LP over the simplex: the optimum is −max(p), to SCS's tolerance 1e-4.
        assert sol.objective == pytest.approx(alone.objective, abs=1e-3)
        assert sol.objective == pytest.approx(-(-prog.c).max(), abs=1e-3)


def test_failed_instance_does_not_disturb_the_batch(update_calls):
    rng = np.random.default_rng(2)
    points = rng.standard_normal((4, 5))
    programs = _simplex_projection_programs(points, with_P=True)
    bad = programs[1]
    # 1ᵀx = −1 with x ≥ 0: infeasible.
    programs[1] = ConeProgram(bad.A, np.concatenate([[-1.0], bad.b[1:]]), bad.c, bad.dims, bad.P)
    sols = solve_batch(programs, TIGHT, n_jobs=1)
    assert sols[1].status == "infeasible"
    for i in (0, 2, 3):
        assert sols[i].status == "solved"
        np.testing.assert_allclose(sols[i].x, _project_simplex(points[i]), atol=1e-6)
