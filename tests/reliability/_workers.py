"""Importable targets for subprocesses started with the 'spawn' method (the child
imports this module by name, so these cannot live in a test function)."""

from __future__ import annotations

import pickle

import numpy as np


def core_outputs_and_grads(payload: bytes):
    """Unpickle (layer core, values, weights) and return outputs and gradients."""
    core, values, weights = pickle.loads(payload)
    result = core.forward(values, {"eps": 1e-9})
    grads = core.vjp(result, weights)
    return [np.asarray(o) for o in result.outputs], [np.asarray(g) for g in grads]


def torch_outputs_and_grads(payload: bytes):
    """Unpickle (torch layer, values) and return outputs and gradients of sum(outputs)."""
    import torch

    layer, values = pickle.loads(payload)
    params = [torch.tensor(v, requires_grad=True) for v in values]
    outs = layer(*params, solver_args={"eps": 1e-9})
    sum(o.sum() for o in outs).backward()
    return ([o.detach().numpy() for o in outs], [p.grad.numpy() for p in params])


class LayerDataset:
    """A map-style dataset whose items are solved by a torch layer held by the dataset
    (the DataLoader-with-workers pattern: the dataset, layer included, is pickled into
    every worker)."""

    def __init__(self, layer, values: list[np.ndarray], count: int) -> None:
        self.layer = layer
        self.values = values
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        import torch

        params = [torch.tensor(v * (1.0 + 0.01 * i)) for v in self.values]
        with torch.no_grad():
            (out,) = self.layer(*params, solver_args={"eps": 1e-9})
        return out
