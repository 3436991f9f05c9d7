"""The bad-input matrix: one table of bad-input kinds, run against every framework
(the NumPy core, the torch layer, the jax layer eagerly and under ``jax.jit``).

Each kind builds its arguments through a framework adapter, so one table row serves all
frameworks. ``classify`` runs one (kind, framework) cell and sorts the outcome into

``clear_error``     an error of the expected class whose message names the parameter;
``unclear_error``   a conelayers error that does not name the parameter;
``accepted``        no error and the output equals the output of the equivalent valid input
                    (allowed only for kinds marked ``may_accept``, e.g. a Python list for the
                    NumPy core, which takes array-likes);
``not_rejected``    no error, the output is right, but the kind must be rejected;
``silent_failure``  no error and a wrong or non-finite output;
``crash``           an exception of an unexpected class.

Known faults are listed per cell in ``BadInput.xfail`` (the tests mark them
``xfail(strict=True)``; the report counts them apart).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np

from conelayers.exceptions import ConelayersError, ParameterError
from conelayers.layer import LayerCore

FRAMEWORKS = ("core", "torch", "jax", "jax_jit")
OUTCOMES = (
    "clear_error", "unclear_error", "accepted", "not_rejected", "silent_failure", "crash"
)
NAMES = ("A", "b", "lam", "mu")
SHAPES = {"A": (4, 3), "b": (4,), "lam": (), "mu": ()}


def make_problem():
    """min ‖Ax − b‖² + λ‖x‖² + μ‖x‖₁ with A (4×3), b (4), λ ≥ 0 (nonneg), μ > 0 (pos)."""
    A = cp.Parameter(SHAPES["A"], name="A")
    b = cp.Parameter(SHAPES["b"], name="b")
    lam = cp.Parameter(nonneg=True, name="lam")
    mu = cp.Parameter(pos=True, name="mu")
    x = cp.Variable(3, name="x")
    objective = cp.sum_squares(A @ x - b) + lam * cp.sum_squares(x) + mu * cp.norm1(x)
    return cp.Problem(cp.Minimize(objective)), [A, b, lam, mu], [x]


def good_values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    return {"A": rng.standard_normal((4, 3)), "b": rng.standard_normal(4),
            "lam": np.array(0.5), "mu": np.array(0.3)}


# -- framework adapters -----------------------------------------------------------------------


class Adapter:
    """Builds framework arrays from NumPy values and calls the framework's layer."""

    name = "core"

    def __init__(self) -> None:
        problem, params, variables = make_problem()
        self.layer = self._make_layer(problem, params, variables)

    def _make_layer(self, problem, params, variables):
        return LayerCore(problem, params, variables)

    def array(self, value, dtype=None):
        return np.array(value, dtype=dtype)

    def good(self) -> dict:
        return {k: self.array(v) for k, v in good_values().items()}

    def context(self):
        return ExitStack()

    def call(self, args: list) -> list[np.ndarray]:
        result = self.layer.forward(args)
        return [o if result.batch is not None else o[0] for o in result.outputs]


class TorchAdapter(Adapter):
    name = "torch"

    def _make_layer(self, problem, params, variables):
        from conelayers.torch import CvxpyLayer

        return CvxpyLayer(problem, params, variables)

    def array(self, value, dtype=None):
        import torch

        arr = np.array(value, dtype=dtype)
        t = torch.from_numpy(arr.copy()) if arr.dtype != object else arr
        if isinstance(t, torch.Tensor) and t.dtype.is_floating_point:
            t.requires_grad_(True)
        return t

    def call(self, args: list) -> list[np.ndarray]:
        outs = self.layer(*args)
        return [o.detach().cpu().double().numpy() for o in outs]


class JaxAdapter(Adapter):
    name = "jax"

    def _make_layer(self, problem, params, variables):
        from conelayers.jax import CvxpyLayer

        return CvxpyLayer(problem, params, variables)

    def array(self, value, dtype=None):
        import jax.numpy as jnp

        arr = np.array(value, dtype=dtype)
        return jnp.asarray(arr) if arr.dtype != object else arr

    def context(self):
        import jax

        stack = ExitStack()
        stack.enter_context(jax.enable_x64(True))
        return stack

    def call(self, args: list) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.layer(*args)]


class JaxJitAdapter(JaxAdapter):
    name = "jax_jit"

    def call(self, args: list) -> list[np.ndarray]:
        import jax

        return [np.asarray(o) for o in jax.jit(lambda *a: self.layer(*a))(*args)]


ADAPTERS = {"core": Adapter, "torch": TorchAdapter, "jax": JaxAdapter,
            "jax_jit": JaxJitAdapter}


# -- the table --------------------------------------------------------------------------------


def _with(ad: Adapter, **changes) -> list:
    values = ad.good()
    values.update(changes)
    return [values[k] for k in NAMES]


def _batched(value, count=2):
    return np.stack([value] * count)


def _nan_in_instance(ad):
    A = _batched(good_values()["A"])
    A[1, 2, 0] = np.nan
    return _with(ad, A=ad.array(A))


def _meta(ad):
    return _with(ad, b=ad.array(good_values()["b"]).detach().to("meta"))


def _sparse(ad):
    return _with(ad, A=ad.array(good_values()["A"]).detach().to_sparse())




@dataclass(frozen=True)
class BadInput:
    kind: str
    build: Callable[[Adapter], list]
    param: str  # the parameter the message must name
    frameworks: tuple[str, ...] = FRAMEWORKS
    may_accept: tuple[str, ...] = ()  # frameworks where acceptance (right output) is fine
    equivalent: Callable[[], list] | None = None  # NumPy values with the same meaning
    xfail: dict[str, str] = field(default_factory=dict)  # framework -> known fault
    regex: str | None = None  # what the message must match, if not "'<param>'"

    def pattern(self) -> str:
        return self.regex if self.regex is not None else re.escape(f"'{self.param}'")


def _good_list():
    g = good_values()
    return [g[k] for k in NAMES]


def _f32_b():
    g = good_values()
    return [g["A"], g["b"].astype(np.float32).astype(np.float64), g["lam"], g["mu"]]


EAGER = ("core", "torch", "jax")
CASES: tuple[BadInput, ...] = (
    BadInput("valid", lambda ad: _with(ad), "b", may_accept=FRAMEWORKS,
             equivalent=_good_list),
    BadInput("nan", lambda ad: _with(ad, b=ad.array([0.0, np.nan, 1.0, 2.0])), "b"),
    BadInput("inf", lambda ad: _with(ad, A=ad.array(np.where(
        np.eye(4, 3) > 0, np.inf, good_values()["A"]))), "A"),
    BadInput("minus_inf_pos", lambda ad: _with(ad, mu=ad.array(-np.inf)), "mu"),
    BadInput("nan_in_one_batch_instance", _nan_in_instance, "A"),
    BadInput("wrong_shape", lambda ad: _with(ad, b=ad.array(np.zeros(5))), "b"),
    BadInput("transposed", lambda ad: _with(ad, A=ad.array(good_values()["A"].T)), "A"),
    BadInput("too_many_dims", lambda ad: _with(ad, b=ad.array(np.zeros((2, 3, 4)))), "b"),
    BadInput("scalar_for_vector", lambda ad: _with(ad, b=ad.array(1.0)), "b"),
    BadInput("matrix_for_scalar", lambda ad: _with(ad, lam=ad.array(np.ones((2, 2)))), "lam"),
    # A wrong count names the parameters (the missing one, or the list of all).
    BadInput("too_few_values", lambda ad: _with(ad)[:3], "mu", frameworks=EAGER,
             regex=r"\bmu\b"),
    BadInput("too_many_values", lambda ad: _with(ad) + [ad.array(1.0)], "A",
             frameworks=EAGER, regex="A, b, lam, mu"),
    BadInput("inconsistent_batch", lambda ad: _with(
        ad, A=ad.array(_batched(good_values()["A"], 2)),
        b=ad.array(_batched(good_values()["b"], 3))), "b"),
    BadInput("int_dtype", lambda ad: _with(ad, b=ad.array([1, 2, 3, 4], "int64")), "b"),
    BadInput("bool_dtype", lambda ad: _with(ad, b=ad.array([1, 0, 1, 0], bool)), "b"),
    BadInput("complex_dtype", lambda ad: _with(
        ad, b=ad.array(good_values()["b"] + 1j)), "b"),
    BadInput("mixed_float32_float64", lambda ad: _with(
        ad, b=ad.array(good_values()["b"], np.float32)), "b", equivalent=_f32_b),
    BadInput("nonneg_negative", lambda ad: _with(ad, lam=ad.array(-0.5)), "lam"),
    BadInput("nonneg_negative_in_batch", lambda ad: _with(
        ad, lam=ad.array([0.5, -1e-12])), "lam"),
    BadInput("pos_zero", lambda ad: _with(ad, mu=ad.array(0.0)), "mu"),
    BadInput("pos_negative", lambda ad: _with(ad, mu=ad.array(-1.0)), "mu"),
    BadInput("nonneg_minus_zero_ok", lambda ad: _with(ad, lam=ad.array(-0.0)), "lam",
             may_accept=FRAMEWORKS, equivalent=lambda: [
                 good_values()["A"], good_values()["b"], np.array(0.0), np.array(0.3)]),
    BadInput("empty_batch", lambda ad: _with(ad, A=ad.array(np.zeros((0, 4, 3)))), "A"),
    BadInput("none", lambda ad: _with(ad, b=None), "b", frameworks=EAGER),
    BadInput("python_list", lambda ad: _with(ad, b=[float(v) for v in good_values()["b"]]),
             "b", frameworks=EAGER, may_accept=("core", "jax"), equivalent=_good_list),
    BadInput("string", lambda ad: _with(ad, b="abc"), "b", frameworks=EAGER),
    BadInput("numeric_string", lambda ad: _with(ad, b="1 2 3 4"), "b", frameworks=EAGER),
    BadInput("object_array", lambda ad: _with(
        ad, b=np.array([1.0, None, 2.0, 3.0], dtype=object)), "b", frameworks=EAGER),
    BadInput("numpy_for_tensor", lambda ad: _with(ad, A=good_values()["A"]), "A",
             frameworks=("torch",)),
    BadInput("meta_device", _meta, "b", frameworks=("torch",)),
    BadInput("sparse_tensor", _sparse, "A", frameworks=("torch",)),
)

CASE_BY_KIND = {c.kind: c for c in CASES}


def cells(include_xfail: bool = True):
    """(kind, framework) pairs of the matrix."""
    for case in CASES:
        for fw in case.frameworks:
            if include_xfail or fw not in case.xfail:
                yield case.kind, fw


# -- running one cell ---------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    framework: str
    outcome: str
    detail: str

    @property
    def ok(self) -> bool:
        case = CASE_BY_KIND[self.kind]
        return self.outcome == "clear_error" or (
            self.outcome == "accepted" and self.framework in case.may_accept
        )


_ADAPTER_CACHE: dict[str, Adapter] = {}


def adapter(framework: str) -> Adapter:
    if framework not in _ADAPTER_CACHE:
        _ADAPTER_CACHE[framework] = ADAPTERS[framework]()
    return _ADAPTER_CACHE[framework]


def _is_expected_error(framework: str, err: BaseException) -> bool:
    if isinstance(err, ParameterError):
        return True
    # Under jax.jit a value error found on the host surfaces as JAX's runtime error whose
    # message carries the original error (documented in conelayers.jax.layer).
    return framework == "jax_jit" and type(err).__name__ == "JaxRuntimeError" and (
        "ParameterError" in str(err)
    )


def _reference(case: BadInput) -> list[np.ndarray] | None:
    if case.equivalent is None:
        return None
    core = adapter("core")
    return core.call([np.asarray(v, dtype=np.float64) for v in case.equivalent()])


def classify(kind: str, framework: str) -> Outcome:
    """Run one cell of the matrix and classify what happened."""
    case = CASE_BY_KIND[kind]
    ad = adapter(framework)
    jax_logger = logging.getLogger("jax._src.callback")
    level = jax_logger.level
    jax_logger.setLevel(logging.CRITICAL)  # the host traceback JAX logs before re-raising
    try:
        with ad.context(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                args = case.build(ad)
                outs = ad.call(args)
            except Exception as err:  # noqa: BLE001 - classifying is the point
                text = f"{type(err).__name__}: {err}".strip()
                short = text.splitlines()[0][:200] + (
                    " ... " + text.splitlines()[-1][-200:] if "\n" in text else "")
                if _is_expected_error(framework, err):
                    named = re.search(case.pattern(), str(err)) is not None
                    return Outcome(kind, framework,
                                   "clear_error" if named else "unclear_error", short)
                if isinstance(err, ConelayersError):
                    return Outcome(kind, framework, "unclear_error", short)
                return Outcome(kind, framework, "crash", short)
    finally:
        jax_logger.setLevel(level)
    if not all(np.all(np.isfinite(o)) for o in outs):
        return Outcome(kind, framework, "silent_failure", "non-finite output without error")
    ref = _reference(case)
    if ref is None:
        return Outcome(kind, framework, "silent_failure",
                       "no error, and no valid equivalent input to compare with")
    same = len(ref) == len(outs) and all(
        np.shape(o) == np.shape(r) and np.allclose(o, r, atol=1e-6, rtol=1e-6)
        for o, r in zip(outs, ref)
    )
    if not same:
        return Outcome(kind, framework, "silent_failure", "no error and a wrong output")
    if framework in case.may_accept:
        return Outcome(kind, framework, "accepted", "no error, output right")
    return Outcome(kind, framework, "not_rejected", "no error (output right)")


def run_matrix() -> list[Outcome]:
    return [classify(kind, fw) for kind, fw in cells()]
