"""The contract every cone block must satisfy, as reusable check functions.

Each ``check_*`` takes a ConeBlock (or a ProductCone) and a point v and raises
AssertionError on failure. Cones are described to CVXPY and diffcp through
``block_dims``, which maps a block to the ConeDims of the same rows.
"""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
from diffcp import _diffcp
from diffcp import cones as dcones

from canonicalize.cones import ConeDims
from conelayers.cones import (
    SELECTIONS,
    ConeBlock,
    ConeJacobian,
    NonnegCone,
    ProductCone,
    PsdCones,
    SecondOrderCones,
    ZeroCone,
    smat,
    svec_size,
)

# ---------------------------------------------------------------------------- helpers


def block_dims(block: ConeBlock) -> ConeDims:
    """The ConeDims describing exactly the rows of ``block``."""
    if isinstance(block, ProductCone):
        return block.dims
    if isinstance(block, ZeroCone):
        return ConeDims(zero=block.size)
    if isinstance(block, NonnegCone):
        return ConeDims(nonneg=block.size)
    if isinstance(block, SecondOrderCones):
        return ConeDims(soc=block.sizes)
    if isinstance(block, PsdCones):
        return ConeDims(psd=block.orders)
    if type(block).__name__ == "ExpCones":  # conelayers.cones.exp, written separately
        count = int(getattr(block, "count", block.size // 3))
        if getattr(block, "dual", False):
            return ConeDims(exp_dual=count)
        return ConeDims(exp=count)
    raise TypeError(f"no ConeDims known for {block!r}")


def _segments(dims: ConeDims) -> list[tuple[str, slice, object]]:
    """(kind, rows, parameter) of each elementary cone (zero/nonneg as one segment)."""
    out: list[tuple[str, slice, object]] = []
    o = 0

    def add(kind: str, n: int, param: object = None) -> None:
        nonlocal o
        out.append((kind, slice(o, o + n), param))
        o += n

    if dims.zero:
        add("zero", dims.zero)
    if dims.nonneg:
        add("nonneg", dims.nonneg)
    for s in dims.soc:
        add("soc", s)
    for n in dims.psd:
        add("psd", svec_size(n), n)
    for _ in range(dims.exp):
        add("exp", 3)
    for _ in range(dims.exp_dual):
        add("exp_dual", 3)
    return out


def in_dual_cone(block: ConeBlock, x: np.ndarray, tol: float, dual: bool = True) -> bool:
    """x ∈ K* (dual=True) or x ∈ K, up to ``tol``, tested from the definitions (the
    exponential cones through diffcp's independent projection)."""
    for kind, sl, _ in _segments(block_dims(block)):
        xs = x[sl]
        if kind == "zero":
            ok = True if dual else bool(np.all(np.abs(xs) <= tol))
        elif kind == "nonneg":
            ok = bool(np.all(xs >= -tol))
        elif kind == "soc":
            ok = bool(np.linalg.norm(xs[1:]) <= xs[0] + tol)
        elif kind == "psd":
            ok = bool(np.linalg.eigvalsh(smat(xs)).min() >= -tol)
        else:
            cone = {"ep": 1} if kind == "exp" else {"ed": 1}
            p = dcones.pi(xs, dcones.parse_cone_dict(cone), dual=dual)
            ok = bool(np.linalg.norm(p - xs) <= tol)
        if not ok:
            return False
    return True


def _svec_matrix(n: int) -> np.ndarray:
    """S with svec(X) = S @ vec(X, column-major), reading the lower triangle."""
    cols, rows = np.triu_indices(n)
    S = np.zeros((svec_size(n), n * n))
    S[np.arange(len(rows)), cols * n + rows] = np.where(rows == cols, 1.0, np.sqrt(2.0))
    return S


def cvxpy_project_dual(block: ConeBlock, v: np.ndarray) -> np.ndarray:
    """Π_{K*}(v) by solving min ‖x − v‖² s.t. x ∈ K* with CVXPY + Clarabel (tight tol)."""
    x = cp.Variable(block.size)
    cons = []
    for kind, sl, param in _segments(block_dims(block)):
        xs = x[sl]
        if kind == "nonneg":
            cons.append(xs >= 0)
        elif kind == "soc":
            if sl.stop - sl.start == 1:
                cons.append(xs >= 0)
            else:
                cons.append(cp.SOC(xs[0], xs[1:]))
        elif kind == "psd":
            n = int(param)  # type: ignore[arg-type]
            X = cp.Variable((n, n), symmetric=True)
            cons += [X >> 0, xs == _svec_matrix(n) @ cp.vec(X, order="F")]
        elif kind == "exp":  # K* is the dual exp cone: (u, v, w) ∈ K* ⇔ (u−v, −u, w) ∈ K_exp
            cons.append(cp.ExpCone(xs[0] - xs[1], -xs[0], xs[2]))
        elif kind == "exp_dual":  # K* is the primal exp cone
            cons.append(cp.ExpCone(xs[0], xs[1], xs[2]))
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - v)), cons)
    # Tight tolerances sometimes end "optimal_inaccurate" (stalled near 1e-10), still far
    # below the comparison tolerance; the caller compares the point itself.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        prob.solve(
            solver=cp.CLARABEL,
            tol_gap_abs=1e-10,
            tol_gap_rel=1e-10,
            tol_feas=1e-10,
            tol_ktratio=1e-8,
            max_iter=500,
        )
    assert prob.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE), prob.status
    return np.asarray(x.value)


def _diffcp_cones(block: ConeBlock) -> list:
    return dcones.parse_cone_dict(block_dims(block).to_scs())


def diffcp_project_dual(block: ConeBlock, v: np.ndarray) -> np.ndarray:
    """diffcp's Π_{K*}(v)."""
    return dcones.pi(v, _diffcp_cones(block), dual=True)


def diffcp_jacobian_dual(block: ConeBlock, v: np.ndarray) -> np.ndarray:
    """diffcp's (dense) derivative of Π_{K*} at v."""
    cones = dcones.parse_cone_dict_cpp(_diffcp_cones(block))
    return np.asarray(_diffcp.dprojection_dense(v, cones, True))


def dense(J: ConeJacobian) -> np.ndarray:
    """J as a dense matrix, built from matvecs (independent of tosparse)."""
    n = J.shape[0]
    return np.column_stack([J.matvec(e) for e in np.eye(n)]) if n else np.zeros((0, 0))


def random_point(
    block: ConeBlock,
    rng: np.random.Generator,
    min_kink_distance: float = 0.05,
    max_tries: int = 10_000,
) -> np.ndarray:
    """A standard-normal point whose elementary cones are all at least
    ``min_kink_distance`` from their kinks (rejection per draw)."""
    for _ in range(max_tries):
        v = rng.standard_normal(block.size)
        if np.all(block.kink_distance(v) >= min_kink_distance):
            return v
    raise RuntimeError(f"no point {min_kink_distance} away from kinks found for {block!r}")


def assert_loewner_le(A: np.ndarray, B: np.ndarray, tol: float = 1e-10) -> None:
    """A ≼ B (both symmetric), up to tol."""
    if A.size:
        lo = np.linalg.eigvalsh(0.5 * ((B - A) + (B - A).T)).min()
        assert lo >= -tol, f"not A ≼ B: min eigenvalue of B − A is {lo}"


# ----------------------------------------------------------------------- the checks


def check_projection(block: ConeBlock, v: np.ndarray, tol: float = 1e-10) -> None:
    """Π_{K*}(v) ∈ K*, and projecting again does not move it."""
    p = block.project_dual(v)
    assert p.shape == (block.size,) and p.dtype == np.float64
    assert in_dual_cone(block, p, tol), "projection is not in K*"
    np.testing.assert_allclose(block.project_dual(p), p, rtol=0, atol=tol)


def check_moreau(block: ConeBlock, v: np.ndarray, tol: float = 1e-10) -> None:
    """Moreau: v = Π_{K*}(v) − Π_K(−v), Π_K(−v) ∈ K, and the two parts are orthogonal."""
    p = block.project_dual(v)
    q = block.project(-v)
    assert in_dual_cone(block, q, tol, dual=False), "Π_K(−v) is not in K"
    np.testing.assert_allclose(p - q, v, rtol=0, atol=tol)
    assert abs(p @ q) <= tol * (1.0 + v @ v)


def central_differences(block: ConeBlock, v: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """The Jacobian of Π_{K*} at v by central differences with step h."""
    n = block.size
    fd = np.empty((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = h
        fd[:, j] = (block.project_dual(v + e) - block.project_dual(v - e)) / (2 * h)
    return fd


def check_jacobian_fd(block: ConeBlock, v: np.ndarray, selection: str = "lower") -> None:
    """J matches central differences of Π_{K*} at v (v away from kinks).

    h = 1e-6: the truncation error is O(h²·‖D³Π‖) ~ 1e-12/dist² with dist >= 0.05 the
    distance to the nearest kink (so the segment [v − h e, v + h e] stays on one smooth
    piece), and the rounding error is O(ε‖Π‖/h) ~ 1e-10; atol 1e-6 leaves wide margin
    while still catching any wrong entry (entries are O(1)).
    """
    J = dense(block.jacobian_dual(v, selection))
    np.testing.assert_allclose(J, central_differences(block, v, h=1e-6), rtol=0, atol=1e-6)


def check_sparse_matches_operator(J: ConeJacobian) -> None:
    """tosparse() is the same matrix as the matrix-free matvec, and is CSC."""
    S = J.tosparse()
    assert S.format == "csc" and S.shape == J.shape
    np.testing.assert_allclose(S.toarray(), dense(J), rtol=0, atol=1e-13)


def check_adjoint(J: ConeJacobian, rng: np.random.Generator) -> None:
    """⟨Jx, y⟩ = ⟨x, Jᵀy⟩ (with rmatvec, the .T operator and on matrices)."""
    n = J.shape[0]
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    scale = 1.0 + np.abs(x).sum() * np.abs(y).sum()
    assert abs(J.matvec(x) @ y - x @ J.rmatvec(y)) <= 1e-12 * scale
    np.testing.assert_allclose(J.T.matvec(y), J.rmatvec(y), rtol=0, atol=1e-14)
    X = rng.standard_normal((n, 2))
    np.testing.assert_allclose(
        J.matmat(X), np.column_stack([J.matvec(c) for c in X.T]), rtol=0, atol=1e-13
    )
    assert J.matvec(x).shape == (n,) and J.matvec(x[:, None]).shape == (n, 1)


def check_jacobian_properties(
    block: ConeBlock, v: np.ndarray, kink_tol: float = 0.0, tol: float = 1e-10
) -> None:
    """At any v (kinks included) and for every selection: J is symmetric, 0 ≼ J ≼ I
    (projections onto convex sets are nonexpansive monotone maps), J v = Π_{K*}(v) (Euler's
    identity for the positively homogeneous Π, which passes to Clarke limits and hulls),
    and lower ≼ upper."""
    p = block.project_dual(v)
    mats = {}
    for sel in SELECTIONS:
        J = dense(block.jacobian_dual(v, sel, kink_tol))
        np.testing.assert_allclose(J, J.T, rtol=0, atol=tol)
        assert_loewner_le(np.zeros_like(J), J, tol)
        assert_loewner_le(J, np.eye(block.size), tol)
        if kink_tol == 0.0:
            np.testing.assert_allclose(J @ v, p, rtol=0, atol=tol * (1 + np.abs(v).max()))
        mats[sel] = J
    assert_loewner_le(mats["lower"], mats["upper"], tol)


def check_against_cvxpy(block: ConeBlock, v: np.ndarray, atol: float = 1e-6) -> None:
    """Π_{K*}(v) equals the solution of the projection problem solved by Clarabel
    (interior-point, so agreement is limited to ~1e-8; atol 1e-6 for margin)."""
    np.testing.assert_allclose(
        block.project_dual(v), cvxpy_project_dual(block, v), rtol=0, atol=atol
    )


def check_against_diffcp(
    block: ConeBlock,
    v: np.ndarray,
    atol: float = 1e-9,
    jac_atol: float | None = None,
    guard_with_fd: bool = False,
) -> None:
    """Projection and derivative equal diffcp's at v (v away from kinks).

    With ``guard_with_fd``, the derivative is compared only where diffcp's agrees with
    central differences of our projection: diffcp's exponential-cone projection is only
    accurate to ~1e-5 and its derivative is wrong near some region boundaries (e.g. at
    v = (-0.05486, 0.89874, -0.91479) on "ep" it differs from central differences by 1).
    """
    jac_atol = atol if jac_atol is None else jac_atol
    np.testing.assert_allclose(
        block.project_dual(v), diffcp_project_dual(block, v), rtol=0, atol=atol
    )
    theirs = diffcp_jacobian_dual(block, v)
    if guard_with_fd and np.abs(theirs - central_differences(block, v)).max() > jac_atol:
        return
    np.testing.assert_allclose(dense(block.jacobian_dual(v)), theirs, rtol=0, atol=jac_atol)


def check_kink_distance_shape(block: ConeBlock, v: np.ndarray) -> None:
    """kink_distance is nonnegative and has one entry per elementary cone."""
    d = block.kink_distance(v)
    assert d.ndim == 1 and np.all(d >= 0)


__all__ = [
    "assert_loewner_le",
    "block_dims",
    "check_adjoint",
    "check_against_cvxpy",
    "check_against_diffcp",
    "check_jacobian_fd",
    "check_jacobian_properties",
    "check_kink_distance_shape",
    "check_moreau",
    "central_differences",
    "check_projection",
    "check_sparse_matches_operator",
    "cvxpy_project_dual",
    "dense",
    "diffcp_jacobian_dual",
    "diffcp_project_dual",
    "in_dual_cone",
    "random_point",
]
