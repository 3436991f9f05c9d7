"""Errors raised while compiling a problem into a cone program."""


class CanonicalizationError(ValueError):
    """The problem, its parameters or its requested outputs cannot be compiled."""
