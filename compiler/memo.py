"""Caching a pass's result per spec object.

Specs are immutable, and several consumers ask the same question of one spec (each of its
documentation pages asks for its int8 verdicts and shard rounds). The spec is kept with its
results, so its id is never reused by another object while the entry lives.
"""

from __future__ import annotations

import functools


def per_spec(fn):
    """`fn(spec, *args)` computed once per spec object and (hashable) `args`; callers get the
    stored value, so they copy what they change."""
    cache: dict[int, tuple[object, dict]] = {}

    @functools.wraps(fn)
    def cached(spec, *args):
        entry = cache.get(id(spec))
        if entry is None or entry[0] is not spec:
            entry = cache[id(spec)] = (spec, {})
        if args not in entry[1]:
            entry[1][args] = fn(spec, *args)
        return entry[1][args]

    return cached
