"""The framework-free core of a layer: validate parameter values, map them to cone
programs, solve the batch, recover the requested variables, and differentiate.

The torch and jax adapters only convert arrays and wire ``vjp``/``jvp`` into their
autodiff systems; every rule about shapes, batches, errors and warnings lives here.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

import canonicalize
import conelayers
from canonicalize import CanonicalizationError, ParametricConeProgram, compile_problem
from conelayers._threads import map_batch, single_threaded_blas
from conelayers.batch_refine import MIN_BATCH, refine_batch
from conelayers.batch_refine import applies as batch_refine_applies
from conelayers.checks import (
    CHECK_LEVELS,
    CheckReport,
    check_instance,
    failed_report,
    inaccuracy_message,
    solve_message,
    visible_coordinates,
)
from conelayers.cones import SELECTIONS, ProductCone, Selection
from conelayers.derivative import Pattern, SolutionDerivative, vjp_many
from conelayers.exceptions import (
    FailedInstanceWarning,
    InaccurateSolutionWarning,
    InfeasibleError,
    NonsmoothPointWarning,
    ParameterError,
    ProblemError,
    SettingsError,
    SingularJacobianWarning,
    SolverError,
    TrustWarning,
    UnboundedError,
    batch_label,
    describe_failures,
    first_few,
    shortened,
)
from conelayers.linsolve import FactorizationHints
from conelayers.refine import refine_solution
from conelayers.residual import ResidualJacobian, ResidualMap, kink_tolerance
from conelayers.solvers.scs import (
    ConeProgram,
    ConeSolution,
    WorkspacePool,
    normalize_settings,
    solve_batch,
)

# Keys of solver_args that configure conelayers itself rather than SCS.
_OWN_KEYS = (
    "refine", "selection", "linear_solver_method", "n_jobs", "checks", "on_failure"
)
# (From __path__: a folder named like a package on sys.path, e.g. a checkout named
# "conelayers" in the working directory, leaves __file__ None.)
_OWN_DIRS = tuple(os.path.join(os.path.abspath(path), "") for mod in (conelayers, canonicalize)
                  for path in mod.__path__)


def _package_dirs() -> tuple[str, ...]:
    """Folders of conelayers, canonicalize and of the autodiff frameworks already loaded
    (read from sys.modules: nothing is imported or even looked up here)."""
    dirs = list(_OWN_DIRS)
    for name in ("torch", "jax", "jaxlib"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__file__", None):
            dirs.append(os.path.dirname(mod.__file__) + os.sep)
    return tuple(dirs)


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside
    conelayers, canonicalize and the frameworks' autodiff machinery."""
    skip = _package_dirs()
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    return level


GROUPED_DETAILS = 3
"""Messages quoted in full when several batch instances raise one kind of warning."""


def emit_grouped(items: Sequence[tuple[type, int, str]], batch: int) -> None:
    """Emit (category, instance, message) warnings, one per category: a lone instance's
    message as it is; several instances' as one warning that names them all and quotes
    the first ``GROUPED_DETAILS`` messages (a degenerate batch of 32 gives one warning
    per kind, not 32)."""
    if not items:
        return  # the common case: no frame walk for the stack level
    groups: dict[type, list[tuple[int, str]]] = {}
    for category, index, message in items:
        groups.setdefault(category, []).append((index, message))
    level = user_stacklevel()
    for category, entries in groups.items():
        if len(entries) == 1:
            warnings.warn(entries[0][1], category, stacklevel=level)
            continue
        indices = [i for i, _ in entries]
        quoted = " | ".join(m for _, m in entries[:GROUPED_DETAILS])
        more = len(entries) - GROUPED_DETAILS
        tail = f" | and {more} more like these" if more > 0 else ""
        warnings.warn(f"{batch_label(indices, batch)}: {quoted}{tail}", category,
                      stacklevel=level)


def check_float_dtypes(names: Sequence[str], dtypes: Sequence) -> None:
    """Raise a ParameterError naming two parameters whose floating dtypes differ (mixed
    float32/float64 would silently change precision)."""
    first: dict = {}
    for name, dtype in zip(names, dtypes):
        first.setdefault(str(dtype).removeprefix("torch."), name)
    if len(first) > 1:
        (d1, n1), (d2, n2) = list(first.items())[:2]
        raise ParameterError(
            f"parameter '{n2}' is {d2} but '{n1}' is {d1}: pass all parameters in one "
            "floating dtype"
        )


def vec_batch(arr: np.ndarray) -> np.ndarray:
    """(B, *shape) → (size, B): each instance flattened in column-major (CVXPY) order."""
    axes = (0,) + tuple(range(arr.ndim - 1, 0, -1))
    return arr.transpose(axes).reshape(arr.shape[0], -1).T


def unvec_batch(vec: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(size, B) → (B, *shape), the inverse of ``vec_batch``."""
    B = vec.shape[1]
    out = vec.T.reshape((B,) + tuple(reversed(shape)))
    return out.transpose((0,) + tuple(range(len(shape), 0, -1)))


def divide_by_log_values(
    arr: np.ndarray, program: ParametricConeProgram, theta: np.ndarray
) -> None:
    """In place, for every parameter entered through its log (DGP): d/dvalue = d/dθ / value
    with value = exp(θ). ``arr`` and ``theta`` are (p, B) or (p,) on θ's rows."""
    for slot in program.parameters:
        if slot.log:
            rows = slice(slot.offset, slot.offset + slot.size)
            arr[rows] /= np.exp(theta[rows])


MAX_MAGNITUDE = 1e150
"""Largest |parameter value| accepted: SCS squares and sums data entries (norms,
equilibration), which overflow near 1.3e154; a value of 1e300 ran 100000 iterations to
status 'failed'."""


def _check_sign(slot, arr: np.ndarray, is_batched: bool, skip: frozenset | set) -> None:
    """ParameterError for values outside a declared sign (nonneg, pos, nonpos), naming the
    batch instances; instances in ``skip`` (already failed) are not judged."""
    keep = np.ones(arr.shape[0], dtype=bool) if is_batched else None
    if is_batched and skip:
        keep[list(skip)] = False
    rules = (
        (slot.nonneg, lambda a: a < 0, "declared nonneg but has negative entries", "min"),
        (slot.positive or slot.log, lambda a: a <= 0, "declared pos but has entries <= 0",
         "min"),
        (slot.nonpos, lambda a: a > 0, "declared nonpos but has positive entries", "max"),
    )
    for applies, violates, text, extreme in rules:
        if not applies:
            continue
        bad = violates(arr)
        if is_batched:
            rows = np.flatnonzero(bad.reshape(arr.shape[0], -1).any(1) & keep)
            if rows.size == 0:
                continue
            value = getattr(arr[rows], extreme)()
            where = f" in batch instance(s) {first_few(rows)}"
        else:
            if not bad.any():
                continue
            value, where = getattr(arr, extreme)(), ""
        raise ParameterError(f"parameter '{slot.name}' is {text} ({extreme} {value:.3g}){where}")


NONFINITE_STATUS = "NaN, Inf or overflowing values in its parameters"
"""The status of a batch instance skipped for non-finite values (on_failure="nan")."""


def _not_solved(program: ConeProgram, status: str) -> ConeSolution:
    """The solution record of an instance that was not handed to the solver."""
    n, m = program.A.shape[1], program.A.shape[0]
    nan = float("nan")
    return ConeSolution(
        x=np.full(n, nan), y=np.full(m, nan), s=np.full(m, nan), status=status,
        iterations=0, primal_residual=nan, dual_residual=nan, gap=nan, objective=nan,
        solve_time=0.0,
    )


def _apply(rec, vec: np.ndarray) -> np.ndarray:
    """A recovery applied to a (len, B) batch of source vectors, with exp for DGP."""
    out = rec.apply(vec)
    return np.exp(out) if rec.exp else out


_OWN_CHOICES = {
    "selection": SELECTIONS,
    "linear_solver_method": ("auto", "direct", "lsqr"),
    "checks": CHECK_LEVELS,
    "on_failure": ("raise", "nan"),
}


def _check_own_settings(own: dict) -> None:
    """SettingsError for an invalid value of one of conelayers' own solver_args."""
    for key, choices in _OWN_CHOICES.items():
        if key in own and own[key] not in choices:
            raise SettingsError(f"solver_args: {key} must be one of {choices}, got {own[key]!r}")
    if "refine" in own and not isinstance(own["refine"], (bool, np.bool_)):
        raise SettingsError(f"solver_args: refine must be True or False, got {own['refine']!r}")
    jobs = own.get("n_jobs")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer))
                             or jobs < 1):
        raise SettingsError(f"solver_args: n_jobs must be a positive integer, got {jobs!r}")


@dataclass
class ForwardResult:
    """Everything the backward pass needs, per instance of the batch. The derivative of
    an instance is set up on first use, so a forward pass without gradients does none
    of that work."""

    batch: int | None  # None: no input had a batch dimension
    outputs: list[np.ndarray]  # one per requested variable, shape (B, *shape)
    solutions: list[ConeSolution]
    batched_inputs: list[bool]
    residuals: list[ResidualMap]
    points: list[np.ndarray]  # z = (x, y − s) per instance, after refinement
    A_pattern: Pattern
    P_pattern: Pattern | None
    visible: np.ndarray | None = None  # coordinates of z the outputs read
    constant: tuple[bool, bool] = (False, False)  # A, P free of parameters
    selection: Selection = "lower"
    method: str = "auto"
    checks: str = "fast"
    n_jobs: int | None = None  # threads over the batch (None: one per core)
    _derivatives: dict = field(default_factory=dict)
    reports: list[CheckReport] | None = None
    _warned: bool = False  # the reports' warnings were emitted (without raising)
    theta: np.ndarray | None = None  # (p, B), as passed to the cone programs
    failed: frozenset = frozenset()  # instances without a solution (on_failure="nan")
    _outputs: list = field(default_factory=list)  # private copies read by vjp/jvp
    _jacobians: list = field(default_factory=list)  # reusable refinement Jacobians

    def derivative(self, k: int) -> SolutionDerivative:
        """The jvp/vjp of instance k, with the selection applied to the cones within the
        kink tolerance (the same tolerance the checks use)."""
        if k not in self._derivatives:
            residual, z = self.residuals[k], self.points[k]
            x, y, s = residual.solution_from_z(z)
            jac = self._jacobians[k] if k < len(self._jacobians) else None
            if jac is None:
                jac = residual.jacobian(
                    z, selection=self.selection, kink_tol=kink_tolerance(residual, z)
                )
            self._derivatives[k] = SolutionDerivative(
                jac, x, y, s, self.A_pattern, self.P_pattern, self.method, self.visible,
                self.constant,
            )
        return self._derivatives[k]

    def warn_unsolved(self, instances: Sequence[int], adjoint: bool) -> None:
        """Emit a SingularJacobianWarning for the instances whose iterative derivative
        solve did not converge (``checks.solve_message``), unless the checks already
        warned about U there; before the caller returns any gradient."""
        items = []
        for k in instances:
            message = solve_message(k, self.derivative(k).last_solve, adjoint)
            report = self.reports[k] if self.reports is not None else None
            if message is None or (report is not None and any(
                issubclass(category, TrustWarning) and category is not NonsmoothPointWarning
                for category, _ in report.warnings
            )):
                continue
            items.append((SingularJacobianWarning, k, message))
        emit_grouped(items, len(self.solutions))

    def check(self, program: ParametricConeProgram) -> list[CheckReport]:
        """Run the trust checks on every instance (once) and emit their warnings (until
        emitting succeeds once: a warning turned into an error by a filter raises again
        on every later vjp/jvp of this result, so no gradient slips out unwarned)."""
        if self.reports is None:

            def report(k: int) -> CheckReport:
                if k in self.failed:
                    return failed_report(k, self.solutions[k])
                return check_instance(
                    k, self.residuals[k], self.points[k], program, self.A_pattern,
                    self.P_pattern, self.solutions[k], self.selection, self.checks,
                    used_jacobian=self.derivative(k).U if self.checks != "off" else None,
                    visible=self.visible,
                )

            # Warnings are composed in the threads and emitted here, in order.
            self.reports = map_batch(report, len(self.solutions), self.n_jobs)
        if not self._warned:
            emit_grouped(
                [(category, rep.index, message) for rep in self.reports
                 for category, message in rep.warnings],
                len(self.solutions),
            )
            self._warned = True
        return self.reports


class LayerCore:
    """A compiled CVXPY problem that maps parameter values to variable values and
    differentiates that map (NumPy in, NumPy out)."""

    def __init__(
        self,
        problem: cp.Problem,
        parameters: Sequence[cp.Parameter],
        variables: Sequence[cp.Variable],
        gp: bool = False,
        solver_args: dict | None = None,
        checks: str = "fast",
        presolve: bool = True,
    ) -> None:
        """``presolve=False`` keeps CVXPY's cone program as it is (see
        ``canonicalize.presolve`` and ``canonicalize.substitute`` for what the default
        removes)."""
        try:
            program = compile_problem(problem, parameters, variables, gp=gp, presolve=presolve)
        except CanonicalizationError as err:
            raise ProblemError(str(err)) from err
        self._setup(program, solver_args, checks)
        self.problem = problem
        self.gp = gp
        self.parameters = list(parameters)
        self.variables = list(variables)

    @classmethod
    def from_program(
        cls, program: ParametricConeProgram, solver_args: dict | None = None,
        checks: str = "fast",
    ) -> LayerCore:
        """A core for an already compiled program (e.g. a problem file's fixed data,
        ``canonicalize.program.fixed_program``); its parameters are the program's slots."""
        core = cls.__new__(cls)
        core._setup(program, solver_args, checks)
        core.problem, core.gp, core.variables = None, False, []
        core.parameters = list(program.parameters)
        return core

    def __getstate__(self) -> dict:
        """Pickled with a fresh copy of the user's problem: once the user has solved it
        with CVXPY, the problem holds a solver cache that cannot be pickled (deepcopy and
        pickle of the layer then failed)."""
        state = self.__dict__.copy()
        if state.get("problem") is not None:
            state["problem"] = cp.Problem(self.problem.objective, self.problem.constraints)
        return state

    def _setup(self, program: ParametricConeProgram, solver_args: dict | None,
               checks: str) -> None:
        self.program = program
        try:
            self.cone = ProductCone(program.dims)
            self.factor_hints = FactorizationHints()
        except NotImplementedError as err:
            raise ProblemError(str(err)) from err
        self.solver_args = dict(solver_args or {})
        if checks not in CHECK_LEVELS:
            raise SettingsError(f"checks must be one of {CHECK_LEVELS}, got {checks!r}")
        self.checks = checks
        A_rows, A_cols = self.program.A.row_col()
        self.A_pattern = Pattern(A_rows, A_cols, self.program.A.shape)
        self.P_pattern = None
        if self.program.P is not None:
            P_rows, P_cols = self.program.P.row_col()
            self.P_pattern = Pattern(P_rows, P_cols, self.program.P.shape)
        self.visible = visible_coordinates(self.program)
        P_map = self.program.P
        self.constant = (self.program.A.is_constant, P_map is None or P_map.is_constant)
        self._constant_matrices: dict[str, sp.csc_matrix] = {}
        self.scs_workspaces = WorkspacePool()
        # The Schur path's once-per-layer block needs A and P fixed (conelayers.schur).
        self.factor_hints.constant_matrices = self.constant == (True, True)

    # -- inputs -------------------------------------------------------------------------
    def parameter_values(
        self, values: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, int | None, list[bool]]:
        """Validate the values (one per parameter, optional leading batch axis) and stack
        them into θ of shape (p, B). Returns (θ, batch size or None, which were batched)."""
        theta, batch, batched, _ = self._validated(values, mark_nonfinite=False)
        return theta, batch, batched

    def _validated(
        self, values: Sequence[np.ndarray], mark_nonfinite: bool
    ) -> tuple[np.ndarray, int | None, list[bool], frozenset]:
        """``parameter_values`` and the batch instances whose values are NaN, Inf or
        beyond MAX_MAGNITUDE: with ``mark_nonfinite`` those instances are returned instead
        of raising (unless every instance is affected)."""
        nonfinite: set[int] = set()
        if len(values) != len(self.program.parameters):
            raise ParameterError(
                f"expected {len(self.program.parameters)} parameter values (one for each of "
                f"{', '.join(s.name for s in self.program.parameters)}), got {len(values)}"
            )
        arrays, batched, batch = [], [], None
        for slot, value in zip(self.program.parameters, values):
            if value is None:
                raise ParameterError(f"parameter '{slot.name}': got None, expected an array")
            arr = np.asarray(value)
            if arr.dtype.kind == "c":
                raise ParameterError(
                    f"parameter '{slot.name}': complex values are not supported"
                )
            if arr.dtype.kind not in "f":
                raise ParameterError(
                    f"parameter '{slot.name}': expected a floating-point array, got dtype "
                    f"{arr.dtype}"
                )
            if arr.shape == slot.shape:
                is_batched = False
            elif arr.ndim == len(slot.shape) + 1 and arr.shape[1:] == slot.shape:
                is_batched = True
                if batch is not None and arr.shape[0] != batch:
                    raise ParameterError(
                        f"inconsistent batch sizes: parameter '{slot.name}' has batch size "
                        f"{arr.shape[0]}, an earlier parameter has {batch}"
                    )
                batch = arr.shape[0]
            elif arr.ndim > len(slot.shape) + 1:
                raise ParameterError(
                    f"invalid parameter dimensionality for '{slot.name}': expected shape "
                    f"{slot.shape} or (batch, *{slot.shape}), got {arr.shape}"
                )
            else:
                raise ParameterError(
                    f"invalid parameter shape for '{slot.name}': expected {slot.shape} or "
                    f"(batch, *{slot.shape}), got {arr.shape}"
                )
            arr = arr.astype(np.float64)
            limit = np.inf if slot.log else MAX_MAGNITUDE  # DGP: θ = log(value)

            def unusable(a: np.ndarray, limit: float = limit) -> np.ndarray:
                return ~(np.abs(a) <= limit)  # NaN, ±Inf, or beyond the limit

            if unusable(arr).any():
                where = ""
                if is_batched:
                    bad = np.flatnonzero(unusable(arr.reshape(arr.shape[0], -1)).any(1))
                    if mark_nonfinite and bad.size < arr.shape[0]:
                        nonfinite.update(int(i) for i in bad)
                        # Stand-in values (an unaffected instance's) keep the checks
                        # below and the cone data finite; the instance is not solved.
                        good = int(np.flatnonzero(~np.isin(np.arange(arr.shape[0]), bad))[0])
                        arr = arr.copy()
                        arr[bad] = arr[good]
                    else:
                        where = f" in batch instance(s) {first_few(bad)}"
                if unusable(arr).any():
                    finite = np.isfinite(arr).all()
                    raise ParameterError(
                        f"parameter '{slot.name}' contains "
                        + (f"entries beyond ±{MAX_MAGNITUDE:.0e} (max |value| "
                           f"{np.abs(arr).max():.1e}), which overflow SCS's arithmetic: "
                           "rescale the problem" if finite else "NaN or Inf")
                        + where
                    )
            if is_batched and arr.shape[0] == 0:
                raise ParameterError(
                    f"empty batch: parameter '{slot.name}' has a batch dimension of size 0 "
                    f"(shape {arr.shape})"
                )
            arrays.append(arr)
            batched.append(is_batched)
        check_float_dtypes([s.name for s in self.program.parameters],
                           [np.asarray(v).dtype for v in values])
        B = batch if batch is not None else 1
        if nonfinite and len(nonfinite) == B:
            raise ParameterError(
                "every batch instance has NaN, Inf or overflowing parameter values "
                f"(instances {first_few(sorted(nonfinite))})"
            )
        for slot, arr, is_batched in zip(self.program.parameters, arrays, batched):
            _check_sign(slot, arr, is_batched, nonfinite)
        theta = np.zeros((self.program.num_theta, B))
        for slot, arr, is_batched in zip(self.program.parameters, arrays, batched):
            flat = vec_batch(arr) if is_batched else arr.ravel(order="F")[:, None]
            theta[slot.offset : slot.offset + slot.size, :] = np.log(flat) if slot.log else flat
        return theta, batch, batched, frozenset(nonfinite)

    # -- forward ------------------------------------------------------------------------
    def _settings(self, solver_args: dict | None) -> tuple[dict, dict]:
        if solver_args is not None and not isinstance(solver_args, Mapping):
            raise SettingsError(
                f"solver_args must be a dict of settings, got {type(solver_args).__name__}"
            )
        merged = {**self.solver_args, **(solver_args or {})}
        own = {k: merged.pop(k) for k in _OWN_KEYS if k in merged}
        _check_own_settings(own)
        return normalize_settings(merged), own

    def instances(self, theta: np.ndarray) -> list[ConeProgram]:
        """The cone program of each column of θ (matrices shared when constant)."""
        prog = self.program
        B = theta.shape[1]
        tt = prog.theta_tilde(theta)
        b, c = prog.b_map @ tt, prog.c_map @ tt
        A_const, P_const = self.constant
        # Constant matrices are built once per layer (and shared by every instance and
        # call: the solvers only read them); varying ones from the values of each column.
        if A_const:
            A0 = self._constant_matrix("A", prog.A, tt)
        else:
            A_values = prog.A.values(tt)
        P0 = None
        if prog.P is not None and P_const:
            P0 = self._constant_matrix("P", prog.P, tt)
        elif prog.P is not None:
            P_values = prog.P.values(tt)
        out = []
        for k in range(B):
            A = A0 if A_const else prog.A.matrix(A_values[:, k])
            P = P0 if P_const else prog.P.matrix(P_values[:, k])
            out.append(ConeProgram(A=A, b=b[:, k], c=c[:, k], dims=prog.dims, P=P))
        return out

    def _constant_matrix(self, key: str, data_map, theta_tilde: np.ndarray) -> sp.csc_matrix:
        """The matrix of a map no parameter enters, built on first use."""
        matrix = self._constant_matrices.get(key)
        if matrix is None:
            matrix = data_map.matrix(data_map.values(theta_tilde[:, 0]))
            self._constant_matrices[key] = matrix
        return matrix

    def forward(
        self,
        values: Sequence[np.ndarray],
        solver_args: dict | None = None,
    ) -> ForwardResult:
        """Solve every instance (refined by Newton steps unless ``refine=False``) and
        recover the outputs."""
        with single_threaded_blas():
            return self._forward(values, solver_args)

    def _forward(self, values, solver_args) -> ForwardResult:
        settings, own = self._settings(solver_args)
        on_failure = own.get("on_failure", "raise")  # validated by _settings
        # With on_failure="nan", instances with NaN/Inf values fail alone (not solved).
        theta, batch, batched, nonfinite = self._validated(
            values, mark_nonfinite=on_failure == "nan"
        )
        programs = self.instances(theta)
        refine = own.get("refine", True)
        selection: Selection = own.get("selection", "lower")
        residuals = [ResidualMap(p, self.cone, self.factor_hints) for p in programs]
        todo = [k for k in range(len(programs)) if k not in nonfinite]
        # Small programs without exponential cones are refined as a whole batch once
        # solved (batch_refine). Any other instance is refined in the thread that solved
        # it, as soon as it is solved: its refinement (Python, and SuperLU, which holds
        # the GIL) then overlaps the SCS solves still running in the other threads
        # instead of following all of them.
        at_once = refine and len(todo) >= MIN_BATCH and batch_refine_applies(residuals)
        early: dict[int, tuple[np.ndarray, ResidualJacobian | None]] = {}

        def refine_when_solved(i: int, sol: ConeSolution) -> None:
            if sol.has_solution:
                k = todo[i]
                early[k] = refine_solution(residuals[k], sol, settings, selection)

        # Fixed A and P: SCS workspaces (setup and factorization) are kept across calls.
        pool = self.scs_workspaces if self.constant == (True, True) else None
        solved = solve_batch(
            [programs[k] for k in todo], settings, n_jobs=own.get("n_jobs"), pool=pool,
            on_solved=refine_when_solved if refine and not at_once else None,
        )
        solutions = [_not_solved(p, NONFINITE_STATUS) for p in programs]
        for k, sol in zip(todo, solved):
            solutions[k] = sol
        failed = self._handle_failures(
            solutions, on_failure, int(settings.get("max_iters", 100_000))
        )

        def settle(k: int) -> tuple[np.ndarray, ResidualJacobian | None]:
            """The point z of instance k (refined unless asked not to) and the factorized
            Jacobian refinement left there, if any."""
            residual, sol = residuals[k], solutions[k]
            if k in failed:  # NaN outputs; zero gradients (see _vjp)
                return np.full(residual.n + residual.m, np.nan), None
            if refine:
                return refine_solution(residual, sol, settings, selection)
            return residual.z_from_solution(sol.x, sol.y, sol.s), None

        settled_now = (
            refine_batch(residuals, solutions,
                         [k for k in range(len(programs)) if k not in failed], selection)
            if at_once else {}
        )
        settled_now.update({k: v for k, v in early.items() if k not in failed})
        rest = [k for k in range(len(programs)) if k not in settled_now]
        settled_rest = map_batch(lambda i: settle(rest[i]), len(rest), own.get("n_jobs"))
        settled = [settled_now.get(k) for k in range(len(programs))]
        for k, item in zip(rest, settled_rest):
            settled[k] = item
        xs, ys, points, jacobians = [], [], [], []
        inaccurate: list[tuple[type, int, str]] = []
        for k, (z, jac) in enumerate(settled):
            residual, sol = residuals[k], solutions[k]
            jacobians.append(jac)
            x, y, _s = residual.solution_from_z(z)
            xs.append(x)
            ys.append(y)
            points.append(z)
            message = None
            if k not in failed:
                message = inaccuracy_message(k, sol, residual, z, refined=refine)
            if message is not None:
                inaccurate.append((InaccurateSolutionWarning, k, message))
        emit_grouped(inaccurate, len(programs))
        X = np.stack(xs, axis=1)
        Y = np.stack(ys, axis=1)
        outputs = [
            unvec_batch(_apply(rec, X if rec.source == "x" else Y), rec.shape)
            for rec in self.program.recoveries
        ]
        return ForwardResult(
            batch=batch,
            outputs=outputs,
            _outputs=[o.copy() for o in outputs],
            solutions=solutions,
            batched_inputs=batched,
            residuals=residuals,
            points=points,
            A_pattern=self.A_pattern,
            P_pattern=self.P_pattern,
            visible=self.visible,
            constant=self.constant,
            selection=selection,
            method=own.get("linear_solver_method", "auto"),
            checks=own.get("checks", self.checks),
            n_jobs=own.get("n_jobs"),
            theta=theta,
            failed=failed,
            _jacobians=jacobians,
        )

    def _handle_failures(
        self, solutions: list[ConeSolution], on_failure: str, max_iters: int
    ) -> frozenset:
        """Raise a named error listing every failed instance (after all were tried), or,
        with on_failure="nan", warn and return their indices."""
        failures = {i: s.status for i, s in enumerate(solutions) if not s.has_solution}

        def detail(i: int) -> str:
            sol = solutions[i]
            residuals = ", no residuals (SCS returned a certificate, not a point)"
            if np.isfinite(sol.primal_residual) and np.isfinite(sol.dual_residual):
                residuals = (f", primal residual {sol.primal_residual:.2e}, dual residual "
                             f"{sol.dual_residual:.2e}")
            return f"instance {i}: {sol.iterations} iterations{residuals}"

        ordered = sorted(failures)
        details = shortened([detail(i) for i in ordered], 3, "; ")
        if failures and on_failure == "nan":
            head = batch_label(ordered, len(solutions))
            whose = "its" if len(ordered) == 1 else "their"
            warnings.warn(
                f"{head}: no solution ({describe_failures(failures)}): {whose} outputs are "
                f"NaN and {whose} gradients zero (on_failure='nan')",
                FailedInstanceWarning, stacklevel=user_stacklevel(),
            )
            return frozenset(failures)
        if failures:
            statuses = set(failures.values())
            text = describe_failures(failures)
            if statuses == {"infeasible"}:
                raise InfeasibleError(
                    f"the problem is infeasible ({text}) [{details}]", failures
                )
            if statuses == {"unbounded"}:
                raise UnboundedError(
                    f"the problem is unbounded ({text}) [{details}]", failures
                )
            if statuses & {"infeasible_inaccurate", "unbounded_inaccurate"}:
                raise SolverError(
                    f"SCS did not solve the problem and returned only an uncertain "
                    f"certificate ({text}) [{details}]; the data may be badly scaled, or the "
                    "problem infeasible/unbounded: try raising max_iters or rescaling", failures
                )
            hint = ""
            if any(solutions[i].iterations >= max_iters for i in failures):
                hint = "; max_iters was reached: raise max_iters in solver_args"
            raise SolverError(
                f"SCS did not solve the problem ({text}) [{details}]{hint}", failures
            )
        return frozenset()
    # -- derivatives ----------------------------------------------------------------------
    def vjp(self, result: ForwardResult, output_grads: Sequence[np.ndarray | None]) -> list:
        """Gradients on each parameter (see ``_vjp``), after the trust checks."""
        with single_threaded_blas():
            return self._vjp(result, output_grads)

    def _vjp(self, result: ForwardResult, output_grads: Sequence[np.ndarray | None]) -> list:
        """Gradients on each parameter from gradients on each output (shape (B, *shape)).

        Returns one array per parameter, batched (B, *shape) when that input was batched,
        summed over the batch otherwise.
        """
        prog = self.program
        result.check(prog)
        B = len(result.solutions)
        # Gradients on x and y of every instance at once (columns), from the outputs'.
        X_bar, Y_bar = np.zeros((prog.n, B)), np.zeros((prog.m, B))
        for rec, g, out in zip(prog.recoveries, output_grads, result._outputs):
            if g is None:
                continue
            g = np.asarray(g, dtype=np.float64)
            if rec.exp:  # d exp(w) = exp(w) dw
                g = g * out
            target = X_bar if rec.source == "x" else Y_bar
            target += rec.adjoint(vec_batch(g))
        live = [k for k in range(B) if k not in result.failed  # failed: zero gradient
                and (X_bar[:, k].any() or Y_bar[:, k].any())]
        zeros_m = np.zeros(prog.m)

        def cotangent(k: int) -> tuple:
            return result.derivative(k).vjp(X_bar[:, k], Y_bar[:, k], zeros_m)

        # Instances with a regular dense LU (small programs) solve together (vjp_many);
        # the others one by one. The data adjoint maps all columns at once.
        together = [k for k in live if result.method in ("auto", "direct")
                    and result.derivative(k).U.regular_dense_lu() is not None]
        if len(together) < 2:
            together = []
        batched = set(together)
        alone = [k for k in live if k not in batched]
        parts = map_batch(lambda i: cotangent(alone[i]), len(alone), result.n_jobs)
        columns = [
            [None if part[j] is None else part[j][:, None] for part in parts]
            for j in range(4)
        ]
        if together:
            many = vjp_many([result.derivative(k) for k in together],
                            X_bar[:, together], Y_bar[:, together])
            for j in range(4):
                columns[j].append(many[j])
        result.warn_unsolved(live, adjoint=True)
        theta_bar = np.zeros((prog.num_theta, B))
        if live:

            def stacked(j: int) -> np.ndarray | None:
                cols = columns[j]
                return None if cols[0] is None else np.concatenate(cols, axis=1)

            theta_bar[:, alone + together] = prog.data_adjoint(
                stacked(0), stacked(1), stacked(2), stacked(3)
            )
        divide_by_log_values(theta_bar, prog, result.theta)
        return self._split_theta(theta_bar, result.batched_inputs)

    def jvp(self, result: ForwardResult, tangents: Sequence[np.ndarray | None]) -> list:
        """Tangents of each output (see ``_jvp``), after the trust checks."""
        with single_threaded_blas():
            return self._jvp(result, tangents)

    def _jvp(self, result: ForwardResult, tangents: Sequence[np.ndarray | None]) -> list:
        """Tangents of each output (B, *shape) from tangents of each parameter."""
        prog = self.program
        result.check(prog)
        B = len(result.solutions)
        dtheta = np.zeros((prog.num_theta, B))
        for slot, t, is_batched in zip(prog.parameters, tangents, result.batched_inputs):
            if t is None:
                continue
            t = np.asarray(t, dtype=np.float64)
            rows = slice(slot.offset, slot.offset + slot.size)
            dtheta[rows] = vec_batch(t) if is_batched else t.ravel(order="F")[:, None]
        divide_by_log_values(dtheta, prog, result.theta)
        dtt = np.concatenate([dtheta, np.zeros((1, B))])  # constants do not move
        dA = prog.A.values(dtt)
        db, dc = prog.b_map @ dtt, prog.c_map @ dtt
        dP = prog.P.values(dtt) if prog.P is not None else None
        dX, dY = np.zeros((prog.n, B)), np.zeros((prog.m, B))
        for k in range(B):
            if k in result.failed:
                continue
            dx, dy, _ = result.derivative(k).jvp(
                dA[:, k], db[:, k], dc[:, k], dP[:, k] if dP is not None else None
            )
            dX[:, k], dY[:, k] = dx, dy
        result.warn_unsolved([k for k in range(B) if k not in result.failed], adjoint=False)
        outs = []
        for rec, out in zip(prog.recoveries, result._outputs):
            tangent = unvec_batch(rec.apply(dX if rec.source == "x" else dY), rec.shape)
            outs.append(tangent * out if rec.exp else tangent)
        return outs

    def _split_theta(self, theta_bar: np.ndarray, batched: list[bool]) -> list[np.ndarray]:
        grads = []
        for slot, is_batched in zip(self.program.parameters, batched):
            block = theta_bar[slot.offset : slot.offset + slot.size]  # (size, B)
            if is_batched:
                grads.append(unvec_batch(block, slot.shape))
            else:
                grads.append(block.sum(axis=1).reshape(slot.shape, order="F"))
        return grads
