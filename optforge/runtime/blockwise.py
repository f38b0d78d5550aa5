"""8-bit blockwise state inside the CPU kernels: the views, block reads and writes of a state row.

A stage that may step a state kept as 8-bit codes (optforge.runtime.quantize) prints, for that
state, the calls below instead of indexing its view directly:

    m_chunk = state_view(arrays, 2, S.blocks[2], tensor, S.types[2], start, stop)
    for first in range(0, elems, S.block):            # each block of the chunk
        m_c, m_absmax, m_midpoints, m_buckets, m_codes = block_of(m_chunk, first, last)
        for elem in range(last - first):
            m = load(m_c[elem], F)
            store_into(m_c, elem, m_new, S.types[2], S.stochastic[2], key, start + first + elem)
        flush(m_c, m_absmax, m_midpoints, m_buckets, m_codes, S.types[2], last - first)

Which code they compile to is chosen by the row's storage type, at compile time, like `load`
and `store` (optforge.runtime.precision): for a float or 16-bit row, `state_view` is the row's
chunk view, `block_of` its slice, `store_into` is `store` and `flush` does nothing, so the stage
is the plain one. For an int8 row (`S.types[k]` is np.uint8) the view is a handle: the chunk's
codes, its blocks' absmax values, the row's code table, decision midpoints and bucket table
(four more rows of the pointer table, from `S.blocks[k]` on), and a float32 buffer of one
block. `block_of` dequantises the block's codes into the buffer (``table[code] * absmax``) and
gives the buffer as the block's values, so the element loop reads and writes float32 arrays
only, and vectorises as the plain loop does. `flush` then takes the block's new absmax and
writes the block's codes: `quantize`'s codes, found by bucket (optforge.runtime.quantize.BUCKETS).
The element loop steps a block of `S.block` (256) elements at a time, so every block is read
whole before it is rewritten, and the array traffic is one read and one write of each code plus
one absmax per block; the buffer stays in L1.

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
from optforge.runtime.precision import store
from optforge.runtime.quantize import BLOCK, BUCKET_BITS, code_by_bucket, dequantize

TABLE_SIZE = 256
BUCKETS_SIZE = 1 << BUCKET_BITS


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
    from 0, as (values, absmax, midpoints, buckets, codes): for an int8 handle, the block
    dequantised into the handle's buffer, the block's absmax and codes and the row's midpoints
    and buckets; for an array, its slice and four empty arrays. Separate arrays, not a tuple,
    reach the element loop: an array taken out of a tuple there is reference-counted at every
    element."""
    raise NotImplementedError("compiled in the CPU kernels only")


def store_into(x, elem, value, T, stochastic, key, counter):  # pragma: no cover - compiled only
    """`value` into element `elem` of the block's values `x`, as row storage `T` stores it
    (a row of codes: as float32, into the buffer `flush` quantises)."""
    raise NotImplementedError("compiled in the CPU kernels only")


def flush(x, absmax, midpoints, buckets, codes, T, n):  # pragma: no cover - compiled only
    """For a row of codes (`T` np.uint8): the new absmax and codes of one block of `n`
    elements from its values `x` (which it overwrites); else nothing."""
    raise NotImplementedError("compiled in the CPU kernels only")


def extent(x):  # pragma: no cover - compiled only
    """How many elements of the chunk view `x` a loop may index."""
    raise NotImplementedError("compiled in the CPU kernels only")


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
        return lambda x, first, last: (x[first:last], nothing, nothing, none, none)

    def block(x, first, last):
        codes, absmax, table, midpoints, buckets, buffer = x
        codes = codes[first:last]
        absmax = absmax[first // BLOCK : (last + BLOCK - 1) // BLOCK]
        values = buffer[: len(codes)]
        # `dequantize`, element by element (a table lookup: LLVM keeps it scalar, ~1 cycle).
        scale = absmax[0] if len(absmax) else np.float32(0.0)
        for i in range(len(values)):
            values[i] = dequantize(codes[i], table, scale)
        return (values, absmax, midpoints, buckets, codes)

    return block


@overload(store_into, target="cpu")
def _store_into(x, elem, value, T, stochastic, key, counter):
    if not _int8(T):

        def plain(x, elem, value, T, stochastic, key, counter):
            x[elem] = store(value, T, stochastic, key, counter)

        return plain

    def buffered(x, elem, value, T, stochastic, key, counter):
        x[elem] = np.float32(value)

    return buffered


@overload(flush, target="cpu")
def _flush(x, absmax, midpoints, buckets, codes, T, n):
    if not _int8(T):
        return lambda x, absmax, midpoints, buckets, codes, T, n: None

    def quantized(x, absmax, midpoints, buckets, codes, T, n):
        n = min(n, len(x), len(codes), BLOCK * len(absmax))
        if n <= 0:
            return
        # The block's largest magnitude, NaN if it holds one (`absmax_update`'s result): the
        # largest of the magnitudes' bit patterns, which order as the magnitudes do and put
        # every NaN above inf; an integer max, so the loop vectorises.
        bits = x.view(np.uint32)
        top = np.uint32(0)
        for i in range(n):
            top = max(top, bits[i] & np.uint32(0x7FFFFFFF))
        largest = np.float32(np.nan) if top > np.uint32(0x7F800000) else np.uint32(top).view(np.float32)
        absmax[0] = largest
        # `ratio`: x / absmax, or 0 for an all-zero or NaN block; one branch for the block.
        if largest > 0:
            for i in range(n):
                x[i] = x[i] / largest
        else:
            for i in range(n):
                x[i] = np.float32(0.0)
        for i in range(n):
            # `quantize`'s code, by the bucket of the ratio's top bits and one comparison
            # (optforge.runtime.quantize.BUCKETS): ratios are in [-1, 1] or NaN.
            codes[i] = code_by_bucket(x[i], bits[i], buckets, midpoints)

    return quantized


@overload(extent, target="cpu")
def _extent(x):
    if not _handle(x):
        return lambda x: len(x)

    def covered(x):
        if len(x[2]) < TABLE_SIZE or len(x[3]) < TABLE_SIZE or len(x[4]) < BUCKETS_SIZE:
            return 0
        return min(len(x[0]), len(x[1]) * BLOCK)

    return covered
