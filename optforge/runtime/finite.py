"""Are all of a step's gradients finite? For `skip_nonfinite=True` (loss-scaling training).

One read of each gradient, no temporary array: a parallel Numba count for host
arrays (one call for a whole batch, over its pointer table's gradient row), a
grid-stride CUDA kernel for device arrays (imported only then).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from optforge.runtime.pointers import view
from optforge.runtime.precision import VIEW_TYPES, load
from optforge.runtime.row_tensor import RowTensor


@numba.njit(parallel=True, cache=True)
def _count_nonfinite(x):
    count = 0
    for i in numba.prange(x.size):
        if not math.isfinite(x[i]):
            count += 1
    return count


def all_finite(gradients) -> bool:
    for g in gradients:
        values = g.values if isinstance(g, RowTensor) else g
        if isinstance(values, np.ndarray):
            if values.dtype.itemsize == 2:  # 16-bit: NumPy's own check (numba has no such type)
                if values.size and not np.isfinite(values.astype(np.float32)).all():
                    return False
            elif values.size and _count_nonfinite(values.reshape(-1)):
                return False
        else:
            from optforge.runtime.cuda import device_all_finite

            if not device_all_finite(values):
                return False
    return True


def _table_counter(T):
    """The counter of a row stored as the view type `T` (a 16-bit one widened to float32:
    infinities and NaNs stay what they are)."""
    F = np.float64 if T is np.float64 else np.float32

    @numba.njit(parallel=True, cache=True)
    def count_nonfinite(chunks, arrays, row):
        count = 0
        for chunk in numba.prange(chunks.tensor.shape[0]):
            x = view(arrays, row, chunks.tensor[chunk], T)[chunks.start[chunk] : chunks.stop[chunk]]
            found = 0
            for i in range(x.shape[0]):
                if not math.isfinite(load(x[i], F)):
                    found += 1
            count += found
        return count

    return count_nonfinite


_TABLE_COUNTERS: dict = {}


def table_finite(chunks, arrays, row: int, storage) -> bool:
    """Whether every element of row `row` of the pointer table `arrays` is finite, over the
    flat chunk table `chunks` of its tensors: one parallel call for the whole row. `storage`
    is how the row is stored ("float32", "bfloat16", ...; or a NumPy dtype of those)."""
    name = storage if isinstance(storage, str) else np.dtype(storage).name
    if name not in _TABLE_COUNTERS:
        _TABLE_COUNTERS[name] = _table_counter(VIEW_TYPES[name])
    return chunks.tensor.size == 0 or _TABLE_COUNTERS[name](chunks, arrays, row) == 0
