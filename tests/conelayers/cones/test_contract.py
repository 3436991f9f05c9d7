"""Every cone block runs the same contract (see contract.py)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from canonicalize.cones import ConeDims
from conelayers.cones import (
    SELECTIONS,
    ConeBlock,
    NonnegCone,
    ProductCone,
    PsdCones,
    SecondOrderCones,
    ZeroCone,
)
from tests.conelayers.cones import contract


def exp_cones() -> list[ConeBlock]:
    """Placeholder for the exponential cones (conelayers/cones/exp.py, written separately):
    they join the contract as soon as the module exists."""
    try:
        from conelayers.cones.exp import ExpCones
    except ImportError:
        return []
    return [
        ExpCones(1, dual=False),
        ExpCones(3, dual=False),
        ExpCones(1, dual=True),
        ExpCones(3, dual=True),
    ]


def build_cones() -> list[ConeBlock]:
    """The cone instances the contract runs on."""
    cones: list[ConeBlock] = [
        ZeroCone(4),
        NonnegCone(1),
        NonnegCone(7),
        SecondOrderCones([1]),
        SecondOrderCones([2]),
        SecondOrderCones([3]),
        SecondOrderCones([6]),
        SecondOrderCones([3, 1, 2, 3, 5, 2]),  # mixed sizes, grouped internally
        PsdCones([1]),
        PsdCones([2]),
        PsdCones([3]),
        PsdCones([5]),
        PsdCones([2, 3, 2, 1]),
        ProductCone(ConeDims(zero=2, nonneg=3, soc=(3, 1, 4), psd=(2, 3))),
    ]
    cones += exp_cones()
    if any(type(c).__name__ == "ExpCones" for c in cones):
        cones.append(ProductCone(ConeDims(zero=1, nonneg=2, soc=(3,), psd=(2,), exp=2, exp_dual=1)))
    return cones


CONES = build_cones()


@pytest.fixture(params=CONES, ids=repr)
def block(request: pytest.FixtureRequest) -> ConeBlock:
    return request.param


@pytest.fixture
def rng(block: ConeBlock) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(block).encode()))


def test_projection_in_dual_cone_and_idempotent(block: ConeBlock, rng: np.random.Generator) -> None:
    for _ in range(5):
        contract.check_projection(block, 2.0 * rng.standard_normal(block.size))


def test_moreau(block: ConeBlock, rng: np.random.Generator) -> None:
    for _ in range(5):
        contract.check_moreau(block, 2.0 * rng.standard_normal(block.size))


@pytest.mark.parametrize("selection", SELECTIONS)
def test_jacobian_matches_central_differences(
    block: ConeBlock, rng: np.random.Generator, selection: str
) -> None:
    for _ in range(3):
        contract.check_jacobian_fd(block, contract.random_point(block, rng), selection)


@pytest.mark.parametrize("selection", SELECTIONS)
def test_operator_equals_sparse_and_adjoint(
    block: ConeBlock, rng: np.random.Generator, selection: str
) -> None:
    for _ in range(3):
        J = block.jacobian_dual(rng.standard_normal(block.size), selection)
        contract.check_sparse_matches_operator(J)
        contract.check_adjoint(J, rng)


def test_jacobian_properties(block: ConeBlock, rng: np.random.Generator) -> None:
    for _ in range(5):
        contract.check_jacobian_properties(block, rng.standard_normal(block.size))


def has_exp(block: ConeBlock) -> bool:
    """Whether ``block`` contains exponential cones (looser reference tolerances)."""
    dims = contract.block_dims(block)
    return bool(dims.exp or dims.exp_dual)


def test_against_cvxpy_clarabel(block: ConeBlock, rng: np.random.Generator) -> None:
    # Clarabel's exponential-cone solutions agree to ~3e-6 only (measured), hence 1e-5.
    atol = 1e-5 if has_exp(block) else 1e-6
    for _ in range(2):
        contract.check_against_cvxpy(block, rng.standard_normal(block.size), atol=atol)


def test_against_diffcp(block: ConeBlock, rng: np.random.Generator) -> None:
    # diffcp's exponential-cone projection is accurate to ~1e-5 (measured 5.6e-5 at worst
    # over 200 normal points, our projection having the lower objective), so exp blocks
    # get loose tolerances and the derivative comparison is guarded (see contract).
    kw = {"atol": 1e-4, "jac_atol": 1e-4, "guard_with_fd": True} if has_exp(block) else {}
    for _ in range(3):
        contract.check_against_diffcp(block, contract.random_point(block, rng), **kw)


def test_kink_distance(block: ConeBlock, rng: np.random.Generator) -> None:
    contract.check_kink_distance_shape(block, rng.standard_normal(block.size))


def test_rejects_bad_input(block: ConeBlock) -> None:
    with pytest.raises(ValueError):
        block.project_dual(np.zeros(block.size + 1))
    with pytest.raises(ValueError):
        block.jacobian_dual(np.zeros(block.size), selection="middle")  # type: ignore[arg-type]
