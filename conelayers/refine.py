"""Make a solver's answer accurate enough to differentiate.

SCS's default tolerance (1e-4) caps gradient accuracy (a wrong active set gives an
O(1) gradient error). Semismooth Newton steps on N(z) = 0 fix that in one or two steps
from a good starting point. From a poor one (an ill-conditioned problem where SCS
stopped far from the solution), the Newton step leaves the region where the
linearization holds; then SCS is warm-started from its own answer at a tighter
tolerance, with a bounded iteration budget, and Newton runs again.
"""

from __future__ import annotations

import numpy as np

from conelayers.checks import ACCURACY_RTOL, relative_residual
from conelayers.cones import Selection
from conelayers.residual import ResidualMap, newton_refine
from conelayers.solvers.scs import SOLVED, ConeSolution, solve

POLISH_EPS = 1e-9
"""Tolerance of the warm-started SCS solve used when Newton alone cannot refine."""


def refine_solution(
    residual: ResidualMap,
    solution: ConeSolution,
    settings: dict,
    selection: Selection = "lower",
) -> np.ndarray:
    """z = (x, y − s) refined as far as the budget allows (see module doc)."""
    z0 = residual.z_from_solution(solution.x, solution.y, solution.s)
    z, _ = newton_refine(residual, z0, selection=selection)
    if relative_residual(residual, z) <= ACCURACY_RTOL:
        return z
    polish = dict(settings)
    polish["eps_abs"] = min(polish.get("eps_abs", 1e-4), POLISH_EPS)
    polish["eps_rel"] = min(polish.get("eps_rel", 1e-4), POLISH_EPS)
    polish["max_iters"] = max(2000, 5 * solution.iterations)
    second = solve(
        residual.program, polish, warm_start=(solution.x, solution.y, solution.s)
    )
    if second.status != SOLVED and not second.has_solution:
        return z
    z2, _ = newton_refine(
        residual, residual.z_from_solution(second.x, second.y, second.s), selection=selection
    )
    if np.linalg.norm(residual(z2)) < np.linalg.norm(residual(z)):
        return z2
    return z
