"""``CvxpyLayer`` as a ``torch.nn.Module``: a thin adapter over ``LayerCore``.

Reverse mode (``backward``) and forward mode (``jvp``, for ``torch.func.jvp`` and
``torch.autograd.forward_ad``) both come from the core's implicit derivative.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import cvxpy as cp
import numpy as np
import torch

from conelayers.exceptions import ConelayersError, ParameterError
from conelayers.layer import ForwardResult, LayerCore, check_float_dtypes


class _Holder:
    """Carries the core's ForwardResult from ``forward`` to ``setup_context`` (and the
    conversions the jvp operator needs)."""

    result: ForwardResult | None = None
    core: LayerCore | None = None
    dtype: torch.dtype | None = None
    device: torch.device | None = None
    param_meta: list | None = None
    param_shapes: list | None = None


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


# Forward mode runs the core's NumPy jvp. Under torch.func.jvp the tangents are functorch
# wrappers whose data cannot be read from Python, so the jvp goes through a custom
# operator, which functorch treats as an opaque primitive and calls with plain tensors.
_JVP_CONTEXTS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


@torch.library.custom_op("conelayers::layer_jvp", mutates_args=())
def _layer_jvp(handle: int, tangents: list[torch.Tensor]) -> list[torch.Tensor]:
    holder = _JVP_CONTEXTS[handle]
    result: ForwardResult = holder.result
    outs = holder.core.jvp(result, [_to_numpy(t) for t in tangents])
    return [
        torch.as_tensor(o[0] if result.batch is None else o, dtype=holder.dtype,
                        device=holder.device)
        for o in outs
    ]


@_layer_jvp.register_fake
def _layer_jvp_fake(handle: int, tangents: list[torch.Tensor]) -> list[torch.Tensor]:
    holder = _JVP_CONTEXTS[handle]
    return [torch.empty(o.shape[1:] if holder.result.batch is None else o.shape,
                        dtype=holder.dtype, device=holder.device)
            for o in holder.result.outputs]


def _vjp_on_host(holder: _Holder, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    result: ForwardResult = holder.result
    arrays = []
    for g in grads:
        arr = _to_numpy(g)
        arrays.append(arr[None] if result.batch is None else arr)
    param_grads = holder.core.vjp(result, arrays)
    return [torch.as_tensor(g, dtype=dt, device=dev)
            for g, (dt, dev) in zip(param_grads, holder.param_meta)]


@torch.library.custom_op("conelayers::layer_vjp", mutates_args=())
def _layer_vjp(
    handle: int, grads: list[torch.Tensor], params: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Parameter gradients from output gradients (the core's vjp), as an opaque operator
    so that torch.func's reverse transforms (grad, vjp, jacrev) can call it. ``params``
    are not read: passing them records that the gradient depends on them, so that a
    second derivative reaches ``_second_order`` and raises instead of silently
    treating the gradient as constant."""
    return _vjp_on_host(_JVP_CONTEXTS[handle], grads)


@_layer_vjp.register_fake
def _layer_vjp_fake(
    handle: int, grads: list[torch.Tensor], params: list[torch.Tensor]
) -> list[torch.Tensor]:
    holder = _JVP_CONTEXTS[handle]
    return [torch.empty(shape, dtype=dt, device=dev)
            for shape, (dt, dev) in zip(holder.param_shapes, holder.param_meta)]


def _grad_tracking_depth(t: torch.Tensor) -> int:
    """How many torch.func grad transforms track ``t`` (through vmap wrappers too)."""
    functorch, depth = torch._C._functorch, 0
    while functorch.is_functorch_wrapped_tensor(t):
        depth += int(functorch.is_gradtrackingtensor(t))
        t = functorch.get_unwrapped(t)
    return depth


@_layer_vjp.register_vmap
def _layer_vjp_vmap(info, in_dims, handle, grads, params):
    """vmap over cotangents (torch.func.jacrev, vectorized jacobians): one vjp per
    slice of the mapped dimension."""
    grad_dims = in_dims[1]
    moved = [g if d is None else g.movedim(d, 0) for g, d in zip(grads, grad_dims)]
    rows = [
        _layer_vjp(handle, [g if d is None else g[i] for g, d in zip(moved, grad_dims)],
                   params)
        for i in range(info.batch_size)
    ]
    outs = [torch.stack([row[j] for row in rows]) for j in range(len(rows[0]))]
    return outs, [0] * len(outs)


def _second_order(ctx, *grads):
    raise ConelayersError(
        "CvxpyLayer gives first-order derivatives only: the implicit derivative is "
        "computed on the host and is not itself differentiable (no Hessians, "
        "double backward or forward-over-reverse)"
    )


def _setup_second_order(ctx, inputs, output) -> None:
    return None


_layer_vjp.register_autograd(_second_order, setup_context=_setup_second_order)
_layer_jvp.register_autograd(_second_order, setup_context=_setup_second_order)


class _LayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(core: LayerCore, solver_args, holder: _Holder, dtype, device, *params):
        result = core.forward([_to_numpy(p) for p in params], solver_args)
        holder.result = result
        outs = []
        for out in result.outputs:
            if result.batch is None:
                out = out[0]
            outs.append(torch.as_tensor(out, dtype=dtype, device=device))
        return tuple(outs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        core, _args, holder, dtype, device, *params = inputs
        ctx.core, ctx.result = core, holder.result
        holder.core, holder.dtype, holder.device = core, dtype, device
        ctx.holder = holder
        ctx.dtype, ctx.device = dtype, device
        ctx.param_meta = [(p.dtype, p.device) for p in params]
        ctx.param_shapes = [p.shape for p in params]
        holder.param_meta, holder.param_shapes = ctx.param_meta, ctx.param_shapes
        ctx.save_for_backward(*params)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, *grad_outputs):
        if all(g is None for g in grad_outputs):
            return (None,) * (5 + len(ctx.param_meta))
        grads = [
            torch.zeros(o.shape[1:] if ctx.result.batch is None else o.shape,
                        dtype=ctx.dtype) if g is None else g
            for g, o in zip(grad_outputs, ctx.result.outputs)
        ]
        wrapped = any(torch._C._functorch.is_functorch_wrapped_tensor(g) for g in grads)
        if not wrapped and not torch.is_grad_enabled():
            # Plain backward without create_graph: nothing can differentiate the
            # gradient, so the core is called directly (the operator's dispatch costs
            # more than the whole vjp of a small problem).
            return (None, None, None, None, None, *_vjp_on_host(ctx.holder, grads))
        handle = id(ctx.holder)
        _JVP_CONTEXTS[handle] = ctx.holder
        # Eager autograd with create_graph: pass the parameters so a second derivative
        # raises (see _layer_vjp). Under torch.func the operator's autograd rule cannot
        # run on wrapped tensors, so the parameters are left out there.
        params = list(ctx.saved_tensors)
        if wrapped:
            if any(_grad_tracking_depth(p) > 1 for p in params):
                # Nested torch.func.grad: the gradient itself is being differentiated.
                _second_order(ctx)
            # Under torch.func the cotangent may itself depend on the inputs (a loss
            # nonlinear in the outputs); the operator's autograd rule cannot run on such
            # tensors, and the dependence matters only to second derivatives, which the
            # layer does not give: cut it at this level.
            grads = [g.detach() for g in grads]
            params = []
        return (None, None, None, None, None, *_layer_vjp(handle, grads, params))

    @staticmethod
    def jvp(ctx, _core, _args, _holder, _dtype, _device, *tangents):
        handle = id(ctx.holder)
        _JVP_CONTEXTS[handle] = ctx.holder
        ts = [
            torch.zeros(shape, dtype=ctx.dtype) if t is None else t
            for t, shape in zip(tangents, ctx.param_shapes)
        ]
        return tuple(_layer_jvp(handle, ts))


class CvxpyLayer(torch.nn.Module):
    """A differentiable layer that solves a parametrized convex problem.

    ``CvxpyLayer(problem, parameters=[...], variables=[...])``; call it with one tensor
    per parameter (each with an optional leading batch dimension; unbatched ones are
    broadcast) and optional ``solver_args`` (SCS settings such as ``eps_abs``,
    ``max_iters``; plus ``refine``). Returns a tuple with one tensor per variable, in the
    inputs' dtype and device. Computation is in float64 on the CPU.
    """

    def __init__(
        self,
        problem: cp.Problem,
        parameters: Sequence[cp.Parameter],
        variables: Sequence[cp.Variable],
        gp: bool = False,
        solver_args: dict | None = None,
    ) -> None:
        super().__init__()
        self.core = LayerCore(problem, parameters, variables, gp=gp, solver_args=solver_args)

    def forward(self, *params: torch.Tensor, solver_args: dict | None = None):
        if len(params) != len(self.core.parameters):
            names = ", ".join(s.name for s in self.core.program.parameters)
            raise ParameterError(
                f"a tensor must be provided for each CVXPY parameter ({names}): expected "
                f"{len(self.core.parameters)}, got {len(params)}"
            )
        tensors = []
        for slot, p in zip(self.core.program.parameters, params):
            if not isinstance(p, torch.Tensor):
                raise ParameterError(
                    f"parameter '{slot.name}': expected a torch.Tensor, got {type(p).__name__}"
                )
            if p.layout != torch.strided:
                raise ParameterError(
                    f"parameter '{slot.name}': {p.layout} tensors are not supported; pass "
                    "a dense tensor (e.g. .to_dense())"
                )
            if p.device.type == "meta":
                raise ParameterError(
                    f"parameter '{slot.name}' is on the meta device, which holds no values"
                )
            if not p.dtype.is_floating_point:
                raise ParameterError(
                    f"parameter '{slot.name}': expected a floating-point tensor, got dtype "
                    f"{p.dtype}"
                )
            tensors.append(p)
        names = [slot.name for slot in self.core.program.parameters]
        check_float_dtypes(names, [p.dtype for p in tensors])
        dtype = tensors[0].dtype if tensors else torch.get_default_dtype()
        device = tensors[0].device if tensors else torch.device("cpu")
        return _LayerFunction.apply(self.core, solver_args, _Holder(), dtype, device, *tensors)
