"""The trust-label benchmark: on a labelled set of small LP, QP, SOCP and SDP problems
(half degenerate, half regular, by construction), the SingularJacobian and NonUniqueSolution
warnings reach precision and recall of at least 0.9."""

from __future__ import annotations

import pytest

from benchmarks.trust_labels import CASES, FAMILIES, LABELS, evaluate


@pytest.fixture(scope="module")
def result() -> dict:
    return evaluate()


def test_cases_are_well_formed():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    for c in CASES:
        assert c.family in FAMILIES and c.label in LABELS
        assert len(c.reason) > 40, c.name  # every label is justified in words


def test_labelled_set_is_large_balanced_and_covers_all_families(result):
    n = result["n_problems"]
    assert n >= 30
    for label in LABELS:
        assert result["counts"][label] >= 0.4 * n, label
    for family in FAMILIES:
        assert result["families"][family] > 0, family
        labels = {r.label for r in result["rows"] if r.family == family}
        assert labels == set(LABELS), family  # each family has both classes


def test_precision_and_recall(result):
    cm = result["confusion"]
    assert cm["tp"] + cm["fp"] + cm["fn"] + cm["tn"] == result["n_problems"]
    assert result["precision"] >= 0.9, result["misclassified"]
    assert result["recall"] >= 0.9, result["misclassified"]


def test_every_row_reports_a_sigma_estimate(result):
    for row in result["rows"]:
        assert row.sigma_min == row.sigma_min, row.name  # not NaN: the checks ran
