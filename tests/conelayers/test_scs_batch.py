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


# -- workspaces kept across calls (WorkspacePool) -----------------------------------------

@pytest.fixture
def built(monkeypatch):
    """Count the SCS workspaces built (setups paid)."""
    calls = {"built": 0}
    real = scs_mod._workspace

    def counting(prog, st):
        calls["built"] += 1
        return real(prog, st)

    monkeypatch.setattr(scs_mod, "_workspace", counting)
    return calls


def _fresh_scale_updates(program: ConeProgram, settings: dict) -> int:
    return int(scs_mod._workspace(program, settings).solve()["info"]["scale_updates"])


def test_pool_serves_later_calls_without_a_new_setup(built):
    rng = np.random.default_rng(3)
    points = rng.standard_normal((6, 7))
    programs = _simplex_projection_programs(points, with_P=True)
    # Without adaptive scaling SCS's scale cannot move, so the workspace is kept.
    settings = {**TIGHT, "adaptive_scale": False}
    pool = scs_mod.WorkspacePool()
    for k, prog in enumerate(programs):
        sol = solve_batch([prog], settings, pool=pool)[0]
        assert sol.status == "solved"
        np.testing.assert_allclose(sol.x, _project_simplex(points[k]), atol=1e-6)
    assert built["built"] == 1 and len(pool) == 1
    # Other settings are another key: a setup of their own, kept beside the first.
    solve_batch([programs[0]], {**settings, "eps_abs": 1e-8}, pool=pool)
    assert built["built"] == 2 and len(pool) == 2


def test_pool_drops_a_workspace_whose_scale_moved(built):
    rng = np.random.default_rng(4)
    programs = _simplex_projection_programs(rng.standard_normal((2, 30)), with_P=False)
    # An initial scale far from what the LP wants: SCS adapts it during the solve.
    settings = {**TIGHT, "scale": 1e-5}
    assert _fresh_scale_updates(programs[0], settings) > 0  # the premise
    pool = scs_mod.WorkspacePool()
    solve_batch([programs[0]], settings, pool=pool)
    assert len(pool) == 0
    solve_batch([programs[1]], settings, pool=pool)
    assert built["built"] == 3  # the premise's, and one per call


def test_pool_keeps_at_most_max_settings_and_skips_file_writing_settings(tmp_path):
    programs = _simplex_projection_programs(np.eye(3), with_P=True)
    pool = scs_mod.WorkspacePool()
    base = {**normalize_settings(None), "adaptive_scale": False}
    for k in range(scs_mod.WorkspacePool.MAX_SETTINGS + 2):
        solve_batch([programs[0]], {**base, "eps_abs": 10.0 ** -(3 + k)}, pool=pool)
    assert len(pool) == scs_mod.WorkspacePool.MAX_SETTINGS
    assert scs_mod.WorkspacePool.key(
        programs[0], {**base, "write_data_filename": str(tmp_path / "d")}
    ) is None


def test_pool_rejects_programs_with_other_matrices():
    a = _simplex_projection_programs(np.eye(3), with_P=True)
    b = _simplex_projection_programs(np.eye(3), with_P=True)  # equal values, other objects
    with pytest.raises(ValueError, match="sharing A and P"):
        solve_batch([a[0], b[1]], TIGHT, pool=scs_mod.WorkspacePool())


def test_pool_copies_start_empty():
    import copy
    import pickle

    pool = scs_mod.WorkspacePool()
    solve_batch(_simplex_projection_programs(np.eye(3), with_P=True)[:1],
                {**TIGHT, "adaptive_scale": False}, pool=pool)
    assert len(pool) == 1
    assert len(pickle.loads(pickle.dumps(pool))) == 0
    assert len(copy.deepcopy(pool)) == 0


class _ScriptedSolver:
    """Stands in for scs.SCS: iteration counts and scale updates from a script, so the
    reuse policy can be tested on exactly the sequence that triggers it."""

    def __init__(self, script: list):
        self.script = script

    def update(self, b=None, c=None):
        pass

    def solve(self, warm_start=True, x=None, y=None, s=None):
        iters, scale_updates, *final_scale = self.script.pop(0)
        return {"x": np.zeros(3), "y": np.zeros(4), "s": np.zeros(4),
                "info": {"status_val": 1, "iter": iters, "res_pri": 0.0, "res_dual": 0.0,
                         "gap": 0.0, "pobj": 0.0, "solve_time": 0.0,
                         "scale_updates": scale_updates,
                         "scale": final_scale[0] if final_scale else 0.1}}


def test_a_drifted_scale_that_cost_iterations_is_not_reused_in_later_calls(monkeypatch):
    programs = _simplex_projection_programs(np.eye(3), with_P=True)
    # First call: fresh solve (scale moves), a reuse that takes 10x the iterations (the
    # guard fires), then fresh solves. Second call: every instance fresh, since a
    # workspace whose scale moved has cost iterations for this pool key before.
    script = [(100, 1), (1000, 0), (100, 1)] + [(100, 1)] * 3
    built: list = []

    def scripted(prog, st):
        built.append(prog)
        return _ScriptedSolver(script)

    monkeypatch.setattr(scs_mod, "_workspace", scripted)
    pool = scs_mod.WorkspacePool()
    first = solve_batch(programs, TIGHT, n_jobs=1, pool=pool)
    assert [s.iterations for s in first] == [100, 1000, 100]
    assert len(built) == 2 and pool.drift_hurts(pool.key(programs[0], TIGHT))
    built.clear()
    second = solve_batch(programs, TIGHT, n_jobs=1, pool=pool)
    assert [s.iterations for s in second] == [100, 100, 100]
    assert len(built) == 3 and len(pool) == 0  # all fresh; none kept (their scale moved)


def _scripted_pool(monkeypatch, script: list) -> tuple[list[dict], scs_mod.WorkspacePool]:
    """Workspaces that play ``script`` (the settings each was built with are recorded
    in the returned list), and a fresh pool."""
    seen: list[dict] = []

    def scripted(prog, st):
        seen.append(dict(st))
        return _ScriptedSolver(script)

    monkeypatch.setattr(scs_mod, "_workspace", scripted)
    return seen, scs_mod.WorkspacePool()


# -- the scale memory: new workspaces start where SCS's adaptive scale ended --------------

def test_new_workspaces_start_from_the_scale_scs_adapted_to(monkeypatch):
    """Real SCS: an LP whose scale moves from the default; the next call's workspace is
    built with the scale the last solve ended at, and still solves exactly."""
    rng = np.random.default_rng(5)
    points = 10.0 * rng.standard_normal((3, 100))
    programs = _simplex_projection_programs(points, with_P=False)
    settings = dict(TIGHT)
    assert _fresh_scale_updates(programs[0], settings) > 0  # the premise
    seen: list[dict] = []
    real = scs_mod._workspace

    def recording(prog, st):
        seen.append(dict(st))
        return real(prog, st)

    monkeypatch.setattr(scs_mod, "_workspace", recording)
    pool = scs_mod.WorkspacePool()
    key = pool.key(programs[0], settings)
    ended = []
    for k, prog in enumerate(programs):
        sol = solve_batch([prog], settings, pool=pool)[0]
        np.testing.assert_allclose(sol.x, _project_simplex(points[k]), atol=1e-6)
        ended.append(pool.start_settings(key, settings)[0].get("scale"))
    assert "scale" not in seen[0] and ended[0] not in (None, 0.1)
    assert seen[1]["scale"] == ended[0] and seen[2]["scale"] == ended[1]
    # A scale the user chose is never replaced.
    assert pool.start_settings(key, {**settings, "scale": 0.5}) == (
        {**settings, "scale": 0.5}, False)


def test_a_remembered_scale_that_costs_iterations_is_dropped(monkeypatch):
    """Scripted: a fresh default start takes 100 iterations and ends at scale 1e-5 (as
    on LPs); the next call starts from it and takes 300 (> 1.2 × 100): from then on new
    workspaces start from SCS's default again."""
    programs = _simplex_projection_programs(np.eye(3), with_P=True)[:1]
    script = [(100, 1, 1e-5), (300, 1, 1e-6), (100, 1, 1e-5)]
    seen, pool = _scripted_pool(monkeypatch, script)
    for _ in range(3):
        solve_batch(programs, TIGHT, n_jobs=1, pool=pool)
    assert "scale" not in seen[0] and seen[1]["scale"] == 1e-5 and "scale" not in seen[2]
    assert pool.start_settings(pool.key(programs[0], TIGHT), TIGHT) == (TIGHT, False)


def test_a_reuse_guard_on_a_remembered_scale_drops_the_memory_not_reuse(monkeypatch):
    """Scripted: call 1 solves three instances from one default workspace (its scale
    ends at 1e-3). Call 2 starts from that scale, and its second instance takes 10x the
    first's iterations: the reuse guard fires. The remembered scale misled, so it is
    dropped, and the key is not marked drift_hurts (which would give every later
    instance a fresh workspace). Call 3 starts from SCS's default again and reuses."""
    programs = _simplex_projection_programs(np.eye(3), with_P=True)
    script = ([(100, 1, 1e-3), (100, 0, 1e-3), (100, 0, 1e-3)]
              + [(50, 0, 1e-3), (500, 0, 1e-3), (100, 1, 1e-3)]
              + [(100, 1, 1e-3), (100, 0, 1e-3), (100, 0, 1e-3)])
    seen, pool = _scripted_pool(monkeypatch, script)
    key = pool.key(programs[0], TIGHT)
    solve_batch(programs, TIGHT, n_jobs=1, pool=pool)
    assert len(seen) == 1
    second = solve_batch(programs, TIGHT, n_jobs=1, pool=pool)
    assert [s.iterations for s in second] == [50, 500, 100]
    assert seen[1]["scale"] == 1e-3 and "scale" not in seen[2]  # the guard's fresh solve
    assert not pool.drift_hurts(key)
    solve_batch(programs, TIGHT, n_jobs=1, pool=pool)
    assert len(seen) == 4 and "scale" not in seen[3]  # default start, then reused


@pytest.mark.parametrize("key, value", [("acceleration_type_1", 0),
                                        ("acceleration_regularization", 1e-8),
                                        ("acceleration_relaxation", 1.0),
                                        ("adaptive_diag_scale", 1)])
def test_settings_scs_accepts_beyond_its_docs_are_accepted(key, value):
    """SCS 3.3.1's extension takes these keys (a made-up one it refuses); so does the
    settings check, and the solve is still right."""
    programs = _simplex_projection_programs(np.array([[0.3, 0.9, -0.4]]), with_P=True)
    sol = solve(programs[0], {**TIGHT, key: value})
    np.testing.assert_allclose(sol.x, _project_simplex(np.array([0.3, 0.9, -0.4])), atol=1e-6)


def test_a_fast_start_from_memory_is_not_held_to_its_own_first_count(monkeypatch):
    """Scripted: call 1 (default start) averages 200 iterations. Call 2 starts from the
    remembered scale and its first instance takes only 25; a later one takes 150, more
    than 2 × 25 but well within the default's 200: the guard judges against the default
    start's mean, so reuse and the memory both stay (they halved the iterations here)."""
    programs = _simplex_projection_programs(np.eye(3), with_P=True)
    script = ([(200, 1, 5.0), (200, 0, 5.0), (200, 0, 5.0)]
              + [(25, 0, 5.0), (150, 0, 5.0), (25, 0, 5.0)])
    seen, pool = _scripted_pool(monkeypatch, script)
    key = pool.key(programs[0], TIGHT)
    solve_batch(programs, TIGHT, n_jobs=1, pool=pool)
    second = solve_batch(programs, TIGHT, n_jobs=1, pool=pool)
    assert [s.iterations for s in second] == [25, 150, 25]
    assert len(seen) == 2 and seen[1]["scale"] == 5.0  # one workspace, reused
    assert pool.start_settings(key, TIGHT)[1]  # the memory is still in use


def _ball_constrained_programs(rng, count: int, n: int = 10, K: int = 5, k: int = 5):
    """min cᵀx s.t. ‖A_i x + b_i‖ ≤ 1 (i < K), SOC heads fixed at 1 (the benchmark's
    socp once presolved), ``count`` instances sharing A; SCS moves its scale on them."""
    blocks, b = [], []
    for _ in range(K):
        Ai = rng.standard_normal((k, n)) / np.sqrt(n)
        blocks += [sp.csr_matrix((1, n)), sp.csr_matrix(-Ai)]
        b.append(np.r_[1.0, 0.3 * rng.standard_normal(k) / np.sqrt(k)])
    A, b = sp.vstack(blocks, format="csc"), np.concatenate(b)
    dims = ConeDims(soc=(k + 1,) * K)
    return [ConeProgram(A, b.copy(), rng.standard_normal(n), dims) for _ in range(count)]


def test_threaded_calls_give_the_same_bits_every_time():
    """Two threads share a batch, and the second call starts new workspaces from the
    scale the first ended at. Every share reads the pool before any runs and the pool
    learns in batch order, so repeating the calls on a new pool repeats the bits (when
    threads read a scale other threads were writing, 1 run in 3 differed in the last
    bits, on a socp batch of 2)."""
    rng = np.random.default_rng(0)
    programs = _ball_constrained_programs(rng, 4)
    settings = dict(TIGHT)
    assert _fresh_scale_updates(programs[0], settings) > 0  # the scale moves: memory used

    def two_calls():
        pool = scs_mod.WorkspacePool()
        first = solve_batch(programs, settings, n_jobs=2, pool=pool)
        assert pool.start_settings(pool.key(programs[0], settings), settings)[1]
        second = solve_batch(programs, settings, n_jobs=2, pool=pool)
        return np.concatenate([np.concatenate([s.x, s.y]) for s in first + second])

    reference = two_calls()
    for _ in range(8):
        np.testing.assert_array_equal(two_calls(), reference)
