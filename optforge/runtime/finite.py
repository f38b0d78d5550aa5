"""Are all of a step's gradients finite? For `skip_nonfinite=True` (loss-scaling training).

One read of each gradient, no temporary array: a parallel Numba count for host
arrays, a grid-stride CUDA kernel for device arrays (imported only then).
"""

from __future__ import annotations

import math

import numba
import numpy as np

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
            if values.size and _count_nonfinite(values.reshape(-1)):
                return False
        else:
            from optforge.runtime.cuda import device_all_finite

            if not device_all_finite(values):
                return False
    return True
