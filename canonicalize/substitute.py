"""Presolve of a parametric cone program: substitute variables defined by an equality.

CVXPY canonicalizes ``sum_squares(x - p)`` into a new variable t with the zero-cone row
t − x = −p and the cost ½tᵀPt. SCS then carries t and its row: on a projection onto the
simplex of dimension 5000 that is 10000 variables and 10001 rows for a problem with 5000
and 5001 (and a larger KKT system to factorize and iterate on; the incumbent's program
is 15005 rows).

A variable t is substituted when

- its column of A holds one constant entry a, in a zero-cone row r;
- row r holds one other constant entry g, of a kept variable x: t = (b_r(θ) − g x)/a;
- t is not an output, no dual output reads row r, and P (if any) is constant;
- 1/10 ≤ |g/a| ≤ 10 (``MAX_GAIN``: the substitution scales t's curvature by (g/a)²).

Then z = M w + B θ̃ for the kept variables w (M: identity on them, −g/a from x to t;
B: b_r/a into t), and the objective ½zᵀPz + c(θ)ᵀz becomes

    ½wᵀ(MᵀPM)w + (Mᵀc(θ) + MᵀPBθ̃)ᵀw + ½θ̃ᵀ(BᵀPB + c_mapᵀB + Bᵀc_map)θ̃,

still a program of the same form: P' = MᵀPM is constant (with the pattern of P's blocks:
one entry of M per row, no fill beyond P_tt's), c' affine in θ, and the constant term,
now quadratic in θ, is kept as ``offset_quadratic`` for the optimal value. Row r and t's
column are removed; no other row holds t, so A and b are otherwise unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from canonicalize.presolve import keep_map, remove_columns, renumber_constraints, restrict_entries
from canonicalize.program import ParametricConeProgram, SparseDataMap

MAX_GAIN = 10.0
"""Largest |g/a| (and smallest 1/MAX_GAIN) of a substituted variable t = (b − g x)/a: its
curvature moves to x scaled by (g/a)². Found when U's singularity was judged unscaled
(sum_squares(300·x − p): P' = 1.8e5, σ ratio below 1e-10, and the gradient came out as
if a constraint were absent); U is judged on its equilibration now (linsolve), and the
bound stays as a guard: CVXPY's own form spreads such a scale over A."""


def substitutable(program: ParametricConeProgram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(variables t, their defining rows r, the partner variables x) per the module doc,
    found with array operations over A's entries."""
    empty = np.zeros(0, dtype=np.int64)
    n, m, dims = program.n, program.m, program.dims
    if dims.zero == 0 or (program.P is not None and not program.P.is_constant):
        return empty, empty, empty
    A = program.A
    rows, cols = A.row_col()
    constant, value = A.constant_entries()
    col_entries = np.bincount(cols, minlength=n)
    row_entries = np.bincount(rows, minlength=m)
    x_read, y_read = program.read_masks()
    # Entries that define their column: the column's only entry, in a two-entry zero row.
    defining = (
        (col_entries[cols] == 1) & (rows < dims.zero) & (row_entries[rows] == 2)
        & constant & ~x_read[cols] & ~y_read[rows]
    )
    # The other entry of each such row (constant) is the partner.
    partner = np.full(m, -1, dtype=np.int64)
    partner_ok = np.zeros(m, dtype=bool)
    in_row = np.zeros(m, dtype=np.int64)
    np.add.at(in_row, rows[defining], 1)
    candidate_rows = np.flatnonzero(in_row == 1)  # two defining entries: keep neither
    is_candidate_row = np.zeros(m, dtype=bool)
    is_candidate_row[candidate_rows] = True
    others = is_candidate_row[rows] & ~defining
    partner[rows[others]] = cols[others]
    partner_ok[rows[others]] = constant[others]
    partner_value = np.zeros(m)
    partner_value[rows[others]] = value[others]
    # P' = MᵀPM scales t's curvature by (g/a)²: keep that within MAX_GAIN² either way.
    gain = np.abs(partner_value[rows]) / np.maximum(np.abs(value), 1e-300)
    moderate = (gain <= MAX_GAIN) & (gain >= 1.0 / MAX_GAIN)
    chosen = np.flatnonzero(defining & is_candidate_row[rows] & partner_ok[rows] & moderate)
    t, r = cols[chosen], rows[chosen]
    x = partner[r]
    # A partner must stay: drop a t that is another t's partner (and so keep chains out).
    keep = ~np.isin(t, x)
    t, r, x = t[keep], r[keep], x[keep]
    if r.size >= m:  # SCS needs a cone
        t, r, x = t[:-1], r[:-1], x[:-1]
    return t.astype(np.int64), r.astype(np.int64), x.astype(np.int64)


def substitute_defined_variables(program: ParametricConeProgram) -> ParametricConeProgram:
    """The program with the variables of ``substitutable`` substituted out (module doc);
    the program itself when there are none."""
    t, r, x = substitutable(program)
    if t.size == 0:
        return program
    n, m = program.n, program.m
    A = program.A
    rows, cols = A.row_col()
    _, value = A.constant_entries()
    entries = sp.csr_matrix((value, (rows, cols)), shape=(m, n))
    a = np.asarray(entries[r, t]).ravel()
    g = np.asarray(entries[r, x]).ravel()

    keep_cols, new_col = keep_map(n, t)
    keep_rows, new_row = keep_map(m, r)
    n_new = n - int(t.size)

    # z = M w + B θ̃.
    kept = np.flatnonzero(keep_cols)
    M = sp.csr_matrix(
        (np.concatenate([np.ones(kept.size), -g / a]),
         (np.concatenate([kept, t]), np.concatenate([new_col[kept], new_col[x]]))),
        shape=(n, n_new),
    )
    B = sp.csr_matrix(sp.diags(np.bincount(t, weights=1.0 / a, minlength=n))
                      @ sp.csr_matrix((np.ones(t.size), (t, r)), shape=(n, m))
                      @ program.b_map)
    c_map = sp.csr_matrix(program.c_map)
    MT = sp.csr_matrix(M.T)
    quadratic = sp.csr_matrix(c_map.T @ B)
    quadratic = quadratic + quadratic.T
    P = program.P
    if P is not None:
        P0 = P.matrix(P.values(_unit(program.num_theta)))
        c_map = MT @ c_map + MT @ (P0 @ B)
        quadratic = quadratic + B.T @ (P0 @ B)
        P = _constant_map(sp.csc_matrix(MT @ P0 @ M), program.num_theta)
    else:
        c_map = MT @ c_map

    new_A = restrict_entries(A, keep_rows[rows] & keep_cols[cols], keep_cols, new_row,
                             (m - int(r.size), n_new))
    recoveries = tuple(
        replace(rec, matrix=remove_columns(rec.matrix, keep_cols if rec.source == "x"
                                           else keep_rows))
        for rec in program.recoveries
    )
    previous = program.offset_quadratic
    quadratic = sp.csr_matrix(quadratic if previous is None else previous + quadratic)
    return replace(
        program,
        n=n_new,
        m=m - int(r.size),
        dims=replace(program.dims, zero=program.dims.zero - int(r.size)),
        A=new_A,
        P=P,
        b_map=sp.csr_matrix(sp.csr_matrix(program.b_map)[np.flatnonzero(keep_rows)]),
        c_map=sp.csr_matrix(c_map),
        offset_quadratic=quadratic,
        recoveries=recoveries,
        constraints=renumber_constraints(program.constraints, new_row),
    )


def _unit(p: int) -> np.ndarray:
    """θ̃ = [0; 1]: the constant part of a map."""
    out = np.zeros(p + 1)
    out[-1] = 1.0
    return out


def _constant_map(matrix: sp.csc_matrix, p: int) -> SparseDataMap | None:
    """A SparseDataMap of a constant matrix (its values in θ̃'s last column)."""
    matrix = sp.csc_matrix(matrix)
    matrix.eliminate_zeros()
    matrix.sort_indices()
    if matrix.nnz == 0:
        return None
    values = sp.csr_matrix(
        (matrix.data, (np.arange(matrix.nnz), np.full(matrix.nnz, p))),
        shape=(matrix.nnz, p + 1),
    )
    return SparseDataMap(matrix.shape, matrix.indices.astype(np.int64),
                         matrix.indptr.astype(np.int64), values)

