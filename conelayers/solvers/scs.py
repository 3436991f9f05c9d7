"""SCS on one cone program or a batch of them, with statuses mapped to named errors.

This is the only module that knows SCS's argument names and short cone keys.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scs

from canonicalize.cones import ConeDims
from conelayers._identity_cache import IdentityCache
from conelayers._threads import batch_workers, run_all
from conelayers.exceptions import SettingsError

DEFAULT_SETTINGS: dict = {"eps_abs": 1e-4, "eps_rel": 1e-4, "max_iters": 100_000}
"""SCS 3.x's own defaults, written out: what a cvxpylayers user gets."""

_STATUS = {
    1: "solved",
    2: "solved_inaccurate",
    -1: "unbounded",
    -6: "unbounded_inaccurate",
    -2: "infeasible",
    -7: "infeasible_inaccurate",
    -3: "indeterminate",
    -4: "failed",
    -5: "interrupted",
}
SOLVED = "solved"
SOLVED_INACCURATE = "solved_inaccurate"


@dataclass(frozen=True)
class ConeProgram:
    """One instance: min ½xᵀPx + cᵀx s.t. Ax + s = b, s ∈ K (P full symmetric or None)."""

    A: sp.csc_matrix
    b: np.ndarray
    c: np.ndarray
    dims: ConeDims
    P: sp.csc_matrix | None = None


@dataclass(frozen=True)
class ConeSolution:
    """SCS's answer for one instance. ``x``, ``y``, ``s`` are NaN when no solution."""

    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    status: str
    iterations: int
    primal_residual: float
    dual_residual: float
    gap: float
    objective: float
    solve_time: float

    @property
    def has_solution(self) -> bool:
        return self.status in (SOLVED, SOLVED_INACCURATE)


SCS_SETTINGS = frozenset({
    "verbose", "normalize", "scale", "adaptive_scale", "rho_x", "max_iters", "eps_abs",
    "eps_rel", "eps_infeas", "alpha", "time_limit_secs", "acceleration_lookback",
    "acceleration_interval", "write_data_filename", "log_csv_filename",
    # Also accepted by SCS 3.3.1's extension (checked against it; not in its docs):
    "acceleration_type_1", "acceleration_regularization", "acceleration_relaxation",
    "adaptive_diag_scale",
})
"""The settings SCS 3.x's Python interface accepts (plus ``eps`` for both tolerances)."""


def _check_settings(settings: dict) -> None:
    """Raise SettingsError naming the first unknown key or invalid value."""
    for key, value in settings.items():
        if key not in SCS_SETTINGS:
            raise SettingsError(
                f"solver_args: unknown setting {key!r}; SCS accepts "
                f"{', '.join(sorted(SCS_SETTINGS | {'eps'}))} (besides conelayers' own: "
                "refine, selection, linear_solver_method, n_jobs, checks, on_failure)"
            )
        if key in ("eps_abs", "eps_rel", "eps_infeas", "scale", "rho_x", "alpha",
                   "time_limit_secs"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not np.isfinite(value) or value < 0:
                raise SettingsError(
                    f"solver_args: {key} must be a nonnegative finite number, got {value!r}"
                )
        if key in ("max_iters", "acceleration_lookback", "acceleration_interval"):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise SettingsError(f"solver_args: {key} must be an integer, got {value!r}")
            least = {"max_iters": 1, "acceleration_lookback": 0, "acceleration_interval": 1}
            if value < least[key]:
                raise SettingsError(
                    f"solver_args: {key} must be >= {least[key]}, got {value!r}"
                )
        if key in ("scale", "rho_x") and value == 0:
            raise SettingsError(f"solver_args: {key} must be positive, got {value!r}")
        if key == "alpha" and not 0 < value < 2:
            raise SettingsError(f"solver_args: alpha must be in (0, 2), got {value!r}")
        if key in ("verbose", "normalize", "adaptive_scale") and not isinstance(
            value, (bool, np.bool_)
        ):
            raise SettingsError(f"solver_args: {key} must be True or False, got {value!r}")
        if key in ("write_data_filename", "log_csv_filename") and not (
            value is None or isinstance(value, str)
        ):
            raise SettingsError(f"solver_args: {key} must be a file name, got {value!r}")


def normalize_settings(solver_args: dict | None) -> dict:
    """Merge user settings over the defaults; ``eps`` sets both eps_abs and eps_rel.
    Unknown keys and invalid values raise SettingsError."""
    settings = dict(DEFAULT_SETTINGS)
    settings["verbose"] = False
    if solver_args:
        args = dict(solver_args)
        if "eps" in args:
            eps = args.pop("eps")
            args.setdefault("eps_abs", eps)
            args.setdefault("eps_rel", eps)
        settings.update(args)
    _check_settings(settings)
    return settings


_upper_triangles: IdentityCache[sp.csc_matrix] = IdentityCache()


def _upper(P: sp.csc_matrix) -> sp.csc_matrix:
    """The upper triangle of P that SCS takes, kept for the last few P objects: a layer's
    fixed P is the same object for every instance, and forming the triangle was most
    of a new workspace's Python-side cost on small programs (0.2 of 0.26 ms, lasso/small,
    where fresh workspaces replace drifted ones)."""
    return _upper_triangles.get((P,), lambda: sp.triu(P, format="csc"))


def _workspace(program: ConeProgram, settings: dict) -> scs.SCS:
    data = {"A": program.A, "b": program.b, "c": program.c}
    if program.P is not None:
        data["P"] = _upper(program.P)
    return scs.SCS(data, program.dims.to_scs(), **settings)


def _solution(out: dict) -> ConeSolution:
    info = out["info"]
    status = _STATUS.get(int(info["status_val"]), f"unknown ({info['status_val']})")
    x, y, s = (np.asarray(out[k], dtype=np.float64) for k in ("x", "y", "s"))
    if status not in (SOLVED, SOLVED_INACCURATE):
        x, y, s = (np.full_like(v, np.nan) for v in (x, y, s))
    return ConeSolution(
        x=x,
        y=y,
        s=s,
        status=status,
        iterations=int(info["iter"]),
        primal_residual=float(info["res_pri"]),
        dual_residual=float(info["res_dual"]),
        gap=float(info["gap"]),
        objective=float(info["pobj"]),
        solve_time=float(info["solve_time"]) / 1000.0,
    )


def solve(program: ConeProgram, settings: dict | None = None, warm_start=None) -> ConeSolution:
    """Solve one cone program with SCS."""
    settings = normalize_settings(settings) if settings is None else dict(settings)
    solver = _workspace(program, settings)
    if warm_start is None:
        return _solution(solver.solve())
    x0, y0, s0 = warm_start
    return _solution(solver.solve(warm_start=True, x=x0, y=y0, s=s0))


class WorkspacePool:
    """Idle SCS workspaces of one layer whose A and P no parameter enters, kept across
    calls: a training loop then pays SCS's setup (data equilibration, factorization of
    its linear system) once per layer and settings instead of once per call. Each
    workspace serves one thread at a time; the pool itself is thread-safe.

    Only a workspace whose step-size scale never moved (no scale update in any of its
    solves) is kept. SCS adapts that scale during a solve and never resets it
    (``scs_update`` changes only b and c), and a drifted scale can cost many iterations
    on the next, different instance: measured over 16 distinct draws called one by one,
    lp/medium took 1578 iterations on average from kept workspaces against 470 from
    fresh ones. With the scale unchanged, a kept workspace differs from a fresh one only
    by SCS's acceleration memory; on the same draws the SCS part of a call went from
    21.5 to 6.0 ms on lasso/medium and from 10.0 to 5.3 ms on qp/medium, and no family
    got slower (``benchmarks/distinct_values.py`` times whole calls of both libraries on
    distinct values)."""

    MAX_SETTINGS = 4
    """Distinct settings kept at once (least recently used dropped first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: OrderedDict[tuple, list[_Workspace]] = OrderedDict()
        self._drift_hurts: set[tuple] = set()
        self._scales: dict[tuple, _ScaleMemory] = {}

    # -- the scale memory: new workspaces start from the scale SCS adapted to ---------------
    def start_settings(self, key: tuple, settings: dict) -> tuple[dict, bool]:
        """Settings for a new workspace of ``key``, and whether they carry the scale
        remembered from this layer's last solves (``_ScaleMemory``; never when the
        user set ``scale``)."""
        if "scale" in settings:
            return settings, False
        with self._lock:
            memory = self._scales.get(key)
            if memory is None or memory.hurts or memory.scale is None:
                return settings, False
            return {**settings, "scale": memory.scale}, True

    def record_scale(self, key: tuple, final_scale: float) -> None:
        """Remember the scale a solve ended at (unless the memory was dropped)."""
        with self._lock:
            memory = self._scales.setdefault(key, _ScaleMemory())
            if not memory.hurts and np.isfinite(final_scale) and final_scale > 0:
                memory.scale = float(final_scale)

    def default_iterations(self, key: tuple) -> float:
        """Mean iterations of the last batch share started from SCS's default scale
        (0 if none yet)."""
        with self._lock:
            memory = self._scales.get(key)
            return float(memory.default_iterations or 0.0) if memory is not None else 0.0

    def drop_scale_memory(self, key: tuple) -> None:
        """Stop starting new workspaces of ``key`` from a remembered scale, for good."""
        with self._lock:
            self._scales.setdefault(key, _ScaleMemory()).drop()

    def judge_scale(self, key: tuple, from_memory: bool, mean_iterations: float) -> None:
        """After a share of a batch solved from one workspace: remember its mean
        iterations if it started from SCS's default scale; if it started from the
        memory and took more than SCALE_MEMORY_HURT_FACTOR times the last default
        share's mean, drop the memory for good (lp: the scale drifts to ~1e-5)."""
        with self._lock:
            memory = self._scales.setdefault(key, _ScaleMemory())
            if not from_memory:
                memory.default_iterations = mean_iterations
            elif mean_iterations > SCALE_MEMORY_HURT_FACTOR * max(
                memory.default_iterations or 0.0, 25.0
            ):
                memory.drop()

    def drift_hurts(self, key: tuple) -> bool:
        """Whether a workspace whose scale moved has cost this key's batches iterations
        (the reuse guard fired): then it serves no further instance, in any call."""
        with self._lock:
            return key in self._drift_hurts

    def note_drift_hurts(self, key: tuple) -> None:
        with self._lock:
            self._drift_hurts.add(key)

    @staticmethod
    def key(program: ConeProgram, settings: dict) -> tuple | None:
        """The pool key of a program's matrices and settings, or None when it must not
        be pooled (settings that write files at setup)."""
        if _writes_files(settings):
            return None
        return (id(program.A), id(program.P), tuple(sorted(settings.items())))

    def take(self, key: tuple) -> _Workspace | None:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                self._idle.move_to_end(key)
                return idle.pop()
        return None

    def give(self, key: tuple, workspace: _Workspace) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(workspace)
            self._idle.move_to_end(key)
            while len(self._idle) > self.MAX_SETTINGS:
                self._idle.popitem(last=False)

    def __getstate__(self) -> dict:
        return {}  # SCS workspaces are process-local: a copy starts with an empty pool

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(idle) for idle in self._idle.values())

    def clear(self) -> None:
        """Drop every kept workspace (frees SCS's copies of A, P and its factorization)
        and what the pool learned about SCS's scale."""
        with self._lock:
            self._idle.clear()
            self._drift_hurts.clear()
            self._scales.clear()


SCALE_MEMORY_HURT_FACTOR = 1.0
"""A share of a batch whose workspace started from the remembered scale may take up to
this many times the mean iterations of the last share started from SCS's default
before the memory is dropped."""


@dataclass
class _ScaleMemory:
    """Per pool key: the scale SCS's adaptive step size last ended at (new workspaces
    start there), the mean iterations of the last batch share started from SCS's
    default scale, and whether starting from the memory has cost iterations (then it
    is not used again).

    SCS adapts its scale during a solve, and a new workspace starts again from the
    default 0.1. Through the pool, 16 distinct draws one per call took qp/medium 1450 →
    600 iterations, projection_simplex/medium 3600 → 1225, sdp/medium 1200 → 800,
    socp/small 2750 → 1550 (``benchmarks/scs_iterations.py``); on lp the scale drifts
    to 1e-4..1e-5 and a start from there costs 1.6–1.9× the iterations, so the judge
    drops the memory after one such call. The within-batch reuse guard firing on a
    workspace started from the memory also drops it (rather than marking the key
    ``drift_hurts``, which replaced every later instance's workspace)."""

    scale: float | None = None
    default_iterations: float | None = None
    hurts: bool = False

    def drop(self) -> None:
        self.hurts, self.scale = True, None


@dataclass
class _Workspace:
    """An SCS workspace, the matrices it was built on (kept alive, so the pool key's
    ids stay theirs), the iterations of its first solve (the reuse guard's yardstick)
    and whether its scale is still the one it was built with."""

    solver: scs.SCS
    A: sp.csc_matrix
    P: sp.csc_matrix | None
    first_iterations: int
    initial_scale: bool
    from_memory: bool = False  # built with the pool's remembered scale


REUSE_ITERATION_FACTOR = 2
"""Within a batch, reuse stops when a solve takes more than this many times the
iterations of the workspace's first solve (at least 25)."""


def _writes_files(settings: dict) -> bool:
    """Whether SCS writes files at setup with these settings (data dump, CSV log)."""
    return bool(settings.get("write_data_filename") or settings.get("log_csv_filename"))


def _run(solver: scs.SCS, **kwargs) -> tuple[ConeSolution, bool, float]:
    """Solve; also say whether the workspace's scale stayed where it started, and where
    it ended."""
    out = solver.solve(**kwargs)
    info = out["info"]
    return (
        _solution(out), int(info.get("scale_updates", 1)) == 0,
        float(info.get("scale", np.nan)),
    )


@dataclass(frozen=True)
class _CallStart:
    """What every share of one call starts from, read from the pool once before any
    share runs: settings for new workspaces (with the remembered scale or not) and
    whether drifted workspaces must be replaced. Threads that read the pool while
    others update it would start from different scales, and the results of the same
    call would differ in the last bits from run to run."""

    settings: dict
    from_memory: bool
    drift_hurts: bool

    @classmethod
    def read(cls, pool: WorkspacePool | None, key: tuple | None, settings: dict) -> _CallStart:
        if key is None:
            return cls(settings, False, False)
        start, from_memory = pool.start_settings(key, settings)
        return cls(start, from_memory, pool.drift_hurts(key))


@dataclass
class _ShareOutcome:
    """One share's solutions and what the pool learns from them (applied by
    ``_learn``, in batch order)."""

    solutions: list[ConeSolution]
    final_scale: float = np.nan
    started_from_memory: bool = False
    drift_hurts: bool = False
    drop_memory: bool = False
    keep: _Workspace | None = None


OnSolved = Callable[[int, ConeSolution], None]
"""Called in the solving thread with (index in the batch, solution) as soon as an
instance is solved: the caller's per-instance work (Newton refinement) then overlaps the
solves still running in the other threads."""


def _solve_share(
    programs: list[ConeProgram], settings: dict, pool: WorkspacePool | None,
    key: tuple | None, start: _CallStart, indices: list[int] | None = None,
    on_solved: OnSolved | None = None,
) -> _ShareOutcome:
    """One thread's share of ``solve_sharing_matrices``: reads nothing from the pool but
    an idle workspace (all idle ones are alike: never drifted, and SCS cold-starts)."""
    work = pool.take(key) if key is not None else None
    outcome = _ShareOutcome([], drift_hurts=start.drift_hurts)
    for i, program in enumerate(programs):
        if work is None:
            outcome.started_from_memory |= start.from_memory and not outcome.solutions
            solver = _workspace(program, start.settings)
            sol, unchanged, outcome.final_scale = _run(solver)
            work = _Workspace(
                solver, program.A, program.P, sol.iterations, unchanged, start.from_memory
            )
        elif work is False:  # reuse abandoned for this share
            sol = solve(program, settings)
        else:
            work.solver.update(b=program.b, c=program.c)
            sol, unchanged, outcome.final_scale = _run(work.solver, warm_start=False)
            drifted = not work.initial_scale
            work.initial_scale = work.initial_scale and unchanged
            yardstick = max(work.first_iterations, 25)
            if work.from_memory and key is not None:
                # A start from a good remembered scale can be very fast, which makes its
                # own first count a poor yardstick (projection_simplex/medium/32: the guard
                # fired on ordinary instances and dropped a memory that halved the
                # iterations); the default start's mean is the fair one.
                yardstick = max(yardstick, pool.default_iterations(key))
            if sol.iterations > REUSE_ITERATION_FACTOR * yardstick:
                if key is not None and work.from_memory:
                    # The remembered scale is what misled: drop it, not reuse itself
                    # (socp/medium/32: otherwise every later instance got a fresh
                    # workspace, 32 setups per call, 250 → 410 ms).
                    outcome.drop_memory = True
                elif drifted and key is not None:
                    outcome.drift_hurts = True  # here and in later calls: fresh after a drift
                work = False
        if work and outcome.drift_hurts and not work.initial_scale:
            work = None  # its scale moved and that has cost iterations here before
        outcome.solutions.append(sol)
        if on_solved is not None:
            on_solved(indices[i] if indices is not None else i, sol)
    if work and work.initial_scale:
        outcome.keep = work
    return outcome


def _learn(pool: WorkspacePool | None, key: tuple | None, outcomes: list[_ShareOutcome]) -> None:
    """What the shares of one call teach the pool, applied in batch order after all of
    them ran, so that the next call starts from the same state every time."""
    if key is None:
        return
    for out in outcomes:
        if out.drop_memory:
            pool.drop_scale_memory(key)
        if out.drift_hurts:
            pool.note_drift_hurts(key)
        pool.record_scale(key, out.final_scale)
        pool.judge_scale(
            key, out.started_from_memory,
            float(np.mean([o.iterations for o in out.solutions])),
        )
        if out.keep is not None:
            pool.give(key, out.keep)


def solve_sharing_matrices(
    programs: list[ConeProgram], settings: dict, pool: WorkspacePool | None = None,
    shares: int = 1, on_solved: OnSolved | None = None,
) -> list[ConeSolution]:
    """Solve instances that share A and P (the same objects) with one SCS workspace per
    share (``shares`` consecutive parts, run on as many threads): after the first, each
    instance only updates b and c and starts cold, skipping SCS's setup (scaling,
    factorization of its linear system) and the Python-side construction. With a
    ``pool``, a share's workspace comes from it when one is idle and goes back to it
    afterwards if its scale is still the initial one (see ``WorkspacePool``).

    Within a share, a reused workspace keeps the step-size scale SCS adapted to the
    previous instance, which can cost iterations; measured over the benchmark's batches
    (serial, ms, shared vs fresh): lasso/medium 209 vs 592, socp/medium 430 vs 669,
    sdp/medium 117 vs 299, projection_simplex/medium 396 vs 508, qp/small 2 vs 8, the
    worst lp/medium 642 vs 588. Reuse is abandoned for the rest if an instance needs
    more than ``REUSE_ITERATION_FACTOR`` times the workspace's first iterations; with a
    pool, that also marks the key (``WorkspacePool.drift_hurts``), and from then on a
    workspace whose scale moved is replaced by a fresh one for the next instance
    (lp/medium/32, serial: 1600 iterations for the second instance instead of 450
    fresh, in every call).

    Every share starts from the pool's state before the call and the pool learns from
    the call in batch order afterwards (``_CallStart``, ``_learn``): the same call gives
    the same bits whatever the threads' timing."""
    if not programs:
        return []
    key = pool.key(programs[0], settings) if pool is not None else None
    start = _CallStart.read(pool, key, settings)
    parts = [list(c) for c in np.array_split(np.arange(len(programs)), shares) if c.size]
    if len(parts) == 1:
        outcomes = [_solve_share(programs, settings, pool, key, start, None, on_solved)]
    else:
        outcomes = run_all(
            lambda idx: _solve_share(
                [programs[i] for i in idx], settings, pool, key, start, idx, on_solved
            ),
            parts, len(parts),
        )
    _learn(pool, key, outcomes)
    return [sol for out in outcomes for sol in out.solutions]


def _share_matrices(programs: list[ConeProgram]) -> bool:
    first = programs[0]
    return all(p.A is first.A and p.P is first.P for p in programs[1:])


def solve_batch(
    programs: list[ConeProgram], settings: dict, n_jobs: int | None = None,
    pool: WorkspacePool | None = None, on_solved: OnSolved | None = None,
) -> list[ConeSolution]:
    """Solve every instance (SCS releases the GIL, so threads run in parallel). When
    the instances share A and P, each thread reuses one SCS workspace for its share of
    the batch (``solve_sharing_matrices``), taken from and returned to ``pool`` if given
    (pass one only for matrices that stay the same objects across calls). A failed
    instance does not stop the others: its status says what happened. ``on_solved`` is
    called in the solving thread as each instance is solved (``OnSolved``)."""
    if not programs:
        return []
    jobs = batch_workers(len(programs), n_jobs)
    if _writes_files(settings):
        jobs = 1  # one writer at a time: the file holds the last workspace's setup
    if pool is not None or (len(programs) > 1 and _share_matrices(programs)):
        if not _share_matrices(programs):
            raise ValueError("a workspace pool serves only instances sharing A and P")
        return solve_sharing_matrices(programs, settings, pool, jobs, on_solved)

    def one(k: int) -> ConeSolution:
        sol = solve(programs[k], settings)
        if on_solved is not None:
            on_solved(k, sol)
        return sol

    if jobs == 1:
        return [one(k) for k in range(len(programs))]
    return run_all(one, range(len(programs)), jobs)
