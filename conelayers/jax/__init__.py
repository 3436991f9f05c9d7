"""JAX adapter: ``from conelayers.jax import CvxpyLayer``.

Needs JAX (``pip install "conelayers[jax]"``); enable float64 with
``jax.config.update("jax_enable_x64", True)``. See ``conelayers.jax.layer`` for the design.
"""

try:
    import jax  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without jax installed
    raise ImportError(
        'conelayers.jax needs JAX: pip install "conelayers[jax]" (or jax and jaxlib)'
    ) from err

from conelayers.jax.layer import CvxpyLayer, Float32Warning

__all__ = ["CvxpyLayer", "Float32Warning"]
