"""How a generated kernel module describes its variants to the run-time."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Variant(NamedTuple):
    """One flag combination of a spec, compiled.

    A kernel is called as
    ``kernel(chunk_tensor, chunk_start, chunk_stop, *arrays, *per_tensor, *scalars)``
    where ``arrays`` are typed lists of flat arrays (parameter, gradient,
    then ``state`` in order), ``per_tensor`` one array per name in
    ``per_tensor``, and ``scalars`` what ``scalars(t, lr, *hypers)`` returns,
    cast to the kernel's dtype.
    """

    state: tuple[str, ...]
    per_tensor: tuple[str, ...]
    scalars: Callable[..., tuple[float, ...]]
    kernels: dict[str, Callable]
    chunk: int  # elements per chunk-table entry


def chunk_table(sizes: list[int], chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tensor index, start, stop) of every chunk of at most `chunk` elements."""
    tensor, start, stop = [], [], []
    for i, size in enumerate(sizes):
        for first in range(0, size, chunk):
            tensor.append(i)
            start.append(first)
            stop.append(min(first + chunk, size))
    as_array = lambda xs: np.array(xs, dtype=np.int64)  # noqa: E731
    return as_array(tensor), as_array(start), as_array(stop)
