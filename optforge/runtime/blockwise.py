"""8-bit blockwise state inside the CPU kernels: the views, loads and stores of a state row.

A stage that may step a state kept as 8-bit codes (optforge.runtime.quantize) prints, for that
state, the calls below instead of indexing its view directly:

    m_c = state_view(arrays, 2, S.blocks[2], tensor, S.types[2], start, stop)
    m = load_from(m_c, elem, F)
    store_into(m_c, elem, m_new, S.types[2], S.stochastic[2], key, start + elem)
    m_b = block_of(m_c, first, last)   # each block of the element loop, indexed from 0
    flush(m_b, last - first)           # after the block

Which code they compile to is chosen by the row's storage type, at compile time, like `load`
and `store` (optforge.runtime.precision): for a float or 16-bit row, `state_view` is the row's
chunk view, `load_from` and `store_into` index it and `flush` does nothing, so the stage is the
plain one. For an int8 row (`S.types[k]` is np.uint8) the view is a handle: the chunk's codes,
its blocks' absmax values, the row's code table, decision midpoints and bucket table (four more
rows of the pointer table, from `S.blocks[k]` on), and a float32 buffer of one block. A load dequantises
(``table[code] * absmax[block]``); a store writes the new value into the buffer; `flush` then
takes the block's new absmax and writes the block's codes (`quantize`'s codes, found by bucket:
optforge.runtime.quantize.BUCKETS). The element loop steps a block of
`S.block` (256) elements at a time, so every block is read whole before it is rewritten, and the
array traffic is one read and one write of each code plus one absmax per block.

Chunks start at multiples of the chunk size (65536) within their tensor, a multiple of the block,
so a chunk's blocks are its tensor's blocks: block `elem // 256` of the chunk is absmax entry
`start // 256 + elem // 256` of the tensor. `extent` is a handle's length for the loop bounds:
no longer than its codes, nor than its absmax entries cover, and 0 when the table rows are not
a whole table, so no index leaves an array whatever the pointer table says.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from optforge.runtime.pointers import view
from optforge.runtime.precision import load, store
from optforge.runtime.quantize import BLOCK, BUCKET_SHIFT, dequantize, ratio

TABLE_SIZE = 256
BUCKETS_SIZE = 1 << (32 - BUCKET_SHIFT)


def _int8(T) -> bool:
    """Whether a compile-time storage type (a numba NumberClass) is the 8-bit codes'."""
    return isinstance(T, types.NumberClass) and T.instance_type == types.uint8


def _handle(x) -> bool:
    return isinstance(x, types.BaseTuple)


# Python stubs: the kernels are compiled, and these are only their overloads' names.
def state_view(arrays, k, blocks, tensor, T, start, stop):  # pragma: no cover - compiled only
    """Row `k`'s view of the chunk [start, stop) of `tensor`: its array, or an int8 handle."""
    raise NotImplementedError("compiled in the CPU kernels only")


def block_of(x, first, last):  # pragma: no cover - compiled only
    """Elements [first, last) of a chunk's view `x` (`first` a multiple of the block), indexed
    from 0, as (values or codes, absmax, table, midpoints, buffer): for an int8 handle, the
    block's codes and absmax and the row's table, midpoints and buffer; for an array, its slice
    and four empty arrays. Separate arrays, not a tuple, reach the element loop: an array taken
    out of a tuple there is reference-counted at every element."""
    raise NotImplementedError("compiled in the CPU kernels only")


def load_from(x, absmax, table, elem, F):  # pragma: no cover - compiled only
    """Element `elem` of the block view `x`, widened (or, codes, dequantised) to `F`."""
    raise NotImplementedError("compiled in the CPU kernels only")


def store_into(x, buffer, elem, value, T, stochastic, key, counter):  # pragma: no cover - compiled only
    """`value` into element `elem` of the block view `x` (codes: into the block's `buffer`)."""
    raise NotImplementedError("compiled in the CPU kernels only")


def flush(x, absmax, midpoints, buckets, buffer, n):  # pragma: no cover - compiled only
    """Codes `x` of one block of `n` elements: its absmax and codes, from `buffer`."""
    raise NotImplementedError("compiled in the CPU kernels only")


def extent(x):  # pragma: no cover - compiled only
    """How many elements of the chunk view `x` a loop may index."""
    raise NotImplementedError("compiled in the CPU kernels only")


def _codes(x) -> bool:
    """Whether a block view is 8-bit codes (no float or 16-bit storage is viewed as uint8)."""
    return isinstance(x, types.Array) and x.dtype == types.uint8


@overload(state_view, target="cpu")
def _state_view(arrays, k, blocks, tensor, T, start, stop):
    if not _int8(T):
        return lambda arrays, k, blocks, tensor, T, start, stop: view(arrays, k, tensor, T)[start:stop]

    def blocked(arrays, k, blocks, tensor, T, start, stop):
        codes = view(arrays, k, tensor, np.uint8)[start:stop]
        absmax = view(arrays, blocks, tensor, np.float32)[start // BLOCK : (stop + BLOCK - 1) // BLOCK]
        table = view(arrays, blocks + 1, tensor, np.float32)
        midpoints = view(arrays, blocks + 2, tensor, np.float32)
        buckets = view(arrays, blocks + 3, tensor, np.uint8)
        return (codes, absmax, table, midpoints, buckets, np.empty(BLOCK, np.float32))

    return blocked


@overload(block_of, target="cpu")
def _block_of(x, first, last):
    if not _handle(x):
        nothing = np.empty(0, np.float32)
        none = np.empty(0, np.uint8)
        return lambda x, first, last: (x[first:last], nothing, nothing, nothing, none, nothing)

    def block(x, first, last):
        codes, absmax, table, midpoints, buckets, buffer = x
        absmax = absmax[first // BLOCK : (last + BLOCK - 1) // BLOCK]
        return (codes[first:last], absmax, table, midpoints, buckets, buffer)

    return block


@overload(load_from, target="cpu")
def _load_from(x, absmax, table, elem, F):
    if _handle(x):  # a chunk's handle (a stage that only reads the state)
        return lambda x, absmax, table, elem, F: F(dequantize(x[0][elem], x[2], x[1][elem // BLOCK]))
    if not _codes(x):
        return lambda x, absmax, table, elem, F: load(x[elem], F)
    return lambda x, absmax, table, elem, F: F(dequantize(x[elem], table, absmax[elem // BLOCK]))


@overload(store_into, target="cpu")
def _store_into(x, buffer, elem, value, T, stochastic, key, counter):
    if not _codes(x):

        def plain(x, buffer, elem, value, T, stochastic, key, counter):
            x[elem] = store(value, T, stochastic, key, counter)

        return plain

    def buffered(x, buffer, elem, value, T, stochastic, key, counter):
        buffer[elem % BLOCK] = np.float32(value)

    return buffered


@overload(flush, target="cpu")
def _flush(x, absmax, midpoints, buckets, buffer, n):
    if not _codes(x):
        return lambda x, absmax, midpoints, buckets, buffer, n: None

    def quantized(x, absmax, midpoints, buckets, buffer, n):
        # The block's largest magnitude, NaN if it holds one (`absmax_update`'s result), without
        # a branch per element: a select and a count, which the loop runs without waiting.
        largest = np.float32(0.0)
        nans = 0
        for i in range(n):
            a = abs(buffer[i])
            largest = a if a > largest else largest
            nans += a != a
        largest = np.float32(np.nan) if nans else largest
        absmax[0] = largest
        bits = buffer.view(np.uint32)
        for i in range(n):
            buffer[i] = ratio(buffer[i], largest)
        for i in range(n):
            # `quantize`'s code, by the bucket of the ratio's top bits and one comparison
            # (optforge.runtime.quantize.BUCKETS): ratios are in [-1, 1] or NaN.
            base = min(np.int64(buckets[bits[i] >> BUCKET_SHIFT]), TABLE_SIZE - 2)
            x[i] = base + (buffer[i] > midpoints[base])

    return quantized


@overload(extent, target="cpu")
def _extent(x):
    if not _handle(x):
        return lambda x: len(x)

    def covered(x):
        if len(x[2]) < TABLE_SIZE or len(x[3]) < TABLE_SIZE - 1 or len(x[4]) < BUCKETS_SIZE:
            return 0
        return min(len(x[0]), len(x[1]) * BLOCK)

    return covered
