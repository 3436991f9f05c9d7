"""Bad input gets a clear error naming the parameter, for the core, the torch layer and
the jax layer (eager and under jit): one table (``bad_inputs.CASES``), one parametrized
test over (framework × kind). Known faults are strict xfails with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from conelayers.exceptions import ParameterError
from tests.reliability import bad_inputs as bi

_MODULES = {"core": None, "torch": "torch", "jax": "jax", "jax_jit": "jax"}


def _params():
    for case in bi.CASES:
        for fw in case.frameworks:
            marks = []
            if fw in case.xfail:
                marks.append(pytest.mark.xfail(strict=True, reason=case.xfail[fw]))
            yield pytest.param(fw, case.kind, id=f"{fw}-{case.kind}", marks=marks)


@pytest.mark.parametrize(("framework", "kind"), list(_params()))
def test_bad_input(framework, kind):
    if _MODULES[framework]:
        pytest.importorskip(_MODULES[framework])
    out = bi.classify(kind, framework)
    case = bi.CASE_BY_KIND[kind]
    allowed = {"clear_error"} | ({"accepted"} if framework in case.may_accept else set())
    assert out.outcome in allowed, f"{out.outcome}: {out.detail}"


def test_table_covers_every_framework_and_the_required_kinds():
    kinds = {c.kind for c in bi.CASES}
    required = {
        "nan", "inf", "wrong_shape", "too_few_values", "inconsistent_batch", "int_dtype",
        "complex_dtype", "mixed_float32_float64", "nonneg_negative", "pos_zero",
        "pos_negative", "empty_batch", "meta_device", "none", "python_list",
    }
    assert required <= kinds
    assert {fw for c in bi.CASES for fw in c.frameworks} == set(bi.FRAMEWORKS)


def test_torch_integer_tensor_cannot_require_grad_and_is_rejected_by_name():
    """torch itself refuses requires_grad on an integer tensor; an integer tensor next to
    float tensors that require grad gets the layer's ParameterError naming it."""
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="floating point"):
        torch.zeros(4, dtype=torch.int64, requires_grad=True)
    ad = bi.adapter("torch")
    args = bi._with(ad, b=torch.arange(4))
    assert args[0].requires_grad
    with pytest.raises(ParameterError, match="'b'"):
        ad.layer(*args)


def test_bad_input_does_not_poison_the_layer():
    """After a rejected call, the same layer still gives the right answer."""
    for fw in ("core", "torch", "jax"):
        if _MODULES[fw]:
            pytest.importorskip(_MODULES[fw])
        assert bi.classify("nan", fw).outcome == "clear_error"
        assert bi.classify("valid", fw).outcome == "accepted"


def test_core_accepts_array_likes_with_the_same_result():
    """The core takes NumPy array-likes (documented 'NumPy in'): a Fortran-ordered, a
    negatively strided and a read-only view give bit-identical outputs."""
    ad = bi.adapter("core")
    g = bi.good_values()
    ref = ad.call([g[k] for k in bi.NAMES])
    A_f = np.asfortranarray(g["A"])
    b_rev = g["b"][::-1].copy()[::-1]
    A_ro = g["A"].copy()
    A_ro.setflags(write=False)
    for A, b in ((A_f, g["b"]), (g["A"], b_rev), (A_ro, g["b"])):
        out = ad.call([A, b, g["lam"], g["mu"]])
        np.testing.assert_array_equal(out[0], ref[0])
