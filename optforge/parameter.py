"""`Parameter`: a named array that optimizers update in place."""

from __future__ import annotations

import weakref

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Host parameters may also be 16-bit: NumPy's float16, ml_dtypes' bfloat16 (by name: ml_dtypes
# is imported only by whoever makes such arrays). Their kernels compute in float32.
HOST_DTYPES = ("float32", "float64", "float16", "bfloat16")


class Parameter:
    """A named, trainable array.

    ``data`` is a C-contiguous float32, float64, float16 or bfloat16
    (``ml_dtypes.bfloat16``) NumPy array, or a float32 or float64 CUDA
    device array (a numba device array, or anything with
    ``__cuda_array_interface__`` such as a torch CUDA tensor, viewed without a
    copy); optimizers update it in place, so other references to the same
    memory see each step. Anything else array-like is converted to a new
    array (float32 for integers).

    ``split``: the shape of the whole tensor that ``data`` is one rank's part of,
    split along its first dimension over the ranks of a process group (FSDP2's
    ``Shard(0)``); None (the default): ``data`` is the whole tensor. An optimizer
    over split parameters adds their per-tensor sums up over the ranks before it
    uses them (see `optforge.distributed`).

    ``data`` may be replaced (``p.data = new``, MindSpore's ``set_data``): the
    new array is checked as in the constructor, and the optimizers that step
    this parameter are told, so their next step updates the new array (or,
    if its shape, dtype or place differs from what their state was made
    for, refuses the step before changing anything).
    """

    __slots__ = (
        "_data",
        "name",
        "requires_grad",
        "on_device",
        "split",
        "_watchers",
        "_lock",
        "__weakref__",
    )

    def __init__(self, data, name: str, requires_grad: bool = True, split=None):
        if not isinstance(name, str) or not name:
            raise TypeError(f"For 'Parameter', the 'name' must be a non-empty str, but got {name!r}.")
        self.name = name
        self.requires_grad = requires_grad
        self._watchers = weakref.WeakSet()
        self._lock = None
        self._set(data, convert=True)
        self.split = check_split(split, self.shape, name)

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, data) -> None:
        if self._lock is None:
            self._replace(data)
            return
        with self._lock:  # a locking optimizer's step never sees half a replacement
            self._replace(data)

    def _replace(self, data) -> None:
        self._set(data, convert=False)
        for optimizer in list(self._watchers):
            optimizer._parameter_rebound()

    def _set(self, data, convert: bool) -> None:
        name = self.name
        if _is_device(data):
            from optforge.runtime.cuda import as_device_array

            data = as_device_array(data)
            if np.dtype(data.dtype) not in FLOAT_DTYPES:
                raise TypeError(
                    f"For 'Parameter', the data must be float32 or float64, but got {data.dtype} "
                    f"for '{name}'."
                )
            if not data.is_c_contiguous():
                raise ValueError(f"For 'Parameter', the device data of '{name}' must be C-contiguous.")
            self._data, self.on_device = data, True
            return
        if not isinstance(data, np.ndarray):
            if not convert:
                raise TypeError(
                    f"For 'Parameter', new data for '{name}' must be a numpy.ndarray or a device array, "
                    f"but got {type(data)}."
                )
            data = np.asarray(data)
            if data.dtype.name not in HOST_DTYPES:
                data = data.astype(np.float32)
            data = np.ascontiguousarray(data)
        if type(data) is not np.ndarray:
            # A subclass (np.matrix, a masked array) behaves differently under reshape and
            # indexing; the kernels need the plain array over the same memory.
            if isinstance(data, np.ma.MaskedArray):
                raise TypeError(
                    f"For 'Parameter', the data of '{name}' is a masked array; its mask would be "
                    "ignored. Pass data.filled(value) or data.data."
                )
            data = data.view(np.ndarray)
        if data.dtype.name not in HOST_DTYPES:
            raise TypeError(
                f"For 'Parameter', the data must be float32, float64, float16 or bfloat16, but got "
                f"{data.dtype} for '{name}'."
            )
        if not data.flags.c_contiguous:
            raise ValueError(
                f"For 'Parameter', the data of '{name}' must be C-contiguous: it is updated in "
                "place, so a copy would not be seen by the caller. Pass np.ascontiguousarray(x)."
            )
        if not data.flags.writeable:
            raise ValueError(f"For 'Parameter', the data of '{name}' must be writeable.")
        self._data, self.on_device = data, False

    def _watch(self, optimizer) -> None:
        """`optimizer` steps this parameter: tell it when `data` is replaced."""
        self._watchers.add(optimizer)

    def __getstate__(self):
        # Optimizers are not pickled with their parameters; a copy starts unwatched.
        return {
            "data": self._data,
            "name": self.name,
            "requires_grad": self.requires_grad,
            "split": self.split,
        }

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple):  # pickled before optforge 0.1's `data` property: (None, slots)
            state = state[1]
        self.name = state["name"]
        self.requires_grad = state["requires_grad"]
        self._watchers = weakref.WeakSet()
        self._lock = None
        self._set(state["data"], convert=True)
        self.split = state.get("split")

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


def check_split(split, shape: tuple[int, ...], name: str) -> tuple[int, ...] | None:
    """`split` as a tuple: a whole shape that `shape` is a part of along dimension 0."""
    if split is None:
        return None
    if not isinstance(split, (tuple, list)) or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0 for n in split
    ):
        raise TypeError(
            f"For 'Parameter', the 'split' of '{name}' must be the whole tensor's shape (a tuple of "
            f"non-negative ints), but got {split!r}."
        )
    split = tuple(int(n) for n in split)
    if len(split) != len(shape) or not shape or split[1:] != tuple(shape[1:]) or split[0] < shape[0]:
        raise ValueError(
            f"For 'Parameter', '{name}' of shape {tuple(shape)} is not a part along dimension 0 of "
            f"a tensor of shape {split} (the 'split'): they must differ in dimension 0 only, and "
            "the part may not be longer."
        )
    return split


def _is_device(data) -> bool:
    """Without importing numba.cuda for host arrays (numba-cuda is an optional extra)."""
    if isinstance(data, np.ndarray):
        return False
    if hasattr(data, "__cuda_array_interface__"):
        return True
    return type(data).__name__ in ("DeviceNDArray", "FakeCUDAArray")
