"""Cone dimensions of a cone program, in SCS's order and conventions.

The cone K of ``min ½xᵀPx + cᵀx  s.t.  Ax + s = b, s ∈ K`` is a product, laid out in
this order (SCS 3.x): zero, nonnegative, second-order, PSD, primal exponential, dual
exponential, 3-d power. PSD blocks use SCS's vectorization: the lower triangle,
column by column, with off-diagonal entries scaled by √2.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConeDims:
    """Sizes of each part of the product cone K.

    zero: length of the zero cone {0} (equalities); its dual is the free cone.
    nonneg: length of the nonnegative orthant.
    soc: sizes of the second-order cones {(t, w): ‖w‖ ≤ t}, each including t.
    psd: orders n of the PSD cones (each takes n(n+1)/2 rows).
    exp: number of primal exponential cones cl{(r, s, t): s·exp(r/s) ≤ t, s > 0}.
    exp_dual: number of dual exponential cones.
    power: exponents α of 3-d power cones {(x, y, z): x^α y^(1-α) ≥ |z|}.
    """

    zero: int = 0
    nonneg: int = 0
    soc: tuple[int, ...] = ()
    psd: tuple[int, ...] = ()
    exp: int = 0
    exp_dual: int = 0
    power: tuple[float, ...] = ()

    @property
    def size(self) -> int:
        """Total number of rows m of the cone."""
        return (
            self.zero
            + self.nonneg
            + sum(self.soc)
            + sum(n * (n + 1) // 2 for n in self.psd)
            + 3 * (self.exp + self.exp_dual + len(self.power))
        )

    def to_scs(self) -> dict:
        """The cone dictionary ``scs.SCS`` expects (short keys appear only here)."""
        cone: dict = {}
        if self.zero:
            cone["z"] = self.zero
        if self.nonneg:
            cone["l"] = self.nonneg
        if self.soc:
            cone["q"] = list(self.soc)
        if self.psd:
            cone["s"] = list(self.psd)
        if self.exp:
            cone["ep"] = self.exp
        if self.exp_dual:
            cone["ed"] = self.exp_dual
        if self.power:
            cone["p"] = list(self.power)
        return cone

    def describe(self) -> str:
        """A short human-readable summary, e.g. 'zero 3, nonneg 10, soc [4, 4]'."""
        parts = []
        for name in ("zero", "nonneg", "soc", "psd", "exp", "exp_dual", "power"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name} {list(value) if isinstance(value, tuple) else value}")
        return ", ".join(parts) or "empty"
