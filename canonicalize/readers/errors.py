"""Errors raised while reading problem files."""

from __future__ import annotations

from pathlib import Path

from canonicalize.errors import CanonicalizationError


class ProblemFileError(CanonicalizationError):
    """A problem file is malformed (or cannot be compiled).

    The message starts with the file's name and, for text formats, the 1-based line
    number, as compilers print them: ``"qap5.dat-s:12: expected 5 numbers, got 4"``.
    ``path``, ``line`` (None when no line applies) and ``detail`` (the message without
    the location) are kept as attributes.
    """

    def __init__(self, path: str | Path, detail: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.detail = detail
        where = self.path.name if line is None else f"{self.path.name}:{line}"
        super().__init__(f"{where}: {detail}")

    def __reduce__(self):  # keep pickling (multiprocessing) working with three arguments
        return (type(self), (self.path, self.detail, self.line))


class UnsupportedFeatureError(ProblemFileError):
    """A well-formed file uses a feature the reader does not support (e.g. CBF matrix
    variables, integer variables, power cones)."""
