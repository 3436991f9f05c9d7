"""Generators and checks for fuzzing (shared by the hypothesis tests and
``benchmarks/reliability_report.py``).

Cone programs with a known solution
-----------------------------------
Over a product cone K (zero, nonneg, SOC, PSD, exp, dual exp) in SCS's layout, draw a
point v ∈ ℝᵐ at distance ≥ ``margin``·(1 + ‖v‖∞) from every kink of Π_{K*}, and set

    y = Π_{K*}(v),   s = y − v = Π_K(−v)   (Moreau),   b = A x + s,   c = −Aᵀ y,

so (x, y, s) satisfies the KKT conditions of min cᵀx s.t. Ax + s = b, s ∈ K (P = 0):
s ∈ K, y ∈ K*, sᵀy = 0, Aᵀy + c = 0, Ax + s = b. The residual map's zero is z = (x, v).

Why the solution is unique. With J = DΠ_{K*}(v) (v is a smooth point), split ℝᵐ by J's
eigenvalues: k₁ directions with eigenvalue 1, k_mix with eigenvalue in (0, 1), the rest
0. Eliminating dv from U·(du, dv) = 0 (U = [[0, AᵀJ], [−A, I − J]]) leaves the saddle
system [[A_mixᵀ D A_mix, A₁ᵀ], [A₁, 0]] (D = Λ(I − Λ)⁻¹ ≻ 0 on the mixed directions),
which for a generic A is nonsingular iff k₁ ≤ n ≤ k₁ + k_mix. So n is drawn in that range
and A is redrawn until U is well conditioned (cond(U) ≤ ``max_cond``): then U is
nonsingular at a strictly complementary KKT point, the point is locally unique, and
because the solution set of a convex program is convex it is the unique solution (x and
y both). The trust checks must then say 'ok'. (For an LP this is the classical
"n active constraints at a nondegenerate vertex"; k_mix counts e.g. the k − 2 rotational
directions of an SOC boundary point or the r(p − r) mixed ones of a rank-r PSD point.)

Cone points
-----------
``cone_point`` builds points of each elementary cone in one of several styles, including
exact kinks (nonneg 0; SOC t = ±‖w‖ from Pythagorean quadruples; PSD with exact zero
eigenvalues; every boundary stratum of the exponential cone, e.g. (0, s, s) ∈ ∂K), so the
named selections of the Clarke Jacobian are exercised on the kinks themselves.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from canonicalize.cones import ConeDims
from canonicalize.program import fixed_program
from conelayers.cones import ProductCone, svec
from conelayers.layer import LayerCore
from conelayers.residual import ResidualMap
from conelayers.solvers.scs import ConeProgram

TIGHT = {"eps": 1e-10}

# -- cone programs with a known solution ----------------------------------------------------


@dataclass
class KnownProgram:
    dims: ConeDims
    A: sp.csc_matrix
    b: np.ndarray
    c: np.ndarray
    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    v: np.ndarray
    cond: float  # cond(U) at the known solution
    k1: int
    kmix: int

    def describe(self) -> str:
        m, n = self.A.shape
        return (f"{self.dims.describe()}; A {m}x{n} nnz {self.A.nnz}; k1 {self.k1}, "
                f"kmix {self.kmix}; cond(U) {self.cond:.1e}")


def _smooth_point(cone: ProductCone, rng: np.random.Generator, margin: float):
    for _ in range(40):
        v = rng.standard_normal(cone.size) * rng.choice([0.5, 1.0, 2.0], cone.size)
        if np.all(cone.kink_distance(v) >= margin * (1.0 + np.abs(v).max())):
            return v
    return None


def known_program(
    dims: ConeDims, seed: int, fraction: float = 0.5, density: float | None = None,
    margin: float = 0.05, max_cond: float = 1e4,
) -> KnownProgram | None:
    """A random program over ``dims`` with a known, unique, strictly complementary
    solution (see the module docstring), or None if none was found from this seed (no
    admissible n, or no well-conditioned A in a few draws). ``fraction`` ∈ [0, 1] places
    n in [max(k₁, 1), k₁ + k_mix]."""
    if dims.size == 0:
        return None
    rng = np.random.default_rng(seed)
    cone = ProductCone(dims)
    m = dims.size
    v = _smooth_point(cone, rng, margin)
    if v is None:
        return None
    J = cone.jacobian_dual(v).tosparse().toarray()
    ev = np.linalg.eigvalsh((J + J.T) / 2)
    k1 = int(np.sum(ev > 1 - 1e-9))
    kmix = int(np.sum((ev > 1e-9) & (ev < 1 - 1e-9)))
    lo, hi = max(k1, 1), k1 + kmix
    if hi < lo:
        return None
    n = lo + int(round(fraction * (hi - lo)))
    y = cone.project_dual(v)
    s = y - v
    x = rng.standard_normal(n)
    dens = rng.uniform(0.3, 1.0) if density is None else density
    for _ in range(10):
        A = sp.random(m, n, density=dens, random_state=rng, data_rvs=rng.standard_normal,
                      format="csc")
        A.sort_indices()
        if A.nnz == 0:
            continue
        b = A @ x + s
        c = -(A.T @ y)
        res = ResidualMap(ConeProgram(A=A, b=b, c=c, dims=dims), cone)
        U = res.jacobian(np.concatenate([x, v])).tosparse().toarray()
        cond = float(np.linalg.cond(U))
        if cond <= max_cond:
            return KnownProgram(dims, A, b, c, x, y, s, v, cond, k1, kmix)
        dens = min(1.0, dens + 0.2)
    return None


# Tolerances of the program fuzzer. The solves are Newton-refined to ‖N‖ ≈ 1e-12
# relative, so with cond(U) ≤ 1e4 the solution is accurate to ~1e-8; the central
# differences have rounding noise ~1e-10/h and O(h⁴) truncation after Richardson.
SOLUTION_TOL = 1e-6
FD_TOL = 1e-4
ADJOINT_TOL = 1e-8


@dataclass
class ProgramCheck:
    """Measured errors of one fuzzed program (all relative)."""

    verdict: str
    x_err: float
    y_err: float
    s_err: float
    fd_err: float
    adjoint_err: float
    warnings: tuple[str, ...] = ()


def _flat(arrays) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / (1.0 + np.linalg.norm(b)))


def check_program(kp: KnownProgram, seed: int = 0, h: float = 1e-5) -> ProgramCheck:
    """Solve ``kp`` through ``LayerCore.from_program`` at tight eps; measure the errors of
    (x, y, s), of the jvp against a Richardson-extrapolated central difference of
    re-solves (steps h and h/2 along a random unit direction of the data; retried with
    10h and h/10 if it misses), and of the dot-product test ⟨w, J d⟩ = ⟨Jᵀw, d⟩."""
    program, _theta = fixed_program(kp.A, kp.b, kp.c, kp.dims)
    core = LayerCore.from_program(program)
    values = [kp.A.data.copy(), kp.b.copy(), kp.c.copy()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = core.forward(values, TIGHT)
        verdict = result.check(program)[0].verdict
        x_hat, y_hat = result.outputs[0][0], result.outputs[1][0]
        s_hat = kp.b - kp.A @ x_hat

        rng = np.random.default_rng(seed)
        d = [rng.standard_normal(v.shape) for v in values]
        norm = np.linalg.norm(_flat(d))
        d = [di / norm for di in d]
        jvp = _flat([t[0] for t in core.jvp(result, d)])

        def central(step):
            plus = core.forward([v + step * di for v, di in zip(values, d)], TIGHT)
            minus = core.forward([v - step * di for v, di in zip(values, d)], TIGHT)
            return _flat([(p - q)[0] for p, q in zip(plus.outputs, minus.outputs)]) / (2 * step)

        def fd_error(step):
            fd = (4 * central(step / 2) - central(step)) / 3
            return float(np.linalg.norm(jvp - fd) / max(np.linalg.norm(fd), 1e-6))

        # Other steps only if the first misses: the reference, not the layer, is then the
        # suspect. Its error is truncation (large higher derivatives near cond(U) ~ 1e4
        # want a small h) plus rounding: the re-solves stop at ‖N‖ ≈ 1e-12(1 + ‖b‖ +
        # ‖c‖), ~1e-10 absolute with cond(U) ~ 1e2, i.e. 1e-4 relative noise at h = 1e-6
        # (measured on the @example of test_fuzz.py: best h 1e-4..1e-5, error 1e-7 there).
        fd_err = fd_error(h)
        for step in (10 * h, h / 10):
            if fd_err <= FD_TOL:
                break
            fd_err = min(fd_err, fd_error(step))

        w = [rng.standard_normal(o.shape) for o in result.outputs]
        grads = core.vjp(result, w)
        tangents = core.jvp(result, d)
    lhs = float(sum((wi * ti).sum() for wi, ti in zip(w, tangents)))
    rhs = float(sum((g * di).sum() for g, di in zip(grads, d)))
    scale = (np.linalg.norm(_flat(w)) * np.linalg.norm(_flat(tangents))
             + np.linalg.norm(_flat(grads)) * np.linalg.norm(_flat(d)))
    adjoint_err = abs(lhs - rhs) / max(scale, 1e-300)
    return ProgramCheck(
        verdict, _rel(x_hat, kp.x), _rel(y_hat, kp.y), _rel(s_hat, kp.s), fd_err,
        adjoint_err, tuple(f"{w.category.__name__}: {w.message}" for w in caught),
    )



def program_failures(chk: ProgramCheck) -> list[str]:
    """Human-readable list of violated expectations (empty: all good)."""
    out = []
    if chk.verdict != "ok":
        out.append(f"trust verdict {chk.verdict!r} at a unique, smooth solution")
    for name, err in (("x", chk.x_err), ("y", chk.y_err), ("s", chk.s_err)):
        if not err <= SOLUTION_TOL:
            out.append(f"{name} error {err:.2e} > {SOLUTION_TOL}")
    if not chk.fd_err <= FD_TOL:
        out.append(f"jvp vs central differences: relative error {chk.fd_err:.2e} > {FD_TOL}")
    if not chk.adjoint_err <= ADJOINT_TOL:
        out.append(f"dot-product test {chk.adjoint_err:.2e} > {ADJOINT_TOL}")
    return out


def random_dims(rng: np.random.Generator) -> ConeDims:
    """Random cone dimensions for the benchmark (the tests draw them with hypothesis)."""
    return ConeDims(
        zero=int(rng.integers(0, 3)), nonneg=int(rng.integers(0, 6)),
        soc=tuple(int(k) for k in rng.integers(1, 6, rng.integers(0, 3))),
        psd=tuple(int(k) for k in rng.integers(1, 4, rng.integers(0, 3))),
        exp=int(rng.integers(0, 3)), exp_dual=int(rng.integers(0, 2)),
    )


# -- cone points, including exact kinks -----------------------------------------------------

STYLES = ("random", "kink", "kink2", "origin", "interior", "polar")

# Integer vectors with an integer norm: (w, ‖w‖).
_PYTHAGOREAN = [
    ((3, 4), 5), ((1, 2, 2), 3), ((2, 3, 6), 7), ((1, 4, 8), 9), ((2, 6, 9), 11),
    ((1, 1, 1, 1), 2), ((2, 4, 5, 6), 9), ((1, 2, 4, 10), 11),
]


def _soc_point(k: int, style: str, rng: np.random.Generator) -> np.ndarray:
    if style == "origin":
        return np.zeros(k)
    if k == 1:
        return np.array([{"kink": 0.0, "kink2": -0.0, "interior": 1.5, "polar": -1.5}.get(
            style, rng.standard_normal())])
    w = rng.standard_normal(k - 1)
    if style in ("kink", "kink2"):  # t = ±‖w‖ exactly, scaled by a power of two
        fits = [(q, t) for q, t in _PYTHAGOREAN if len(q) <= k - 1]
        w = np.zeros(k - 1)
        if fits:
            q, t = fits[int(rng.integers(len(fits)))]
            idx = rng.permutation(k - 1)[: len(q)]
            w[idx] = np.array(q, dtype=float) * rng.choice([-1.0, 1.0], len(q))
        else:  # k == 2: |w| = t
            t = 3.0
            w[0] = rng.choice([-3.0, 3.0])
        scale = 2.0 ** int(rng.integers(-3, 4))
        sign = 1.0 if style == "kink" else -1.0
        return np.concatenate([[sign * t * scale], w * scale])
    nw = np.linalg.norm(w)
    t = {"interior": 2 * nw + 0.1, "polar": -2 * nw - 0.1}.get(style, rng.standard_normal())
    return np.concatenate([[t], w])


def _psd_point(p: int, style: str, rng: np.random.Generator) -> np.ndarray:
    if style == "origin":
        return np.zeros(p * (p + 1) // 2)
    lam = rng.choice([-1.0, 1.0], p) * rng.uniform(0.5, 2.0, p)
    if style == "interior":
        lam = np.abs(lam)
    elif style == "polar":
        lam = -np.abs(lam)
    elif style in ("kink", "kink2"):  # exact zero eigenvalues
        lam[rng.permutation(p)[: max(1, int(rng.integers(1, p + 1)))]] = 0.0
    if style == "kink" or p == 1:
        # A signed permutation keeps the eigenvalues (and the zeros) exact.
        Q = np.eye(p)[rng.permutation(p)] * rng.choice([-1.0, 1.0], p)[:, None]
    else:
        Q, _ = np.linalg.qr(rng.standard_normal((p, p)))
    X = (Q * lam) @ Q.T
    return svec((X + X.T) / 2)


def _exp_point(style: str, dual: bool, rng: np.random.Generator) -> np.ndarray:
    """A triple for an exp block. Kinks of Π_K (the strata of ``conelayers.cones.exp``)
    are built exactly; for the 'exp' block (project_dual = Π_{K*}, kinks of Π_K at −v)
    they are negated."""
    a, b2 = rng.uniform(0.25, 2.0, 2)
    if style == "origin":
        return np.zeros(3)
    if style in ("kink", "kink2"):
        strata = [
            np.array([0.0, a, a]),  # S1: ∂K with s > 0 (s·e^{0} = t)
            np.array([a, a, -a]),  # S2: ∂K° with r > 0 (r·e^{s/r − 1} = −t)
            np.array([-a, 0.0, b2]),  # S3: s = 0, r < 0, t > 0
            np.array([0.0, -a, -b2]),  # S4: r = 0, s < 0, t < 0
            np.array([-a, 0.0, -b2]),  # S5: s = 0, r < 0, t < 0
            np.array([0.0, 0.0, b2]),  # ray (0, 0, t), t > 0: in ∂K
            np.array([-a, 0.0, 0.0]),  # (r, 0, 0), r < 0: in ∂K and ∂K°
        ]
        point = strata[int(rng.integers(len(strata)))]
    elif style == "interior":  # interior of K
        r = rng.standard_normal()
        point = np.array([r, a, a * np.exp(r / a) + b2])
    elif style == "polar":  # interior of K°
        s_ = rng.standard_normal()
        point = np.array([a, s_, -a * np.exp(s_ / a - 1.0) - b2])
    else:
        point = rng.standard_normal(3) * 2.0
    return point if dual else -point


def cone_point(dims: ConeDims, styles: list[str], rng: np.random.Generator) -> np.ndarray:
    """A point of ℝᵐ for ``ProductCone(dims)`` whose elementary blocks follow ``styles``
    (cycled). Zero rows are random."""
    parts: list[np.ndarray] = []
    it = iter(styles * (dims.size + 1))
    parts.append(rng.standard_normal(dims.zero))
    parts.append(np.array([
        {"kink": 0.0, "kink2": 0.0, "origin": 0.0, "interior": 1.0, "polar": -1.0}.get(
            next(it), float(rng.standard_normal()))
        for _ in range(dims.nonneg)
    ]))
    parts.extend(_soc_point(k, next(it), rng) for k in dims.soc)
    parts.extend(_psd_point(p, next(it), rng) for p in dims.psd)
    parts.extend(_exp_point(next(it), False, rng) for _ in range(dims.exp))
    parts.extend(_exp_point(next(it), True, rng) for _ in range(dims.exp_dual))
    v = np.concatenate([np.ravel(p) for p in parts]) if parts else np.zeros(0)
    scale = 2.0 ** int(rng.integers(-8, 9))  # exact: kinks stay kinks
    return v * scale


def cone_failures(dims: ConeDims, v: np.ndarray, kink_tol: float = 0.0) -> list[str]:
    """Checks of Π_{K*} and its Clarke-Jacobian elements at v (both selections):
    J symmetric, 0 ≼ J ≼ I, J v = Π(v) (Euler: Π is positively homogeneous, and every
    element of the Clarke Jacobian is a limit/convex hull of Jacobians at smooth points
    where the identity holds), lower ≼ upper, matvec = matrix, Π idempotent, Moreau
    v = Π_{K*}(v) − Π_K(−v) with ⟨Π_{K*}(v), Π_K(−v)⟩ = 0, Π(2ᵏv) = 2ᵏΠ(v)."""
    cone = ProductCone(dims)
    out: list[str] = []
    nv = float(np.linalg.norm(v))
    tol = 1e-10 * (1.0 + nv) + 4 * kink_tol
    pv = cone.project_dual(v)
    if not np.all(np.isfinite(pv)):
        return [f"Π(v) not finite: {pv}"]
    if np.linalg.norm(cone.project_dual(pv) - pv) > tol:
        out.append("Π not idempotent")
    pk = cone.project(-v)
    if np.linalg.norm(pv - pk - v) > tol:
        out.append(f"Moreau v = Π_K*(v) − Π_K(−v) off by {np.linalg.norm(pv - pk - v):.2e}")
    if abs(pv @ pk) > tol * (1.0 + nv):
        out.append(f"⟨Π_K*(v), Π_K(−v)⟩ = {pv @ pk:.2e}")
    if np.linalg.norm(cone.project_dual(8.0 * v) - 8.0 * pv) > 8 * tol:
        out.append("Π not positively homogeneous")
    mats = {}
    rng = np.random.default_rng(0)
    probe = rng.standard_normal(v.size)
    for sel in ("lower", "upper"):
        op = cone.jacobian_dual(v, selection=sel, kink_tol=kink_tol)
        J = op.tosparse().toarray()
        mats[sel] = J
        if not np.all(np.isfinite(J)):
            out.append(f"{sel}: J not finite")
            continue
        if np.abs(J - J.T).max(initial=0.0) > 1e-12 * (1 + np.abs(J).max(initial=0.0)):
            out.append(f"{sel}: J not symmetric ({np.abs(J - J.T).max():.2e})")
        ev = np.linalg.eigvalsh((J + J.T) / 2) if J.size else np.zeros(0)
        if ev.size and (ev.min() < -1e-10 or ev.max() > 1 + 1e-10):
            out.append(f"{sel}: eigenvalues of J in [{ev.min():.3g}, {ev.max():.3g}]")
        err = np.linalg.norm(J @ v - pv)
        if err > tol:
            out.append(f"{sel}: ‖J v − Π(v)‖ = {err:.2e} (tol {tol:.1e})")
        if np.linalg.norm(op.matvec(probe) - J @ probe) > 1e-12 * (1 + np.linalg.norm(J)) * (
            1 + np.linalg.norm(probe)
        ):
            out.append(f"{sel}: matvec differs from tosparse")
    if "lower" in mats and "upper" in mats and mats["lower"].size:
        gap = np.linalg.eigvalsh((mats["upper"] - mats["lower"]
                                  + (mats["upper"] - mats["lower"]).T) / 2)
        if gap.min() < -1e-10:
            out.append(f"lower ⋠ upper (min eigenvalue of upper − lower {gap.min():.2e})")
    return out
