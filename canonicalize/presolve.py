"""Presolve of a parametric cone program: fix bounded epigraph variables.

CVXPY canonicalizes a bound on a convex function, ``norm(A x + b) <= r``, into an
epigraph variable t with SOC(t, A x + b) and the row t ≤ r. Where that bound is
inactive, t is not unique (any value in [‖A x + b‖, r] is optimal), so U is singular on
an auxiliary coordinate: harmless for the user's variables, but it keeps every such
instance off the fast derivative paths (a null-space analysis per instance) and gives
SCS a variable it does not need.

A variable t can be fixed at its upper bound when

- it is not an output, has no cost (c and P vanish on it for every θ), and its
  column of A is constant;
- exactly one row bounds it above, a nonnegative row holding t alone (s = b_r − a t,
  a > 0, so t ≤ b_r(θ)/a), and no dual output reads that row;
- every other row it enters loosens as t grows: a nonnegative row or the head of a
  second-order cone with A_kt ≤ 0 (s_k = b_k − A_kt t − …).

Then any feasible (x, t) stays feasible at t = b_r/a and the objective does not see t,
so the optimal x are the same. t's column and row r are removed, and b_k(θ) of the rows
it entered absorbs −A_kt b_r(θ)/a: still affine in θ.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from canonicalize.program import (
    ConstraintRows,
    ParametricConeProgram,
    SparseDataMap,
)


@dataclass(frozen=True)
class FixedVariables:
    """What ``fix_bounded_epigraphs`` removed: the columns of x (each fixed at the
    upper bound of its row) and those rows, in the program it was given."""

    columns: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return int(self.columns.size)


def _soc_heads(program: ParametricConeProgram) -> np.ndarray:
    """Mask of the rows that are the head t of a second-order cone."""
    dims = program.dims
    heads = np.zeros(program.m, dtype=bool)
    start = dims.zero + dims.nonneg
    offsets = start + np.concatenate([[0], np.cumsum(dims.soc)[:-1]]).astype(int)
    heads[offsets[: len(dims.soc)]] = True
    return heads


def fixable_epigraphs(program: ParametricConeProgram) -> tuple[np.ndarray, np.ndarray]:
    """(columns, their upper-bound rows) of the variables the module doc says can be
    fixed, found with array operations over A's entries."""
    n, m, dims = program.n, program.m, program.dims
    A = program.A
    rows, cols = A.row_col()
    if rows.size == 0 or m <= 1:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    constant, value = A.constant_entries()

    nonneg = np.zeros(m, dtype=bool)
    nonneg[dims.zero : dims.zero + dims.nonneg] = True
    row_entries = np.bincount(rows, minlength=m)
    x_read, dual_read = program.read_masks()

    upper = nonneg[rows] & (row_entries[rows] == 1) & constant & (value > 0) & ~dual_read[rows]
    loosening = (nonneg[rows] | _soc_heads(program)[rows]) & constant & (value <= 0)
    bad = ~(upper | loosening)

    n_upper = np.bincount(cols, weights=upper, minlength=n)
    n_bad = np.bincount(cols, weights=bad, minlength=n)
    no_cost = np.diff(sp.csr_matrix(program.c_map).indptr) == 0
    if program.P is not None:
        P_rows, P_cols = program.P.row_col()
        no_cost[P_rows] = False
        no_cost[P_cols] = False
    candidate = (n_upper == 1) & (n_bad == 0) & no_cost & ~x_read
    entries = np.flatnonzero(upper & candidate[cols])
    columns, upper_rows = cols[entries], rows[entries]
    # Keep at least one row: SCS needs a cone.
    if upper_rows.size >= m:
        columns, upper_rows = columns[:-1], upper_rows[:-1]
    return columns.astype(np.int64), upper_rows.astype(np.int64)


def keep_map(size: int, removed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of kept indices, new index of each old one; −1 where removed)."""
    keep = np.ones(size, dtype=bool)
    keep[removed] = False
    new = np.full(size, -1, dtype=np.int64)
    new[keep] = np.arange(int(keep.sum()))
    return keep, new


def remove_columns(matrix: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix(sp.csc_matrix(matrix)[:, np.flatnonzero(keep)])


def restrict_entries(
    data_map: SparseDataMap, kept_entries: np.ndarray, keep_cols: np.ndarray,
    new_row: np.ndarray, shape: tuple[int, int],
) -> SparseDataMap:
    """``data_map`` with only ``kept_entries`` (none of them in a removed column), rows
    renumbered by ``new_row`` and the removed columns (not ``keep_cols``) dropped."""
    rows, cols = data_map.row_col()
    return SparseDataMap(
        shape=shape,
        indices=new_row[rows[kept_entries]],
        indptr=np.concatenate([[0], np.cumsum(np.bincount(
            cols[kept_entries], minlength=data_map.shape[1])[keep_cols])]).astype(np.int64),
        values_map=sp.csr_matrix(
            sp.csr_matrix(data_map.values_map)[np.flatnonzero(kept_entries)]),
    )


def renumber_constraints(
    constraints: tuple[ConstraintRows, ...], new_row: np.ndarray,
) -> tuple[ConstraintRows, ...]:
    """The constraints' row ranges after removing the rows where ``new_row`` is −1 (a
    constraint whose rows are all gone is dropped)."""
    m = new_row.size
    kept_before = np.concatenate([[0], np.cumsum(new_row >= 0)])
    out = []
    for con in constraints:
        start, stop = int(kept_before[min(con.start, m)]), int(kept_before[min(con.stop, m)])
        if start == stop and con.stop > con.start:
            continue
        out.append(replace(con, start=start, stop=stop))
    return tuple(out)


def fix_bounded_epigraphs(
    program: ParametricConeProgram,
) -> tuple[ParametricConeProgram, FixedVariables]:
    """The program with the fixable epigraph variables (module doc) fixed at their
    upper bounds, and what was removed. The program itself when there are none."""
    columns, upper_rows = fixable_epigraphs(program)
    fixed = FixedVariables(columns, upper_rows)
    if columns.size == 0:
        return program, fixed
    n, m = program.n, program.m
    A = program.A
    rows, cols = A.row_col()
    _, value = A.constant_entries()

    # b_k(θ) -= (A_kt / a) b_r(θ) for every row k ≠ r of a fixed column t.
    bound_of = np.full(n, -1, dtype=np.int64)
    bound_of[columns] = upper_rows
    a = np.zeros(n)
    in_fixed = bound_of[cols] >= 0
    is_upper = in_fixed & (rows == bound_of[cols])
    a[cols[is_upper]] = value[is_upper]
    others = np.flatnonzero(in_fixed & ~is_upper)
    weights = -value[others] / a[cols[others]]
    transfer = sp.csr_matrix(
        (weights, (rows[others], bound_of[cols[others]])), shape=(m, m)
    ) + sp.identity(m, format="csr")
    keep_rows, new_row = keep_map(m, upper_rows)
    keep_cols, new_col = keep_map(n, columns)
    b_map = sp.csr_matrix((transfer @ program.b_map)[np.flatnonzero(keep_rows)])

    # A without the fixed columns (whose entries include all of the removed rows').
    new_A = restrict_entries(A, ~in_fixed, keep_cols, new_row,
                             (m - upper_rows.size, n - columns.size))
    P = program.P
    if P is not None:  # the fixed columns have no entries in P (no cost)
        P = restrict_entries(P, np.ones(P.nnz, dtype=bool), keep_cols, new_col,
                             (n - columns.size, n - columns.size))

    recoveries = tuple(
        replace(rec, matrix=remove_columns(rec.matrix, keep_cols if rec.source == "x"
                                           else keep_rows))
        for rec in program.recoveries
    )
    dims = replace(program.dims, nonneg=program.dims.nonneg - int(upper_rows.size))
    return replace(
        program,
        n=n - int(columns.size),
        m=m - int(upper_rows.size),
        dims=dims,
        A=new_A,
        P=P,
        b_map=b_map,
        c_map=sp.csr_matrix(sp.csr_matrix(program.c_map)[np.flatnonzero(keep_cols)]),
        recoveries=recoveries,
        constraints=_constraint_rows(program, rows, cols, bound_of, new_row),
    ), fixed


def _constraint_rows(
    program: ParametricConeProgram, rows: np.ndarray, cols: np.ndarray,
    bound_of: np.ndarray, new_row: np.ndarray,
) -> tuple[ConstraintRows, ...]:
    """The constraints' row ranges after the removal (a constraint whose rows are all
    gone is dropped). An auxiliary cone that absorbed a user's bound takes that bound's
    label: its kinks are the bound's."""
    if not program.constraints:
        return ()
    m = program.m
    owner = np.full(m, -1, dtype=np.int64)
    for i, con in enumerate(program.constraints):
        owner[con.start : min(con.stop, m)] = i
    # Row k of a fixed column's other entries absorbed the bound in row r.
    entered = (bound_of[cols] >= 0) & (rows != bound_of[cols])
    absorbed_by = np.full(m, -1, dtype=np.int64)
    absorbed_by[rows[entered]] = owner[bound_of[cols[entered]]]
    relabeled = []
    for con in program.constraints:
        bounds = absorbed_by[con.start : con.stop]
        bounds = bounds[bounds >= 0]
        if bounds.size and not con.user and program.constraints[bounds[0]].user:
            bound = program.constraints[bounds[0]]
            con = replace(con, label=bound.label, user=True, user_id=bound.user_id)
        relabeled.append(con)
    return renumber_constraints(tuple(relabeled), new_row)
