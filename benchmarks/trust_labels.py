"""Trust-label benchmark: do the trust checks warn exactly where the gradient is not
justified?

A labelled set of small named CVXPY problems across LP, QP, SOCP and SDP. Each problem is
labelled *by construction*, by mathematics and not by what conelayers says:

- ``degenerate``: the gradient of the requested outputs is not justified by the
  conservative implicit function theorem (reference paper, Theorem 2): the primal or dual
  solution is not unique in a way that moves the requested outputs or their gradient, or
  the optimality system is singular (e.g. a 4th-power objective). Each such case says
  in ``reason`` which direction of non-uniqueness or singularity there is and why it
  reaches the requested outputs.
- ``regular``: unique primal-dual solution, and U invertible in the user's variables for
  every element of the Clarke Jacobian. Points that are merely nonsmooth (a kink with a
  unique solution and invertible selections, e.g. a projection landing exactly on the
  sphere) are regular: they get only ``NonsmoothPointWarning``, which is informative.

A problem is *predicted positive* when the checks emit ``SingularJacobianWarning`` or
``NonUniqueSolutionWarning`` for it, during the vjp of the sum of the requested outputs.

Run ``python benchmarks/trust_labels.py`` to print the per-problem table, the confusion
matrix, precision and recall (``--reasons`` also prints each label's justification);
``evaluate()`` returns the same numbers as a dict.

The labels were cross-checked without conelayers (CVXPY with Clarabel, or SCS at eps
1e-10 for cones): for every primal-non-unique case, maximizing and minimizing random
linear functionals of the outputs over {feasible, objective <= optimum + 1e-7} gives a
face of width 0.15 to infinity, against at most 2.6e-3 (the sqrt(1e-7) spread of a
strongly convex objective) for every regular case; the dual-only degenerate cases
(redundant active constraints, ties in a max) have one-sided derivatives of the outputs
that differ by 1; and the gradients of the smooth regular cases match central differences
of those re-solves.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from conelayers.exceptions import (
    ConelayersWarning,
    NonUniqueSolutionWarning,
    SingularJacobianWarning,
)
from conelayers.layer import LayerCore

FAMILIES = ("LP", "QP", "SOCP", "SDP")
LABELS = ("degenerate", "regular")
POSITIVE_WARNINGS = (SingularJacobianWarning, NonUniqueSolutionWarning)

Built = tuple[cp.Problem, list[cp.Parameter], list[cp.Variable], list[np.ndarray]]


@dataclass(frozen=True)
class Case:
    """One labelled problem: ``build()`` returns (problem, parameters, requested
    variables, parameter values)."""

    name: str
    family: str
    label: str
    reason: str
    build: Callable[[], Built]


CASES: list[Case] = []


def case(name: str, family: str, label: str, reason: str):
    """Register the decorated builder as a labelled case."""
    assert family in FAMILIES and label in LABELS

    def register(build: Callable[[], Built]) -> Callable[[], Built]:
        CASES.append(Case(name, family, label, reason, build))
        return build

    return register


def _rotation(n: int, seed: int) -> np.ndarray:
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return Q


def _unit_diag(M: np.ndarray) -> np.ndarray:
    d = 1.0 / np.sqrt(np.diag(M))
    return M * np.outer(d, d)


# =========================================================================================
# LP
# =========================================================================================

@case("lp_facet_parallel", "LP", "degenerate",
      "min c'x, sum(x) >= 1, x >= 0 with c = (1, 1) parallel to the facet sum(x) = 1: every "
      "x = (s, 1 - s), s in [0, 1], is optimal; the direction (1, -1) moves the output x")
def _lp_facet_parallel() -> Built:
    c = cp.Parameter(2, name="c")
    x = cp.Variable(2, name="x")
    prob = cp.Problem(cp.Minimize(c @ x), [cp.sum(x) >= 1, x >= 0])
    return prob, [c], [x], [np.array([1.0, 1.0])]


@case("lp_cyclic_t0", "LP", "degenerate",
      "paper's cyclic problem max (a + b) t, a in [0, 3], b in [0, 5] at t = -3x + y + 2 = 0: "
      "the objective vanishes, the whole box is optimal; a and b (the outputs) move freely")
def _lp_cyclic_t0() -> Built:
    return _cyclic(1.0, 1.0)


def _cyclic(xv: float, yv: float) -> Built:
    x, y = cp.Parameter(name="x"), cp.Parameter(name="y")
    a, b = cp.Variable(name="a"), cp.Variable(name="b")
    t = -3 * x + y + 2
    prob = cp.Problem(cp.Maximize(a * t + b * t), [a >= 0, a <= 3, b >= 0, b <= 5])
    return prob, [x, y], [a, b], [np.array(xv), np.array(yv)]


@case("lp_simplex_argmax_tie", "LP", "degenerate",
      "argmax c'w over the simplex with a tie c_2 = c_3 = 1 for the largest score: the edge "
      "[e2, e3] is optimal; e2 - e3 moves the output w")
def _lp_simplex_argmax_tie() -> Built:
    return _simplex_argmax(np.array([0.2, 1.0, 1.0, -0.3]))


def _simplex_argmax(cv: np.ndarray) -> Built:
    c = cp.Parameter(cv.size, name="c")
    w = cp.Variable(cv.size, name="w")
    prob = cp.Problem(cp.Maximize(c @ w), [w >= 0, cp.sum(w) == 1])
    return prob, [c], [w], [cv]


@case("lp_degenerate_vertex", "LP", "degenerate",
      "min x1 + 2 x2 s.t. x1 >= b1, x2 >= b2, x1 + x2 >= b3 at b = 0: three active "
      "constraints at a vertex of R^2. x* = 0 is unique but the multipliers (1-s, 2-s, s), "
      "s in [0, 1], are not; x1*(b) = max(b1, b3 - b2) is not differentiable there (its "
      "Clarke Jacobian is conv{(1,0,0), (0,-1,1)}) and the dual the solver picks decides "
      "which element the gradient of x wrt b is")
def _lp_degenerate_vertex() -> Built:
    b = cp.Parameter(3, name="b")
    x = cp.Variable(2, name="x")
    prob = cp.Problem(cp.Minimize(x[0] + 2 * x[1]),
                      [x[0] >= b[0], x[1] >= b[1], x[0] + x[1] >= b[2]])
    return prob, [b], [x], [np.zeros(3)]


@case("lp_lad_duplicate_column", "LP", "degenerate",
      "least absolute deviations min ||X beta - y||_1 with column 3 of X equal to column 1: "
      "the objective depends on beta1 + beta3 only, so beta + s(e1 - e3) stays optimal and "
      "moves the output beta")
def _lp_lad_duplicate() -> Built:
    rng = np.random.default_rng(11)
    X = rng.standard_normal((10, 2))
    X = np.c_[X, X[:, 0]]
    yv = X[:, :2] @ np.array([1.0, -2.0]) + 0.3 * rng.standard_normal(10)
    y = cp.Parameter(10, name="y")
    beta = cp.Variable(3, name="beta")
    prob = cp.Problem(cp.Minimize(cp.norm1(X @ beta - y)))
    return prob, [y], [beta], [yv]


@case("lp_chebyshev_rectangle", "LP", "degenerate",
      "Chebyshev center (largest inscribed disk) of the rectangle [0, 2] x [0, 1]: r = 1/2, "
      "x2 = 1/2, and every center x1 in [1/2, 3/2] is optimal; e1 moves the output x")
def _lp_chebyshev_rectangle() -> Built:
    return _chebyshev_box(np.array([2.0, 1.0]))


def _chebyshev_box(hv: np.ndarray) -> Built:
    hi = cp.Parameter(2, name="hi")
    x, r = cp.Variable(2, name="x"), cp.Variable(name="r")
    prob = cp.Problem(cp.Maximize(r), [x - r >= 0, x + r <= hi])
    return prob, [hi], [x, r], [hv]


@case("lp_random_vertex", "LP", "regular",
      "min c'x s.t. Gx <= h, -3 <= x <= 3 with Gaussian G, c, h: a unique vertex with exactly "
      "n active constraints and positive multipliers (generic, checked: 4 of 16 active)")
def _lp_random_vertex() -> Built:
    rng = np.random.default_rng(3)
    n, m = 4, 8
    G = rng.standard_normal((m, n))
    c, h = cp.Parameter(n, name="c"), cp.Parameter(m, name="h")
    x = cp.Variable(n, name="x")
    prob = cp.Problem(cp.Minimize(c @ x), [G @ x <= h, x >= -3, x <= 3])
    return prob, [c, h], [x], [rng.standard_normal(n), rng.uniform(0.5, 1.5, m)]


@case("lp_cyclic_t1", "LP", "regular",
      "the cyclic problem at t = 1 (y = 2): unique vertex (3, 5) with both upper bounds "
      "strictly active (multipliers t = 1)")
def _lp_cyclic_t1() -> Built:
    return _cyclic(1.0, 2.0)


@case("lp_simplex_argmax_unique", "LP", "regular",
      "argmax c'w over the simplex with a strict largest score c_2 = 1 > 0.7: unique vertex e2, "
      "gaps c_2 - c_j > 0 are the multipliers of the inactive w_j >= 0")
def _lp_simplex_argmax_unique() -> Built:
    return _simplex_argmax(np.array([0.2, 1.0, 0.7, -0.3]))


@case("lp_lower_bounds", "LP", "regular",
      "min w'x s.t. x >= p with weights w > 0: x = p, multipliers w > 0, nondegenerate")
def _lp_lower_bounds() -> Built:
    p = cp.Parameter(4, name="p")
    x = cp.Variable(4, name="x")
    prob = cp.Problem(cp.Minimize(np.array([1.0, 2.0, 0.5, 3.0]) @ x), [x >= p])
    return prob, [p], [x], [np.array([0.3, -1.2, 2.0, 0.0])]


@case("lp_lad_generic", "LP", "regular",
      "least absolute deviations with generic X (12 x 3): unique fit interpolating exactly 3 "
      "points, subgradients strictly inside (-1, 1) there (generic)")
def _lp_lad_generic() -> Built:
    rng = np.random.default_rng(12)
    X = rng.standard_normal((12, 3))
    yv = X @ np.array([1.0, -2.0, 0.5]) + 0.5 * rng.standard_normal(12)
    y = cp.Parameter(12, name="y")
    beta = cp.Variable(3, name="beta")
    prob = cp.Problem(cp.Minimize(cp.norm1(X @ beta - y)))
    return prob, [y], [beta], [yv]


@case("lp_chebyshev_triangle", "LP", "regular",
      "Chebyshev center of a scalene triangle: the incircle is unique, 3 active constraints "
      "in 3 unknowns (x, r) with positive multipliers")
def _lp_chebyshev_triangle() -> Built:
    A = np.array([[-1.0, 0.0], [0.0, -1.0], [1.0, 2.0]])
    norms = np.linalg.norm(A, axis=1)
    b = cp.Parameter(3, name="b")
    x, r = cp.Variable(2, name="x"), cp.Variable(name="r")
    prob = cp.Problem(cp.Maximize(r), [A @ x + r * norms <= b])
    return prob, [b], [x, r], [np.array([0.0, 0.0, 3.0])]


@case("lp_cyclic_t_small", "LP", "regular",
      "the cyclic problem at t = 1e-3 (y = 1.001), close to the degenerate t = 0 but not at "
      "it: unique vertex (3, 5), multipliers t = 1e-3 > 0; the exact gradient is 0")
def _lp_cyclic_t_small() -> Built:
    return _cyclic(1.0, 1.001)


# =========================================================================================
# QP
# =========================================================================================

@case("qp_lasso_duplicate_column", "QP", "degenerate",
      "Lasso with column 6 a copy of column 1 and beta1 + beta6 != 0: any split of the "
      "coefficient with the same sign and the same l1 norm is optimal; e1 - e6 moves beta")
def _qp_lasso_duplicate() -> Built:
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 5))
    X = np.c_[X, X[:, 0]]
    yv = 3 * X[:, 0] + rng.standard_normal(30)
    return _lasso(X, yv, 1.0)


def _lasso(X: np.ndarray, yv: np.ndarray, lam_v: float) -> Built:
    lam = cp.Parameter(nonneg=True, name="lam")
    y = cp.Parameter(X.shape[0], name="y")
    beta = cp.Variable(X.shape[1], name="beta")
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(X @ beta - y) + lam * cp.norm1(beta)))
    return prob, [lam, y], [beta], [np.array(lam_v), yv]


@case("qp_least_squares_colinear", "QP", "degenerate",
      "unregularized least squares with column 3 = column 1 + column 2: X has null vector "
      "(1, 1, -1), so beta + s(1, 1, -1) stays optimal and moves the output beta")
def _qp_ls_colinear() -> Built:
    rng = np.random.default_rng(4)
    X = rng.standard_normal((20, 2))
    X = np.c_[X, X[:, 0] + X[:, 1]]
    y = cp.Parameter(20, name="y")
    beta = cp.Variable(3, name="beta")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X @ beta - y)))
    return prob, [y], [beta], [rng.standard_normal(20)]


@case("qp_flat_sum", "QP", "degenerate",
      "min (x1 + x2 - p)^2 s.t. 0 <= x <= 1 at p = 1: the objective is flat along (1, -1); "
      "the segment x1 + x2 = 1 in the box is optimal and moves the output x")
def _qp_flat_sum() -> Built:
    p = cp.Parameter(name="p")
    x = cp.Variable(2, name="x")
    prob = cp.Problem(cp.Minimize(cp.square(cp.sum(x) - p)), [x >= 0, x <= 1])
    return prob, [p], [x], [np.array(1.0)]


@case("qp_nnls_duplicate_column", "QP", "degenerate",
      "nonnegative least squares with column 4 a copy of column 1 and an interior fit "
      "(beta1 + beta4 = 1 > 0): beta + s(e1 - e4) keeps the fit and beta >= 0 for small s")
def _qp_nnls_duplicate() -> Built:
    rng = np.random.default_rng(5)
    X = rng.standard_normal((15, 3))
    X = np.c_[X, X[:, 0]]
    yv = X[:, :3] @ np.array([1.0, 2.0, 1.5]) + 0.1 * rng.standard_normal(15)
    y = cp.Parameter(15, name="y")
    beta = cp.Variable(4, name="beta")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X @ beta - y)), [beta >= 0])
    return prob, [y], [beta], [yv]


@case("qp_singular_portfolio", "QP", "degenerate",
      "min ||F'w - p||^2 s.t. sum(w) = 1 with F of rank 2 in R^4: null(F') has dimension 2, "
      "so it meets {sum = 0} in a line of directions that keep the objective and move w")
def _qp_singular_portfolio() -> Built:
    rng = np.random.default_rng(6)
    F = rng.standard_normal((4, 2))
    p = cp.Parameter(2, name="p")
    w = cp.Variable(4, name="w")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(F.T @ w - p)), [cp.sum(w) == 1])
    return prob, [p], [w], [np.array([0.5, -0.2])]


@case("qp_zero_cost_coordinate", "QP", "degenerate",
      "min ||x - p||^2 + c'w, 0 <= w <= 1 with c = (1, 0): w2 does not enter the objective, "
      "every w2 in [0, 1] is optimal and w is a requested output")
def _qp_zero_cost() -> Built:
    p, c = cp.Parameter(3, name="p"), cp.Parameter(2, name="c")
    x, w = cp.Variable(3, name="x"), cp.Variable(2, name="w")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p) + c @ w), [w >= 0, w <= 1])
    return prob, [p, c], [x, w], [np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.0])]


@case("qp_random_strongly_convex", "QP", "regular",
      "min 1/2 x'Px + q'x s.t. Gx <= h with P > 0 (unique) and generic q, h: strict "
      "complementarity and linearly independent active rows (generic)")
def _qp_random() -> Built:
    rng = np.random.default_rng(7)
    n, m = 5, 6
    L = rng.standard_normal((2 * n, n))
    G = rng.standard_normal((m, n))
    q, h = cp.Parameter(n, name="q"), cp.Parameter(m, name="h")
    x = cp.Variable(n, name="x")
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ x) + q @ x), [G @ x <= h])
    return prob, [q, h], [x], [3 * rng.standard_normal(n), rng.uniform(0, 1, m)]


@case("qp_box_projection", "QP", "regular",
      "projection onto [0, 1]^5 of a point with coordinates inside, above and below (none on "
      "a bound): x = clip(p), strictly complementary")
def _qp_box_projection() -> Built:
    p = cp.Parameter(5, name="p")
    x = cp.Variable(5, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0, x <= 1])
    return prob, [p], [x], [np.array([0.3, 1.7, -0.4, 0.9, 2.5])]


@case("qp_lasso_generic", "QP", "regular",
      "Lasso with Gaussian X (40 x 10, full column rank) at lam = 5: unique, the equicorrelation "
      "set has |X_E' r| = lam only on the support (Proposition 5's closed form applies)")
def _qp_lasso_generic() -> Built:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 10))
    yv = X @ np.r_[rng.standard_normal(4), np.zeros(6)] + 0.1 * rng.standard_normal(40)
    return _lasso(X, yv, 5.0)


@case("qp_ridge", "QP", "regular",
      "ridge regression min ||X beta - y||^2 + lam ||beta||^2, lam > 0: strongly convex, "
      "unconstrained, unique and smooth")
def _qp_ridge() -> Built:
    rng = np.random.default_rng(8)
    X = rng.standard_normal((10, 6))
    lam = cp.Parameter(nonneg=True, name="lam")
    y = cp.Parameter(10, name="y")
    beta = cp.Variable(6, name="beta")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X @ beta - y) + lam * cp.sum_squares(beta)))
    return prob, [lam, y], [beta], [np.array(0.5), rng.standard_normal(10)]


@case("qp_simplex_projection", "QP", "regular",
      "Euclidean projection onto the simplex of a generic point: unique, sparse, and the "
      "zero coordinates have strictly positive multipliers (threshold gap > 0)")
def _qp_simplex_projection() -> Built:
    p = cp.Parameter(6, name="p")
    x = cp.Variable(6, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0, cp.sum(x) == 1])
    return prob, [p], [x], [np.array([0.9, 0.1, 0.6, -0.5, 0.35, -0.1])]


@case("qp_elastic_net_aux", "QP", "regular",
      "elastic net 1/2||X beta - y||^2 + lam1 ||beta||_1 + lam2 ||beta||^2: strongly convex "
      "in beta (unique); the l1 epigraph variables are auxiliary; generic lam1 gives strict "
      "complementarity")
def _qp_elastic_net() -> Built:
    rng = np.random.default_rng(9)
    X = rng.standard_normal((12, 8))  # 8 features, 12 samples: lam2 makes it unique
    lam1 = cp.Parameter(nonneg=True, name="lam1")
    lam2 = cp.Parameter(nonneg=True, name="lam2")
    y = cp.Parameter(12, name="y")
    beta = cp.Variable(8, name="beta")
    obj = (0.5 * cp.sum_squares(X @ beta - y) + lam1 * cp.norm1(beta)
           + lam2 * cp.sum_squares(beta))
    prob = cp.Problem(cp.Minimize(obj))
    yv = X @ np.r_[2.0, -1.5, 1.0, np.zeros(5)] + 0.2 * rng.standard_normal(12)
    return prob, [lam1, lam2, y], [beta], [np.array(1.3), np.array(0.4), yv]


@case("qp_tie_in_max", "QP", "degenerate",
      "t = argmin t^2 s.t. t >= p1, t >= p2 (t = max(p1, p2)) at a tie p1 = p2 = 1: t* = 1 is "
      "unique but both constraints are active for one unknown, the multipliers (2s, 2 - 2s) "
      "form a segment, U is singular with a left null vector reaching p, and t(p) is not "
      "differentiable (gradient any (s, 1 - s), fixed only by the solver's arbitrary dual)")
def _qp_tie_in_max() -> Built:
    p = cp.Parameter(2, name="p")
    t = cp.Variable(name="t")
    prob = cp.Problem(cp.Minimize(cp.square(t)), [t >= p[0], t >= p[1]])
    return prob, [p], [t], [np.array([1.0, 1.0])]


@case("qp_box_projection_on_bound", "QP", "regular",
      "projection onto [0, 1]^5 of a point with coordinates exactly on the bounds 1 and 0: "
      "unique x = clip(p), those bounds active with zero multiplier (kinks); every "
      "selection (coordinate free or fixed) gives an invertible system: merely nonsmooth")
def _qp_box_on_bound() -> Built:
    p = cp.Parameter(5, name="p")
    x = cp.Variable(5, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0, x <= 1])
    return prob, [p], [x], [np.array([0.3, 1.0, -0.4, 0.0, 2.5])]


@case("qp_lasso_kink", "QP", "regular",
      "Lasso (full-column-rank Gaussian X) at the lam where variable 4 is about to enter: "
      "beta unique, |x_4' r| = lam with beta_4 = 0 (a kink); X_E has full column rank, so "
      "both extreme selections (Remark 4's LARS and weak derivatives) are invertible")
def _qp_lasso_kink() -> Built:
    rng = np.random.default_rng(1)
    n, p, lam = 30, 6, 2.0
    X = rng.standard_normal((n, p))
    S, j0 = [0, 1, 2], 3
    beta = np.zeros(p)
    beta[S] = [1.5, -1.0, 0.8]
    signs = np.r_[np.sign(beta[S]), 1.0]
    XE = X[:, S + [j0]]
    r = XE @ np.linalg.solve(XE.T @ XE, lam * signs)  # X_E' r = lam signs exactly
    assert np.all(np.abs(np.delete(X.T @ r, S + [j0])) < lam)
    return _lasso(X, X @ beta + r, lam)


# =========================================================================================
# SOCP
# =========================================================================================

@case("socp_fourth_power", "SOCP", "degenerate",
      "paper's Lorenz-like argmin_s sum (s - p)^4: the optimality condition 4(s - p)^3 = 0 has "
      "a zero Jacobian at the solution (singular Hessian), so the implicit function theorem "
      "gives no derivative of s; in the cone form every SOC sits at its apex and U is "
      "singular on s")
def _socp_fourth_power() -> Built:
    p = cp.Parameter(3, name="p")
    s = cp.Variable(3, name="s")
    prob = cp.Problem(cp.Minimize(cp.sum(cp.power(s - p, 4))))
    return prob, [p], [s], [np.array([0.7, -1.3, 2.1])]


@case("socp_cone_ray", "SOCP", "degenerate",
      "min t - x1 s.t. ||x|| <= t, t <= p: the objective is orthogonal to the flat ray "
      "{t = x1, x2 = 0} of the cone's boundary, on which it is 0 = its minimum; the segment "
      "(s, s, 0), s in [0, p], is optimal and moves the outputs x, t")
def _socp_cone_ray() -> Built:
    p = cp.Parameter(name="p")
    x, t = cp.Variable(2, name="x"), cp.Variable(name="t")
    prob = cp.Problem(cp.Minimize(t - x[0]), [cp.norm(x) <= t, t <= p])
    return prob, [p], [x, t], [np.array(1.0)]


@case("socp_disk_chord", "SOCP", "degenerate",
      "max x1 over the unit disk cut by x1 <= h, h = 1/2: the objective is orthogonal to the "
      "flat chord x1 = 1/2, |x2| <= sqrt(3)/2, which is optimal; e2 moves the output x")
def _socp_disk_chord() -> Built:
    h = cp.Parameter(name="h")
    x = cp.Variable(2, name="x")
    prob = cp.Problem(cp.Maximize(x[0]), [cp.norm(x) <= 1, x[0] <= h])
    return prob, [h], [x], [np.array(0.5)]


@case("socp_norm_regression_duplicate", "SOCP", "degenerate",
      "min ||X beta - y||_2 (not squared) with column 4 a copy of column 2 and a nonzero "
      "residual: beta + s(e2 - e4) keeps X beta, hence the objective, and moves beta")
def _socp_norm_dup() -> Built:
    rng = np.random.default_rng(13)
    X = rng.standard_normal((12, 3))
    X = np.c_[X, X[:, 1]]
    y = cp.Parameter(12, name="y")
    beta = cp.Variable(4, name="beta")
    prob = cp.Problem(cp.Minimize(cp.norm(X @ beta - y)))
    return prob, [y], [beta], [rng.standard_normal(12)]


@case("socp_underdetermined_norm", "SOCP", "degenerate",
      "min ||A x - b||_2 with A of size 2 x 3: A x = b has a line of solutions (direction "
      "null(A)), all with objective 0; the null direction moves the output x")
def _socp_underdetermined() -> Built:
    rng = np.random.default_rng(14)
    A = rng.standard_normal((2, 3))
    b = cp.Parameter(2, name="b")
    x = cp.Variable(3, name="x")
    prob = cp.Problem(cp.Minimize(cp.norm(A @ x - b)))
    return prob, [b], [x], [np.array([1.0, -0.5])]


@case("socp_ball_zero_objective", "SOCP", "degenerate",
      "max t g'x over the unit ball at t = 0 (the cyclic problem on a ball): the objective "
      "vanishes and the whole ball is optimal; every direction moves the output x")
def _socp_ball_zero() -> Built:
    t = cp.Parameter(name="t")
    x = cp.Variable(3, name="x")
    g = np.array([1.0, -2.0, 0.5])
    prob = cp.Problem(cp.Maximize(t * (g @ x)), [cp.norm(x) <= 1])
    return prob, [t], [x], [np.array(0.0)]


def _ball(pv: np.ndarray) -> Built:
    p = cp.Parameter(pv.size, name="p")
    x = cp.Variable(pv.size, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [cp.norm(x) <= 2])
    return prob, [p], [x], [pv]


@case("socp_ball_projection_exterior", "SOCP", "regular",
      "projection onto the ball of radius 2 of a point at distance 4: unique, the constraint "
      "is strictly active (multiplier 1 > 0), the tangent projection is invertible")
def _socp_ball_exterior() -> Built:
    u = np.array([1.0, -2.0, 0.5, 1.5, -1.0])
    return _ball(4 * u / np.linalg.norm(u))


@case("socp_ball_projection_interior", "SOCP", "regular",
      "projection onto the ball of an interior point: x = p, dx/dp = I; only the epigraph "
      "variable of the norm is non-unique (auxiliary, harmless)")
def _socp_ball_interior() -> Built:
    return _ball(np.array([0.3, -0.2, 0.5, 0.1, 0.0]))


@case("socp_ball_projection_on_sphere", "SOCP", "regular",
      "projection of a point exactly on the sphere: unique solution x = p, a kink (the "
      "constraint is active with zero multiplier); both one-sided derivatives (I and the "
      "tangent projection) are justified: merely nonsmooth")
def _socp_ball_sphere() -> Built:
    u = np.array([1.0, 2.0, -1.0, 0.5, 1.0])
    return _ball(2 * u / np.linalg.norm(u))


@case("socp_linear_over_ball", "SOCP", "regular",
      "min c'x s.t. ||x - a|| <= r with c != 0: unique x = a - r c/||c||, the SOC constraint "
      "strictly complementary (multiplier ||c|| > 0)")
def _socp_linear_over_ball() -> Built:
    c, a = cp.Parameter(3, name="c"), cp.Parameter(3, name="a")
    x = cp.Variable(3, name="x")
    prob = cp.Problem(cp.Minimize(c @ x), [cp.norm(x - a) <= 1.5])
    return prob, [c, a], [x], [np.array([1.0, -0.5, 2.0]), np.array([0.2, 0.1, -0.3])]


@case("socp_least_norm", "SOCP", "regular",
      "least-norm solution min ||x||_2 s.t. A x = b, A of full row rank, b != 0: unique "
      "x = A'(AA')^-1 b away from the apex of the cone")
def _socp_least_norm() -> Built:
    rng = np.random.default_rng(15)
    A = rng.standard_normal((2, 4))
    b = cp.Parameter(2, name="b")
    x = cp.Variable(4, name="x")
    prob = cp.Problem(cp.Minimize(cp.norm(x)), [A @ x == b])
    return prob, [b], [x], [np.array([1.0, -2.0])]


@case("socp_norm_regression_generic", "SOCP", "regular",
      "min ||X beta - y||_2 with X of full column rank and y not in range(X): unique "
      "least-squares beta, nonzero residual (interior of the SOC's smooth part)")
def _socp_norm_generic() -> Built:
    rng = np.random.default_rng(16)
    X = rng.standard_normal((12, 4))
    y = cp.Parameter(12, name="y")
    beta = cp.Variable(4, name="beta")
    prob = cp.Problem(cp.Minimize(cp.norm(X @ beta - y)))
    return prob, [y], [beta], [rng.standard_normal(12)]


@case("socp_tie_in_max_of_norms", "SOCP", "degenerate",
      "t = min t s.t. ||p1|| <= t, ||p2|| <= t (t = max(||p1||, ||p2||)) at a tie "
      "||p1|| = ||p2|| = 1: t* unique but both cones are active for one unknown, their "
      "multipliers split 1 = s + (1 - s) along a segment, U is singular with a left null "
      "vector reaching p, and t(p) is not differentiable there")
def _socp_tie_norms() -> Built:
    p1, p2 = cp.Parameter(2, name="p1"), cp.Parameter(2, name="p2")
    t = cp.Variable(name="t")
    prob = cp.Problem(cp.Minimize(t), [cp.norm(p1) <= t, cp.norm(p2) <= t])
    return prob, [p1, p2], [t], [np.array([0.6, 0.8]), np.array([-1.0, 0.0])]


@case("socp_norm_at_apex", "SOCP", "regular",
      "min ||x - p||_2 over free x: x = p with the cone (t, x - p) at its apex 0, but the dual "
      "(1, 0) is in the cone's interior (stationarity forces the subgradient to 0), so the "
      "pair is unique and strictly complementary: smooth, dx/dp = I")
def _socp_norm_at_apex() -> Built:
    p = cp.Parameter(3, name="p")
    x = cp.Variable(3, name="x")
    prob = cp.Problem(cp.Minimize(cp.norm(x - p)))
    return prob, [p], [x], [np.array([0.4, -1.0, 2.0])]


# =========================================================================================
# SDP
# =========================================================================================

def _spectraplex(Cv: np.ndarray) -> Built:
    n = Cv.shape[0]
    C = cp.Parameter((n, n), name="C")
    X = cp.Variable((n, n), PSD=True, name="X")
    prob = cp.Problem(cp.Minimize(cp.trace(C @ X)), [cp.trace(X) == 1])
    return prob, [C], [X], [Cv]


@case("sdp_spectraplex_repeated_eig", "SDP", "degenerate",
      "min tr(CX) over {X >= 0, tr X = 1} with C = Q diag(1, 1, 2, 3) Q': the smallest "
      "eigenvalue is double, the optimal face {V W V' : W >= 0, tr W = 1} (V = first two "
      "columns of Q) is 3-dimensional and moves the output X")
def _sdp_spectraplex_repeated() -> Built:
    Q = _rotation(4, 21)
    return _spectraplex(Q @ np.diag([1.0, 1.0, 2.0, 3.0]) @ Q.T)


@case("sdp_elliptope_constant_objective", "SDP", "degenerate",
      "MaxCut relaxation min tr(CX) s.t. diag X = 1, X >= 0 at C = I: tr X = 3 on the whole "
      "feasible set (the elliptope), so every correlation matrix is optimal and the "
      "off-diagonal entries of the output X move freely")
def _sdp_elliptope_constant() -> Built:
    return _maxcut(np.eye(3))


def _maxcut(Cv: np.ndarray) -> Built:
    n = Cv.shape[0]
    C = cp.Parameter((n, n), name="C")
    X = cp.Variable((n, n), PSD=True, name="X")
    prob = cp.Problem(cp.Minimize(cp.trace(C @ X)), [cp.diag(X) == 1])
    return prob, [C], [X], [Cv]


@case("sdp_nuclear_norm_completion", "SDP", "degenerate",
      "min ||X||_* s.t. X11 = m1, X22 = m2 (2 x 2, off-diagonal unobserved), m = (1, 1): "
      "||X||_* >= tr X = 2 with equality iff X is symmetric PSD, so every [[1, a], [a, 1]], "
      "|a| <= 1, is optimal; a moves the output X")
def _sdp_nuclear_completion() -> Built:
    m = cp.Parameter(2, name="m")
    X = cp.Variable((2, 2), name="X")
    prob = cp.Problem(cp.Minimize(cp.normNuc(X)), [X[0, 0] == m[0], X[1, 1] == m[1]])
    return prob, [m], [X], [np.array([1.0, 1.0])]


def _lambda_max(lo_v: float) -> Built:
    # lambda_max(M(x)) with M(x) = Q diag(x, p, p/2) Q' = max(x, p, p/2) for p >= 0.
    Q = _rotation(3, 22)
    p, lo = cp.Parameter(name="p"), cp.Parameter(name="lo")
    x = cp.Variable(name="x")
    M = (x * np.outer(Q[:, 0], Q[:, 0]) + p * np.outer(Q[:, 1], Q[:, 1])
         + 0.5 * p * np.outer(Q[:, 2], Q[:, 2]))
    prob = cp.Problem(cp.Minimize(cp.lambda_max(M)), [x >= lo, x <= 1])
    return prob, [p, lo], [x], [np.array(0.5), np.array(lo_v)]


@case("sdp_lambda_max_tie", "SDP", "degenerate",
      "min lambda_max(Q diag(x, p, p/2) Q') = max(x, p, p/2) over x in [0, 1], p = 1/2: the "
      "eigenvalue p dominates for every x <= 1/2, so x in [0, 1/2] are all optimal (a tie "
      "in a max); the output x moves")
def _sdp_lambda_max_tie() -> Built:
    return _lambda_max(0.0)


@case("sdp_spectraplex_zero_objective", "SDP", "degenerate",
      "max t tr(GX) over the spectraplex at t = 0 (the cyclic problem on an SDP): the "
      "objective vanishes, every density matrix is optimal and the output X moves freely")
def _sdp_spectraplex_zero() -> Built:
    G = np.array([[1.0, 0.2, 0.0], [0.2, -1.0, 0.5], [0.0, 0.5, 0.3]])
    t = cp.Parameter(name="t")
    X = cp.Variable((3, 3), PSD=True, name="X")
    prob = cp.Problem(cp.Maximize(t * cp.trace(G @ X)), [cp.trace(X) == 1])
    return prob, [t], [X], [np.array(0.0)]


@case("sdp_nearest_correlation", "SDP", "regular",
      "nearest correlation matrix min ||X - P||_F^2 s.t. diag X = 1, X >= 0 to an indefinite "
      "unit-diagonal P: strongly convex (unique), the solution is on the PSD boundary with "
      "a strictly complementary multiplier (generic)")
def _sdp_nearest_correlation() -> Built:
    rng = np.random.default_rng(35)
    M = rng.uniform(-1, 1, (4, 4))
    Pv = (M + M.T) / 2
    np.fill_diagonal(Pv, 1.0)
    assert np.linalg.eigvalsh(Pv)[0] < -0.5  # indefinite: the answer is not P itself
    return _nearest_correlation(Pv)


def _nearest_correlation(Pv: np.ndarray) -> Built:
    n = Pv.shape[0]
    P = cp.Parameter((n, n), name="P")
    X = cp.Variable((n, n), PSD=True, name="X")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - P)), [cp.diag(X) == 1])
    return prob, [P], [X], [Pv]


@case("sdp_nearest_correlation_interior", "SDP", "regular",
      "nearest correlation matrix to a positive definite correlation P: X = P in the "
      "interior of the PSD cone, unique (strongly convex), PSD multiplier 0 strictly")
def _sdp_nearest_correlation_interior() -> Built:
    rng = np.random.default_rng(24)
    B = rng.standard_normal((4, 6))
    return _nearest_correlation(_unit_diag(B @ B.T))


@case("sdp_spectraplex_simple_eig", "SDP", "regular",
      "min tr(CX) over the spectraplex with a simple smallest eigenvalue of C: unique "
      "X = v v', dual slack C - lambda_min I of rank n - 1 (strict complementarity)")
def _sdp_spectraplex_simple() -> Built:
    Q = _rotation(4, 21)
    return _spectraplex(Q @ np.diag([0.5, 1.0, 2.0, 3.0]) @ Q.T)


@case("sdp_psd_projection", "SDP", "regular",
      "projection min ||X - P||_F^2 s.t. X >= 0 of a symmetric P with eigenvalues "
      "(2, 1, -0.5, -1), none zero: X = P_+ unique, strictly complementary")
def _sdp_psd_projection() -> Built:
    return _psd_projection(np.array([2.0, 1.0, -0.5, -1.0]))


def _psd_projection(eigs: np.ndarray) -> Built:
    Q = _rotation(4, 25)
    Pv = Q @ np.diag(eigs) @ Q.T
    P = cp.Parameter((4, 4), name="P")
    X = cp.Variable((4, 4), PSD=True, name="X")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - P)))
    return prob, [P], [X], [Pv]


@case("sdp_maxcut_generic", "SDP", "regular",
      "MaxCut relaxation min tr(CX), diag X = 1, X >= 0 with a generic symmetric C: unique and "
      "nondegenerate with strict complementarity (Alizadeh-Haeberly-Overton: generic); this "
      "C gives a rank-2 X (eigenvalues 1.23, 2.77), not a cut, so X moves with C")
def _sdp_maxcut_generic() -> Built:
    rng = np.random.default_rng(32)
    M = rng.standard_normal((4, 4))
    return _maxcut((M + M.T) / 2)


@case("sdp_lambda_max_unique", "SDP", "regular",
      "min lambda_max(Q diag(x, p, p/2) Q') = max(x, 1/2, 1/4) over x in [0.8, 1]: the "
      "x-eigenvalue is the simple largest one, so x = 0.8 is unique with the lower bound "
      "strictly active")
def _sdp_lambda_max_unique() -> Built:
    return _lambda_max(0.8)


@case("sdp_lambda_max_value_tie", "SDP", "degenerate",
      "t = min t s.t. t I >= Q diag(p1, p2) Q' (t = lambda_max) at a double top eigenvalue "
      "p1 = p2 = 1: t* = 1 unique, slack tI - M = 0, and the dual Z = Q diag(s, 1 - s) Q' "
      "is a segment; U is singular with a left null vector reaching p, and t(p) = max(p1, p2) "
      "is not differentiable (the solver's arbitrary Z picks the gradient)")
def _sdp_lambda_max_value_tie() -> Built:
    Q = _rotation(2, 27)
    p = cp.Parameter(2, name="p")
    t = cp.Variable(name="t")
    M = p[0] * np.outer(Q[:, 0], Q[:, 0]) + p[1] * np.outer(Q[:, 1], Q[:, 1])
    prob = cp.Problem(cp.Minimize(t), [t * np.eye(2) - M >> 0])
    return prob, [p], [t], [np.array([1.0, 1.0])]


@case("sdp_psd_projection_zero_eig", "SDP", "regular",
      "projection onto the PSD cone of P with eigenvalues (2, 1, 0, -1): X = P_+ unique, the "
      "zero eigenvalue is a kink of the projection (zero multiplier and zero slack on that "
      "eigenvector); each selection is invertible: merely nonsmooth")
def _sdp_psd_projection_zero() -> Built:
    return _psd_projection(np.array([2.0, 1.0, 0.0, -1.0]))


# =========================================================================================
# Evaluation
# =========================================================================================

@dataclass
class Row:
    name: str
    family: str
    label: str
    predicted: bool
    warnings: tuple[str, ...]
    sigma_min: float
    nullity: int
    output_weight: float
    seconds: float
    error: str | None = None


def run_case(c: Case, solver_args: dict | None = None) -> Row:
    """Solve the case, run the vjp of the sum of the outputs (which runs the checks), and
    record the trust warnings emitted for it."""
    t0 = time.perf_counter()
    prob, params, variables, values = c.build()
    core = LayerCore(prob, params, variables)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = core.forward(values, solver_args)
        core.vjp(result, [np.ones((1,) + o.shape[1:]) for o in result.outputs])
    kinds = [w.category for w in caught if issubclass(w.category, ConelayersWarning)]
    report = result.reports[0]
    sels = report.selections
    return Row(
        name=c.name,
        family=c.family,
        label=c.label,
        predicted=any(issubclass(k, POSITIVE_WARNINGS) for k in kinds),
        warnings=tuple(sorted({k.__name__.removesuffix("Warning") for k in kinds})),
        sigma_min=abs(min((s.sigma_min for s in sels), default=float("nan"))),
        nullity=max((s.nullity for s in sels), default=0),
        output_weight=max((s.output_weight for s in sels), default=0.0),
        seconds=time.perf_counter() - t0,
    )


def evaluate(solver_args: dict | None = None) -> dict:
    """Run every case; return the rows, the confusion matrix, precision and recall
    (positive = degenerate = a SingularJacobian or NonUniqueSolution warning)."""
    t0 = time.perf_counter()
    ordered = sorted(CASES, key=lambda c: (FAMILIES.index(c.family), LABELS.index(c.label)))
    rows = [run_case(c, solver_args) for c in ordered]
    tp = sum(r.predicted and r.label == "degenerate" for r in rows)
    fp = sum(r.predicted and r.label == "regular" for r in rows)
    fn = sum(not r.predicted and r.label == "degenerate" for r in rows)
    tn = sum(not r.predicted and r.label == "regular" for r in rows)
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return {
        "n_problems": len(rows),
        "counts": {lab: sum(r.label == lab for r in rows) for lab in LABELS},
        "families": {fam: sum(r.family == fam for r in rows) for fam in FAMILIES},
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "precision": precision,
        "recall": recall,
        "misclassified": [r.name for r in rows if r.predicted != (r.label == "degenerate")],
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }


def format_report(res: dict) -> str:
    lines = [
        f"{'name':34} {'family':6} {'label':10} {'pred':5} {'σ_min/σ_max':>11} {'null':>4} "
        f"{'out.w':>7}  warnings",
    ]
    for r in res["rows"]:
        mark = "" if r.predicted == (r.label == "degenerate") else "  <-- MISCLASSIFIED"
        lines.append(
            f"{r.name:34} {r.family:6} {r.label:10} {'pos' if r.predicted else 'neg':5} "
            f"{r.sigma_min:11.1e} {r.nullity:4d} {r.output_weight:7.2g}  "
            f"{', '.join(r.warnings) or '-'}{mark}"
        )
    cm = res["confusion"]
    lines += [
        "",
        f"{res['n_problems']} problems: {res['counts']}, families {res['families']}",
        "confusion matrix (rows: label, columns: predicted)",
        f"{'':12} {'positive':>9} {'negative':>9}",
        f"{'degenerate':12} {cm['tp']:9d} {cm['fn']:9d}",
        f"{'regular':12} {cm['fp']:9d} {cm['tn']:9d}",
        f"precision {res['precision']:.3f}   recall {res['recall']:.3f}",
        f"misclassified: {', '.join(res['misclassified']) or 'none'}",
        f"time {res['seconds']:.1f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the report; with ``--reasons``, also each case's label and its reason."""
    args = sys.argv[1:] if argv is None else argv
    print(format_report(evaluate()))
    if "--reasons" in args:
        print()
        for c in sorted(CASES, key=lambda c: (FAMILIES.index(c.family), LABELS.index(c.label))):
            print(f"{c.name} [{c.family}, {c.label}]: {c.reason}")


if __name__ == "__main__":
    main()
