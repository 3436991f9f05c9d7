"""A batch of 8 where instances 2 and 5 are infeasible: by default a named error lists
both after every instance was tried; with on_failure="nan" the others are returned and
differentiated correctly, the failed ones are NaN with zero gradients and a warning."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

from conelayers.exceptions import FailedInstanceWarning, InfeasibleError
from conelayers.layer import LayerCore


def _problem():
    """Project q onto {x : x ≥ lo, Σx ≤ 1}: infeasible when Σ lo > 1."""
    q, lo = cp.Parameter(3, name="q"), cp.Parameter(3, name="lo")
    x = cp.Variable(3, name="x")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - q)), [x >= lo, cp.sum(x) <= 1])
    return prob, q, lo, x


def _values():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((8, 3))
    lo = np.full((8, 3), -1.0)
    lo[2] = lo[5] = 0.5  # Σ lo = 1.5 > 1
    return q, lo


def test_default_raises_listing_failed_instances():
    prob, q, lo, x = _problem()
    core = LayerCore(prob, [q, lo], [x])
    with pytest.raises(InfeasibleError, match="instance 2: infeasible, instance 5") as info:
        core.forward(list(_values()))
    assert set(info.value.failures) == {2, 5}


def test_nan_mode_keeps_the_other_instances():
    prob, q, lo, x = _problem()
    core = LayerCore(prob, [q, lo], [x])
    qv, lov = _values()
    with pytest.warns(FailedInstanceWarning, match=r"^instances 2, 5 \(2 of 8 in the batch\): "
                      r"no solution \(instance 2: infeasible, instance 5"):
        result = core.forward([qv, lov], {"on_failure": "nan", "eps": 1e-9})
    out = result.outputs[0]
    assert np.isnan(out[[2, 5]]).all() and np.isfinite(np.delete(out, [2, 5], 0)).all()
    gq, glo = core.vjp(result, [np.ones((8, 3))])
    assert np.all(gq[[2, 5]] == 0) and np.all(glo[[2, 5]] == 0)
    assert [r.verdict for r in result.reports].count("failed") == 2
    for k in (0, 1, 3, 4, 6, 7):  # each equals its own unbatched solve and gradient
        single = core.forward([qv[k], lov[k]], {"eps": 1e-9})
        np.testing.assert_allclose(out[k], single.outputs[0][0], atol=1e-9)
        g1 = core.vjp(single, [np.ones((1, 3))])
        np.testing.assert_allclose(gq[k], g1[0], atol=1e-9)
        np.testing.assert_allclose(glo[k], g1[1], atol=1e-9)
    prob2 = cp.Problem(prob.objective, prob.constraints)
    for k in (0, 3):  # and CVXPY agrees
        q.value, lo.value = qv[k], lov[k]
        prob2.solve(solver=cp.CLARABEL)
        np.testing.assert_allclose(out[k], x.value, atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_values_fail_only_their_instances_in_nan_mode(bad):
    """A NaN/Inf in one instance's values: by default a ParameterError naming the
    instance; with on_failure="nan" that instance alone is NaN with zero gradients (it is
    never handed to SCS) and the rest equal their unbatched solves and gradients."""
    from conelayers.exceptions import ParameterError

    prob, q, lo, x = _problem()
    core = LayerCore(prob, [q, lo], [x])
    qv, lov = _values()
    lov[[2, 5]] = -1.0  # all feasible now
    qv[3, 1] = bad
    lov[6, 0] = bad
    with pytest.raises(ParameterError, match=r"'q' contains NaN or Inf in batch instance\(s\) 3"):
        core.forward([qv, lov])
    with pytest.warns(FailedInstanceWarning, match="instance 3: NaN, Inf.*instance 6: NaN"):
        result = core.forward([qv, lov], {"on_failure": "nan", "eps": 1e-9})
    out = result.outputs[0]
    assert np.isnan(out[[3, 6]]).all() and np.isfinite(np.delete(out, [3, 6], 0)).all()
    assert result.solutions[3].iterations == 0
    gq, glo = core.vjp(result, [np.ones((8, 3))])
    assert np.all(gq[[3, 6]] == 0) and np.all(glo[[3, 6]] == 0)
    assert np.isfinite(gq).all() and np.isfinite(glo).all()
    for k in (0, 2, 5, 7):
        single = core.forward([qv[k], lov[k]], {"eps": 1e-9})
        np.testing.assert_allclose(out[k], single.outputs[0][0], atol=1e-9)
        g1 = core.vjp(single, [np.ones((1, 3))])
        np.testing.assert_allclose(gq[k], g1[0], atol=1e-9)
    # Every instance non-finite: nothing to return, the ParameterError stands.
    with pytest.raises(ParameterError, match="contains NaN or Inf"):
        core.forward([np.full((8, 3), bad), lov], {"on_failure": "nan"})


def test_a_degenerate_batch_warns_once_per_kind_naming_every_instance():
    """The cyclic problem at t = 0 (the whole box is optimal) in a batch of 6: one
    NonUniqueSolutionWarning listing all six instances, not six warnings."""
    import warnings

    from conelayers.exceptions import NonUniqueSolutionWarning

    a, b = cp.Variable(), cp.Variable()
    x, y = cp.Parameter(), cp.Parameter()
    t = -3 * x + y + 2
    prob = cp.Problem(cp.Maximize(a * t + b * t), [a >= 0, a <= 3, b >= 0, b <= 5])
    core = LayerCore(prob, [x, y], [a, b])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = core.forward([np.ones(6), np.ones(6)])  # t = 0 in every instance
        core.vjp(result, [np.ones(6), np.ones(6)])
    nonunique = [str(w.message) for w in caught
                 if issubclass(w.category, NonUniqueSolutionWarning)]
    assert len(nonunique) == 1
    assert nonunique[0].startswith("instances 0, 1, 2, 3, 4, 5 (6 of 6 in the batch): ")
    assert "instance 0: the solution is not unique" in nonunique[0]
    assert "and 3 more like these" in nonunique[0]
    assert all(r.warnings for r in result.reports)  # the per-instance reports keep all


def test_values_that_overflow_scs_are_rejected_like_inf():
    """|value| > 1e150 squares to overflow inside SCS (1e300 ran 100000 iterations to
    status 'failed', with advice to raise max_iters): a ParameterError naming the
    parameter and the magnitude; with on_failure="nan" only that instance fails."""
    from conelayers.exceptions import ParameterError

    prob, q, lo, x = _problem()
    core = LayerCore(prob, [q, lo], [x])
    qv, lov = _values()
    lov[[2, 5]] = -1.0
    qv[4, 0] = 1e300
    with pytest.raises(ParameterError, match=r"'q' contains entries beyond ±1e\+150 \(max "
                       r"\|value\| 1\.0e\+300\).*instance\(s\) 4"):
        core.forward([qv, lov])
    with pytest.warns(FailedInstanceWarning, match="instance 4: NaN, Inf or overflowing"):
        result = core.forward([qv, lov], {"on_failure": "nan", "eps": 1e-9})
    assert np.isnan(result.outputs[0][4]).all()
    single = core.forward([qv[0], lov[0]], {"eps": 1e-9})
    np.testing.assert_allclose(result.outputs[0][0], single.outputs[0][0], atol=1e-9)


def test_nan_mode_judges_the_batch_as_a_whole():
    """NaN spread over two parameters that together cover every instance raises, as NaN
    in every instance of one parameter does; a sign violation in an instance that already
    fails for NaN does not stop the rest; sign errors name the instances."""
    from conelayers.exceptions import ParameterError

    q = cp.Parameter(3, name="q")
    w = cp.Parameter(3, name="w", nonneg=True)
    x = cp.Variable(3)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - q) + w @ cp.abs(x)), [cp.sum(x) <= 1])
    core = LayerCore(prob, [q, w], [x])
    rng = np.random.default_rng(3)
    qv, wv = rng.standard_normal((5, 3)), np.abs(rng.standard_normal((5, 3)))
    nan_args = {"on_failure": "nan", "eps": 1e-9}
    q_all, w_all = qv.copy(), wv.copy()
    q_all[0, 0] = np.nan
    w_all[1:, 0] = np.nan
    with pytest.raises(ParameterError, match="every batch instance"):
        core.forward([q_all, w_all], nan_args)
    q_bad, w_bad = qv.copy(), wv.copy()
    q_bad[1, 0] = np.nan
    w_bad[1, 2] = -1.0  # instance 1 fails anyway
    with pytest.warns(FailedInstanceWarning, match="instance 1: NaN"):
        result = core.forward([q_bad, w_bad], nan_args)
    out = result.outputs[0]
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2, 3, 4]]).all()
    w_neg = wv.copy()
    w_neg[3, 1] = -0.5
    with pytest.raises(ParameterError,
                       match=r"'w' is declared nonneg .*min -0\.5.* instance\(s\) 3"):
        core.forward([qv, w_neg], nan_args)


def test_many_failures_are_summarized_not_quoted_one_by_one():
    """64 instances, all infeasible: the messages name the first five (then 'and N
    more'), give details for three, and print no NaN residuals; ``failures`` has all."""
    prob, q, lo, x = _problem()
    core = LayerCore(prob, [q, lo], [x])
    qv = np.zeros((64, 3))
    lov = np.full((64, 3), 0.5)
    with pytest.raises(InfeasibleError, match="and 59 more") as info:
        core.forward([qv, lov])
    message = str(info.value)
    assert "instance 5:" not in message and "nan" not in message
    assert "no residuals (SCS returned a certificate" in message
    assert set(info.value.failures) == set(range(64))
    with pytest.warns(FailedInstanceWarning, match="and 59 more"):
        core.forward([qv, lov], {"on_failure": "nan"})
