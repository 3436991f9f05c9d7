"""Newton refinement of a whole batch at once, for small programs.

On small programs refinement per instance is mostly Python overhead, not arithmetic
(qp/small: ~0.4 ms per instance around a 55 × 55 LU that takes 20 µs). Where no cone is
exponential, Π_{K*} and its Jacobian are computed for a stack of points at once
(entrywise, or per group of equal-size SOC or PSD cones), so the batch is refined
as stacked arrays: N(Z) for all instances in a few matrix products, U for all of them at
once (dense: n + m ≤ DENSE_MAX_SIZE), one LAPACK LU each. The steps follow
``residual.newton_refine``'s plain LU step: a full step is kept only if it is not blown
up by a tiny pivot and lowers ‖N‖ tenfold, and the end point must pass the same
accuracy test (``ACCURACY_RTOL`` row by row). An instance where any of that fails goes
through the per-instance path (``refine.refine_solution``), which has the minimum-norm
steps and the SCS polish.

Each settled instance gets the Jacobian for its derivative at the refined point, with
the derivative's kink tolerance and the user's selection; the last Newton LU serves
when its Jacobian is that one (an unchanged active set on polyhedral cones), otherwise U
is factorized there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg as sla
from scipy.linalg.lapack import dgetrs as getrs

from conelayers.checks import ACCURACY_RTOL
from conelayers.cones import Selection
from conelayers.cones.nonneg import DiagonalJacobian, NonnegCone
from conelayers.cones.product import BlockDiagonalJacobian
from conelayers.cones.psd import dense_psd_blocks
from conelayers.cones.soc import dense_group_blocks
from conelayers.cones.zero import IdentityJacobian
from conelayers.linsolve import NullSpaceLU, power_start, shift_for
from conelayers.residual import (
    DENSE_MAX_SIZE,
    KINK_RTOL,
    ResidualJacobian,
    ResidualMap,
)
from conelayers.solvers.scs import ConeSolution

BATCHED = frozenset({"zero", "nonneg", "soc", "psd"})
MIN_BATCH = 2
"""Fewest instances refined at once: for one, the per-instance path costs less (qp/small,
batch 1: forward + backward 1.36 ms per instance against 1.48 at once)."""
CHUNK = 128
"""Instances refined together at most: a stack of U is CHUNK·(n + m)² doubles (41 MB at
n + m = 200), and a few stacks are alive at once."""
MAX_STEPS = 3
"""Newton steps at most (as ``newton_refine``): from an SCS point with the right active
set one step lands on the solution; a wrong active set usually needs one more."""
TOL = 1e-12
"""Stop at ‖N‖ ≤ TOL·(1 + ‖b‖ + ‖c‖), as ``newton_refine``."""
REFINE_STEPS = 2
"""Iterative-refinement steps of each solve against U itself (the LU is of U + δI)."""
NORM_ITERATIONS = 8
"""Power iterations of the ‖U‖ estimate (as ``linsolve.estimate_norm``, same start)."""


def applies(residuals: Sequence[ResidualMap]) -> bool:
    """Whether the batch can be refined at once: small (dense U), no exponential cones."""
    if not residuals:
        return False
    first = residuals[0]
    return first.n + first.m <= DENSE_MAX_SIZE and set(first.cone.blocks) <= BATCHED


_DENSE_BLOCKS = {"soc": dense_group_blocks, "psd": dense_psd_blocks}
"""Per curved cone kind: dense blocks from a group's coefficients (leading axes kept)."""


class _Jacobians:
    """Cone Jacobian elements of a stack of points: the diagonal q of the zero and
    nonnegative rows (0 on the other rows) and, per curved kind (second-order, PSD) and
    group of equal-size cones, the coefficients its cone block gives
    (``jacobian_coefficients``: (c₀..c₃, ŵ) for SOC, (Q, Ω) for PSD)."""

    def __init__(self, q: np.ndarray, curved: dict[str, list[tuple[np.ndarray, ...]]],
                 layout: _Batch) -> None:
        self.q, self.curved, self.layout = q, curved, layout

    def take(self, rows: list[int]) -> _Jacobians:
        curved = {kind: [tuple(a[rows] for a in group) for group in groups]
                  for kind, groups in self.curved.items()}
        return _Jacobians(self.q[rows], curved, self.layout)

    def same(self, j: int, other: _Jacobians, k: int) -> bool:
        """Whether row j of these and row k of ``other`` are the same element."""
        return np.array_equal(self.q[j], other.q[k]) and all(
            np.array_equal(a[j], b[k])
            for kind, groups in self.curved.items()
            for group, other_group in zip(groups, other.curved[kind])
            for a, b in zip(group, other_group)
        )

    def dense(self) -> np.ndarray:
        """J for each row, (k, m, m)."""
        k, m = self.q.shape
        J = np.zeros((k, m, m))
        rows = np.arange(m)
        J[:, rows, rows] = self.q
        cone = self.layout.cone
        for kind, groups in self.curved.items():
            start = cone.slices[kind].start
            for rows_g, group in zip(cone.blocks[kind].group_rows, groups):
                idx = rows_g + start
                J[:, idx[:, :, None], idx[:, None, :]] = _DENSE_BLOCKS[kind](*group)
        return J

    def element(self, j: int) -> BlockDiagonalJacobian:
        """Row j as the cone Jacobian object the derivative and the checks use."""
        cone = self.layout.cone
        parts = []
        for kind, sl in cone.slices.items():
            if kind == "zero":
                parts.append((sl, IdentityJacobian(sl.stop - sl.start)))
            elif kind == "nonneg":
                parts.append((sl, DiagonalJacobian(self.q[j, sl].copy())))
            else:  # soc, psd (``applies``)
                groups = [tuple(a[j] for a in group) for group in self.curved[kind]]
                parts.append((sl, cone.blocks[kind].jacobian_from(groups)))
        return BlockDiagonalJacobian(self.layout.m, parts)


class _Batch:
    """The instances' data stacked (A and P once when every instance shares them) and
    N(Z), U and its LU for stacks of points."""

    def __init__(self, residuals: Sequence[ResidualMap]) -> None:
        first = residuals[0]
        programs = [r.program for r in residuals]
        self.n, self.m = first.n, first.m
        self.shared_A = all(p.A is programs[0].A for p in programs)
        self.A = first.ops.A if self.shared_A else np.stack([r.ops.A for r in residuals])
        if first.ops.P is None:
            self.P, self.shared_P = None, True
        else:
            self.shared_P = all(p.P is programs[0].P for p in programs)
            self.P = first.ops.P if self.shared_P else np.stack([r.ops.P for r in residuals])
        self.b = np.stack([p.b for p in programs])
        self.c = np.stack([p.c for p in programs])
        nonneg = first.cone.slices.get("nonneg")
        self.nonneg = nonneg if nonneg is not None else slice(0, 0)
        self.cone = first.cone
        self.curved = [kind for kind in ("soc", "psd") if kind in first.cone.blocks]

    # -- products with A, Aᵀ, P for the rows ``idx`` of a stack ---------------------------
    def _A(self, X: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return X @ self.A.T if self.shared_A else np.einsum("bmn,bn->bm", self.A[idx], X)

    def _AT(self, Y: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return Y @ self.A if self.shared_A else np.einsum("bmn,bm->bn", self.A[idx], Y)

    def _P(self, X: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return X @ self.P if self.shared_P else np.einsum("bij,bj->bi", self.P[idx], X)

    def evaluate(self, Z: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, tuple]:
        """N(z) for the rows of Z (instances ``idx``), and the terms of each row
        (ATy, Pu, Au, s) that ``ResidualMap.row_scales`` weighs."""
        n = self.n
        u, v = Z[:, :n], Z[:, n:]
        y = self.project(v)
        ATy = self._AT(y, idx)
        top = ATy + self.c[idx]
        Pu = None
        if self.P is not None:
            Pu = self._P(u, idx)
            top += Pu
        Au = self._A(u, idx)
        s = y - v
        return np.concatenate([top, self.b[idx] - Au - s], axis=1), (ATy, Pu, Au, s)

    def project(self, V: np.ndarray) -> np.ndarray:
        """Π_{K*} of each row of V."""
        Y = V.copy()
        Y[:, self.nonneg] = np.maximum(V[:, self.nonneg], 0.0)
        for kind in self.curved:
            sl = self.cone.slices[kind]
            Y[:, sl] = self.cone.blocks[kind].project_dual_stack(V[:, sl])
        return Y

    def relative(self, N: np.ndarray, terms: tuple, idx: np.ndarray) -> np.ndarray:
        """``residual.relative_residual`` per row of a stack."""
        ATy, Pu, Au, s = terms
        top = 1.0 + np.abs(self.c[idx]) + np.abs(ATy)
        if Pu is not None:
            top += np.abs(Pu)
        bottom = 1.0 + np.abs(self.b[idx]) + np.abs(Au) + np.abs(s)
        return np.max(np.abs(N) / np.concatenate([top, bottom], axis=1), axis=1, initial=0.0)

    def jacobians(self, Z: np.ndarray, selection: Selection, tol: np.ndarray) -> _Jacobians:
        """The cone Jacobian element at each point (rows of Z), kinks within ``tol``
        (one per row) taking the ``selection``."""
        q = np.ones((Z.shape[0], self.m))
        sl = self.nonneg
        q[:, sl] = NonnegCone.jacobian_diagonal(
            Z[:, self.n + sl.start : self.n + sl.stop], selection, tol[:, None]
        )
        curved = {}
        for kind in self.curved:
            sl = self.cone.slices[kind]
            q[:, sl] = 0.0
            v = Z[:, self.n + sl.start : self.n + sl.stop]
            # One tolerance per point, against (points, cones) for SOC distances and
            # (points, cones, eigenvalues) for PSD.
            t = tol[:, None] if kind == "soc" else tol[:, None, None]
            curved[kind] = self.cone.blocks[kind].jacobian_coefficients(v, selection, t)
        return _Jacobians(q, curved, self)

    def assemble(self, jacs: _Jacobians, idx: np.ndarray) -> np.ndarray:
        """U = [[P, AᵀJ], [−A, I − J]] for each element of ``jacs`` (instances ``idx``)."""
        n, m = self.n, self.m
        U = np.zeros((len(idx), n + m, n + m))
        if self.P is not None:
            U[:, :n, :n] = self.P if self.shared_P else self.P[idx]
        AT = self.A.T if self.shared_A else self.A[idx].transpose(0, 2, 1)
        U[:, n:, :n] = -(self.A if self.shared_A else self.A[idx])
        if not jacs.curved:  # diagonal J: scaled columns
            U[:, :n, n:] = AT * jacs.q[:, None, :]
            rows = np.arange(n, n + m)
            U[:, rows, rows] = 1.0 - jacs.q
        else:
            J = jacs.dense()
            U[:, :n, n:] = np.matmul(AT, J)
            U[:, n:, n:] = np.eye(m) - J
        return U


class _Factors:
    """LU of U + δI for a stack of U (δ from a ‖U‖ estimate, as ``NullSpaceLU``), with
    solves refined against U itself."""

    def __init__(self, U: np.ndarray) -> None:
        self.U = U
        size = U.shape[1]
        # σ_max(U) by power iteration on UᵀU (as linsolve.estimate_norm).
        x = np.broadcast_to(power_start(size), U.shape[:2])
        sigma = np.zeros(U.shape[0])
        for _ in range(NORM_ITERATIONS):
            x = x / np.maximum(np.sqrt(np.einsum("bi,bi->b", x, x)), 1e-300)[:, None]
            y = np.matmul(U, x[:, :, None])[:, :, 0]
            sigma = np.sqrt(np.einsum("bi,bi->b", y, y))
            x = np.matmul(y[:, None, :], U)[:, 0, :]
        self.norms = sigma
        eye = np.eye(size)
        self.lu = [
            sla.lu_factor(U[k] + shift_for(float(sigma[k])) * eye, check_finite=False)
            for k in range(U.shape[0])
        ]

    def solve(self, R: np.ndarray) -> np.ndarray:
        def once(rhs: np.ndarray) -> np.ndarray:
            return np.stack([getrs(lu, piv, r)[0] for (lu, piv), r in zip(self.lu, rhs)])

        W = once(R)
        for _ in range(REFINE_STEPS):
            W += once(R - np.matmul(self.U, W[:, :, None])[:, :, 0])
        return W

    def factorization(self, k: int) -> NullSpaceLU:
        return NullSpaceLU(self.U[k], dense_factors=(float(self.norms[k]), self.lu[k]))


def refine_batch(
    residuals: Sequence[ResidualMap],
    solutions: Sequence[ConeSolution],
    instances: Sequence[int],
    selection: Selection = "lower",
) -> dict[int, tuple[np.ndarray, ResidualJacobian]]:
    """Refine ``instances`` (indices into residuals/solutions, all with a solution) at
    once where ``applies``; returns {instance: (refined z, Jacobian for its derivative)}
    for those it settled. The others are left to the per-instance path."""
    instances = list(instances)
    if len(instances) < MIN_BATCH or not applies([residuals[k] for k in instances]):
        return {}
    if len(instances) > CHUNK:  # bound the stacks of U (CHUNK · 200² doubles at most)
        out: dict[int, tuple[np.ndarray, ResidualJacobian]] = {}
        for start in range(0, len(instances), CHUNK):
            part = instances[start : start + CHUNK]
            if len(part) >= MIN_BATCH:
                out.update(refine_batch(residuals, solutions, part, selection))
        return out
    batch = _Batch([residuals[k] for k in instances])
    every = np.arange(len(instances))
    Z = np.stack([
        np.concatenate([solutions[k].x, solutions[k].y - solutions[k].s]) for k in instances
    ])
    N, terms = batch.evaluate(Z, every)
    norms = np.linalg.norm(N, axis=1)
    goal = TOL * (1.0 + np.linalg.norm(batch.b, axis=1) + np.linalg.norm(batch.c, axis=1))
    failed = ~np.all(np.isfinite(Z), axis=1) | ~np.isfinite(norms)
    last: dict[int, tuple[_Jacobians, int, _Factors]] = {}  # Newton's J, its row, LU
    for _ in range(MAX_STEPS):
        idx = np.flatnonzero(~failed & (norms > goal))
        if not idx.size:
            break
        Zi = Z[idx]
        jacs = batch.jacobians(Zi, selection, KINK_RTOL * (1.0 + np.abs(Zi).max(axis=1)))
        factors = _Factors(batch.assemble(jacs, idx))
        steps = factors.solve(N[idx])
        blown = ~np.all(np.isfinite(steps), axis=1) | (
            np.abs(steps).max(axis=1) > 1.0 + np.abs(Zi).max(axis=1)
        )
        cand = Zi - steps
        Nc, terms_c = batch.evaluate(cand, idx)
        cand_norms = np.linalg.norm(Nc, axis=1)
        ok = ~blown & np.isfinite(cand_norms) & (cand_norms < 0.1 * norms[idx])
        failed[idx[~ok]] = True
        keep = idx[ok]
        Z[keep], N[keep], norms[keep] = cand[ok], Nc[ok], cand_norms[ok]
        for j, term in enumerate(terms):
            if term is not None:
                term[keep] = terms_c[j][ok]
        for row, k in zip(np.flatnonzero(ok), keep):
            last[int(k)] = (jacs, int(row), factors)
    settled = ~failed & (batch.relative(N, terms, every) <= ACCURACY_RTOL)
    idx = np.flatnonzero(settled)
    if not idx.size:
        return {}
    # The derivative's Jacobian at the refined point: kink tolerance as
    # residual.kink_tolerance, the user's selection.
    tol = KINK_RTOL * (1.0 + np.abs(Z[idx]).max(axis=1)) + 10.0 * norms[idx]
    final = batch.jacobians(Z[idx], selection, tol)
    fresh = [
        j for j, k in enumerate(idx)
        if int(k) not in last or not final.same(j, last[int(k)][0], last[int(k)][1])
    ]
    new_factors = _Factors(batch.assemble(final.take(fresh), idx[fresh])) if fresh else None
    where = {j: (new_factors, r) for r, j in enumerate(fresh)}
    Y = batch.project(Z[idx, batch.n :])
    out = {}
    for j, k in enumerate(idx):
        factors, row = where[j] if j in where else (last[int(k)][2], last[int(k)][1])
        residual = residuals[instances[k]]
        z = Z[k]
        residual.remember(z, N[k], tuple(t[k] if t is not None else None for t in terms),
                          Y[j])
        jac = ResidualJacobian(
            residual.program, final.element(j), residual.ops,
            factorization=factors.factorization(row),
        )
        out[instances[k]] = (z.copy(), jac)
    return out
