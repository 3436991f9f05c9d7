"""PyTorch adapter: ``from conelayers.torch import CvxpyLayer``."""

from conelayers.torch.layer import CvxpyLayer

__all__ = ["CvxpyLayer"]
