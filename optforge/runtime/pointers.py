"""Pointer tables: how the CPU kernels are handed their tensors.

A kernel call steps every tensor of a batch. Handing it a numba typed List of
arrays costs microseconds per tensor per step (the list is rebuilt whenever a
gradient array is new), which dominates a step over many small tensors. A
`PointerTable` instead holds each array's address and element count, one row
per array argument (parameter, gradient, each state), one column per tensor:
two int64 matrices built once. Each step only the gradients' row is refreshed.

Inside a kernel, `view(arrays, k, tensor, F)` is row `k`'s array of `tensor` as
a C-contiguous 1-D array of element type `F` (numba.carray over the address),
exactly as long as the count says, so the kernels' loops, bounded by their
views, never leave an array. The tables own no memory: whoever builds one
keeps the arrays alive while kernels use it (the optimizer holds its
parameters and state, a step holds its gradients).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


class PointerTable(NamedTuple):
    addresses: np.ndarray  # int64[arrays, tensors]: each array's first element
    sizes: np.ndarray  # int64[arrays, tensors]: its element count
    # uint32[tensors]: each tensor's key to this step's stochastic-rounding bits
    # (optforge.runtime.storage.rounding_keys); read only by stages that round so
    keys: np.ndarray


@intrinsic
def _pointer(typingctx, address, dtype):
    """An integer address as a pointer to values of the NumPy scalar type `dtype`."""
    if not isinstance(address, types.Integer) or not isinstance(dtype, types.NumberClass):
        return None
    pointer = types.CPointer(dtype.instance_type)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, dtype), codegen


@numba.njit(inline="always")
def view(arrays, k, tensor, dtype):
    """Array `k` of `tensor` in the table `arrays`, as a 1-D array of `dtype`."""
    return numba.carray(_pointer(arrays.addresses[k, tensor], dtype), arrays.sizes[k, tensor])


def pointer_table(rows: list[list[np.ndarray]]) -> PointerTable:
    """The table of `rows` (per array argument, one C-contiguous array per tensor)."""
    n = len(rows[0]) if rows else 0
    table = PointerTable(
        np.zeros((len(rows), n), np.int64), np.zeros((len(rows), n), np.int64), np.zeros(n, np.uint32)
    )
    for k, arrays in enumerate(rows):
        set_row(table, k, arrays)
    return table


def set_row(table: PointerTable, k: int, arrays: list[np.ndarray]) -> None:
    """Point row `k` at `arrays` (C-contiguous arrays of the batch's dtype, any shape, one
    per tensor): their addresses and their own sizes."""
    addresses, sizes = table.addresses[k], table.sizes[k]
    # Arrays of one numba type (ndim, writeability) go to numba together, BLOCK at a time.
    kinds: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrays):
        flags = a.flags
        if not flags.c_contiguous:
            raise ValueError("a pointer table holds C-contiguous arrays only")
        kinds.setdefault((a.ndim, flags.writeable), []).append(i)
    for positions in kinds.values():
        n = len(positions)
        if n < BLOCK:
            for i in positions:
                addresses[i], sizes[i] = arrays[i].ctypes.data, arrays[i].size
            continue
        index = np.array(positions, dtype=np.int64)
        # the last block is the last BLOCK arrays: some entries are written twice, all rightly
        for at in [*range(0, n - BLOCK + 1, BLOCK), *([n - BLOCK] if n % BLOCK else [])]:
            _fill(
                tuple(arrays[i] for i in positions[at : at + BLOCK]), index[at : at + BLOCK], addresses, sizes
            )


# Addresses are read in numba, BLOCK arrays per call: unboxing an array there costs a
# fraction of `ndarray.ctypes.data` (which builds a ctypes object per array), and a
# fixed tuple length keeps it one compiled function per array type.
BLOCK = 16


@numba.njit(cache=True)
def _fill(arrays, index, addresses, sizes):
    for i in range(len(arrays)):
        addresses[index[i]] = arrays[i].ctypes.data
        sizes[index[i]] = arrays[i].size
