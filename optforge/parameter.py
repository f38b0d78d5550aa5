"""`Parameter`: a named array that optimizers update in place."""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Parameter:
    """A named, trainable array.

    ``data`` is a C-contiguous float32 or float64 NumPy array; optimizers
    update it in place, so other references to the same array see each step.
    Anything else array-like is converted to a new float32 array (integers)
    or kept at its float precision.
    """

    __slots__ = ("data", "name", "requires_grad")

    def __init__(self, data, name: str, requires_grad: bool = True):
        if not isinstance(name, str) or not name:
            raise TypeError(f"For 'Parameter', the 'name' must be a non-empty str, but got {name!r}.")
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

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def asnumpy(self) -> np.ndarray:
        """A host copy of the current value."""
        return np.array(self.data, copy=True)

    def __repr__(self) -> str:
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self.dtype})"
