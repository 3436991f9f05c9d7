"""Exponential cones (SCS 3.x / CVXPY conventions), vectorized over all cones of a block.

On each consecutive triple v = (r, s, t):

* the primal cone  K   = cl{(r, s, t) : s·exp(r/s) ≤ t, s > 0}
                        = {s·exp(r/s) ≤ t, s > 0} ∪ {(r, 0, t) : r ≤ 0, t ≥ 0};
* the dual cone    K*  = cl{(u, v, w) : −u·exp(v/u) ≤ e·w, u < 0};
* the polar cone   K°  = −K* = cl{(r, s, t) : r·exp(s/r − 1) ≤ −t, r > 0}.

``ExpCones(count, dual=False)`` is SCS's ``"ep"`` block (slacks in K, duals in K*):
``project_dual`` = Π_{K*}, ``project`` = Π_K. ``ExpCones(count, dual=True)`` is SCS's
``"ed"`` block (slacks in K*, duals in (K*)* = K): ``project_dual`` = Π_K, ``project`` =
Π_{K*}. Everything reduces to the pair (Π_K, Π_{K°}) by Moreau: v = Π_K(v) + Π_{K°}(v),
Π_{K*}(v) = −Π_{K°}(−v) = v + Π_K(−v), J_{K*}(v) = I − J_K(−v).

**Projection** (H. Friberg, "Projection onto the exponential cone: a univariate
root-finding problem", Optim. Methods Softw. 2023). Each row is first scaled by an exact
power of two to max-abs in [½, 1) (the projection is positively homogeneous, and the
scaling is exact, so 1e-300 and 1e300 inputs behave like O(1) ones). Then:

1. v ∈ K → Π_K = v, Π_{K°} = 0;  v ∈ K° → Π_K = 0, Π_{K°} = v;
2. r ≤ 0 and s ≤ 0 → Π_K = (r, 0, max(t, 0)), Π_{K°} = (0, s, min(t, 0));
3. otherwise Π_K(v) = σ·a(ρ), Π_{K°}(v) = μ·b(ρ) with σ, μ > 0, where
   a(ρ) = (ρ, 1, e^ρ) spans the extreme rays of K, b(ρ) = (1, 1−ρ, −e^{−ρ}) those of K°,
   ⟨a, b⟩ = 0, and ρ is the root of h(ρ) = ⟨v, a × b⟩ =
   ((ρ−1)r + s)e^ρ − (r − ρs)e^{−ρ} − (ρ² − ρ + 1)t (v must lie in span(a, b)).
   The root is bracketed by [1 − s/r, r/s] (the signs of σ = ((ρ−1)r + s)/(ρ²−ρ+1) and
   μ = (r − ρs)/(ρ²−ρ+1)); a missing end (r ≤ 0 or s ≤ 0) is found by doubling steps.
   h is evaluated as h/(e^{|ρ|}(ρ²−ρ+1)) (same sign and root, no overflow), and the root
   by safeguarded Newton (bisection whenever Newton leaves the bracket) to machine
   precision. As Friberg does, several candidates, each in its cone by construction, are
   compared: for K the heuristic ones (min(r,0), 0, max(t,0)) and (r, s, max(t,
   s·e^{r/s})) and the root ones σ·a (σ = ⟨v, â⟩/‖a‖, and Friberg's σ); for K° likewise
   (0, min(s,0), min(t,0)), (r, s, min(t, −r·e^{s/r−1})) and μ·b. Unlike Friberg (who
   keeps the candidate nearest to v, which cannot separate errors below ~√ε‖v‖ since the
   distance is stationary at the projection), the pair (p, d) minimizing the first-order
   optimality error ‖v − p − d‖ + |⟨p, d⟩|/max(‖p‖, ‖d‖) is kept, ties going to the root
   pair. So Π_K(v) + Π_{K°}(v) = v holds to rounding.

**Jacobian** of Π_K (then J_{K*}(v) = I − J_K(−v) for ``dual=False``): I on int K, 0 on
int K°, diag(1, 0, 1[t > 0]) where r < 0, s < 0, and on the smooth boundary piece
(implicit differentiation of v = σ·a(ρ) + μ·b(ρ) in (σ, μ, ρ), using a' ⊥ b, b' ⊥ a):

    J_B = â âᵀ + κ ĉ ĉᵀ,   ĉ = â × b̂,   κ = σA / (σA + μB) ∈ (0, 1),
    A = e^{−ρ} + e^ρ((ρ−1)² + 1) = −⟨a', a×b⟩,   B = e^ρ + e^{−ρ}(ρ² + 1) = −⟨b', a×b⟩,

which is the KKT solution of min ½‖p − v‖² s.t. s·e^{r/s} − t = 0 in closed form
(κ → 1 as μ → 0: the tangent-plane projector I − b̂b̂ᵀ; κ → 0 as σ → 0: â âᵀ).

**Kinks** of Π_K (strict complementarity fails) and the two selections, lower ≼ upper,
each the limit of the Jacobian from one side (so both lie in the Clarke Jacobian):

======================================  ============================  ======================
stratum                                 lower                         upper
======================================  ============================  ======================
S1 ∂K, s > 0                            J_B (μ→0: I − b̂b̂ᵀ)             I
S2 ∂K°, r > 0                           0                             J_B (σ→0: â âᵀ)
S3 s = 0, r < 0, t > 0  (face of K)     diag(1, 0, 1)                 I
S4 r = 0, s < 0, t < 0  (face of K°)    0                             diag(1, 0, 0)
S5 s = 0, r < 0, t < 0                  diag(1, 0, 0)                 J_B (→ diag(1, 1, 0))
S6 r = 0, s < 0, t > 0                  J_B (→ diag(0, 0, 1))         diag(1, 0, 1)
S7 t = 0, r < 0, s < 0                  diag(1, 0, 0)                 diag(1, 0, 1)
L1 (r<0, 0, 0)                          diag(1, 0, 0)                 I
L2 (0, s<0, 0)                          0                             diag(1, 0, 1)
L3 (0, 0, t>0)                          diag(0, 0, 1)                 I
L4 (0, 0, t<0)                          0                             diag(1, 1, 0)
origin                                  0                             I
======================================  ============================  ======================

("J_B" means the boundary-piece formula at v when v is in that piece, else its limit at
the nearest kink point.) On the lines L1–L4 and at the origin, where several strata meet,
the pair is the Loewner-smallest/-largest of all adjacent limits. For ``dual=False`` the
selections swap under Moreau: lower_{K*}(v) = I − upper_K(−v).

``kink_distance`` is the Euclidean distance (in the units of v; it scales with v) to the
union of the strata: exact outside K ∪ K° (‖Π_{K°}(v)‖, ‖Π_K(v)‖ and the distances to the
quarter-planes S5–S7); inside K it is min_{y ∈ K*, ‖y‖=1} ⟨y, v⟩ evaluated at the first
stationary point of that one-dimensional problem (again a root of h) and at its limit
s, which is exact near the boundary and an upper bound in general (likewise in K°;
h can have several roots there, e.g. v = (1.099, 0.0143, −2.07) ∈ int K° gets 1.099
where the distance is 1.070).
Distances below 16·ε·‖v‖∞ (the floating-point resolution) are reported as 0. A cone
with kink_distance ≤ ``kink_tol`` takes the selection of its nearest stratum (of a line
or the origin, if one is within ``kink_tol``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from conelayers.cones._util import as_vector, check_selection
from conelayers.cones.base import ConeBlock, ConeJacobian, Selection

_EPS = float(np.finfo(np.float64).eps)
_RHO_MAX = 1e15  # |ρ| beyond this: e^{±ρ} is 0 or ∞ anyway; the heuristics are exact there
_MAX_ITER = 400
_NEWTON_ITER = 60  # after this many iterations, bisection only
_EXPAND = 52  # doubling steps 2^0 .. 2^51 (> _RHO_MAX)
_ROUND = 16.0 * _EPS  # kink distances below _ROUND·‖v‖∞ are reported as 0

# region codes of Π_K
_IN_K, _IN_POLAR, _QUAD, _BOUNDARY = 0, 1, 2, 3


# ------------------------------------------------------------------ scalar-function kit


def _scale_rows(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V·2^{−e} per row with max-abs in [½, 1) (exact), and the exponents e."""
    m = np.max(np.abs(V), axis=1) if V.size else np.zeros(0)
    _, e = np.frexp(m)
    return np.ldexp(V, -e[:, None]), e


def _inv_q(rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1/q, ρ/q) with q = ρ² − ρ + 1 ≥ ¾, without overflow for large |ρ|."""
    big = np.abs(rho) > 1.0
    inv = 1.0 / np.where(big, rho, 1.0)
    den = 1.0 - inv + inv * inv
    q = rho * rho - rho + 1.0
    q = np.where(big, 1.0, q)
    iq = np.where(big, inv * inv / den, 1.0 / q)
    rq = np.where(big, inv / den, rho / q)
    return iq, rq


def _hfun(V: np.ndarray, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """h(ρ)/w(ρ) and its derivative, w = e^{|ρ|}(ρ² − ρ + 1) > 0 (same sign and root)."""
    r, s, t = V[:, 0], V[:, 1], V[:, 2]
    iq, rq = _inv_q(rho)
    ar = np.abs(rho)
    ep, em, e0 = np.exp(rho - ar), np.exp(-rho - ar), np.exp(-ar)
    f = ((rq - iq) * r + iq * s) * ep - (iq * r - rq * s) * em - t * e0
    dh = (rq * r + iq * s) * ep + (iq * r - (rq - iq) * s) * em - (2.0 * rq - iq) * t * e0
    df = dh - f * (np.sign(rho) + 2.0 * rq - iq)
    return f, df


def _root(V: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The root of h in [lo, hi], given h(lo) ≤ 0 ≤ h(hi): safeguarded Newton."""
    lo, hi = lo.copy(), hi.copy()
    x = 0.5 * lo + 0.5 * hi
    active = np.ones(x.shape[0], dtype=bool)
    for it in range(_MAX_ITER):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        xi, li, hi_i = x[idx], lo[idx], hi[idx]
        f, df = _hfun(V[idx], xi)
        li = np.where(f < 0, xi, li)
        hi_i = np.where(f > 0, xi, hi_i)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            xn = xi - f / df
        ok = (df > 0) & np.isfinite(xn) & (xn > li) & (xn < hi_i) & (it < _NEWTON_ITER)
        xn = np.where(ok, xn, 0.5 * li + 0.5 * hi_i)
        tol = 2.0 * _EPS * np.maximum(1.0, np.abs(xi))
        done = (f == 0) | (np.abs(xn - xi) <= tol) | (hi_i - li <= tol)
        x[idx] = np.where(f == 0, xi, xn)
        lo[idx], hi[idx] = li, hi_i
        active[idx[done]] = False
    return x


def _expand(
    V: np.ndarray, x0: np.ndarray, direction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk from x0 by x0 + direction·2^k until direction·h ≥ 0.

    Returns (inner, outer, found): the last point without the sign change (or x0), the
    first with it (or the last tried), and whether a sign change was found."""
    inner, outer = x0.copy(), x0.copy()
    found = np.zeros(x0.shape[0], dtype=bool)
    for k in range(_EXPAND):
        idx = np.flatnonzero(~found)
        if idx.size == 0:
            break
        xi = np.clip(x0[idx] + direction * 2.0**k, -_RHO_MAX, _RHO_MAX)
        f, _ = _hfun(V[idx], xi)
        hit = direction * f >= 0
        inner[idx[~hit]] = xi[~hit]
        outer[idx] = xi
        found[idx[hit]] = True
    return inner, outer, found


def _frame(rho: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors â ∥ (ρ, 1, e^ρ), b̂ ∥ (1, 1−ρ, −e^{−ρ}) and ĉ = â × b̂, shape (n, 3)."""
    ca = np.exp(-np.maximum(rho, 0.0))
    a = np.stack([rho * ca, ca, np.exp(rho - np.maximum(rho, 0.0))], axis=1)
    cb = np.exp(-np.maximum(-rho, 0.0))
    b = np.stack([cb, (1.0 - rho) * cb, -np.exp(-rho - np.maximum(-rho, 0.0))], axis=1)
    a = _normalize(a)
    b = _normalize(b)
    return a, b, np.cross(a, b)


def _normalize(X: np.ndarray) -> np.ndarray:
    m = np.max(np.abs(X), axis=1, keepdims=True)
    X = X / m
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _kappa(rho: np.ndarray, sig: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """κ = σA/(σA + μB) of J_B, from σ̂ = ⟨v, â⟩ = σ‖a‖ ≥ 0 and μ̂ = ⟨v, b̂⟩ = μ‖b‖ ≥ 0:
    κ = σ̂·A‖b‖ / (σ̂·A‖b‖ + μ̂·B‖a‖), each factor scaled by e^{−|ρ|}."""
    ar = np.abs(rho)
    ep, em = np.exp(rho - ar), np.exp(-rho - ar)
    e0 = np.exp(-ar)
    A = em + ep * ((rho - 1.0) ** 2 + 1.0)
    B = ep + em * (rho * rho + 1.0)
    na = np.sqrt((rho * rho + 1.0) * e0 * e0 + ep * ep)
    nb = np.sqrt((1.0 + (1.0 - rho) ** 2) * e0 * e0 + em * em)
    num = sig * A * nb
    den = num + mu * B * na
    with np.errstate(divide="ignore", invalid="ignore"):
        kap = num / den
    kap = np.where(den > 0, kap, np.where(mu > 0, 0.0, 1.0))
    return np.clip(kap, 0.0, 1.0)


def _boundary_jacobian(a: np.ndarray, c: np.ndarray, kap: np.ndarray) -> np.ndarray:
    return np.einsum("ni,nj->nij", a, a) + kap[:, None, None] * np.einsum("ni,nj->nij", c, c)


# ---------------------------------------------------------------------- the projection


def _regions(V: np.ndarray) -> np.ndarray:
    """Region code of each (scaled) row for Π_K."""
    r, s, t = V[:, 0], V[:, 1], V[:, 2]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        in_k = ((s > 0) & (s * np.exp(r / np.where(s > 0, s, 1.0)) <= t)) | (
            (s == 0) & (r <= 0) & (t >= 0)
        )
        in_p = ((r > 0) & (r * np.exp(s / np.where(r > 0, r, 1.0) - 1.0) <= -t)) | (
            (r == 0) & (s <= 0) & (t <= 0)
        )
    reg = np.full(V.shape[0], _BOUNDARY)
    reg[(r <= 0) & (s <= 0)] = _QUAD
    reg[in_p] = _IN_POLAR
    reg[in_k] = _IN_K
    return reg


def _boundary_root(V: np.ndarray) -> np.ndarray:
    """ρ of Π_K(v) = σ a(ρ) for rows outside K ∪ K° with r > 0 or s > 0."""
    r, s = V[:, 0], V[:, 1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lo = np.clip(1.0 - s / r, -_RHO_MAX, _RHO_MAX)
        hi = np.clip(r / s, -_RHO_MAX, _RHO_MAX)
    lo = np.where(r > 0, lo, -np.inf)
    hi = np.where(s > 0, hi, np.inf)
    up = np.flatnonzero(~np.isfinite(hi))
    if up.size:
        inner, outer, _ = _expand(V[up], lo[up], +1.0)
        lo[up], hi[up] = inner, outer
    down = np.flatnonzero(~np.isfinite(lo))
    if down.size:
        inner, outer, _ = _expand(V[down], hi[down], -1.0)
        lo[down], hi[down] = outer, inner
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    flo, _ = _hfun(V, lo)
    fhi, _ = _hfun(V, hi)
    rho = _root(V, lo, hi)
    rho = np.where(flo >= 0, lo, np.where(fhi <= 0, hi, rho))
    return rho


def _project_parts(V: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For scaled rows V: (Π_K(V), Π_{K°}(V), region, ρ (nan off the boundary piece))."""
    n = V.shape[0]
    reg = _regions(V)
    P = np.zeros_like(V)
    D = np.zeros_like(V)
    rho = np.full(n, np.nan)
    k = reg == _IN_K
    P[k] = V[k]
    p = reg == _IN_POLAR
    D[p] = V[p]
    q = reg == _QUAD
    P[q, 0] = V[q, 0]
    P[q, 2] = np.maximum(V[q, 2], 0.0)
    D[q, 1] = V[q, 1]
    D[q, 2] = np.minimum(V[q, 2], 0.0)
    b = np.flatnonzero(reg == _BOUNDARY)
    if b.size:
        Vb = V[b]
        rb = _boundary_root(Vb)
        rho[b] = rb
        P[b], D[b] = _candidates(Vb, rb)
    return P, D, reg, rho


def _candidates(V: np.ndarray, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Friberg's comparison of feasible candidates for Π_K and Π_{K°}."""
    r, s, t = V[:, 0], V[:, 1], V[:, 2]
    zero = np.zeros_like(r)
    a, b, _ = _frame(rho)
    iq, rq = _inv_q(rho)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        # primal heuristics
        h1 = np.stack([np.minimum(r, 0.0), zero, np.maximum(t, 0.0)], axis=1)
        tp = np.where(s > 0, np.maximum(t, s * np.exp(r / np.where(s > 0, s, 1.0))), np.inf)
        h2 = np.stack([r, s, tp], axis=1)
        # root-based: least-squares σ on the ray, and Friberg's σ
        sig = np.maximum(np.einsum("ni,ni->n", V, a), 0.0)
        p1 = sig[:, None] * a
        sf = (rq - iq) * r + iq * s
        p2 = np.where(
            (sf > 0)[:, None],
            sf[:, None] * np.stack([rho, 1.0 + zero, np.exp(rho)], axis=1),
            np.inf,
        )
        # polar heuristics
        g1 = np.stack([zero, np.minimum(s, 0.0), np.minimum(t, 0.0)], axis=1)
        td = np.where(r > 0, np.minimum(t, -r * np.exp(s / np.where(r > 0, r, 1.0) - 1.0)), -np.inf)
        g2 = np.stack([r, s, td], axis=1)
        mu = np.maximum(np.einsum("ni,ni->n", V, b), 0.0)
        d1 = mu[:, None] * b
        mf = iq * r - rq * s
        d2 = np.where(
            (mf > 0)[:, None],
            mf[:, None] * np.stack([1.0 + zero, 1.0 - rho, -np.exp(-rho)], axis=1),
            np.inf,
        )
    return _best_pair(V, [p1, p2, h1, h2], [d1, d2, g1, g2])


def _best_pair(
    V: np.ndarray, prim: list[np.ndarray], pol: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise the pair (p, d) of candidates (all feasible by construction) with the
    smallest first-order optimality error ‖v − p − d‖ + |⟨p, d⟩|/max(‖p‖, ‖d‖); ties go
    to the earlier candidates (the root-based ones). Comparing distances ‖v − p‖ alone, as
    Friberg does, cannot tell errors below ~√ε·‖v‖ apart (the distance is stationary at
    the projection), while this score is first order in the error."""
    Pc = np.stack(prim)  # (k, n, 3)
    Dc = np.stack(pol)
    with np.errstate(invalid="ignore", over="ignore"):
        pp = Pc[:, None]  # (k, 1, n, 3)
        dd = Dc[None, :]  # (1, k, n, 3)
        res = np.linalg.norm(V[None, None] - pp - dd, axis=3)
        ip = np.abs(np.sum(pp * dd, axis=3))
        big = np.maximum(np.linalg.norm(pp, axis=3), np.linalg.norm(dd, axis=3))
        score = res + np.where(ip > 0, ip / np.where(big > 0, big, 1.0), 0.0)
    ok = np.all(np.isfinite(pp), axis=3) & np.all(np.isfinite(dd), axis=3)
    score = np.where(ok & np.isfinite(score), score, np.inf)
    k = Pc.shape[0]
    flat = score.reshape(k * Dc.shape[0], -1)
    best = np.argmin(flat, axis=0)
    rows = np.arange(V.shape[0])
    return Pc[best // Dc.shape[0], rows], Dc[best % Dc.shape[0], rows]


# ------------------------------------------------------------------ kinks and Jacobian

_I3 = np.eye(3)
_DIAG = {
    "0": np.zeros((3, 3)),
    "I": _I3,
    "100": np.diag([1.0, 0.0, 0.0]),
    "101": np.diag([1.0, 0.0, 1.0]),
    "110": np.diag([1.0, 1.0, 0.0]),
    "001": np.diag([0.0, 0.0, 1.0]),
}


def _pos(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _neg(x: np.ndarray) -> np.ndarray:
    return np.minimum(x, 0.0)


def _interior_distance(V: np.ndarray, polar: bool) -> tuple[np.ndarray, np.ndarray]:
    """Distance of rows in int K (polar=False, s > 0) or int K° (polar=True, r > 0) to the
    boundary: min(s, ⟨−b̂(ρ₁), v⟩), resp. min(r, ⟨−â(ρ₁), v⟩), ρ₁ the first root of h
    beyond r/s (resp. below 1 − s/r); also ρ₁ (nan where the face s (r) is nearer)."""
    r, s = V[:, 0], V[:, 1]
    if polar:
        x0 = np.clip(1.0 - s / r, -_RHO_MAX, _RHO_MAX)
        inner, outer, found = _expand(V, x0, -1.0)
        lo, hi, face = outer, inner, r
    else:
        x0 = np.clip(r / s, -_RHO_MAX, _RHO_MAX)
        inner, outer, found = _expand(V, x0, +1.0)
        lo, hi, face = inner, outer, s
    rho = np.where(found, _root(V, lo, hi), np.nan)
    a, b, _ = _frame(np.where(found, rho, 0.0))
    # ⟨y, v⟩ ≥ 0 for y ∈ K*, v ∈ K (and likewise in K°): a negative value is rounding
    dist = np.maximum(-np.einsum("ni,ni->n", V, a if polar else b), 0.0)
    dist = np.where(found, dist, np.inf)
    rho = np.where(dist < face, rho, np.nan)
    return np.minimum(dist, face), rho


def _kinks(
    V: np.ndarray,
    P: np.ndarray,
    D: np.ndarray,
    reg: np.ndarray,
    rho: np.ndarray,
    J: np.ndarray,
    tol: np.ndarray | None,
    selection: Selection,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Kink distance of each scaled row and, if tol is given, the Jacobians with the
    selection applied to rows within tol of a kink (J is the off-kink Jacobian)."""
    n = V.shape[0]
    r, s, t = V[:, 0], V[:, 1], V[:, 2]
    pos, neg = _pos, _neg

    # ∂K and ∂K°: exact outside, first-order-exact search inside
    dK = np.linalg.norm(D, axis=1)  # = ‖v − Π_K v‖
    dP = np.linalg.norm(P, axis=1)  # = ‖v − Π_{K°} v‖
    tangent = np.zeros((n, 3, 3))  # lower selection at S1 for rows inside K
    radial = np.zeros((n, 3, 3))  # upper selection at S2 for rows inside K°
    face_k = s <= 0  # nearest point of ∂K on the face s = 0 (S3)
    face_p = r <= 0  # nearest point of ∂K° on the face r = 0 (S4)
    ik = np.flatnonzero((reg == _IN_K) & (s > 0))
    if ik.size:
        d, rk = _interior_distance(V[ik], polar=False)
        dK[ik] = d
        face_k[ik] = np.isnan(rk)
        _, bk, _ = _frame(np.nan_to_num(rk))
        tangent[ik] = _I3 - np.einsum("ni,nj->nij", bk, bk)
    ip = np.flatnonzero((reg == _IN_POLAR) & (r > 0))
    if ip.size:
        d, rp = _interior_distance(V[ip], polar=True)
        dP[ip] = d
        face_p[ip] = np.isnan(rp)
        ap, _, _ = _frame(np.nan_to_num(rp))
        radial[ip] = np.einsum("ni,nj->nij", ap, ap)
    # the quarter-planes S5, S6, S7 (closed), the lines and the origin
    d5 = np.sqrt(pos(r) ** 2 + s**2 + pos(t) ** 2)
    d6 = np.sqrt(r**2 + pos(s) ** 2 + neg(t) ** 2)
    d7 = np.sqrt(pos(r) ** 2 + pos(s) ** 2 + t**2)
    strata = np.stack([dK, dP, d5, d6, d7], axis=1)
    rnd = _ROUND * np.max(np.abs(V), axis=1)
    strata = np.where(strata <= rnd[:, None], 0.0, strata)
    dist = strata.min(axis=1)
    if tol is None:
        return dist, None

    lines = np.stack(
        [
            np.sqrt(pos(r) ** 2 + s**2 + t**2),  # L1
            np.sqrt(r**2 + pos(s) ** 2 + t**2),  # L2
            np.sqrt(r**2 + s**2 + neg(t) ** 2),  # L3
            np.sqrt(r**2 + s**2 + pos(t) ** 2),  # L4
            np.linalg.norm(V, axis=1),  # origin
        ],
        axis=1,
    )
    lines = np.where(lines <= rnd[:, None], 0.0, lines)
    on_b = (reg == _BOUNDARY)[:, None, None]
    D_ = _DIAG
    # (lower, upper) per stratum, each (n, 3, 3)
    s1_lo = np.where(on_b, J, tangent)
    s2_up = np.where(on_b, J, radial)
    pairs_strata = [
        (
            np.where(face_k[:, None, None], D_["101"], s1_lo),
            np.broadcast_to(D_["I"], (n, 3, 3)),
        ),  # ∂K: S1 or S3
        (
            np.broadcast_to(D_["0"], (n, 3, 3)),
            np.where(face_p[:, None, None], D_["100"], s2_up),
        ),  # ∂K°: S2 or S4
        (np.broadcast_to(D_["100"], (n, 3, 3)), np.where(on_b, J, D_["110"])),  # S5
        (np.where(on_b, J, D_["001"]), np.broadcast_to(D_["101"], (n, 3, 3))),  # S6
        (np.broadcast_to(D_["100"], (n, 3, 3)), np.broadcast_to(D_["101"], (n, 3, 3))),  # S7
    ]
    pairs_lines = [("100", "I"), ("0", "101"), ("001", "I"), ("0", "110"), ("0", "I")]
    k = 0 if selection == "lower" else 1
    out = J.copy()
    near = dist <= tol
    which = np.argmin(strata, axis=1)
    for j, pair in enumerate(pairs_strata):
        m = near & (which == j)
        out[m] = pair[k][m]
    lmin = lines.min(axis=1)
    on_line = (lmin <= tol) & near
    lwhich = np.where(lines[:, 4] <= tol, 4, np.argmin(lines[:, :4], axis=1))
    for j, pair in enumerate(pairs_lines):
        m = on_line & (lwhich == j)
        out[m] = D_[pair[k]]
    return dist, out


def _jacobian_k(V: np.ndarray, selection: Selection, kink_tol: float) -> np.ndarray:
    """Clarke-Jacobian elements (n, 3, 3) of Π_K at the (unscaled) rows V."""
    Vs, e = _scale_rows(V)
    P, D, reg, rho = _project_parts(Vs)
    n = V.shape[0]
    J = np.zeros((n, 3, 3))
    J[reg == _IN_K] = _I3
    q = np.flatnonzero(reg == _QUAD)
    J[q, 0, 0] = 1.0
    J[q, 2, 2] = (Vs[q, 2] > 0).astype(np.float64)
    b = np.flatnonzero(reg == _BOUNDARY)
    if b.size:
        a_, b_, c_ = _frame(rho[b])
        sig = np.maximum(np.einsum("ni,ni->n", Vs[b], a_), 0.0)
        mu = np.maximum(np.einsum("ni,ni->n", Vs[b], b_), 0.0)
        J[b] = _boundary_jacobian(a_, c_, _kappa(rho[b], sig, mu))
    tol = np.ldexp(float(kink_tol), -e)  # kink_tol in the scaled units of each row
    _, out = _kinks(Vs, P, D, reg, rho, J, tol, selection)
    assert out is not None
    return out


# ------------------------------------------------------------------------ the classes


class ExpJacobian(ConeJacobian):
    """Block-diagonal J with symmetric 3×3 blocks ``mats`` (shape (count, 3, 3))."""

    def __init__(self, mats: np.ndarray) -> None:
        super().__init__(3 * mats.shape[0])
        self.mats = mats

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        X = np.ravel(x).reshape(-1, 3)
        return np.einsum("nij,nj->ni", self.mats, X).ravel()

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        X = np.ravel(x).reshape(-1, 3)
        return np.einsum("nji,nj->ni", self.mats, X).ravel()

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        k = X.shape[1]
        Y = np.einsum("nij,njk->nik", self.mats, X.reshape(-1, 3, k))
        return Y.reshape(-1, k)

    def tosparse(self) -> sp.csc_matrix:
        n = self.mats.shape[0]
        base = 3 * np.arange(n)[:, None, None]
        rows = np.broadcast_to(base + np.arange(3)[None, :, None], (n, 3, 3))
        cols = np.broadcast_to(base + np.arange(3)[None, None, :], (n, 3, 3))
        M = sp.coo_matrix(
            (self.mats.ravel(), (rows.ravel(), cols.ravel())), shape=self.shape
        ).tocsc()
        M.eliminate_zeros()
        return M


class ExpCones(ConeBlock):
    """``count`` exponential cones, 3 rows each: K_exp (SCS "ep") for ``dual=False``, its
    dual cone K*_exp (SCS "ed") for ``dual=True``. See the module docstring for the
    algorithm, the selections at kinks and the kink distance."""

    def __init__(self, count: int, dual: bool = False) -> None:
        if count < 0:
            raise ValueError(f"count must be nonnegative, got {count}")
        self.count = int(count)
        self.dual = bool(dual)
        self.size = 3 * self.count

    def __repr__(self) -> str:
        return f"ExpCones({self.count}, dual={self.dual})"

    def _rows(self, v: np.ndarray) -> np.ndarray:
        return as_vector(v, self.size).reshape(self.count, 3)

    @staticmethod
    def _parts(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Vs, e = _scale_rows(V)
        P, D, _, _ = _project_parts(Vs)
        return np.ldexp(P, e[:, None]), np.ldexp(D, e[:, None])

    @classmethod
    def _proj_k(cls, V: np.ndarray) -> np.ndarray:
        return cls._parts(V)[0]

    @classmethod
    def _proj_kstar(cls, V: np.ndarray) -> np.ndarray:
        return -cls._parts(-V)[1]  # Π_{K*}(v) = −Π_{K°}(−v) = v + Π_K(−v)

    def project_dual(self, v: np.ndarray) -> np.ndarray:
        """Π_{K*}(v) (dual=False) or Π_K(v) (dual=True)."""
        V = self._rows(v)
        out = self._proj_k(V) if self.dual else self._proj_kstar(V)
        return out.ravel()

    def project(self, v: np.ndarray) -> np.ndarray:
        """Π_K(v) (dual=False) or Π_{K*}(v) (dual=True)."""
        V = self._rows(v)
        out = self._proj_kstar(V) if self.dual else self._proj_k(V)
        return out.ravel()

    def jacobian_dual(
        self, v: np.ndarray, selection: Selection = "lower", kink_tol: float = 0.0
    ) -> ExpJacobian:
        """J_K(v) (dual=True) or I − J_K(−v) with the selection swapped (dual=False)."""
        V = self._rows(v)
        check_selection(selection, kink_tol)
        if self.dual:
            return ExpJacobian(_jacobian_k(V, selection, kink_tol))
        other: Selection = "upper" if selection == "lower" else "lower"
        return ExpJacobian(_I3 - _jacobian_k(-V, other, kink_tol))

    def kink_distance(self, v: np.ndarray) -> np.ndarray:
        """Distance of each cone's triple to the kink set of the projection used by
        ``project_dual`` (see the module docstring), shape (count,)."""
        V = self._rows(v)
        if not self.dual:
            V = -V
        Vs, e = _scale_rows(V)
        P, D, reg, rho = _project_parts(Vs)
        dist, _ = _kinks(Vs, P, D, reg, rho, np.zeros((V.shape[0], 3, 3)), None, "lower")
        return np.ldexp(dist, e)
