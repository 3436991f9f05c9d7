"""Behaviour on and near the kinks: the two selections are the one-sided limits of the
Jacobian, lower ≼ upper, and kink_distance/kink_tol locate the kinks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canonicalize.cones import ConeDims
from conelayers.cones import (
    SELECTIONS,
    ConeBlock,
    NonnegCone,
    ProductCone,
    PsdCones,
    SecondOrderCones,
    svec,
)
from tests.conelayers.cones import contract

DELTA = 1e-7
"""Step off the kink toward one side. The Jacobian is Lipschitz on each closed smooth
piece with constant ~1/(distance to the other kinks) ~ 1, so the one-sided limit is
matched to O(DELTA); LIMIT_ATOL = 1e-5 leaves margin for the eigenvector error of the
perturbed PSD matrices (O(DELTA / eigengap))."""
LIMIT_ATOL = 1e-5


@dataclass
class KinkCase:
    """A point v on a kink, points just off it on the "lower" and "upper" side, and the
    tolerance that detects the kink at v (PSD eigenvalues carry rounding noise)."""

    name: str
    block: ConeBlock
    v: np.ndarray
    sides: dict[str, np.ndarray]
    tol: float = 0.0


def _soc_cases() -> list[KinkCase]:
    cases = []
    # Pythagorean w, so that ‖w‖ = t holds exactly in floating point.
    for w in ([-2.0], [3.0, -4.0], [3.0, 4.0, 12.0], [2.0, -3.0, 0.0, 6.0]):
        w = np.array(w)
        nw = float(np.linalg.norm(w))
        blk = SecondOrderCones([w.size + 1])

        def pt(t: float, w: np.ndarray = w) -> np.ndarray:
            return np.concatenate([[t], w])

        # ‖w‖ = t: lower = else branch (t a bit smaller), upper = interior (t larger).
        cases.append(
            KinkCase(
                f"soc{w.size + 1}-boundary-K",
                blk,
                pt(nw),
                {"lower": pt(nw - DELTA), "upper": pt(nw + DELTA)},
            )
        )
        # ‖w‖ = −t: lower = polar (t smaller), upper = else branch (t larger).
        cases.append(
            KinkCase(
                f"soc{w.size + 1}-boundary-polar",
                blk,
                pt(-nw),
                {"lower": pt(-nw - DELTA), "upper": pt(-nw + DELTA)},
            )
        )
        # Origin: lower = 0 (polar side), upper = I (interior side).
        zero_w = np.zeros_like(w)
        cases.append(
            KinkCase(
                f"soc{w.size + 1}-origin",
                blk,
                pt(0.0, zero_w),
                {"lower": pt(-DELTA, zero_w), "upper": pt(DELTA, zero_w)},
            )
        )
    cases.append(
        KinkCase(
            "soc1-origin",
            SecondOrderCones([1]),
            np.zeros(1),
            {"lower": np.array([-DELTA]), "upper": np.array([DELTA])},
        )
    )
    # Random directions (‖w‖ = t only up to rounding, so detected with a tolerance).
    rng = np.random.default_rng(7)
    for size in (3, 6):
        w = rng.standard_normal(size - 1)
        nw = float(np.linalg.norm(w))
        blk = SecondOrderCones([size])
        cases.append(
            KinkCase(
                f"soc{size}-random-K",
                blk,
                np.r_[nw, w],
                {"lower": np.r_[nw - DELTA, w], "upper": np.r_[nw + DELTA, w]},
                tol=1e-12,
            )
        )
    return cases


def _psd_cases() -> list[KinkCase]:
    cases = []
    rng = np.random.default_rng(11)
    spectra = (
        [0.0],
        [0.0, 1.0],
        [-1.0, 0.0],
        [0.0, 0.0],
        [-2.0, 0.0, 1.0],
        [0.0, 0.0, 0.0],
        [-1.0, 0.0, 0.0, 2.0, 3.0],
        [-3.0, -1.0, 0.0, 1.5, 2.0],
    )
    for lam in spectra:
        lam = np.array(lam)
        n = lam.size
        Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        Z = Q[:, lam == 0.0]

        def pt(lam: np.ndarray = lam, Q: np.ndarray = Q) -> np.ndarray:
            return svec((Q * lam) @ Q.T)

        shift = svec(Z @ Z.T) * DELTA  # moves every zero eigenvalue to ±DELTA
        v = pt()
        cases.append(
            KinkCase(
                f"psd{n}-{lam.tolist()}",
                PsdCones([n]),
                v,
                {"lower": v - shift, "upper": v + shift},
                tol=1e-9,
            )
        )
    return cases


def _other_cases() -> list[KinkCase]:
    v = np.array([1.0, 0.0, -2.0, 0.0, 3.0])
    e = np.array([0.0, 1.0, 0.0, 1.0, 0.0]) * DELTA
    cases = [KinkCase("nonneg", NonnegCone(5), v, {"lower": v - e, "upper": v + e})]
    # A product with kinks in the nonneg part and an SOC, and a smooth PSD part.
    K = ProductCone(ConeDims(zero=1, nonneg=2, soc=(3, 2), psd=(2,)))
    v = np.array([0.5, 0.0, 1.0, 5.0, 3.0, -4.0, 1.0, 0.5, 2.0, 0.1, 1.0])
    e = np.zeros(K.size)
    e[[1, 3]] = DELTA
    cases.append(KinkCase("product", K, v, {"lower": v - e, "upper": v + e}))
    return cases


CASES = _soc_cases() + _psd_cases() + _other_cases()


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request: pytest.FixtureRequest) -> KinkCase:
    return request.param


def test_on_kink(case: KinkCase) -> None:
    d = case.block.kink_distance(case.v)
    assert d.min() <= max(case.tol, 1e-15)
    for side in case.sides.values():
        ds = case.block.kink_distance(side)
        assert 0.0 < ds.min() <= 2 * DELTA


def test_lower_below_upper(case: KinkCase) -> None:
    lower = contract.dense(case.block.jacobian_dual(case.v, "lower", case.tol))
    upper = contract.dense(case.block.jacobian_dual(case.v, "upper", case.tol))
    contract.assert_loewner_le(lower, upper)
    assert not np.allclose(lower, upper), "a kink should have two distinct extreme elements"


@pytest.mark.parametrize("selection", SELECTIONS)
def test_selection_is_one_sided_limit(case: KinkCase, selection: str) -> None:
    at_kink = contract.dense(case.block.jacobian_dual(case.v, selection, case.tol))
    nearby = contract.dense(case.block.jacobian_dual(case.sides[selection]))
    np.testing.assert_allclose(at_kink, nearby, rtol=0, atol=LIMIT_ATOL)


@pytest.mark.parametrize("selection", SELECTIONS)
def test_kink_tol_snaps_to_selection(case: KinkCase, selection: str) -> None:
    """Just off the kink, kink_tol = 1e-5 gives the selection at the kink (from either
    side), while kink_tol = 0 gives the smooth Jacobian there."""
    at_kink = contract.dense(case.block.jacobian_dual(case.v, selection, case.tol))
    for side in case.sides.values():
        snapped = contract.dense(case.block.jacobian_dual(side, selection, kink_tol=1e-5))
        np.testing.assert_allclose(snapped, at_kink, rtol=0, atol=LIMIT_ATOL)
    other = "upper" if selection == "lower" else "lower"
    smooth = contract.dense(case.block.jacobian_dual(case.sides[other], selection, 0.0))
    assert not np.allclose(smooth, at_kink, atol=1e-3)


def test_properties_on_kink(case: KinkCase) -> None:
    contract.check_jacobian_properties(case.block, case.v, kink_tol=0.0, tol=1e-9)
    contract.check_jacobian_properties(case.block, case.v, kink_tol=case.tol, tol=1e-9)
    for sel in SELECTIONS:
        contract.check_sparse_matches_operator(case.block.jacobian_dual(case.v, sel, case.tol))


def test_product_kinks_reported() -> None:
    case = next(c for c in CASES if c.name == "product")
    K = case.block
    assert isinstance(K, ProductCone)
    found = K.kinks(case.v)
    assert [(kind, i) for kind, i, _ in found] == [("nonneg", 0), ("soc", 0)]
    assert found[0][2] == slice(1, 2) and found[1][2] == slice(3, 6)
    assert K.kinks(case.sides["upper"], tol=1e-5) == found
    assert K.kinks(case.sides["upper"]) == []


def test_power_cones_rejected() -> None:
    with pytest.raises(NotImplementedError, match="power cones"):
        ProductCone(ConeDims(nonneg=1, power=(0.5,)))


# ----------------------------------------------------------- property test (hypothesis)

_entries = st.one_of(
    st.sampled_from([0.0, 0.0, 1.0, -1.0, 2.5]),
    st.floats(-3.0, 3.0, allow_nan=False, allow_subnormal=False),
)


@st.composite
def soc_points(draw: st.DrawFn) -> tuple[ConeBlock, np.ndarray]:
    size = draw(st.integers(1, 5))
    w = np.array(draw(st.lists(_entries, min_size=size - 1, max_size=size - 1)))
    nw = float(np.linalg.norm(w))
    t = draw(st.one_of(st.sampled_from([nw, -nw, 0.0]), _entries))
    return SecondOrderCones([size]), np.r_[t, w]


@st.composite
def psd_points(draw: st.DrawFn) -> tuple[ConeBlock, np.ndarray]:
    n = draw(st.integers(1, 4))
    lam = np.array(draw(st.lists(_entries, min_size=n, max_size=n)))
    seed = draw(st.integers(0, 2**32 - 1))
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return PsdCones([n]), svec((Q * lam) @ Q.T)


@st.composite
def nonneg_points(draw: st.DrawFn) -> tuple[ConeBlock, np.ndarray]:
    v = np.array(draw(st.lists(_entries, min_size=1, max_size=6)))
    return NonnegCone(v.size), v


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    point=st.one_of(soc_points(), psd_points(), nonneg_points()),
    kink_tol=st.sampled_from([0.0, 1e-12]),
)
def test_property_random_points_with_kinks(
    point: tuple[ConeBlock, np.ndarray], kink_tol: float
) -> None:
    """At arbitrary points (exact kinks included): both selections are symmetric with
    0 ≼ J ≼ I, J v = Π(v) (at kink_tol = 0), lower ≼ upper; Moreau holds; tosparse
    matches the operator."""
    block, v = point
    contract.check_projection(block, v, tol=1e-9)
    contract.check_moreau(block, v, tol=1e-9)
    contract.check_jacobian_properties(block, v, kink_tol=kink_tol, tol=1e-9)
    for sel in SELECTIONS:
        contract.check_sparse_matches_operator(block.jacobian_dual(v, sel, kink_tol))
