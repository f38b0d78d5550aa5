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


# -- reading a step's gradients' addresses and checking them in one call --
#
# Per step, the NumPy dialects need every gradient's address, and must check that each one is
# a plain C-contiguous ndarray of its parameter's dtype and shape. Done per array in Python
# (`type(g)`, `g.shape`, `g.dtype`, `g.flags`, `g.ctypes.data`) that is about 2 us a
# gradient, most of a step over many small tensors. `ArrayFields` reads the same facts from
# the arrays' C structs in one compiled loop, given the objects' addresses (`id`): NumPy's
# `PyArrayObject_fields` (numpy/ndarraytypes.h), whose layout is checked against NumPy's own
# attributes once (`ArrayFields.works`) before it is used. Only an object whose type word is
# `numpy.ndarray` itself has its other fields read; anything else stops the scan, and the
# caller checks that gradient (and the rest) the slow way.

# The struct's 8-byte words: refcount and type (the object header), data, nd (an int),
# dimensions, strides, base, descr, flags (an int).
_TYPE, _DATA, _ND, _DIMS, _DESCR, _FLAGS, _WORDS = 1, 2, 3, 4, 7, 8, 9
_C_CONTIGUOUS = 0x0001  # NPY_ARRAY_C_CONTIGUOUS
_INT = 0xFFFFFFFF  # an int field's 4 bytes (the word's others are padding)


@numba.njit(cache=True)
def _scan(objects, ndarray_type, descrs, ndims, dims_at, dims, addresses, sizes):
    """Addresses and sizes of `objects` (their ids), each checked as a C-contiguous ndarray of
    descr `descrs[i]` and shape `dims[dims_at[i]:dims_at[i] + ndims[i]]`; -1, or the first
    position that is not one (the entries from there on are not written)."""
    for i in range(objects.shape[0]):
        header = numba.carray(_pointer(objects[i], np.int64), 2)
        if header[_TYPE] != ndarray_type:
            return i
        fields = numba.carray(_pointer(objects[i], np.int64), _WORDS)
        nd = fields[_ND] & _INT
        if fields[_DESCR] != descrs[i] or nd != ndims[i] or not (fields[_FLAGS] & _INT) & _C_CONTIGUOUS:
            return i
        shape = numba.carray(_pointer(fields[_DIMS], np.int64), nd)
        size = 1
        for d in range(nd):
            if shape[d] != dims[dims_at[i] + d]:
                return i
            size *= shape[d]
        addresses[i] = fields[_DATA]
        sizes[i] = size
    return -1


# The gradients' ids, read from their container: building them in Python (`map(id, ...)`
# into an int64 array) costs about 50 ns an object, as much again as the scan itself. A
# tuple's item pointers follow its header (refcount, type, size: `PyTupleObject`'s ob_item);
# a list holds a pointer to its items after the same header (`PyListObject`'s ob_item). The
# layout is checked once against `id` (`items_readable`), as the arrays' is; a build of Python
# with another header falls back to `map(id, ...)`.
_ITEMS = 3  # the word after the header, in tuples and lists alike


@numba.njit(cache=True)
def _container_items(container, is_list, n):
    """The `n` item pointers of the tuple (or list) at address `container`, as int64."""
    at = container + 8 * _ITEMS
    if is_list:
        at = numba.carray(_pointer(at, np.int64), 1)[0]
    return numba.carray(_pointer(at, np.int64), n)


@numba.njit(cache=True)
def _scan_container(container, is_list, n, ndarray_type, descrs, ndims, dims_at, dims, addresses, sizes):
    objects = _container_items(container, is_list, n)
    return _scan(objects, ndarray_type, descrs, ndims, dims_at, dims, addresses, sizes)


@numba.njit(cache=True)
def _copied_items(container, is_list, n):
    return _container_items(container, is_list, n).copy()


_ITEMS_READABLE: list[bool] = []


def items_readable() -> bool:
    """Whether tuples' and lists' item pointers are where `_container_items` reads them:
    checked once, on containers of 0, 1 and several objects."""
    if not _ITEMS_READABLE:
        # The headers' size first, with nothing read: another layout (a free-threaded build's
        # larger header) is not probed, since the list's word there might be no pointer.
        if tuple.__basicsize__ != 8 * _ITEMS or list.__basicsize__ != 8 * (_ITEMS + 2):
            _ITEMS_READABLE.append(False)
            return False
        try:
            objects = [object() for _ in range(5)]
            ok = all(
                list(_copied_items(id(c), type(c) is list, len(c))) == [id(o) for o in c]
                for k in (0, 1, 5)
                for c in (tuple(objects[:k]), list(objects[:k]))
            )
        except Exception:  # any surprise: the ids are built in Python
            ok = False
        _ITEMS_READABLE.append(ok)
    return _ITEMS_READABLE[0]


class ArrayFields:
    """Checks a step's gradients against their parameters' (dtype, shape) and reads their
    addresses, in one compiled call (see above). Keeps the expected dtypes alive: their
    addresses are what the descr fields are compared with."""

    def __init__(self, expected: list[tuple[np.dtype, tuple[int, ...]]]):
        self._dtypes = [np.dtype(dtype) for dtype, _ in expected]
        self._expected = (
            np.array([id(d) for d in self._dtypes], dtype=np.int64),
            np.array([len(shape) for _, shape in expected], dtype=np.int64),
            np.cumsum([0] + [len(shape) for _, shape in expected][:-1], dtype=np.int64),
            np.array([n for _, shape in expected for n in shape] or [0], dtype=np.int64),
        )

    def scan(self, gradients) -> tuple[int, np.ndarray, np.ndarray]:
        """(-1 or the first position that fails, addresses, sizes): see `_scan`."""
        n = len(gradients)
        addresses, sizes = np.empty(n, np.int64), np.empty(n, np.int64)
        kind = type(gradients)
        if (kind is tuple or kind is list) and items_readable():
            # read in place: the container is alive (the caller's) and the GIL is held
            failed = _scan_container(
                id(gradients), kind is list, n, id(np.ndarray), *self._expected, addresses, sizes
            )
            return failed, addresses, sizes
        objects = np.fromiter(map(id, gradients), np.int64, n)
        return _scan(objects, id(np.ndarray), *self._expected, addresses, sizes), addresses, sizes

    def read(self, gradients) -> tuple[np.ndarray, np.ndarray] | None:
        """(addresses, sizes) of `gradients` when every one is a C-contiguous ndarray of its
        parameter's dtype and shape (that very dtype object, as NumPy shares its built-in
        ones); else None. The caller keeps `gradients` alive while the addresses are used."""
        if len(gradients) != len(self._dtypes) or not layout_matches():
            return None
        failed, addresses, sizes = self.scan(gradients)
        return None if failed >= 0 else (addresses, sizes)


_LAYOUT: list[bool] = []


def layout_matches() -> bool:
    """Whether this NumPy's arrays have the layout `_scan` reads: checked once, on arrays of
    several dtypes, ranks and layouts, against NumPy's own attributes."""
    if not _LAYOUT:
        _LAYOUT.append(_check_layout())
    return _LAYOUT[0]


def _check_layout() -> bool:
    base = np.arange(24, dtype=np.float64)
    samples = [
        np.zeros(5, np.float32),
        base.reshape(2, 3, 4),
        np.zeros((), np.float64),
        np.zeros((0, 3), np.float32),
        base.reshape(4, 6).T,  # not C-contiguous: refused
        base[::2],  # strided: refused
    ]
    try:
        for a in samples:
            failed, addresses, sizes = ArrayFields([(a.dtype, a.shape)]).scan([a])
            if failed != (-1 if a.flags.c_contiguous else 0):
                return False
            if failed == -1 and (addresses[0] != a.ctypes.data or sizes[0] != a.size):
                return False
            # another shape or another dtype is refused, and so is an object that is no array
            for other in ((a.dtype, (*a.shape, 1)), (np.dtype(np.int16), a.shape)):
                if ArrayFields([other]).scan([a])[0] != 0:
                    return False
            if ArrayFields([(a.dtype, a.shape)]).scan([a.tolist()])[0] != 0:
                return False
    except Exception:  # any surprise in NumPy's layout: the per-array path is used
        return False
    return True
