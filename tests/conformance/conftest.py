"""The ``framework`` fixture: one adapter per framework (see ``adapters.py``), so every
conformance test runs against the core NumPy API, PyTorch and JAX."""

from __future__ import annotations

import pytest

from tests.conformance.adapters import FRAMEWORKS


@pytest.fixture(params=list(FRAMEWORKS), scope="session")
def _adapter(request):
    if request.param in ("torch", "jax"):
        pytest.importorskip(request.param)
    return FRAMEWORKS[request.param]()


@pytest.fixture
def framework(_adapter):
    """The adapter; for JAX the test runs with ``jax_enable_x64`` on (float64 arrays)."""
    if _adapter.name == "jax":
        with _adapter.jax.enable_x64(True):
            yield _adapter
    else:
        yield _adapter
