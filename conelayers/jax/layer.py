"""``CvxpyLayer`` for JAX: a thin adapter over ``LayerCore``.

How it runs
-----------
The solve runs on the host through ``jax.pure_callback`` with
``vmap_method="expand_dims"``: under ``jax.vmap`` the callback receives the whole batch
(unbatched inputs with size-1 axes, broadcast on the host for free), so a vmap over N
problems is one call of the batched core, not N solves. Everything works under ``jax.jit``.

How it differentiates
---------------------
The layer is a ``jax.custom_jvp`` function. Its jvp rule

1. runs the forward on the host and keeps the core's ``ForwardResult`` in a per-layer
   registry, returning two int32 handles (traced values, so they work under jit): the
   registry key and the instance index (``0`` unbatched; ``0 .. N-1`` over the vmapped
   positions, so that a batched backward knows which instance each of its rows belongs to);
2. expresses the tangent map as ``jax.lax.custom_linear_solve(identity, dθ, solve,
   transpose_solve)``, whose ``solve`` is a host callback running ``core.jvp`` and whose
   ``transpose_solve`` is a host callback running ``core.vjp``. JAX treats this as a linear
   operation with a known transpose: forward mode (``jax.jvp``, ``jax.jacfwd``,
   ``jax.linearize``) evaluates ``solve``, reverse mode (``jax.grad``, ``jax.vjp``,
   ``jax.jacrev``) transposes it into ``transpose_solve``. Both reuse the forward's
   solution through the handle. (``custom_linear_solve`` needs x and b of one shape, so
   the parameter and output tangents are flattened and zero-padded to a common width. Its
   ``matvec`` is a placeholder identity: it is never evaluated, and since it closes over
   nothing, JAX's rule "∂x = solve(∂b − ∂A·x)" reduces to ``solve(∂b)``.)

The trust checks run in the forward of step 1 (only when a derivative is requested), so
their warnings, or errors when the user turns them into errors, come from the layer call.

A plain ``pure_callback`` inside a custom_jvp rule is not transposable, and
``jax.custom_vjp`` has no forward mode; this construction gives both.

A tangent callback consumes its registry entry (memory is freed right after a
``jax.grad``). If an entry is gone (consumed by an earlier use of the same linearization,
or evicted: the registry keeps at most ``max_stored_results`` entries), the callback
re-solves from the parameter values it also receives: slower, never wrong.

Second-order derivatives (``jax.hessian``, grad of grad) raise ``ConelayersError``: the
host derivative is not itself differentiable.

dtypes: the computation is float64 on the host. Outputs and gradients come back in the
parameters' dtype: float64 needs ``jax.config.update("jax_enable_x64", True)``; without
it JAX arrays are float32, and the layer warns once (``Float32Warning``).

Errors: shapes, dtypes and batch sizes are checked at trace time by the core's own rules
(``ParameterError`` names the parameter, also under jit). Value errors (NaN, sign of a
``nonneg`` parameter, infeasibility) are found on the host: outside jit the original
``ConelayersError`` is raised (also from ``jax.grad``/``jax.jvp``, whose forward runs in
the layer call); inside ``jax.jit`` JAX reports its own runtime error (``JaxRuntimeError``)
whose message ends with the original error's name and message. A failure inside a
backward callback outside the layer call (rare: re-solves, trust checks run earlier)
surfaces the same way.
"""

from __future__ import annotations

import itertools
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from math import prod

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np

from conelayers.exceptions import ConelayersError, ConelayersWarning, ParameterError
from conelayers.layer import ForwardResult, LayerCore, check_float_dtypes, user_stacklevel


class _OwnErrorsFilter(logging.Filter):
    """Drops JAX's "jax.pure_callback failed" log record when the failure is one of our
    errors (or warnings raised as errors): the layer raises that same error to the
    caller (outside jit) or JAX carries its message (inside), so the logged traceback
    only duplicated it, ahead of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # Our warnings too, when a filter turned them into errors.
        return not isinstance(exc, (ConelayersError, ConelayersWarning))


_CALLBACK_LOGGER = logging.getLogger("jax._src.callback")
if not any(isinstance(f, _OwnErrorsFilter) for f in _CALLBACK_LOGGER.filters):
    _CALLBACK_LOGGER.addFilter(_OwnErrorsFilter())

_VMAP_METHOD = "expand_dims"
_PLAN_CACHE_SIZE = 64


class Float32Warning(ConelayersWarning):
    """``jax_enable_x64`` is off, so JAX arrays are float32: the layer solves and
    differentiates in float64 on the host but returns float32 values and gradients.

    What to do: ``jax.config.update("jax_enable_x64", True)`` at start-up for float64.
    """


@dataclass
class _Stored:
    """A forward pass kept for its derivatives.

    ``tiled``: the core got every parameter with a batch axis of ``count`` forward
    instances (times the native batch, if any), the layout used under vmap; otherwise it
    got the values as passed (``count`` is 1).
    """

    result: ForwardResult
    tiled: bool
    count: int


class _Registry:
    """Bounded, thread-safe store of forward results keyed by int32 handles."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[int, _Stored] = OrderedDict()
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    def put(self, stored: _Stored) -> int:
        with self._lock:
            key = next(self._counter) % (2**31 - 1) + 1
            self._items[key] = stored
            while len(self._items) > max(self.capacity, 0):
                self._items.popitem(last=False)
            return key

    def pop(self, key: int) -> _Stored | None:
        with self._lock:
            return self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


def _admissible(slot) -> float:
    """A value every sign attribute of the parameter slot accepts."""
    return 1.0 if getattr(slot, "positive", False) or getattr(slot, "log", False) else 0.0


def _second_order_rule(primals, tangents):
    raise ConelayersError(
        "conelayers.jax.CvxpyLayer supports first-order derivatives only (jax.grad, "
        "jax.vjp, jax.jacrev, jax.jvp, jax.jacfwd): the derivative is computed on the host "
        "and is not itself differentiable, so jax.hessian and grad-of-grad are not available"
    )


class _Plan:
    """Everything fixed for one call signature (parameter shapes, dtype, solver_args):
    the host callbacks and the ``custom_jvp`` function that wires them into JAX."""

    def __init__(self, layer: CvxpyLayer, shapes, dtype, solver_args: dict | None) -> None:
        core = layer.core
        self.layer = layer
        self.core = core
        self.solver_args = solver_args
        self.dtype = np.dtype(dtype)
        self.shapes = [tuple(s) for s in shapes]
        # The core's own shape and batch rules, at trace time, on stand-in values that
        # pass the value checks (1 for pos parameters, 0 otherwise; broadcast views).
        _, self.batch, self.native = core.parameter_values([
            np.broadcast_to(np.float64(_admissible(slot)), s)
            for slot, s in zip(core.program.parameters, self.shapes)
        ])
        nb = () if self.batch is None else (self.batch,)
        self.slot_shapes = [tuple(slot.shape) for slot in core.program.parameters]
        self.var_shapes = [tuple(rec.shape) for rec in core.program.recoveries]
        self.out_shapes = [nb + s for s in self.var_shapes]
        self.in_sizes = [prod(s) for s in self.shapes]
        self.out_sizes = [prod(s) for s in self.out_shapes]
        self.width = max(sum(self.in_sizes), sum(self.out_sizes), 1)
        self.fn = self._build()

    # -- host side ------------------------------------------------------------------------
    def _guard(self, fun, *args):
        try:
            return fun(*args)
        except Exception as err:
            self.layer._last_error = err
            raise

    def _to_core(self, value: np.ndarray, i: int) -> np.ndarray:
        """(V, *shape_i) per forward instance → the core's tiled layout, batched over
        V·(native batch)."""
        V = value.shape[0]
        slot = self.slot_shapes[i]
        if self.batch is None or self.native[i]:
            return value.reshape((-1,) + slot)
        return np.broadcast_to(value[:, None], (V, self.batch) + slot).reshape((-1,) + slot)

    def _solve(self, values: list[np.ndarray], tiled: bool) -> _Stored:
        if tiled:
            V = values[0].shape[0] if values else 1
            core_values = [self._to_core(v, i) for i, v in enumerate(values)]
            return _Stored(self.core.forward(core_values, self.solver_args), True, V)
        return _Stored(self.core.forward(values, self.solver_args), False, 1)

    def forward_host(self, register: bool, *arrays):
        return self._guard(self._forward_host, register, arrays)

    def _forward_host(self, register: bool, arrays):
        arrays = [np.asarray(a) for a in arrays]
        k = arrays[0].ndim - len(self.shapes[0]) if arrays else 0
        lead = np.broadcast_shapes(*(a.shape[:k] for a in arrays)) if k else ()
        if k == 0:
            stored = self._solve(arrays, tiled=False)
        else:
            V = prod(lead)
            values = [
                np.broadcast_to(a, lead + s).reshape((V,) + s) for a, s in zip(arrays, self.shapes)
            ]
            stored = self._solve(values, tiled=True)
        outs = [
            np.asarray(o, dtype=self.dtype).reshape(lead + s)
            for o, s in zip(stored.result.outputs, self.out_shapes)
        ]
        if not register:
            return tuple(outs)
        # A derivative was asked for: run the trust checks now (once; the core's vjp/jvp
        # would run them on first use), so their warnings, or errors when the user turns
        # them into errors, come from the layer call rather than from inside a backward.
        stored.result.check(self.core.program)
        key = self.layer._registry.put(stored)
        keys = np.full(lead, key, dtype=np.int32)
        index = np.arange(prod(lead), dtype=np.int32).reshape(lead)
        return (*outs, keys, index)

    def tangent_host(self, mode: str, keys, index, *rest):
        return self._guard(self._tangent_host, mode, keys, index, rest)

    def _tangent_host(self, mode: str, keys, index, rest):
        *arrays, vec = (np.asarray(a) for a in rest)
        keys, index = np.asarray(keys), np.asarray(index)
        k = vec.ndim - 1
        lead = np.broadcast_shapes(
            keys.shape, index.shape, vec.shape[:-1], *(a.shape[:k] for a in arrays)
        )
        P = prod(lead)
        keys = np.broadcast_to(keys, lead).ravel()
        index = np.broadcast_to(index, lead).ravel()
        vec = np.broadcast_to(vec, lead + (self.width,)).reshape(P, self.width)
        out = np.zeros((P, self.width))
        for key in np.unique(keys):
            pos = np.flatnonzero(keys == key)
            j = index[pos].astype(np.int64)
            stored = self.layer._registry.pop(int(key))
            if stored is None:
                # Consumed or evicted: re-solve the instances this batch refers to from
                # the parameter values that came with it.
                uniq, first = np.unique(j, return_index=True)
                where = np.unravel_index(pos[first], lead) if lead else None
                values = [
                    np.broadcast_to(a, lead + s)[where] if lead else a[None]
                    for a, s in zip(arrays, self.shapes)
                ]
                stored = self._solve(values, tiled=True)
                j = np.searchsorted(uniq, j)
            out[pos] = self._apply(mode, stored, j, vec[pos])
        return out.astype(self.dtype).reshape(lead + (self.width,))

    def _apply(self, mode: str, stored: _Stored, j: np.ndarray, vec: np.ndarray) -> np.ndarray:
        """Rows of ``vec`` are tangents (jvp) or cotangents (vjp) of instance ``j[row]``.
        Each round takes at most one row per instance, so one core call serves a whole
        round (e.g. jax.jacrev of a vmapped layer: one round per output entry)."""
        n = len(j)
        counts = np.bincount(j, minlength=stored.count)
        order = np.argsort(j, kind="stable")
        starts = np.cumsum(counts) - counts
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - starts[j[order]]
        out = np.zeros((n, self.width))
        round_fn = self._vjp_round if mode == "vjp" else self._jvp_round
        for r in range(int(counts.max(initial=0))):
            rows = np.flatnonzero(rank == r)
            flat = round_fn(stored, j[rows], vec[rows])
            out[rows, : flat.shape[1]] = flat
        return out

    @staticmethod
    def _scatter(V, inst, vec, shapes, sizes) -> list[np.ndarray]:
        arrays, offset = [], 0
        for shape, size in zip(shapes, sizes):
            arr = np.zeros((V,) + shape)
            arr[inst] = vec[:, offset : offset + size].reshape((-1,) + shape)
            arrays.append(arr)
            offset += size
        return arrays

    def _vjp_round(self, stored: _Stored, inst, vec) -> np.ndarray:
        V = stored.count
        grads = self._scatter(V, inst, vec, self.out_shapes, self.out_sizes)
        grads = [g.reshape((-1,) + s) for g, s in zip(grads, self.var_shapes)]
        param_grads = self.core.vjp(stored.result, grads)
        flat = []
        for i, g in enumerate(param_grads):
            if stored.tiled:
                if self.batch is not None:
                    g = g.reshape((V, self.batch) + self.slot_shapes[i])
                    if not self.native[i]:
                        g = g.sum(axis=1)
                g = g.reshape(V, -1)
            else:
                g = g.reshape(1, -1)
            flat.append(g[inst])
        return np.concatenate(flat, axis=1) if flat else np.zeros((len(inst), 0))

    def _jvp_round(self, stored: _Stored, inst, vec) -> np.ndarray:
        V = stored.count
        tangents = self._scatter(V, inst, vec, self.shapes, self.in_sizes)
        if stored.tiled:
            tangents = [self._to_core(t, i) for i, t in enumerate(tangents)]
        else:
            tangents = [t[0] for t in tangents]
        outs = self.core.jvp(stored.result, tangents)
        return np.concatenate([o.reshape(V, -1)[inst] for o in outs], axis=1)

    # -- JAX side -------------------------------------------------------------------------
    def _build(self):
        dtype = self.dtype
        out_structs = tuple(jax.ShapeDtypeStruct(s, dtype) for s in self.out_shapes)
        handle = jax.ShapeDtypeStruct((), np.int32)
        vec_struct = jax.ShapeDtypeStruct((self.width,), dtype)
        n_out = sum(self.out_sizes)
        n_in = sum(self.in_sizes)

        def primal(*params):
            return tuple(jax.pure_callback(
                partial(self.forward_host, False), out_structs, *params,
                vmap_method=_VMAP_METHOD,
            ))

        @jax.custom_jvp
        def registered_forward(*params):
            return tuple(jax.pure_callback(
                partial(self.forward_host, True), (*out_structs, handle, handle), *params,
                vmap_method=_VMAP_METHOD,
            ))

        registered_forward.defjvp(_second_order_rule)

        def rule(primals, tangents):
            *outs, keys, index = registered_forward(*primals)

            def solve(_matvec, dtheta):
                return jax.pure_callback(
                    partial(self.tangent_host, "jvp"), vec_struct, keys, index, *primals,
                    dtheta, vmap_method=_VMAP_METHOD,
                )

            def transpose_solve(_vecmat, dout):
                return jax.pure_callback(
                    partial(self.tangent_host, "vjp"), vec_struct, keys, index, *primals,
                    dout, vmap_method=_VMAP_METHOD,
                )

            dtheta = jnp.concatenate(
                [jnp.ravel(t).astype(dtype) for t in tangents] + [jnp.zeros(self.width - n_in,
                                                                             dtype)]
            )
            dout = jax.lax.custom_linear_solve(lambda v: v, dtheta, solve, transpose_solve)
            touts, offset = [], 0
            for shape, size in zip(self.out_shapes, self.out_sizes):
                touts.append(dout[offset : offset + size].reshape(shape))
                offset += size
            assert offset == n_out
            return tuple(outs), tuple(touts)

        fn = jax.custom_jvp(primal)
        fn.defjvp(rule)
        # jit caches the traced wrapper, so eager calls do not re-trace it every time;
        # under an outer jit/vmap/grad it is inlined like any jitted function.
        return jax.jit(fn)


def _solver_args_key(solver_args: dict | None):
    if not solver_args:
        return ()
    for key, value in solver_args.items():
        if isinstance(value, jax.core.Tracer):
            raise ConelayersError(
                f"solver_args[{key!r}] is a traced JAX value: solver_args must be concrete "
                "Python values (close over them, e.g. functools.partial(layer, "
                "solver_args=...), instead of passing them through jax.jit or jax.vmap)"
            )
    try:
        key = tuple(sorted(solver_args.items()))
        hash(key)
    except TypeError:
        return None
    return key


class CvxpyLayer:
    """A differentiable layer that solves a parametrized convex problem, for JAX.

    ``CvxpyLayer(problem, parameters=[...], variables=[...])``; call it with one array per
    parameter (each with an optional leading batch dimension; unbatched ones are
    broadcast) and optional ``solver_args`` (SCS settings such as ``eps``, ``max_iters``;
    plus ``refine``, ``selection``). Returns a tuple with one array per variable, in the
    parameters' dtype; the computation is float64 on the host. Works under ``jax.jit``,
    ``jax.vmap`` (one batched solve), ``jax.grad``/``jax.vjp``/``jax.jacrev`` and
    ``jax.jvp``/``jax.jacfwd``; see ``conelayers.jax.layer`` for the design.

    ``max_stored_results`` bounds how many forward passes are kept for a later
    derivative; a derivative whose forward pass was dropped re-solves.
    """

    max_stored_results: int = 16

    def __init__(
        self,
        problem: cp.Problem,
        parameters: Sequence[cp.Parameter],
        variables: Sequence[cp.Variable],
        gp: bool = False,
        solver_args: dict | None = None,
    ) -> None:
        self.core = LayerCore(problem, parameters, variables, gp=gp, solver_args=solver_args)
        self._reset_runtime_state()
        self._warned_float32 = False

    def _reset_runtime_state(self) -> None:
        """Host-side caches (stored forward results, jitted plans): not pickled."""
        self._registry = _Registry(self.max_stored_results)
        self._plans: OrderedDict = OrderedDict()
        self._last_error: BaseException | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for key in ("_registry", "_plans", "_last_error"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_runtime_state()

    @property
    def parameters(self) -> list[cp.Parameter]:
        return self.core.parameters

    @property
    def variables(self) -> list[cp.Variable]:
        return self.core.variables

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "max_stored_results" and "_registry" in self.__dict__:
            self._registry.capacity = value

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.core.program.parameters)
        outs = ", ".join(r.name for r in self.core.program.recoveries)
        return f"CvxpyLayer(parameters=[{names}], variables=[{outs}])"

    def _arrays(self, params) -> list:
        slots = self.core.program.parameters
        if len(params) != len(slots):
            names = ", ".join(s.name for s in slots)
            raise ParameterError(
                f"an array must be provided for each CVXPY parameter ({names}): expected "
                f"{len(slots)}, got {len(params)}"
            )
        arrays = []
        for slot, p in zip(slots, params):
            if p is None:
                raise ParameterError(f"parameter '{slot.name}': got None, expected an array")
            if isinstance(p, (str, bytes)):
                raise ParameterError(
                    f"parameter '{slot.name}': expected an array, got {type(p).__name__}"
                )
            if not isinstance(p, jax.Array):
                try:
                    p = jnp.asarray(p)
                except Exception as err:  # noqa: BLE001 - any conversion failure
                    raise ParameterError(
                        f"parameter '{slot.name}': expected an array, got {type(p).__name__}"
                    ) from err
            if not jnp.issubdtype(p.dtype, jnp.floating):
                raise ParameterError(
                    f"parameter '{slot.name}': expected a floating-point array, got dtype "
                    f"{p.dtype}"
                )
            arrays.append(p)
        strong_arrays = [(slot.name, a.dtype) for slot, a in zip(slots, arrays)
                         if not jax.typeof(a).weak_type]
        check_float_dtypes([n for n, _ in strong_arrays], [d for _, d in strong_arrays])
        strong = {d for _, d in strong_arrays}
        dtype = strong.pop() if strong else jnp.result_type(*arrays) if arrays else jnp.float64
        return [a if a.dtype == dtype else a.astype(dtype) for a in arrays]

    def _plan(self, arrays, solver_args) -> _Plan:
        args_key = _solver_args_key(solver_args)
        dtype = np.dtype(arrays[0].dtype) if arrays else np.dtype(jnp.float64)
        shapes = tuple(tuple(a.shape) for a in arrays)
        if args_key is None:
            return _Plan(self, shapes, dtype, solver_args)
        key = (shapes, dtype.str, args_key)
        plan = self._plans.get(key)
        if plan is None:
            plan = _Plan(self, shapes, dtype, dict(solver_args or {}))
            self._plans[key] = plan
            while len(self._plans) > _PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    def __call__(self, *params, solver_args: dict | None = None) -> tuple:
        arrays = self._arrays(params)
        if not jax.config.jax_enable_x64 and not self._warned_float32:
            self._warned_float32 = True
            warnings.warn(
                "jax_enable_x64 is off: conelayers solves and differentiates in float64 on "
                "the host but returns float32 values and gradients; call "
                'jax.config.update("jax_enable_x64", True) at start-up for float64',
                Float32Warning,
                stacklevel=user_stacklevel(),
            )
        plan = self._plan(arrays, solver_args)
        self._last_error = None
        try:
            outs = plan.fn(*arrays)
            if not any(isinstance(a, jax.core.Tracer) for a in arrays):
                outs = jax.block_until_ready(outs)
        except Exception as err:  # JaxRuntimeError, or ValueError from a cached executable
            host = self._last_error
            self._last_error = None
            if host is not None and str(host) in str(err):
                raise host from None
            raise
        return tuple(outs)
