"""Make a solver's answer accurate enough to differentiate.

SCS's default tolerance (1e-4) caps gradient accuracy (a wrong active set gives an
O(1) gradient error). Semismooth Newton steps on N(z) = 0 fix that in one or two steps
from a good starting point. From a poor one (an ill-conditioned problem where SCS
stopped far from the solution), the Newton step leaves the region where the
linearization holds; then SCS is warm-started from its own answer at a tighter
tolerance (1e-6, then 1e-9 if still needed), with a bounded iteration budget, and Newton
runs again after each.
"""

from __future__ import annotations

import numpy as np

from conelayers.checks import ACCURACY_RTOL
from conelayers.cones import Selection
from conelayers.residual import (
    RefinementInfo,
    ResidualJacobian,
    ResidualMap,
    kink_tolerance,
    newton_refine,
    relative_residual,
)
from conelayers.solvers.scs import SOLVED, ConeSolution, solve

POLISH_STAGES = (1e-6, 1e-9)
"""Tolerances of the warm-started SCS polish used when Newton alone cannot refine, tried
in turn (each from the previous stage's answer, Newton after each): SCS usually needs only
to get the active set right, which 1e-6 does, and 1e-9 can stall on LPs (lp/large, 8
draws: 5 needed a polish; at 1e-9 one took 6000 iterations, 753 ms, at 1e-6 375, 72 ms,
and Newton finished every draw from the 1e-6 point but one, which 1e-9 then fixed)."""
POLISH_MAX_ITERS = 20_000
"""Each stage's iteration budget at most (SCS stalls at tight tolerances on some
problems: a degenerate SDP spent 190 s in an uncapped polish)."""


REUSE_RTOL = 1e-7
"""A Newton Jacobian factorized at a point this close (relative to 1 + ‖z‖∞) to the
refined one serves for the derivative too: J moves by O(1e-7) at most (exactly 0 on a
piecewise-linear piece), far below the 1e-5 gradient accuracy the benchmark demands, and
it saves a factorization (the last Newton step from an SCS point is typically ~1e-8)."""


def refine_solution(
    residual: ResidualMap,
    solution: ConeSolution,
    settings: dict,
    selection: Selection = "lower",
) -> tuple[np.ndarray, ResidualJacobian | None]:
    """z = (x, y − s) refined as far as the budget allows (see module doc), and a
    factorized Jacobian at (essentially) that point if refinement left one."""
    z0 = residual.z_from_solution(solution.x, solution.y, solution.s)
    z, info = newton_refine(residual, z0, selection=selection)
    if relative_residual(residual, z) <= ACCURACY_RTOL:
        return z, _reusable(residual, z, info, selection)
    if solution.status != SOLVED:
        return z, None  # SCS itself did not converge: a tighter warm start will not either
    best, best_info = z, info
    start = solution
    for eps in POLISH_STAGES:
        polish = dict(settings)
        polish["eps_abs"] = min(polish.get("eps_abs", 1e-4), eps)
        polish["eps_rel"] = min(polish.get("eps_rel", 1e-4), eps)
        polish["max_iters"] = min(POLISH_MAX_ITERS, max(2000, 5 * solution.iterations))
        second = solve(residual.program, polish, warm_start=(start.x, start.y, start.s))
        if not second.has_solution:
            break
        z2, info2 = newton_refine(
            residual, residual.z_from_solution(second.x, second.y, second.s),
            selection=selection,
        )
        if info2.residual_after < best_info.residual_after:  # ‖N‖ at z2 and at best
            best, best_info = z2, info2
        if relative_residual(residual, best) <= ACCURACY_RTOL:
            break
        start = second
    if best is z:
        return z, None
    return best, _reusable(residual, best, best_info, selection)


def _reusable(
    residual: ResidualMap, z: np.ndarray, info: RefinementInfo, selection: Selection
) -> ResidualJacobian | None:
    """The Jacobian for the derivative at the refined point z, reusing the last Newton
    LU: that Jacobian itself if its cone Jacobian is (numerically) the one at z with the
    derivative's kink tolerance (always when the point barely moved, and on
    piecewise-linear pieces whenever the active set did not change), else the one at z
    with that LU as preconditioner."""
    jac = info.jacobian
    if jac is None or not jac.factorized:
        return None
    gap = float(np.abs(z - info.jacobian_point).max(initial=0.0))
    if gap <= REUSE_RTOL * (1.0 + float(np.abs(z).max())):
        return jac
    J_final = residual.cone.jacobian_dual(
        z[residual.n :], selection=selection, kink_tol=kink_tolerance(residual, z)
    )
    probe = np.random.default_rng(0).standard_normal((residual.m, 2))
    diff = np.linalg.norm(J_final.matmat(probe) - jac.J.matmat(probe))
    if diff <= 1e-12 * np.linalg.norm(probe):
        return jac
    # J moved (a curved cone after a Newton step): the Jacobian at z itself, whose
    # solves refine against it with the Newton LU as preconditioner.
    return ResidualJacobian(
        residual.program, J_final, residual.ops, preconditioner=jac.factorization()
    )
