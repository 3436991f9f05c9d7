"""Trust checks: is the gradient at this solution justified by the conservative implicit
function theorem (reference paper, Theorem 2 / Corollary 1)?

It is when the solution is unique and U = ∂N/∂z is invertible for every element of the
Clarke Jacobian of the projection. Canonicalization adds auxiliary variables that are
often not unique while the user's problem is regular, so every singularity is judged by
what the user sees (DESIGN.md §4):

- a right null vector n = (n_u, n_v) of U moves the requested outputs by
  (R_x n_u, R_y J n_v); it matters only if that is nonzero;
- a left null vector ℓ of U makes the adjoint answer ambiguous by (∂N/∂θ)ᵀℓ; it
  matters only if that reaches the parameters;
- a null direction that matters is a *non-unique solution* when z ± εn still solve
  N = 0 (a segment of solutions), and a *singular Jacobian* otherwise.

Checked at the selection used for the gradient and, where constraints sit at kinks, at
the two extreme selections ("lower", "upper") of the Clarke Jacobian there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from canonicalize import ParametricConeProgram
from conelayers.cones import SELECTIONS, Selection
from conelayers.derivative import Pattern, data_cotangent
from conelayers.exceptions import (
    InaccurateSolutionWarning,
    NonsmoothPointWarning,
    NonUniqueSolutionWarning,
    SingularJacobianWarning,
    shortened,
)
from conelayers.residual import (
    LinearSolveInfo,
    ResidualJacobian,
    ResidualMap,
    kink_tolerance,
    relative_residual,
)
from conelayers.solvers.scs import SOLVED, ConeSolution

CHECK_LEVELS = ("off", "fast", "full")
USER_WEIGHT_TOL = 1e-6
"""A unit null vector whose image on the requested outputs (or parameters) exceeds this
makes the gradient unjustified."""
ACCURACY_RTOL = 1e-7
"""``relative_residual`` (row by row) above which a refined solution counts as inaccurate."""


@dataclass(frozen=True)
class SelectionCheck:
    """Invertibility of U at one selection of the Clarke Jacobian."""

    selection: str
    size: int
    sigma_min: float  # estimate of σ_min(U) / σ_max(U)
    nullity: int  # dimension of the numerical null space
    output_weight: float  # largest |image| of a unit right null vector on the outputs
    parameter_weight: float  # largest |(∂N/∂θ)ᵀℓ| of a unit left null vector
    nonunique: bool  # a null direction that moves the outputs keeps N(z) = 0
    # Coordinates of z in blocks of U decoupled from the outputs (a singular U judged on
    # the coupled part alone; the fields above then describe that part).
    decoupled: int = 0

    @property
    def singular_for_user(self) -> bool:
        return max(self.output_weight, self.parameter_weight) > USER_WEIGHT_TOL


@dataclass(frozen=True)
class CheckReport:
    """What the checks found for one instance of a batch."""

    index: int
    status: str
    residual: float  # ‖N(z)‖ / (1 + ‖b‖∞ + ‖c‖∞) after refinement
    kink_tol: float
    kinks: tuple[str, ...]  # descriptions of the constraints at kinks
    selections: tuple[SelectionCheck, ...] = ()
    warnings: tuple[tuple[type, str], ...] = field(default=())

    @property
    def verdict(self) -> str:
        """'ok', or the most serious finding: 'failed' (no solution), 'singular',
        'nonunique', 'inaccurate', 'nonsmooth'."""
        if self.status not in (SOLVED, "solved_inaccurate"):
            return "failed"
        kinds = {w for w, _ in self.warnings}
        for cls, name in (
            (SingularJacobianWarning, "singular"),
            (NonUniqueSolutionWarning, "nonunique"),
            (InaccurateSolutionWarning, "inaccurate"),
            (NonsmoothPointWarning, "nonsmooth"),
        ):
            if cls in kinds:
                return name
        return "ok"


class _Instance:
    """One solved instance and what the checks need from the compiled program."""

    def __init__(
        self,
        residual: ResidualMap,
        z: np.ndarray,
        program: ParametricConeProgram,
        A_pattern: Pattern,
        P_pattern: Pattern | None,
        visible: np.ndarray | None = None,
    ) -> None:
        self.residual, self.z, self.program = residual, z, program
        self.A_pattern, self.P_pattern = A_pattern, P_pattern
        self.n = residual.n
        self.x, self.y, _ = residual.solution_from_z(z)
        self.visible = visible if visible is not None else visible_coordinates(program)

    def output_image(self, jac: ResidualJacobian, vec: np.ndarray) -> np.ndarray:
        """The requested outputs' displacement for a displacement ``vec`` of z."""
        u, v = vec[: self.n], vec[self.n :]
        dy = None
        parts = []
        for rec in self.program.recoveries:
            if rec.source == "x":
                parts.append(rec.apply(u))
            else:
                dy = jac.J.matvec(v) if dy is None else dy
                parts.append(rec.apply(dy))
        return np.concatenate(parts) if parts else np.zeros(0)

    def parameter_image(self, ell: np.ndarray) -> np.ndarray:
        """(∂N/∂θ)ᵀℓ: how much the parameter gradient moves if the adjoint answer moves
        along ℓ (one column per column of ℓ)."""
        A_bar, b_bar, c_bar, P_bar = data_cotangent(
            ell, self.x, self.y, self.A_pattern, self.P_pattern
        )
        return self.program.data_adjoint(A_bar, b_bar, c_bar, P_bar)

    def stays_solution(self, direction: np.ndarray) -> bool:
        """Whether z ± εn still solve N = 0 to second order (a segment of solutions)."""
        eps = 1e-4 * (1.0 + float(np.abs(self.z).max(initial=0.0)))
        base = float(np.linalg.norm(self.residual(self.z)))
        for sign in (1.0, -1.0):
            moved = float(np.linalg.norm(self.residual(self.z + sign * eps * direction)))
            if moved - base <= 1e-6 * eps:
                return True
        return False

    def check_selection(self, jac: ResidualJacobian, name: str, level: str) -> SelectionCheck:
        pre = jac.certifying_preconditioner() if level == "fast" else None
        if pre is not None:
            # A nearby LU without tiny pivots that contracts: U is regular (see
            # ResidualJacobian.certifying_preconditioner); its pivot ratio is the proxy.
            return SelectionCheck(name, jac.size, pre.pivot_ratio, 0, 0.0, 0.0, False)
        # A singular block of U that shares no equation or unknown with the outputs
        # (an auxiliary variable no constraint ties to them) cannot affect their
        # derivative: judge U on the coordinates coupled to the outputs only.
        mask, lu = jac.coupled_factorization(self.visible)
        decoupled = int(mask.size - np.count_nonzero(mask)) if mask is not None else 0
        if level == "fast" and lu.tiny_pivots == 0 and not lu.analyzed:
            # No tiny pivot: U (its coupled part) is numerically regular; the fast level
            # skips the inverse iteration and reports the LU's pivot ratio as the
            # σ_min/σ_max proxy.
            return SelectionCheck(
                name, jac.size, lu.pivot_ratio, 0, 0.0, 0.0, False, decoupled
            )
        out_w = param_w = 0.0
        nonunique = False
        if lu.nullity:
            right, left = lu.right_null, lu.left_null
            if mask is not None:
                right, left = _embed(right, mask), _embed(left, mask)
            for k in range(lu.nullity):
                w = float(np.linalg.norm(self.output_image(jac, right[:, k])))
                out_w = max(out_w, w)
                if w > USER_WEIGHT_TOL and self.stays_solution(right[:, k]):
                    nonunique = True
            images = self.parameter_image(left).reshape(-1, lu.nullity)
            param_w = float(np.linalg.norm(images, axis=0).max())
        sigma = lu.sigma_ratio
        return SelectionCheck(
            name, jac.size, sigma, lu.nullity, out_w, param_w, nonunique, decoupled
        )


def _embed(vectors: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Columns on the coordinates ``mask`` as full-length columns (0 elsewhere)."""
    out = np.zeros((mask.size, vectors.shape[1]))
    out[mask] = vectors
    return out


def visible_coordinates(program: ParametricConeProgram) -> np.ndarray:
    """Mask of the coordinates of z = (u, v) the requested outputs read."""
    return np.concatenate(program.read_masks())


def check_instance(
    index: int,
    residual: ResidualMap,
    z: np.ndarray,
    program: ParametricConeProgram,
    A_pattern: Pattern,
    P_pattern: Pattern | None,
    solution: ConeSolution,
    selection: Selection,
    level: str = "fast",
    used_jacobian: ResidualJacobian | None = None,
    visible: np.ndarray | None = None,
) -> CheckReport:
    """Run the checks on one instance and compose its warnings (not emitted here)."""
    if level not in CHECK_LEVELS:
        raise ValueError(f"checks must be one of {CHECK_LEVELS}, got {level!r}")
    rel = relative_residual(residual, z)
    tol = kink_tolerance(residual, z)
    warns: list[tuple[type, str]] = []
    where = f"instance {index}"
    # Inaccuracy is reported by the forward pass (see ``inaccuracy_message``).
    if level == "off":
        return CheckReport(index, solution.status, rel, tol, (), (), tuple(warns))

    kinks = residual.cone.kinks(z[residual.n :], tol)
    kink_text = tuple(_describe_kink(program, kind, i, rows) for kind, i, rows in kinks)
    if kinks:
        shown = shortened(kink_text, 5, "; ")
        warns.append((
            NonsmoothPointWarning,
            f"{where}: {len(kinks)} cone(s) at a kink of the projection ({shown}); the "
            f"gradient uses the '{selection}' selection of a set-valued conservative Jacobian",
        ))

    inst = _Instance(residual, z, program, A_pattern, P_pattern, visible)
    checks: list[SelectionCheck] = []
    if residual.ops.direct or level == "full":
        jac = used_jacobian or residual.jacobian(z, selection=selection, kink_tol=tol)
        checks.append(inst.check_selection(jac, selection, level))
        if kinks:
            for other in SELECTIONS:
                if other != selection:
                    jac_o = residual.jacobian(z, selection=other, kink_tol=tol)
                    checks.append(inst.check_selection(jac_o, other, level))
    for chk in checks:
        if chk.nonunique:
            warns.append((
                NonUniqueSolutionWarning,
                f"{where}: the solution is not unique: a segment of solutions through the "
                f"returned one moves the requested outputs (weight {chk.output_weight:.2g}); "
                "the gradient describes the solver's arbitrary choice",
            ))
            break
    for chk in checks:
        if chk.singular_for_user and not chk.nonunique:
            warns.append((
                SingularJacobianWarning,
                f"{where}: U is singular at the '{chk.selection}' selection (σ_min/σ_max ≈ "
                f"{chk.sigma_min:.1e}, null space of dimension {chk.nullity}, weight on the "
                f"requested outputs {chk.output_weight:.2g}, on the parameter gradient "
                f"{chk.parameter_weight:.2g}); the gradient is not justified",
            ))
            break
    return CheckReport(index, solution.status, rel, tol, kink_text, tuple(checks), tuple(warns))


def failed_report(index: int, solution: ConeSolution) -> CheckReport:
    """The report of an instance without a solution (on_failure="nan")."""
    return CheckReport(index, solution.status, float("nan"), float("nan"), ())


def inaccuracy_message(
    index: int, solution: ConeSolution, residual: ResidualMap, z: np.ndarray, refined: bool
) -> str | None:
    """A warning message if instance ``index`` is not accurately solved: SCS reported an
    inaccurate status and refinement (if any) did not bring ‖N(z)‖ below ACCURACY_RTOL,
    or the residual is large whatever the status."""
    rel = relative_residual(residual, z)
    if refined and rel <= ACCURACY_RTOL:
        return None
    if not refined and solution.status == SOLVED:
        return None  # SCS's own criterion is what the user asked for
    return (
        f"instance {index}: SCS status '{solution.status}' after {solution.iterations} "
        f"iterations (primal residual {solution.primal_residual:.2e}, dual residual "
        f"{solution.dual_residual:.2e}); residual ‖N(z)‖ = {rel:.1e} relative"
        + (" after Newton refinement" if refined else "")
        + "; values and gradients may be inaccurate: raise max_iters or adjust "
        "eps_abs/eps_rel in solver_args, or, if SCS stalls (residuals not falling with "
        "more iterations), turn off its acceleration with acceleration_lookback=0"
    )


SOLVE_RTOL = 1e-6
"""Relative residual of an iterative derivative solve above which the gradient is not
given without a warning (a direct solve's singular cases are the null-space checks')."""
LSQR_STOPS = {
    0: "x = 0 solves it",
    1: "converged",
    2: "least-squares solution: the system is inconsistent",
    3: "condition estimate above conlim",
    4: "converged to machine precision",
    5: "least-squares solution to machine precision: the system is inconsistent",
    6: "condition estimate too large for machine precision",
    7: "iteration limit reached",
}


def solve_message(index: int, info: LinearSolveInfo | None, adjoint: bool) -> str | None:
    """A SingularJacobianWarning message if an iterative solve with U (Uᵀ for the vjp)
    left a relative residual above SOLVE_RTOL: U is singular there (an inconsistent
    system) or too ill-conditioned for the iterative method. On the LSQR path the fast
    checks have no factorization to analyze; this is what they learn instead."""
    if info is None or info.method in ("direct", "trivial", "preconditioned", "nonfinite"):
        return None
    if info.relative_residual <= SOLVE_RTOL:
        return None
    system = "Uᵀr = ḡ (vjp)" if adjoint else "U dz = −∂N (jvp)"
    stop = ""
    if info.lsqr_istop is not None:
        stop = f", LSQR stop {info.lsqr_istop}: {LSQR_STOPS.get(info.lsqr_istop, '?')}"
    return (
        f"instance {index}: the iterative solve of {system} left a relative residual of "
        f"{info.relative_residual:.1e} after {info.iterations} iterations ({info.method}"
        f"{stop}); U is singular or too ill-conditioned there, and the gradient is not "
        "justified. checks='full' factorizes U and analyzes its null space"
    )


def _describe_kink(program: ParametricConeProgram, kind: str, index: int, rows: slice) -> str:
    con = program.constraint_at(rows.start)
    owner = con.label if con is not None else "unknown constraint"
    if len(owner) > 60:
        owner = owner[:57] + "..."
    return f"{kind} cone #{index} (rows {rows.start}-{rows.stop - 1}) of {owner}"
