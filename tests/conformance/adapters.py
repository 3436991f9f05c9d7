"""One adapter per framework, so that a single conformance suite runs against the core
NumPy API, the PyTorch layer and the JAX layer.

Every adapter speaks NumPy at its boundary: parameter values, weights and tangents go in
as NumPy arrays (their dtype selects the framework dtype: float32 in, float32 tensors),
and outputs, gradients and tangents come back as NumPy arrays in the framework's output
dtype. Inside, each adapter uses its framework's own machinery:

- numpy: forward ``NumpyLayer`` (LayerCore); ``grad`` and ``functional_grad`` by
  ``LayerCore.vjp``; ``jvp`` by ``LayerCore.jvp``.
- torch: forward ``CvxpyLayer.__call__``; ``grad`` by ``loss.backward()``;
  ``functional_grad`` by ``torch.func.grad``; ``jvp`` by ``torch.func.jvp`` (by
  ``torch.autograd.forward_ad`` when a tangent is None); ``second_order`` by
  ``create_graph=True``.
- jax: forward ``CvxpyLayer.__call__``; ``grad`` by ``jax.grad(..., has_aux=True)``;
  ``functional_grad`` by ``jax.vjp``; ``jvp`` by ``jax.jvp``; ``second_order`` by grad of
  grad.

``NumpyLayer`` is the "tiny adapter" around ``LayerCore``: the frameworks' call
convention (``layer(*values, solver_args=None)`` → a tuple, the batch axis only when an
input had one, outputs in the inputs' dtype) and nothing else; every rule about shapes,
batches, values and failures is the core's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np

from conelayers.layer import ForwardResult, LayerCore


class NumpyLayer:
    """``LayerCore`` with the adapters' call convention (see the module docstring)."""

    def __init__(self, problem, parameters, variables, gp=False, solver_args=None):
        self.core = LayerCore(problem, parameters, variables, gp=gp, solver_args=solver_args)

    @staticmethod
    def _dtype(values) -> np.dtype:
        floats = [np.asarray(v).dtype for v in values
                  if v is not None and np.asarray(v).dtype.kind == "f"]
        return np.result_type(*floats) if floats else np.dtype(np.float64)

    def forward(self, *values, solver_args=None) -> tuple[tuple, ForwardResult]:
        result = self.core.forward(list(values), solver_args)
        dtype = self._dtype(values)
        outs = tuple(
            (o if result.batch is not None else o[0]).astype(dtype) for o in result.outputs
        )
        return outs, result

    def __call__(self, *values, solver_args=None) -> tuple:
        return self.forward(*values, solver_args=solver_args)[0]

    def vjp(self, result: ForwardResult, weights, dtype) -> list[np.ndarray]:
        grads = [None if w is None else (w if result.batch is not None else w[None])
                 for w in weights]
        return [g.astype(dtype) for g in self.core.vjp(result, grads)]

    def jvp(self, result: ForwardResult, tangents, dtype) -> list[np.ndarray]:
        outs = self.core.jvp(result, tangents)
        return [(o if result.batch is not None else o[0]).astype(dtype) for o in outs]


# A "term" of a loss: (layer, indices of the shared values it takes, weights per output;
# a None weight leaves that output out of the loss).
Term = tuple[object, Sequence[int], Sequence[np.ndarray | None]]


class Adapter:
    """The interface the conformance suite uses. ``values`` are NumPy arrays."""

    name: str
    # Whether the adapter itself rejects parameters of mixed float dtypes (torch and jax
    # do; the core computes in float64 and has no dtype policy).
    rejects_mixed_dtypes = True
    # The layer class, for the tests of construction errors.
    layer_class: type

    def make_layer(self, problem, parameters, variables, **kw):
        return self.layer_class(problem, parameters=parameters, variables=variables, **kw)

    def call(self, layer, *values, solver_args=None) -> tuple[np.ndarray, ...]:
        """The layer's outputs (no derivative requested)."""
        raise NotImplementedError

    def call_raw(self, layer, *values, solver_args=None):
        """Call with the values converted as they are (any dtype, no gradient tracking):
        for the error tests."""
        raise NotImplementedError

    def grad_terms(self, terms: Sequence[Term], values, solver_args=None):
        """(outputs of each term, gradient of Σ_terms Σ⟨w, out⟩ w.r.t. each value)."""
        raise NotImplementedError

    def grad(self, layer, values, weights, solver_args=None):
        """(outputs, gradient of Σ⟨w, out⟩ w.r.t. each value)."""
        outs, grads = self.grad_terms(
            [(layer, range(len(values)), weights)], values, solver_args
        )
        return outs[0], grads

    def jvp(self, layer, values, tangents, solver_args=None):
        """(outputs, tangents of the outputs); a None tangent: that value does not move."""
        raise NotImplementedError

    def functional_grad(self, layer, values, weights, solver_args=None) -> list[np.ndarray]:
        """The gradient of Σ⟨w, out⟩ through the framework's functional reverse mode
        (``torch.func.grad``, ``jax.vjp``; the core's vjp for NumPy)."""
        raise NotImplementedError

    def second_order(self, layer, values, solver_args=None):
        """A Hessian-vector product of Σ out w.r.t. the first value (the layer has no
        second derivative: this must raise, not return a silently wrong number)."""
        raise NotImplementedError

    def no_derivative_calls(self) -> list[tuple[str, Callable]]:
        """Named ways of calling ``(layer, values) -> outputs`` without asking for a
        derivative; none of them may set up a derivative or run the trust checks."""
        raise NotImplementedError

    def float32_modes(self) -> list[tuple[str, Callable, type | None]]:
        """(label, context manager factory, expected warning class or None) under which
        float32 values are passed."""
        return [("float32", contextlib.nullcontext, None)]


class NumpyAdapter(Adapter):
    name = "numpy"
    rejects_mixed_dtypes = True
    layer_class = NumpyLayer

    def call(self, layer, *values, solver_args=None):
        return layer(*values, solver_args=solver_args)

    call_raw = call

    def grad_terms(self, terms, values, solver_args=None):
        dtype = NumpyLayer._dtype(values)
        grads = [np.zeros(np.shape(v), dtype=dtype) for v in values]
        outs = []
        for layer, idx, weights in terms:
            idx = list(idx)
            term_outs, result = layer.forward(*[values[i] for i in idx], solver_args=solver_args)
            outs.append(term_outs)
            for i, g in zip(idx, layer.vjp(result, weights, dtype)):
                grads[i] = grads[i] + g
        return outs, grads

    def jvp(self, layer, values, tangents, solver_args=None):
        outs, result = layer.forward(*values, solver_args=solver_args)
        return outs, tuple(layer.jvp(result, tangents, NumpyLayer._dtype(values)))

    def functional_grad(self, layer, values, weights, solver_args=None):
        return self.grad(layer, values, weights, solver_args)[1]

    def second_order(self, layer, values, solver_args=None):
        raise NotImplementedError("the core has first-order derivatives only, by design")

    def no_derivative_calls(self):
        return [("forward", lambda layer, values: layer(*values))]


class TorchAdapter(Adapter):
    name = "torch"

    def __init__(self):
        import torch

        from conelayers.torch import CvxpyLayer

        self.torch = torch
        self.layer_class = CvxpyLayer

    def tensor(self, value, requires_grad=False):
        t = self.torch.as_tensor(np.asarray(value))
        return t.requires_grad_(requires_grad) if requires_grad else t

    @staticmethod
    def to_numpy(t) -> np.ndarray:
        return t.detach().numpy()

    def call(self, layer, *values, solver_args=None):
        outs = layer(*[self.tensor(v) for v in values], solver_args=solver_args)
        return tuple(self.to_numpy(o) for o in outs)

    call_raw = call

    def grad_terms(self, terms, values, solver_args=None):
        params = [self.tensor(v, requires_grad=True) for v in values]
        loss, outs = 0, []
        for layer, idx, weights in terms:
            term_outs = layer(*[params[i] for i in idx], solver_args=solver_args)
            outs.append(tuple(self.to_numpy(o) for o in term_outs))
            for w, o in zip(weights, term_outs):
                if w is not None:
                    loss = loss + (self.torch.as_tensor(w, dtype=o.dtype) * o).sum()
        loss.backward()
        grads = [self.to_numpy(p.grad) if p.grad is not None else np.zeros_like(v)
                 for p, v in zip(params, values)]
        return outs, grads

    def jvp(self, layer, values, tangents, solver_args=None):
        torch = self.torch
        primals = [self.tensor(v) for v in values]
        if all(t is not None for t in tangents):
            outs, touts = torch.func.jvp(
                lambda *ps: layer(*ps, solver_args=solver_args), tuple(primals),
                tuple(self.tensor(np.asarray(t, dtype=v.dtype)) for t, v in zip(tangents, values)),
            )
            return tuple(self.to_numpy(o) for o in outs), tuple(self.to_numpy(t) for t in touts)
        import torch.autograd.forward_ad as fwAD

        with fwAD.dual_level():
            duals = [
                p if t is None else fwAD.make_dual(p, self.tensor(np.asarray(t, dtype=v.dtype)))
                for p, t, v in zip(primals, tangents, values)
            ]
            outs = layer(*duals, solver_args=solver_args)
            unpacked = [fwAD.unpack_dual(o) for o in outs]
        return (tuple(self.to_numpy(u.primal) for u in unpacked),
                tuple(self.to_numpy(u.tangent) for u in unpacked))

    def functional_grad(self, layer, values, weights, solver_args=None):
        torch = self.torch

        def loss(*ps):
            outs = layer(*ps, solver_args=solver_args)
            return sum((torch.as_tensor(w, dtype=o.dtype) * o).sum()
                       for w, o in zip(weights, outs) if w is not None)

        grads = torch.func.grad(loss, argnums=tuple(range(len(values))))(
            *[self.tensor(v) for v in values]
        )
        return [self.to_numpy(g) for g in grads]

    def second_order(self, layer, values, solver_args=None):
        torch = self.torch
        params = [self.tensor(v, requires_grad=True) for v in values]
        outs = layer(*params, solver_args=solver_args)
        (g,) = torch.autograd.grad(sum(o.sum() for o in outs), params[0], create_graph=True)
        v = torch.ones_like(params[0])
        (hv,) = torch.autograd.grad((g * v).sum() + (params[0] ** 2).sum(), params[0])
        return self.to_numpy(hv)

    def no_derivative_calls(self):
        torch = self.torch

        def under_no_grad(layer, values):
            with torch.no_grad():
                outs = layer(*[self.tensor(v, requires_grad=True) for v in values])
            assert not any(o.requires_grad for o in outs)
            return tuple(self.to_numpy(o) for o in outs)

        def without_requires_grad(layer, values):
            outs = layer(*[self.tensor(v) for v in values])
            assert not any(o.requires_grad for o in outs)
            return tuple(self.to_numpy(o) for o in outs)

        return [("no_grad", under_no_grad), ("requires_grad=False", without_requires_grad)]


class JaxAdapter(Adapter):
    """JAX with ``jax_enable_x64`` on (the fixture turns it on for the test); the float32
    modes also run with it off, where the layer warns ``Float32Warning``."""

    name = "jax"

    def __init__(self):
        import jax
        import jax.numpy as jnp

        from conelayers.jax import CvxpyLayer, Float32Warning

        self.jax, self.jnp = jax, jnp
        self.layer_class = CvxpyLayer
        self.Float32Warning = Float32Warning

    def array(self, value):
        return self.jnp.asarray(np.asarray(value))

    @staticmethod
    def to_numpy(a) -> np.ndarray:
        return np.asarray(a)

    def call(self, layer, *values, solver_args=None):
        outs = layer(*[self.array(v) for v in values], solver_args=solver_args)
        return tuple(self.to_numpy(o) for o in outs)

    call_raw = call

    def grad_terms(self, terms, values, solver_args=None):
        jnp = self.jnp

        def loss(*params):
            total, outs = 0.0, []
            for layer, idx, weights in terms:
                term_outs = layer(*[params[i] for i in idx], solver_args=solver_args)
                outs.append(term_outs)
                for w, o in zip(weights, term_outs):
                    if w is not None:
                        total = total + jnp.sum(jnp.asarray(w, dtype=o.dtype) * o)
            return total, outs

        params = [self.array(v) for v in values]
        grads, outs = self.jax.grad(loss, argnums=tuple(range(len(params))), has_aux=True)(
            *params
        )
        return ([tuple(self.to_numpy(o) for o in t) for t in outs],
                [self.to_numpy(g) for g in grads])

    def jvp(self, layer, values, tangents, solver_args=None):
        params = [self.array(v) for v in values]
        moving = [i for i, t in enumerate(tangents) if t is not None]

        def f(*moved):
            ps = list(params)
            for i, p in zip(moving, moved):
                ps[i] = p
            return layer(*ps, solver_args=solver_args)

        outs, touts = self.jax.jvp(
            f, tuple(params[i] for i in moving),
            tuple(self.array(np.asarray(tangents[i], dtype=values[i].dtype)) for i in moving),
        )
        return tuple(self.to_numpy(o) for o in outs), tuple(self.to_numpy(t) for t in touts)

    def functional_grad(self, layer, values, weights, solver_args=None):
        outs, vjp_fun = self.jax.vjp(
            lambda *ps: layer(*ps, solver_args=solver_args), *[self.array(v) for v in values]
        )
        cotangents = tuple(
            self.jnp.zeros_like(o) if w is None else self.jnp.asarray(w, dtype=o.dtype)
            for w, o in zip(weights, outs)
        )
        return [self.to_numpy(g) for g in vjp_fun(cotangents)]

    def second_order(self, layer, values, solver_args=None):
        jax, jnp = self.jax, self.jnp
        rest = [self.array(v) for v in values[1:]]

        def f(p):
            return sum(jnp.sum(o) for o in layer(p, *rest, solver_args=solver_args))

        p0 = self.array(values[0])
        return self.to_numpy(jax.grad(lambda p: jnp.vdot(jax.grad(f)(p), jnp.ones_like(p)))(p0))

    def no_derivative_calls(self):
        jax = self.jax

        def eager(layer, values):
            return tuple(self.to_numpy(o) for o in layer(*[self.array(v) for v in values]))

        def jitted(layer, values):
            outs = jax.jit(lambda *ps: layer(*ps))(*[self.array(v) for v in values])
            return tuple(self.to_numpy(o) for o in outs)

        return [("eager", eager), ("jit", jitted)]

    def float32_modes(self):
        jax = self.jax
        return [
            ("float32, x64 on", lambda: jax.enable_x64(True), None),
            ("float32, x64 off", lambda: jax.enable_x64(False), self.Float32Warning),
        ]


FRAMEWORKS = {"numpy": NumpyAdapter, "torch": TorchAdapter, "jax": JaxAdapter}
