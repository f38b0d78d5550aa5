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

    def state_shapes(self, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of each state of a parameter of `shape`."""
        from optforge.runtime.factored import STATE_SHAPES

        kinds = self.shapes or ("element",) * len(self.state)
        return [(name, STATE_SHAPES[kind](tuple(shape))) for name, kind in zip(self.state, kinds)]

    def step(self, t: int, lr: float, hypers: tuple, dtype: np.dtype) -> tuple[Branch, list]:
        """The branch this step takes and its step-level scalars, cast to `dtype`."""
        branch = self.branches[self.branch(t, lr, *hypers)]
        return branch, [dtype.type(s) for s in branch.scalars(t, lr, *hypers)]


def tensor_variant_key(module, variant_key: tuple, ndim: int) -> tuple:
    """The variant that steps a tensor of `ndim` dimensions: `variant_key` with the module's
    rank flag (if it has one: Adafactor's `factored`) set by `ndim`."""
    rank = getattr(module, "RANK_FLAG", None)
    if rank is None:
        return variant_key
    index, min_ndim = rank
    return (*variant_key[:index], ndim >= min_ndim, *variant_key[index + 1 :])


def chunk_table(sizes: list[int], chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tensor index, start, stop) of every chunk of at most `chunk` elements."""
    tensor, start, stop = [], [], []
    for i, size in enumerate(sizes):
        for first in range(0, size, chunk):
            tensor.append(i)
            start.append(first)
            stop.append(min(first + chunk, size))
    return tuple(np.array(xs, dtype=np.int64) for xs in (tensor, start, stop))
