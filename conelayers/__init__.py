"""conelayers: differentiable convex optimization layers that say when a gradient can be trusted."""

__version__ = "0.1.0"
