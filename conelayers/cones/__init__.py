"""Cone blocks of the cone program (SCS 3.x layout): projections onto the dual cone K*,
Clarke-Jacobian elements of those projections as linear operators, and kink distances."""

from conelayers.cones.base import SELECTIONS, ConeBlock, ConeJacobian, Selection
from conelayers.cones.nonneg import NonnegCone
from conelayers.cones.product import KINDS, BlockDiagonalJacobian, ProductCone
from conelayers.cones.psd import PsdCones
from conelayers.cones.soc import SecondOrderCones
from conelayers.cones.svec import order_from_svec_size, smat, svec, svec_size
from conelayers.cones.zero import ZeroCone

__all__ = [
    "KINDS",
    "SELECTIONS",
    "BlockDiagonalJacobian",
    "ConeBlock",
    "ConeJacobian",
    "NonnegCone",
    "ProductCone",
    "PsdCones",
    "SecondOrderCones",
    "Selection",
    "ZeroCone",
    "order_from_svec_size",
    "smat",
    "svec",
    "svec_size",
]
