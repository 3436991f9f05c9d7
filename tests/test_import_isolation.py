"""`import conelayers` loads neither torch nor jax, and the JAX layer works with torch
made unimportable (the torch side is checked in tests/jax/test_jax_layer.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

_NO_FRAMEWORKS = """
import sys
import conelayers
assert "torch" not in sys.modules and "jax" not in sys.modules, sorted(
    m for m in sys.modules if m.split(".")[0] in ("torch", "jax"))
"""

_JAX_WITHOUT_TORCH = """
import importlib.abc, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, BlockTorch())
import cvxpy as cp
import jax
import jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
from conelayers.jax import CvxpyLayer

x, p = cp.Variable(3), cp.Parameter(3)
layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0]), [p], [x])
g = jax.grad(lambda v: jnp.sum(layer(v)[0]))(jnp.array([1.0, -1.0, 2.0]))
assert abs(float(g[0]) - 1.0) < 1e-8 and abs(float(g[1])) < 1e-8, g
assert "torch" not in sys.modules
"""


def test_import_conelayers_loads_no_framework():
    subprocess.run([sys.executable, "-c", _NO_FRAMEWORKS], check=True, timeout=300)


def test_jax_layer_works_without_torch():
    pytest.importorskip("jax")
    subprocess.run([sys.executable, "-c", _JAX_WITHOUT_TORCH], check=True, timeout=300)
