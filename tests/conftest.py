"""Shared fixtures: the problem zoo and a finite-difference helper."""

from __future__ import annotations

import numpy as np
import pytest

from tests import zoo

ZOO_NAMES = list(zoo.BUILDERS)


@pytest.fixture(params=ZOO_NAMES)
def zoo_problem(request) -> zoo.ZooProblem:
    return zoo.make(request.param)


def central_difference(z: zoo.ZooProblem, weights, directions, h: float = 1e-4) -> float:
    """d/dt of Σ⟨w, outputs(values + t·d)⟩ at t = 0 by central differences of
    independent re-solves (CVXPY + Clarabel or tight SCS, see ZooProblem.fd_solver).

    h = 1e-4: the reference solves are accurate to ~1e-11, so the rounding part of the
    error is ~1e-7 relative, and the O(h²) truncation part ~1e-8 at these smooth points.
    """

    def loss(values):
        outs = zoo.reference_solution(z, values)
        return sum(float((w * o).sum()) for w, o in zip(weights, outs))

    plus = [v + h * d for v, d in zip(z.values, directions)]
    minus = [v - h * d for v, d in zip(z.values, directions)]
    return (loss(plus) - loss(minus)) / (2 * h)


def random_like(rng: np.random.Generator, arrays) -> list[np.ndarray]:
    return [rng.standard_normal(np.shape(a)) for a in arrays]
