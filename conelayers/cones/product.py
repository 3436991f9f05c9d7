"""The product cone K of a cone program, laid out in SCS order as blocks of one kind each:
zero, nonneg, soc, psd, exp, exp_dual. Π_{K*} and its Jacobian are block-diagonal."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from canonicalize.cones import ConeDims
from conelayers.cones._util import as_vector, check_selection
from conelayers.cones.base import ConeBlock, ConeJacobian, Selection
from conelayers.cones.nonneg import NonnegCone
from conelayers.cones.psd import PsdCones
from conelayers.cones.soc import SecondOrderCones
from conelayers.cones.zero import ZeroCone

KINDS: tuple[str, ...] = ("zero", "nonneg", "soc", "psd", "exp", "exp_dual")
"""Block kinds, in SCS order."""


class BlockDiagonalJacobian(ConeJacobian):
    """blkdiag of the blocks' Jacobians; matvec splits x by the blocks' row slices."""

    def __init__(self, size: int, parts: list[tuple[slice, ConeJacobian]]) -> None:
        super().__init__(size)
        self.parts = parts

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        x = np.ravel(x)
        out = np.zeros(self.shape[0], dtype=np.float64)
        for sl, J in self.parts:
            out[sl] = J.matvec(x[sl])
        return out

    def todense(self) -> np.ndarray:
        out = np.zeros(self.shape)
        for sl, J in self.parts:
            out[sl, sl] = J.todense()
        return out

    def diagonal(self) -> np.ndarray | None:
        out = np.zeros(self.shape[0])
        for sl, J in self.parts:
            d = J.diagonal()
            if d is None:
                return None
            out[sl] = d
        return out

    def tosparse(self) -> sp.csc_matrix:
        if not self.parts:
            return sp.csc_matrix(self.shape, dtype=np.float64)
        return sp.block_diag([J.tosparse() for _, J in self.parts], format="csc")


def _exp_block(count: int, dual: bool) -> ConeBlock:
    """``ExpCones(count, dual)``, imported only when a program has exponential cones."""
    from conelayers.cones.exp import ExpCones

    return ExpCones(count, dual=dual)


class ProductCone(ConeBlock):
    """K (and K*) for the cone dimensions ``dims``, as a sequence of blocks.

    Power cones are not supported and raise NotImplementedError.
    """

    def __init__(self, dims: ConeDims) -> None:
        if dims.power:
            raise NotImplementedError(
                "power cones (PowCone3D) are not supported yet: the problem has "
                f"{len(dims.power)} 3-d power cone(s) (exponents {list(dims.power)}), "
                "typically from atoms such as power, geo_mean or pnorm with non-integer p; "
                "their projection and its derivative are not implemented"
            )
        self.dims = dims
        candidates: list[tuple[str, int, object]] = [
            ("zero", dims.zero, lambda: ZeroCone(dims.zero)),
            ("nonneg", dims.nonneg, lambda: NonnegCone(dims.nonneg)),
            ("soc", len(dims.soc), lambda: SecondOrderCones(dims.soc)),
            ("psd", len(dims.psd), lambda: PsdCones(dims.psd)),
            ("exp", dims.exp, lambda: _exp_block(dims.exp, dual=False)),
            ("exp_dual", dims.exp_dual, lambda: _exp_block(dims.exp_dual, dual=True)),
        ]
        self.blocks: dict[str, ConeBlock] = {}
        self.slices: dict[str, slice] = {}
        offset = 0
        for kind, count, make in candidates:
            if count:
                block = make()  # type: ignore[operator]
                self.blocks[kind] = block
                self.slices[kind] = slice(offset, offset + block.size)
                offset += block.size
        self.size = offset
        if self.size != dims.size:
            raise ValueError(f"block sizes add up to {self.size}, but dims.size is {dims.size}")

    def __repr__(self) -> str:
        return f"ProductCone({self.dims.describe()})"

    def _map(self, method: str, v: np.ndarray) -> np.ndarray:
        v = as_vector(v, self.size)
        out = np.empty(self.size)
        for kind, block in self.blocks.items():
            sl = self.slices[kind]
            out[sl] = getattr(block, method)(v[sl])
        return out

    def project_dual(self, v: np.ndarray) -> np.ndarray:
        """Π_{K*}(v), blockwise."""
        return self._map("project_dual", v)

    def project(self, v: np.ndarray) -> np.ndarray:
        """Π_K(v), blockwise."""
        return self._map("project", v)

    def jacobian_dual(
        self, v: np.ndarray, selection: Selection = "lower", kink_tol: float = 0.0
    ) -> BlockDiagonalJacobian:
        """A block-diagonal Clarke-Jacobian element of Π_{K*} at v (see ConeBlock)."""
        v = as_vector(v, self.size)
        check_selection(selection, kink_tol)
        parts = [
            (self.slices[kind], block.jacobian_dual(v[self.slices[kind]], selection, kink_tol))
            for kind, block in self.blocks.items()
        ]
        return BlockDiagonalJacobian(self.size, parts)

    def kink_distance(self, v: np.ndarray) -> np.ndarray:
        """The blocks' kink distances, concatenated in block order (one entry per row for
        zero and nonneg, per cone otherwise)."""
        v = as_vector(v, self.size)
        parts = [block.kink_distance(v[self.slices[k]]) for k, block in self.blocks.items()]
        return np.concatenate(parts) if parts else np.zeros(0)

    def elementary_slices(self, kind: str) -> list[slice]:
        """Row slices (in the whole vector) of the elementary cones of one kind: each row
        for zero and nonneg, each cone otherwise."""
        block, start = self.blocks[kind], self.slices[kind].start
        if kind in ("zero", "nonneg"):
            local = [slice(i, i + 1) for i in range(block.size)]
        elif kind in ("soc", "psd"):
            local = block.cone_slices()  # type: ignore[attr-defined]
        else:  # exponential cones: 3 rows each
            local = [slice(3 * i, 3 * i + 3) for i in range(block.size // 3)]
        return [slice(s.start + start, s.stop + start) for s in local]

    def kinks(self, v: np.ndarray, tol: float = 0.0) -> list[tuple[str, int, slice]]:
        """(kind, index within kind, row slice) of every elementary cone whose kink
        distance is <= tol."""
        v = as_vector(v, self.size)
        found = []
        for kind, block in self.blocks.items():
            dist = block.kink_distance(v[self.slices[kind]])
            hits = np.flatnonzero(dist <= tol)
            if hits.size:
                slices = self.elementary_slices(kind)
                found.extend((kind, int(i), slices[i]) for i in hits)
        return found
