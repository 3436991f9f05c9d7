"""The identity-keyed cache behind the per-(A, P) derived data: hits by identity only,
never by equality, and bounded."""

from __future__ import annotations

import numpy as np

from conelayers._identity_cache import IdentityCache


def test_values_are_made_once_per_identity_and_evicted_beyond_the_size():
    cache: IdentityCache[int] = IdentityCache(size=2)
    made = []

    def make(tag):
        def _():
            made.append(tag)
            return tag
        return _

    a, a_equal, b, c = np.ones(3), np.ones(3), np.zeros(3), np.full(3, 2.0)
    assert cache.get((a,), make("a")) == "a"
    assert cache.get((a,), make("again")) == "a"  # same object: a hit
    assert cache.get((a_equal,), make("a_equal")) == "a_equal"  # equal, not identical
    assert cache.get((b,), make("b")) == "b"  # evicts a, the least recently used
    assert cache.get((a,), make("a2")) == "a2"
    assert made == ["a", "a_equal", "b", "a2"]
    assert cache.get((a, c), make("pair")) == "pair"  # tuples of keys
    assert cache.get((a, c), make("no")) == "pair"
