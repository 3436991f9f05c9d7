"""Assembling SCS rows (Ax + s = b, s ∈ K) from blocks of constraints in any order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from canonicalize.cones import ConeDims
from canonicalize.program import ConstraintRows

SQRT2 = float(np.sqrt(2.0))
KINDS = ("zero", "nonneg", "soc", "psd", "exp", "exp_dual")


def svec_index(i: np.ndarray, j: np.ndarray, order: int) -> np.ndarray:
    """Position of entry (i, j) (0-based, either triangle) of an order×order symmetric
    matrix in SCS's svec: the lower triangle, column by column."""
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    row, col = np.maximum(i, j), np.minimum(i, j)
    return col * order - col * (col - 1) // 2 + (row - col)


def svec_scale(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """1 on the diagonal, √2 off it (svec's scaling)."""
    return np.where(np.asarray(i) == np.asarray(j), 1.0, SQRT2)


@dataclass
class _Block:
    kind: str
    rows: int
    order: int
    A: sp.coo_matrix  # (rows, n)
    b: np.ndarray
    label: str


class ConeRows:
    """Blocks of SCS rows s = b − Ax ∈ K_kind, collected in any order and laid out in
    SCS's cone order (zero, nonneg, soc, psd, exp, exp_dual), blocks of one kind in the
    order they were added."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.blocks: list[_Block] = []

    def add(self, kind: str, A: sp.spmatrix, b: np.ndarray, label: str,
            order: int | None = None) -> None:
        """Add rows with s = b − A x in the cone ``kind`` (``order``: the matrix order of
        a psd block; soc blocks are one cone of len(b) rows; exp blocks are 3k rows)."""
        if kind not in KINDS:
            raise ValueError(f"unknown cone kind {kind!r}")
        A = sp.coo_matrix(A)
        b = np.asarray(b, dtype=np.float64).ravel()
        if A.shape != (b.size, self.n):
            raise ValueError(f"block {label!r}: A is {A.shape}, b has {b.size}")
        if b.size == 0:
            return
        if kind == "psd":
            if order is None or order * (order + 1) // 2 != b.size:
                raise ValueError(f"block {label!r}: {b.size} rows is not svec of order {order}")
        elif kind in ("exp", "exp_dual") and b.size % 3:
            raise ValueError(f"block {label!r}: {b.size} rows is not a multiple of 3")
        self.blocks.append(_Block(kind, b.size, order or b.size, A, b, label))

    def assemble(self) -> tuple[sp.csc_matrix, np.ndarray, ConeDims, list[ConstraintRows],
                                np.ndarray]:
        """(A, b, dims, one ConstraintRows per block, and for each SCS row the index of
        its block in the order added)."""
        order = sorted(range(len(self.blocks)), key=lambda k: KINDS.index(self.blocks[k].kind))
        mats, bs, rows, owner = [], [], [], []
        start = 0
        for k in order:
            blk = self.blocks[k]
            mats.append(blk.A)
            bs.append(blk.b)
            rows.append(ConstraintRows(label=blk.label, kind=blk.kind, start=start,
                                       stop=start + blk.rows, user=True))
            owner.append(np.full(blk.rows, k, dtype=np.int64))
            start += blk.rows
        if mats:
            A = sp.vstack(mats, format="csc")
            b = np.concatenate(bs)
            owners = np.concatenate(owner)
        else:
            A = sp.csc_matrix((0, self.n))
            b = np.zeros(0)
            owners = np.zeros(0, dtype=np.int64)
        by_kind = {kind: [self.blocks[k] for k in order if self.blocks[k].kind == kind]
                   for kind in KINDS}
        dims = ConeDims(
            zero=sum(blk.rows for blk in by_kind["zero"]),
            nonneg=sum(blk.rows for blk in by_kind["nonneg"]),
            soc=tuple(blk.rows for blk in by_kind["soc"]),
            psd=tuple(blk.order for blk in by_kind["psd"]),
            exp=sum(blk.rows // 3 for blk in by_kind["exp"]),
            exp_dual=sum(blk.rows // 3 for blk in by_kind["exp_dual"]),
        )
        return A, b, dims, rows, owners
