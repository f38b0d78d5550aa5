"""`Parameter`: a named array that optimizers update in place."""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Parameter:
    """A named, trainable array.

    ``data`` is a C-contiguous float32 or float64 NumPy array, or a CUDA
    device array (a numba device array, or anything with
    ``__cuda_array_interface__`` such as a torch CUDA tensor, viewed without a
    copy); optimizers update it in place, so other references to the same
    memory see each step. Anything else array-like is converted to a new
    array (float32 for integers).
    """

    __slots__ = ("data", "name", "requires_grad", "on_device")

    def __init__(self, data, name: str, requires_grad: bool = True):
        if not isinstance(name, str) or not name:
            raise TypeError(f"For 'Parameter', the 'name' must be a non-empty str, but got {name!r}.")
        self.on_device = _is_device(data)
        if self.on_device:
            self._init_device(data, name, requires_grad)
            return
        if not isinstance(data, np.ndarray):
            data = np.asarray(data)
            if data.dtype not in FLOAT_DTYPES:
                data = data.astype(np.float32)
            data = np.ascontiguousarray(data)
        if data.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"For 'Parameter', the data must be float32 or float64, but got {data.dtype} for '{name}'."
            )
        if not data.flags.c_contiguous:
            raise ValueError(
                f"For 'Parameter', the data of '{name}' must be C-contiguous: it is updated in "
                "place, so a copy would not be seen by the caller. Pass np.ascontiguousarray(x)."
            )
        if not data.flags.writeable:
            raise ValueError(f"For 'Parameter', the data of '{name}' must be writeable.")
        self.data = data
        self.name = name
        self.requires_grad = requires_grad

    def _init_device(self, data, name: str, requires_grad: bool) -> None:
        from optforge.runtime.cuda import as_device_array

        data = as_device_array(data)
        if np.dtype(data.dtype) not in FLOAT_DTYPES:
            raise TypeError(
                f"For 'Parameter', the data must be float32 or float64, but got {data.dtype} for '{name}'."
            )
        if not data.is_c_contiguous():
            raise ValueError(f"For 'Parameter', the device data of '{name}' must be C-contiguous.")
        self.data = data
        self.name = name
        self.requires_grad = requires_grad

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)  # a plain tuple also for device arrays (the simulator's is not)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def ndim(self) -> int:
        return len(self.data.shape)

    def asnumpy(self) -> np.ndarray:
        """A host copy of the current value (copied from the device if it lives there)."""
        if self.on_device:
            return self.data.copy_to_host()
        return np.array(self.data, copy=True)

    def __repr__(self) -> str:
        where = ", device" if self.on_device else ""
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self.dtype}{where})"


def _is_device(data) -> bool:
    """Without importing numba.cuda for host arrays (numba-cuda is an optional extra)."""
    if isinstance(data, np.ndarray):
        return False
    if hasattr(data, "__cuda_array_interface__"):
        return True
    return type(data).__name__ in ("DeviceNDArray", "FakeCUDAArray")
