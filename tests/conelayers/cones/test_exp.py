"""Exponential cones: projections (against a 60-digit mpmath reference, CVXPY + Clarabel
and diffcp), Clarke-Jacobian elements (central differences, diffcp, kinks) and the
kink distance. Seeded, float64."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar

from conelayers.cones.exp import ExpCones, ExpJacobian
from tests.conelayers.cones import contract

mp = pytest.importorskip("mpmath")

DUALS = (False, True)
E1 = np.e


# ------------------------------------------------------------------- references


def proj_k_ref(v: np.ndarray, dps: int = 60) -> np.ndarray:
    """Π_K(v) in 60-digit arithmetic: the case analysis, then bisection on h (ρ to
    ~1e-100) and σ = ⟨v, a⟩/‖a‖² (well conditioned even where σ ≈ 0)."""
    with mp.workdps(dps):
        r, s, t = (mp.mpf(float(x)) for x in v)
        zero = mp.mpf(0)
        if (s > 0 and s * mp.exp(r / s) <= t) or (s == 0 and r <= 0 and t >= 0):
            out = (r, s, t)
        elif (r > 0 and r * mp.exp(s / r - 1) <= -t) or (r == 0 and s <= 0 and t <= 0):
            out = (zero, zero, zero)
        elif r <= 0 and s <= 0:
            out = (r, zero, max(t, zero))
        else:

            def h(x):
                return (
                    ((x - 1) * r + s) * mp.exp(x) - (r - x * s) * mp.exp(-x) - (x * x - x + 1) * t
                )

            lo = 1 - s / r if r > 0 else None
            hi = r / s if s > 0 else None
            if hi is None:
                k = 0
                while h(lo + 2**k) < 0:
                    k += 1
                hi = lo + 2**k
            if lo is None:
                k = 0
                while h(hi - 2**k) > 0:
                    k += 1
                lo = hi - 2**k
            for _ in range(400):
                mid = (lo + hi) / 2
                if h(mid) < 0:
                    lo = mid
                else:
                    hi = mid
            x = (lo + hi) / 2
            a = (x, mp.mpf(1), mp.exp(x))
            sig = (a[0] * r + a[1] * s + a[2] * t) / (a[0] ** 2 + a[1] ** 2 + a[2] ** 2)
            out = tuple(sig * c for c in a)
        return np.array([float(c) for c in out])


def ref_project_dual(cone: ExpCones, v: np.ndarray) -> np.ndarray:
    """Reference Π_{K*} (dual=False, via Moreau: v + Π_K(−v)) or Π_K (dual=True)."""
    V = v.reshape(-1, 3)
    if cone.dual:
        return np.concatenate([proj_k_ref(x) for x in V])
    # Π_{K*}(v) = v + Π_K(−v), summed in high precision
    out = []
    for x in V:
        with mp.workdps(60):
            pk = proj_k_ref(-x, dps=60)
        out.append(x + pk)
    return np.concatenate(out)


def in_k(x: np.ndarray, tol: float) -> bool:
    """(r, s, t) ∈ K_exp up to tol, from the definition (either branch)."""
    r, s, t = (float(c) for c in x)
    if s > 0:
        with np.errstate(over="ignore"):
            if s * np.exp(r / s) <= t + tol:
                return True
    return abs(s) <= tol and r <= tol and t >= -tol


def in_kstar(x: np.ndarray, tol: float) -> bool:
    """(u, v, w) ∈ K*_exp up to tol: u < 0, −u·e^{v/u} ≤ e·w, or u = 0, v, w ≥ 0."""
    u, v, w = (float(c) for c in x)
    if u < 0:
        with np.errstate(over="ignore"):
            if -u * np.exp(v / u) <= E1 * w + tol:
                return True
    return abs(u) <= tol and v >= -tol and w >= -tol


def in_target(cone: ExpCones, x: np.ndarray, tol: float, of_dual: bool = True) -> bool:
    """x in the cone that project_dual (of_dual) or project (not of_dual) targets."""
    primal_target = cone.dual if of_dual else not cone.dual
    test = in_k if primal_target else in_kstar
    return all(test(c, tol) for c in x.reshape(-1, 3))


def region_points(rng: np.random.Generator) -> np.ndarray:
    """Points in each case region of Π_K (and so, negated, of Π_{K*}): int K, int K°,
    r, s ≤ 0 (t of both signs), and the boundary piece from each bracket case."""
    pts = []
    for _ in range(4):
        rho, sig, mu = rng.uniform(-3, 3), rng.uniform(0.2, 2), rng.uniform(0.2, 2)
        a = np.array([rho, 1.0, np.exp(rho)])
        b = np.array([1.0, 1.0 - rho, -np.exp(-rho)])
        pts += [
            sig * a + mu * b,  # boundary piece
            sig * a - 0.5 * mu * b / np.linalg.norm(b),  # int K (near ∂K)
            mu * b - 0.5 * sig * a / np.linalg.norm(a),
        ]  # int K° (near ∂K°)
    pts += [
        [-1.0, -2.0, 1.5],
        [-1.0, -0.5, -1.0],
        [2.0, -1.0, 0.5],
        [-2.0, 0.5, -0.3],
        [1.0, 1.0, -3.0],
        [0.5, 2.0, 0.1],
        [-0.2, 3.0, 10.0],
        [3.0, -0.5, -20.0],
    ]
    return np.array(pts, dtype=np.float64)


def smooth_points(
    dual: bool, n: int, rng: np.random.Generator, min_dist: float = 0.05
) -> np.ndarray:
    """n standard-normal triples at least ``min_dist`` from the kinks of project_dual."""
    out = np.zeros((0, 3))
    while len(out) < n:
        x = rng.standard_normal((4 * n, 3))
        keep = ExpCones(4 * n, dual).kink_distance(x.ravel()) >= min_dist
        out = np.concatenate([out, x[keep]])
    return out[:n].ravel()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)


# ------------------------------------------------------------------- projections


@pytest.mark.parametrize("dual", DUALS)
def test_projection_in_cone_and_idempotent(dual: bool, rng: np.random.Generator) -> None:
    n = 300
    cone = ExpCones(n, dual)
    v = 2.0 * rng.standard_normal(3 * n)
    p = cone.project_dual(v)
    assert p.shape == (3 * n,) and p.dtype == np.float64
    assert in_target(cone, p, 1e-12)
    np.testing.assert_allclose(cone.project_dual(p), p, rtol=0, atol=1e-13)
    q = cone.project(v)
    assert in_target(cone, q, 1e-12, of_dual=False)
    np.testing.assert_allclose(cone.project(q), q, rtol=0, atol=1e-13)


@pytest.mark.parametrize("dual", DUALS)
def test_moreau_and_orthogonality(dual: bool, rng: np.random.Generator) -> None:
    """v = Π_{C*}(v) − Π_C(−v) and ⟨Π_{C*}(v), Π_C(−v)⟩ = 0 per cone, to rounding."""
    n = 500
    cone = ExpCones(n, dual)
    v = 3.0 * rng.standard_normal(3 * n)
    p, q = cone.project_dual(v), cone.project(-v)
    np.testing.assert_allclose(p - q, v, rtol=0, atol=1e-14 * np.abs(v).max())
    inner = np.einsum("ni,ni->n", p.reshape(-1, 3), q.reshape(-1, 3))
    assert np.abs(inner).max() <= 1e-14 * (1 + np.abs(v).max() ** 2)


@pytest.mark.parametrize("dual", DUALS)
def test_against_high_precision_reference(dual: bool, rng: np.random.Generator) -> None:
    """Accurate to a few ulps of ‖v‖ (well below the 1e-12 target) on random points and
    on each case region."""
    pts = np.concatenate([region_points(rng), 2.0 * rng.standard_normal((60, 3))])
    pts = np.concatenate([pts, -pts])
    cone = ExpCones(len(pts), dual)
    v = pts.ravel()
    err = np.abs(cone.project_dual(v) - ref_project_dual(cone, v)).reshape(-1, 3).max(1)
    assert np.all(err <= 1e-14 * np.maximum(1.0, np.abs(pts).max(1))), err.max()


@pytest.mark.parametrize("dual", DUALS)
def test_against_cvxpy_clarabel(dual: bool, rng: np.random.Generator) -> None:
    """min ‖p − v‖² s.t. p ∈ cone, by Clarabel at tolerances 1e-10 (contract helper), one
    solve per point, ~50 points covering every case region.

    Clarabel stops with an objective ~1e-11..1e-9 above the optimum, which by strong
    convexity (f(x) − f(p*) ≥ ‖x − p*‖²) only pins the point to ~√1e-9 ≈ 3e-5 (measured:
    up to 1.3e-5 against the 60-digit reference, median 1e-10). So the sharp check is:
    our objective is never worse than Clarabel's (beyond 1e-12 rounding), and
    ‖ours − Clarabel‖² ≤ f(Clarabel) − f(ours) + 1e-9 (the strong-convexity bound, with
    1e-9 for Clarabel's ~1e-10 infeasibility); points where Clarabel is tight agree to
    1e-6 (the contract's check)."""
    pts = np.concatenate([region_points(rng), rng.standard_normal((14, 3))])
    pts = np.concatenate([pts, -pts[::2]])
    cone = ExpCones(1, dual)
    n_tight = 0
    for x in pts:
        ours, cl = cone.project_dual(x), contract.cvxpy_project_dual(cone, x)
        f_ours, f_cl = np.sum((ours - x) ** 2), np.sum((cl - x) ** 2)
        assert f_ours <= f_cl + 1e-12 * (1 + x @ x)
        assert np.sum((ours - cl) ** 2) <= f_cl - f_ours + 1e-9
        if f_cl - f_ours <= 1e-13:
            contract.check_against_cvxpy(cone, x, atol=1e-6)
            n_tight += 1
    assert n_tight >= 5


@pytest.mark.parametrize("dual", DUALS)
def test_against_diffcp(dual: bool, rng: np.random.Generator) -> None:
    """diffcp 1.1.9's project_exp_cone (bisection on an older formulation) is accurate to
    ~1e-5 only at some points (measured against mpmath: ours 1e-16, theirs up to 6e-6), so
    the projections agree to atol 1e-4, and wherever they differ by more than 1e-9 ours is
    the one nearer the 60-digit reference. Derivatives at smooth points (kink distance >=
    0.05) agree to 1e-5 where diffcp's projection is accurate (to 1e-8)."""
    n = 200
    cone = ExpCones(n, dual)
    v = smooth_points(dual, n, rng)
    ours, theirs = cone.project_dual(v), contract.diffcp_project_dual(cone, v)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    diff = np.abs(ours - theirs).reshape(-1, 3).max(1)
    for i in np.flatnonzero(diff > 1e-9)[:20]:
        sl = slice(3 * i, 3 * i + 3)
        ref = ref_project_dual(ExpCones(1, dual), v[sl])
        assert np.abs(ours[sl] - ref).max() < np.abs(theirs[sl] - ref).max()
    # derivative: diffcp differentiates at its own projection, so compare where that
    # projection is accurate (agrees with ours to 1e-8: most cones); elsewhere diffcp's
    # derivative can be far off (e.g. v = (−0.0987, 1.219, −2.333), dual=False: diffcp's
    # projection is 5e-5 off and its derivative 0.9 off; ours matches central differences)
    good = np.flatnonzero(diff <= 1e-8)
    assert len(good) >= 0.8 * n
    idx = (3 * good[:40, None] + np.arange(3)).ravel()
    small = ExpCones(len(idx) // 3, dual)
    J = contract.dense(small.jacobian_dual(v[idx]))
    np.testing.assert_allclose(J, contract.diffcp_jacobian_dual(small, v[idx]), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "step", [4, pytest.param(1, marks=pytest.mark.slow, id="full-grid")], ids=str
)
@pytest.mark.parametrize("dual", DUALS)
def test_extreme_inputs(dual: bool, step: int, rng: np.random.Generator) -> None:
    """Huge and tiny scales, zeros in every coordinate, and Friberg's grid ±e^k
    (k = −20..21 in steps of ``step``, and 0; the full grid, 614k points, is in the slow
    suite): finite, in the cone, Moreau to rounding, and (on a sample) equal to the
    reference to 1e-13 relative."""
    ks = np.arange(-20, 22, step)
    vals = np.concatenate([-np.exp(ks), [0.0], np.exp(ks)])
    grid = np.stack(np.meshgrid(vals, vals, vals, indexing="ij"), -1).reshape(-1, 3)
    base = rng.standard_normal((40, 3))
    special = np.array(
        [
            [1.0, 0.0, 1.0],
            [-1.0, 0.0, -1.0],
            [1.0, 1.0, 0.0],
            [1.0, -1.0, 0.0],
            [0.0, 1.0, -1.0],
            [0.0, -1.0, 1.0],
            [1.0, 0.0, 0.0],
            [0.0, 0.0, -1.0],
            [1e-300, 1.0, 1.0],
            [1.0, 1e-300, -1.0],
            [-1.0, 1e-300, -1.0],
            [1e300, -1e300, 1e300],
            [1.0, 1e-20, 1.0],
            [1.0, -1e-20, 1e-20],
        ]
    )
    finite = np.abs(special).max(1) <= 1.0
    pts = np.concatenate(
        [
            grid,
            base * 1e6,
            base * 1e-8,
            special,
            special * 1e-200,
            special[finite] * 1e200,
            -special,
        ]
    )
    cone = ExpCones(len(pts), dual)
    v = pts.ravel()
    p, q = cone.project_dual(v), cone.project(-v)
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(q))
    scale = np.abs(pts).max(1)
    moreau = np.abs((p - q - v).reshape(-1, 3)).max(1)
    assert np.all(moreau <= 2e-15 * scale), (moreau / np.maximum(scale, 1e-300)).max()
    unit = np.where(scale > 0, scale, 1.0)[:, None]
    inner = np.abs(np.einsum("ni,ni->n", p.reshape(-1, 3) / unit, q.reshape(-1, 3) / unit))
    assert np.all(inner <= 1e-15)
    ok = [
        in_target(ExpCones(1, dual), p[3 * i : 3 * i + 3], 1e-13 * scale[i])
        for i in range(len(pts))
    ]
    assert all(ok)
    sample = np.concatenate(
        [rng.choice(len(grid), 150, replace=False), np.arange(len(grid), len(pts))]
    )
    for i in sample:
        sl = slice(3 * i, 3 * i + 3)
        ref = ref_project_dual(ExpCones(1, dual), v[sl])
        assert np.abs(p[sl] - ref).max() <= 1e-13 * scale[i], (v[sl], p[sl], ref)
    J = cone.jacobian_dual(v)
    assert np.all(np.isfinite(J.mats))


@settings(max_examples=300, deadline=None)
@given(
    x=st.lists(
        st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False), min_size=3, max_size=3
    ),
    e=st.integers(-150, 150),
    dual=st.booleans(),
)
def test_property_moreau_membership(x: list[float], e: int, dual: bool) -> None:
    """For any v: finite, in the cone, Moreau and orthogonality to rounding, positive
    homogeneity (powers of 2: exact but for subnormals), and symmetric 0 ≼ J ≼ I."""
    v = np.ldexp(np.array(x), e)
    scale = np.abs(v).max()
    # Relative accuracy needs normal floats: below ~1e-290 the outputs can be subnormal,
    # whose absolute rounding (5e-324) is a relative error of 1e-14 and more at 1e-310
    # (hypothesis finds such v: x ~ 1e-304 scaled by 2^-30).
    assume(scale == 0 or scale >= 1e-290)
    cone = ExpCones(1, dual)
    p, q = cone.project_dual(v), cone.project(-v)
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(q))
    assert np.abs(p - q - v).max() <= 2e-15 * scale
    unit = scale if scale > 0 else 1.0  # normalized: scale² can underflow
    assert abs((p / unit) @ (q / unit)) <= 1e-15
    assert in_target(cone, p, 1e-13 * scale)
    # exact up to subnormal outputs, whose scaling rounds
    np.testing.assert_allclose(cone.project_dual(4.0 * v), 4.0 * p, rtol=0, atol=1e-15 * 4 * scale)
    J = contract.dense(cone.jacobian_dual(v))
    np.testing.assert_allclose(J, J.T, rtol=0, atol=1e-12)
    contract.assert_loewner_le(np.zeros((3, 3)), J, 1e-10)
    contract.assert_loewner_le(J, np.eye(3), 1e-10)


# ---------------------------------------------------------------------- Jacobians


@pytest.mark.parametrize("selection", ["lower", "upper"])
@pytest.mark.parametrize("dual", DUALS)
def test_jacobian_central_differences(dual: bool, selection: str, rng: np.random.Generator) -> None:
    """contract.check_jacobian_fd: h = 1e-6, atol 1e-6, at points >= 0.05 from every
    kink (so the stencil stays on one smooth piece; truncation O(h²) ~ 1e-12, rounding
    O(ε/h) ~ 1e-10)."""
    cone = ExpCones(10, dual)
    for _ in range(5):
        contract.check_jacobian_fd(cone, contract.random_point(cone, rng), selection)
    # also each case region (shifted off the kinks by construction)
    pts = region_points(rng)
    for x in np.concatenate([pts, -pts]):
        c1 = ExpCones(1, dual)
        if c1.kink_distance(x)[0] >= 0.05:
            contract.check_jacobian_fd(c1, x, selection)


@pytest.mark.parametrize("dual", DUALS)
def test_operator_sparse_adjoint(dual: bool, rng: np.random.Generator) -> None:
    cone = ExpCones(25, dual)
    for sel in ("lower", "upper"):
        J = cone.jacobian_dual(2.0 * rng.standard_normal(cone.size), sel)
        assert isinstance(J, ExpJacobian)
        contract.check_sparse_matches_operator(J)
        contract.check_adjoint(J, rng)
        x, w = rng.standard_normal(cone.size), rng.standard_normal(cone.size)
        assert abs(J.matvec(x) @ w - x @ J.rmatvec(w)) <= 1e-12 * (1 + abs(x) @ abs(w))


@pytest.mark.parametrize("dual", DUALS)
def test_jacobian_properties(dual: bool, rng: np.random.Generator) -> None:
    """Symmetric, 0 ≼ J ≼ I, J v = Π(v) (Euler) and lower ≼ upper (contract)."""
    cone = ExpCones(30, dual)
    for _ in range(3):
        contract.check_jacobian_properties(cone, 2.0 * rng.standard_normal(cone.size))
    pts = region_points(rng)
    c = ExpCones(len(pts), dual)
    contract.check_jacobian_properties(c, np.concatenate([pts, -pts])[: len(pts)].ravel())


# ---------------------------------------------------------------------- kinks


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def kink_cases() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, kink point w of Π_K, direction into the 'lower' piece, into the 'upper')."""
    out = []
    for rho in (-4.0, -0.7, 0.4, 2.5, 6.0):
        a = np.array([rho, 1.0, np.exp(rho)])
        b = np.array([1.0, 1.0 - rho, -np.exp(-rho)])
        out.append((f"S1 rho={rho}", 1.3 * a, _unit(b), -_unit(b)))  # out of K / into K
        out.append((f"S2 rho={rho}", 0.8 * b, -_unit(a), _unit(a)))  # into K° / out
    e1, e2, e3 = np.eye(3)
    out += [
        ("S3", np.array([-1.0, 0.0, 2.0]), -e2, e2),
        ("S4", np.array([0.0, -1.0, -2.0]), e1, -e1),
        ("S5", np.array([-1.0, 0.0, -2.0]), -e2, e2),
        ("S6", np.array([0.0, -1.0, 2.0]), e1, -e1),
        ("S7", np.array([-1.0, -2.0, 0.0]), -e3, e3),
    ]
    return out


CASES = kink_cases()


@pytest.mark.parametrize("dual", DUALS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kinks_limits(case: tuple, dual: bool) -> None:
    """On a kink: kink_distance 0, lower ≼ upper, and each selection equals the limit of
    the Jacobian from its side (ε = 1e-9; the smooth pieces are Lipschitz there, and
    the curved ones move by O(ε/curvature), so atol 1e-6). For dual=False the kink of
    Π_{K*} at −w mirrors that of Π_K at w, with the sides swapped (J* = I − J(−·))."""
    _, w, d_lo, d_hi = case
    cone = ExpCones(1, dual)
    x, dl, du = (w, d_lo, d_hi) if dual else (-w, -d_hi, -d_lo)
    assert cone.kink_distance(x)[0] == 0.0
    lo = contract.dense(cone.jacobian_dual(x, "lower"))
    up = contract.dense(cone.jacobian_dual(x, "upper"))
    contract.assert_loewner_le(lo, up, 1e-12)
    eps = 1e-9 * np.abs(x).max()
    np.testing.assert_allclose(
        contract.dense(cone.jacobian_dual(x + eps * dl)), lo, rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        contract.dense(cone.jacobian_dual(x + eps * du)), up, rtol=0, atol=1e-6
    )
    dist = ExpCones(2, dual).kink_distance(np.stack([x + eps * dl, x + eps * du]).ravel())
    assert np.all(dist <= 2 * eps) and np.all(dist > 0)
    contract.check_jacobian_properties(cone, x)


LINES = {
    "L1": ([-1.0, 0.0, 0.0], [1, 0, 0], [1, 1, 1]),
    "L2": ([0.0, -1.0, 0.0], [0, 0, 0], [1, 0, 1]),
    "L3": ([0.0, 0.0, 1.0], [0, 0, 1], [1, 1, 1]),
    "L4": ([0.0, 0.0, -1.0], [0, 0, 0], [1, 1, 0]),
    "origin": ([0.0, 0.0, 0.0], [0, 0, 0], [1, 1, 1]),
}


@pytest.mark.parametrize("dual", DUALS)
@pytest.mark.parametrize("name", list(LINES))
def test_kinks_lines(name: str, dual: bool, rng: np.random.Generator) -> None:
    """Where several strata meet: lower/upper are the documented diagonal matrices, and
    every Jacobian at nearby random points lies between them (Loewner)."""
    w, lo_d, up_d = LINES[name]
    w = np.array(w)
    cone = ExpCones(1, dual)
    x = w if dual else -w
    lo = contract.dense(cone.jacobian_dual(x, "lower"))
    up = contract.dense(cone.jacobian_dual(x, "upper"))
    exp_lo, exp_up = np.diag(lo_d).astype(float), np.diag(up_d).astype(float)
    if not dual:
        exp_lo, exp_up = np.eye(3) - exp_up, np.eye(3) - exp_lo
    np.testing.assert_array_equal(lo, exp_lo)
    np.testing.assert_array_equal(up, exp_up)
    assert cone.kink_distance(x)[0] == 0.0
    near = x + 1e-6 * rng.standard_normal((300, 3))
    Js = ExpCones(300, dual).jacobian_dual(near.ravel()).mats
    for J in Js:
        contract.assert_loewner_le(lo, J, 1e-3)
        contract.assert_loewner_le(J, up, 1e-3)


@pytest.mark.parametrize("dual", DUALS)
def test_kink_tol_selects(dual: bool) -> None:
    """Within kink_tol of ∂K (from either side) the selection applies; outside it does
    not. The 'lower' element inside K is the tangent projector of the nearest boundary
    point."""
    rho = 0.9
    a = np.array([rho, 1.0, np.exp(rho)])
    b = _unit(np.array([1.0, 1.0 - rho, -np.exp(-rho)]))
    cone = ExpCones(1, dual)
    tangent = np.eye(3) - np.outer(b, b)
    for side in (+1.0, -1.0):  # outside, inside K
        w = 1.7 * a + side * 1e-9 * b
        x = w if dual else -w
        d = cone.kink_distance(x)[0]
        assert abs(d - 1e-9) <= 1e-12
        lo = contract.dense(cone.jacobian_dual(x, "lower", kink_tol=1e-8))
        up = contract.dense(cone.jacobian_dual(x, "upper", kink_tol=1e-8))
        exp_lo, exp_up = (tangent, np.eye(3)) if dual else (np.zeros((3, 3)), np.outer(b, b))
        np.testing.assert_allclose(lo, exp_lo, atol=1e-6)
        np.testing.assert_allclose(up, exp_up, atol=1e-6)
        off = [contract.dense(cone.jacobian_dual(x, s, kink_tol=1e-10)) for s in ("lower", "upper")]
        np.testing.assert_array_equal(off[0], off[1])  # not within tol: no selection


@pytest.mark.parametrize("dual", DUALS)
def test_kink_distance(dual: bool, rng: np.random.Generator) -> None:
    """Nonnegative, one entry per cone, positively homogeneous, exact near ∂K and ∂K°
    from both sides (points δ·normal off a boundary point), and, inside K and K°, never
    below the brute-force distance min_{y ∈ K*, ‖y‖=1}⟨y, v⟩ over a fine grid (it is
    exact near the boundary and an upper bound far from it)."""
    n = 400
    cone = ExpCones(n, dual)
    v = 2.0 * rng.standard_normal(3 * n)
    d = cone.kink_distance(v)
    assert d.shape == (n,) and np.all(d >= 0)
    np.testing.assert_allclose(cone.kink_distance(8.0 * v), 8.0 * d, rtol=1e-13)
    sgn = 1.0 if dual else -1.0
    for rho in (-3.0, -0.3, 0.5, 2.0, 5.0):
        a = _unit(np.array([rho, 1.0, np.exp(rho)]))
        b = _unit(np.array([1.0, 1.0 - rho, -np.exp(-rho)]))
        for delta in (1e-3, 1e-6):
            for w in (2 * a + delta * b, 2 * a - delta * b, 2 * b + delta * a, 2 * b - delta * a):
                np.testing.assert_allclose(
                    ExpCones(1, dual).kink_distance(sgn * w)[0], delta, rtol=1e-6
                )
    grid = np.linspace(-40.0, 40.0, 8001)

    def frame(x: np.ndarray, polar: bool) -> np.ndarray:
        if polar:  # unit a(ρ) ∈ K
            M = np.stack([x, np.ones_like(x), np.exp(x)], -1)
        else:  # unit −b(ρ) ∈ K*
            M = -np.stack([np.ones_like(x), 1.0 - x, -np.exp(-x)], -1)
        return M / np.linalg.norm(M, axis=-1, keepdims=True)

    W = sgn * v.reshape(-1, 3)  # the Π_K frame
    n_exact = n_interior = 0
    for w, dist in zip(W, d):
        r, s, t = w
        quads = [
            np.sqrt(max(r, 0) ** 2 + s**2 + max(t, 0) ** 2),
            np.sqrt(r**2 + max(s, 0) ** 2 + min(t, 0) ** 2),
            np.sqrt(max(r, 0) ** 2 + max(s, 0) ** 2 + t**2),
        ]
        if in_k(w, 0.0) and s > 0:
            polar, faces = False, [s, t]
        elif in_kstar(-w, 0.0) and r > 0:
            polar, faces, w = True, [r, -t], -w  # min over unit y ∈ K of ⟨y, −w⟩
        else:
            continue
        vals = frame(grid, polar) @ w
        k = int(np.argmin(vals))
        res = minimize_scalar(
            lambda x, w=w, polar=polar: float(frame(np.array([x]), polar)[0] @ w),
            bounds=(grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]),
            method="bounded",
            options={"xatol": 1e-12},
        )
        brute = min(vals[k], res.fun, *faces, *quads)
        assert dist >= brute - 1e-10  # never below the true distance
        n_interior += 1
        n_exact += dist <= brute + 1e-9
    assert n_interior > 50 and n_exact >= 0.95 * n_interior


# ---------------------------------------------------------------------- contract, misc


@pytest.mark.parametrize("dual", DUALS)
def test_contract_checks(dual: bool, rng: np.random.Generator) -> None:
    """The shared contract (tests/conelayers/cones/contract.py) on exponential blocks."""
    for count in (1, 4):
        cone = ExpCones(count, dual)
        for _ in range(3):
            v = 2.0 * rng.standard_normal(cone.size)
            contract.check_projection(cone, v)
            contract.check_moreau(cone, v)
            contract.check_jacobian_properties(cone, v)
            contract.check_kink_distance_shape(cone, v)
            J = cone.jacobian_dual(v)
            contract.check_sparse_matches_operator(J)
            contract.check_adjoint(J, rng)
            p = contract.random_point(cone, rng)
            contract.check_jacobian_fd(cone, p)
            contract.check_jacobian_fd(cone, p, "upper")
        contract.check_against_cvxpy(cone, rng.standard_normal(cone.size))
        # (diffcp's exp projection is only ~1e-5 accurate at general points, see
        # test_against_diffcp: the contract's 1e-9 comparison is made where it is exact)
        easy = np.array([1.0, 2.0, -3.0, -2.0, -1.0, 0.5, 0.3, -0.2, -2.0, -1.0, 2.0, 3.0])
        contract.check_against_diffcp(cone, easy[: cone.size] if dual else -easy[: cone.size])


def test_validation_and_empty() -> None:
    cone = ExpCones(2)
    with pytest.raises(ValueError):
        cone.project_dual(np.zeros(5))
    with pytest.raises(ValueError):
        cone.jacobian_dual(np.zeros(6), selection="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cone.jacobian_dual(np.zeros(6), kink_tol=-1.0)
    with pytest.raises(ValueError):
        ExpCones(-1)
    empty = ExpCones(0, dual=True)
    assert empty.size == 0 and empty.project_dual(np.zeros(0)).shape == (0,)
    assert empty.jacobian_dual(np.zeros(0)).tosparse().shape == (0, 0)
    assert empty.kink_distance(np.zeros(0)).shape == (0,)
    assert repr(cone) == "ExpCones(2, dual=False)"
    assert cone.project_dual(np.zeros((6, 1))).shape == (6,)
