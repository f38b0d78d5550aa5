"""How a generated kernel module describes its variants to the run-time."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Branch(NamedTuple):
    """The kernels of one host-side branch (e.g. RAdam rectified or not).

    A step function is called as
    ``step(chunk_tensor, chunk_start, chunk_stop, *arrays, weight_decay_per_tensor,
    grad_scale_per_tensor, *scalars)`` where ``arrays`` are typed lists of flat
    arrays (parameter, gradient, then the variant's state in order) and
    ``scalars`` what ``scalars(t, lr, *hypers)`` returns, cast to the dtype.
    A row-sparse kernel (``rows``) takes ``(rows, row_len, *arrays,
    weight_decay, grad_scale, *scalars)`` for one tensor.
    """

    scalars: Callable[..., tuple]
    kernels: dict[str, Callable]
    rows: dict[str, Callable]


class Variant(NamedTuple):
    """One flag combination of a spec, compiled."""

    state: tuple[str, ...]
    branch: Callable[..., tuple]  # (t, lr, *hypers) -> the key of the branch to run
    branches: dict[tuple, Branch]
    chunk: int  # elements per chunk-table entry
    # Per state: "element" (shaped like the parameter), "row" or "col" (a factored kernel's
    # row and column factors); empty means all "element". A factored variant's kernels
    # take an optforge.runtime.factored.FactoredTable where the others take the chunk table.
    shapes: tuple[str, ...] = ()
    factored: bool = False


def chunk_table(sizes: list[int], chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tensor index, start, stop) of every chunk of at most `chunk` elements."""
    tensor, start, stop = [], [], []
    for i, size in enumerate(sizes):
        for first in range(0, size, chunk):
            tensor.append(i)
            start.append(first)
            stop.append(min(first + chunk, size))
    return tuple(np.array(xs, dtype=np.int64) for xs in (tensor, start, stop))
