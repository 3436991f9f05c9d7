"""No input array is ever modified in place: the bytes of every parameter value, output
cotangent and input tangent are hashed before and after forward + backward (+ forward
mode), for every zoo problem and framework. Float64 CPU tensors are the interesting case:
the torch adapter hands the core NumPy views of their memory, not copies; jax hands its
host callbacks views of the CPU buffers."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest

from conelayers.layer import LayerCore
from tests import zoo
from tests.conftest import ZOO_NAMES


def _digest(arrays) -> list[str]:
    out = []
    for a in arrays:
        arr = np.asarray(a)
        h = hashlib.sha256(np.ascontiguousarray(arr).tobytes())
        h.update(f"{arr.dtype}{arr.shape}".encode())
        out.append(h.hexdigest())
    return out


def _seeds(z, outputs_shapes):
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal(s) for s in outputs_shapes]
    tangents = [rng.standard_normal(np.shape(v)) for v in z.values]
    return weights, tangents


def _core(z):
    core = LayerCore(z.problem, z.parameters, z.variables)
    values = [np.array(v, dtype=np.float64) for v in z.values]
    before = _digest(values)
    result = core.forward(values)
    weights, tangents = _seeds(z, [o.shape for o in result.outputs])
    seeds = _digest(weights + tangents)
    outs = _digest(result.outputs)
    core.vjp(result, weights)
    core.jvp(result, tangents)
    return (before, _digest(values)), (seeds, _digest(weights + tangents)), (
        outs, _digest(result.outputs))


def _torch(z):
    torch = pytest.importorskip("torch")
    from conelayers.torch import CvxpyLayer

    layer = CvxpyLayer(z.problem, z.parameters, z.variables)
    params = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in z.values]
    before = _digest([p.detach().numpy() for p in params])
    outs = layer(*params)
    weights, tangents = _seeds(z, [tuple(o.shape) for o in outs])
    w_t = [torch.from_numpy(w) for w in weights]
    t_t = [torch.from_numpy(t) for t in tangents]
    seeds = _digest(weights + tangents)
    out_digest = _digest([o.detach().numpy() for o in outs])
    torch.autograd.backward(outs, grad_tensors=w_t)
    primals = tuple(p.detach() for p in params)
    torch.func.jvp(lambda *ps: layer(*ps), primals, tuple(t_t))
    return (before, _digest([p.detach().numpy() for p in params])), (
        seeds, _digest([w.numpy() for w in w_t] + [t.numpy() for t in t_t])), (
        out_digest, _digest([o.detach().numpy() for o in outs]))


def _jax(z):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from conelayers.jax import CvxpyLayer

    with jax.enable_x64(True):
        layer = CvxpyLayer(z.problem, z.parameters, z.variables)
        params = [jnp.asarray(v, dtype=jnp.float64) for v in z.values]
        before = _digest(params)
        outs = layer(*params)
        weights, tangents = _seeds(z, [o.shape for o in outs])
        w_j = [jnp.asarray(w) for w in weights]
        t_j = [jnp.asarray(t) for t in tangents]
        seeds = _digest(w_j + t_j)
        out_digest = _digest(outs)

        def loss(*ps):
            return sum(jnp.sum(w * o) for w, o in zip(w_j, layer(*ps)))

        jax.grad(loss, argnums=tuple(range(len(params))))(*params)
        jax.jvp(lambda *ps: layer(*ps), tuple(params), tuple(t_j))
        return (before, _digest(params)), (seeds, _digest(w_j + t_j)), (
            out_digest, _digest(outs))


RUNNERS = {"core": _core, "torch": _torch, "jax": _jax}


@pytest.mark.parametrize("framework", list(RUNNERS))
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_inputs_are_never_modified(name, framework):
    z = zoo.make(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trust warnings are not the subject here
        (p0, p1), (s0, s1), (o0, o1) = RUNNERS[framework](z)
    assert p0 == p1, "a parameter value was modified in place"
    assert s0 == s1, "an output cotangent or an input tangent was modified in place"
    assert o0 == o1, "the forward's outputs were modified by the backward"
