"""A small cache keyed by the identity of objects (a layer's fixed A or P), for values
derived from them once and reused by every instance and call."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class IdentityCache(Generic[V]):
    """Values for the last ``size`` tuples of key objects, looked up by identity. The key
    objects are kept alive with their entry, so their ids cannot be reused while it
    lives; thread-safe (a value may be computed twice by racing threads, never wrong)."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[int, ...], tuple[tuple, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, keys: tuple, make: Callable[[], V]) -> V:
        """The value for ``keys`` (objects compared by identity), made by ``make`` once."""
        ids = tuple(id(k) for k in keys)
        with self._lock:
            hit = self._entries.get(ids)
            if hit is not None and all(a is b for a, b in zip(hit[0], keys)):
                self._entries.move_to_end(ids)
                return hit[1]
        value = make()
        with self._lock:
            self._entries[ids] = (keys, value)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return value
