"""Small helpers shared by the cone blocks (input checking, selection checking)."""

from __future__ import annotations

import numpy as np

from conelayers.cones.base import SELECTIONS, Selection


def as_vector(v: np.ndarray, size: int, name: str = "v") -> np.ndarray:
    """v as a float64 1-d array of length ``size`` (a column (size, 1) is accepted)."""
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {np.shape(v)}")
    return arr


def check_selection(selection: Selection, kink_tol: float) -> None:
    """Raise ValueError for an unknown selection or a negative tolerance."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if not kink_tol >= 0.0:
        raise ValueError(f"kink_tol must be >= 0, got {kink_tol}")
