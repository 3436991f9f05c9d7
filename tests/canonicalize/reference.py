"""What the presolve tests compare against: CVXPY solving the user's problem itself (its
own canonicalization, SCS at 1e-12, no refinement), and the layer's tight settings."""

from __future__ import annotations

import cvxpy as cp

TIGHT = {"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iters": 200_000}
# Refined solves (‖N(z)‖ ~ 1e-12 relative) and the tight reference agree to ~1e-13 on the
# families of these tests; 1e-8 leaves room for other platforms' rounding and still fails
# on any wrong row, sign or coefficient.
VALUE_ATOL = 1e-8


def reference_solve(problem: cp.Problem) -> None:
    # Clarabel at its defaults is only ~2e-6 accurate on several_socs; SCS this tight
    # agrees with the refined solves to ~1e-14 on every family here.
    problem.solve(solver=cp.SCS, eps_abs=1e-12, eps_rel=1e-12, max_iters=500_000)
