"""Reading text problem files line by line, with line numbers for error messages."""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from pathlib import Path

from canonicalize.readers.errors import ProblemFileError


def read_text(path: Path) -> str:
    """The file's text (``.gz`` files are decompressed). OSError propagates unchanged."""
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ProblemFileError(path, f"not a valid gzip file ({err})") from err
    if b"\0" in raw:
        raise ProblemFileError(path, "not a text file (it contains NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class Lines:
    """The non-blank lines of a text file (optionally skipping comment lines), each
    with its 1-based line number, consumed in order."""

    def __init__(
        self, path: Path, text: str, is_comment: Callable[[str], bool] | None = None
    ) -> None:
        self.path = path
        self.items: list[tuple[int, str]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or (is_comment is not None and is_comment(stripped)):
                continue
            self.items.append((number, stripped))
        self.pos = 0
        self.last_line = len(text.splitlines()) or 1

    def at_end(self) -> bool:
        return self.pos >= len(self.items)

    def peek(self) -> tuple[int, str] | None:
        return None if self.at_end() else self.items[self.pos]

    def next(self, what: str) -> tuple[int, str]:
        """The next line, or an error naming what was expected at the end of the file."""
        if self.at_end():
            raise self.error(f"unexpected end of file, expected {what}", self.last_line)
        item = self.items[self.pos]
        self.pos += 1
        return item

    def error(self, detail: str, line: int | None) -> ProblemFileError:
        return ProblemFileError(self.path, detail, line)


def parse_int(path: Path, line: int, token: str, what: str) -> int:
    try:
        value = float(token)
    except ValueError:
        raise ProblemFileError(path, f"{what}: expected an integer, got {token!r}", line) from None
    if not math.isfinite(value) or value != int(value):
        raise ProblemFileError(path, f"{what}: expected an integer, got {token!r}", line)
    return int(value)


def parse_float(path: Path, line: int, token: str, what: str) -> float:
    try:
        value = float(token.replace("D", "e").replace("d", "e"))
    except ValueError:
        raise ProblemFileError(path, f"{what}: expected a number, got {token!r}", line) from None
    if not math.isfinite(value):
        raise ProblemFileError(path, f"{what}: expected a finite number, got {token!r}", line)
    return value


def expect_count(path: Path, line: int, tokens: list[str], count: int, what: str) -> None:
    if len(tokens) != count:
        noun = "number" if count == 1 else "numbers"
        raise ProblemFileError(
            path, f"{what}: expected {count} {noun}, got {len(tokens)}", line
        )


MAX_SIZE = 100_000_000
"""Largest number of variables, rows or entries a reader accepts (SCS indexes with 32-bit
integers; a size beyond this is a typo, not a problem to allocate for)."""


def check_size(path: Path, line: int, value: int, what: str) -> None:
    if value > MAX_SIZE:
        raise ProblemFileError(path, f"{what} is {value}, more than the {MAX_SIZE} supported",
                               line)
