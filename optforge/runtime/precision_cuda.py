"""`load` and `store` in CUDA kernels: the device steps every array in its own dtype.

The CUDA kernels print the same loads and stores as the CPU ones (compiler/templates/body.j2).
The device run-time does not take a precision policy yet (optforge.runtime.optimizer refuses
one for device parameters), so on the device these are the plain ones: a load is the element
in the compute type and a store casts to the array's. They are device functions inlined into
the kernel's IR: numba-cuda compiles a device function that is not inlined (an overload's
too) only with a CUDA driver present, which the PTX check of every kernel
(tests/ptx_check.py) does without. Under the CUDA simulator the kernels run as Python and
these run as written.
"""

from __future__ import annotations

from numba import cuda

from optforge.runtime.precision import plain_storage

__all__ = ["load", "plain_storage", "store"]


@cuda.jit(device=True, inline="always")
def load(x, F):
    return F(x)


@cuda.jit(device=True, inline="always")
def store(value, T, stochastic, key, counter):
    return T(value)
