"""Compile every generated CUDA kernel to PTX for sm_90 (no GPU needed, only NVVM).

Run by tests/test_cuda_ptx.py in a subprocess without the CUDA simulator. Prints one
line per kernel, `OK name f64-ops=N`, and exits 1 on the first failure.
"""

import importlib
import inspect
import re
import sys

import numba
from numba import cuda, types
from numba.cuda.dispatcher import CUDADispatcher

from optforge.compiler.build import load_specs

BUILTIN_PER_TENSOR = ("weight_decay_per_tensor", "grad_scale_per_tensor")
F64_OPS = re.compile(r"\b(add|sub|mul|div|fma|sqrt|max|min|abs|neg)(\.\w+)*\.f64\b")


def argument_type(name: str, dtype, slots: int):
    array = types.Array(dtype, 1, "C")
    if name.endswith("_per_matrix"):  # a factored kernel's matrix means
        return array
    if name in ("chunk_slot", "chunk_start", "chunk_stop", "rows") or name.startswith(
        ("chunk_", "matrix_", "tensor_")  # a factored kernel's table
    ):
        return types.Array(types.int64, 1, "C")
    if re.fullmatch(r"(row|col)_sums\d+", name):
        return types.Array(types.float64, 1, "C")
    if name == "row_len":
        return types.int64
    if name == "partials":
        return types.Array(types.float64, 2, "C")
    if name.endswith("_tensors"):
        return types.UniTuple(array, slots)
    if name in BUILTIN_PER_TENSOR:
        return types.UniTuple(dtype, slots)
    if name.endswith(("_per_tensor", "_tensor", "_c")) or name in ("g", "w", "out"):
        return array
    return dtype


def kernels_of(module):
    """(name, dtype, CUDA dispatcher) of every kernel a generated module's factories make."""
    seen = set()
    factories = [b.stages for v in module.VARIANTS.values() for b in v.branches.values()]
    factories += [b.rows for v in module.VARIANTS.values() for b in v.branches.values() if b.rows]
    for made in factories:
        for dtype in ("float32", "float64"):
            kernels = made[dtype].kernels
            for kernel in kernels:
                if id(kernel) not in seen:
                    seen.add(id(kernel))
                    yield (
                        f"{made.factory.__name__}.{kernel.py_func.__name__}_{dtype[0]}{dtype[-2:]}",
                        dtype,
                        kernel,
                    )
    for offload in getattr(module, "OFFLOAD", {}).values():
        for dtype in ("float32", "float64"):
            for kernel in offload[dtype]:
                if id(kernel) not in seen:
                    seen.add(id(kernel))
                    yield (
                        f"{offload.factory.__name__}.{kernel.py_func.__name__}_{dtype[0]}{dtype[-2:]}",
                        dtype,
                        kernel,
                    )


def main() -> int:
    for spec in load_specs():
        module = importlib.import_module(f"optforge.generated.cuda.{spec.name}")
        for name, dtype_name, kernel in kernels_of(module):
            if not isinstance(kernel, CUDADispatcher):
                continue
            dtype = types.float64 if dtype_name == "float64" else types.float32
            params = inspect.signature(kernel.py_func).parameters
            signature = tuple(argument_type(p, dtype, module.SLOTS) for p in params)
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
            except Exception as error:  # noqa: BLE001 (report which kernel, then fail)
                print(f"FAIL {spec.name}.{name}: {type(error).__name__}: {error}")
                return 1
            print(f"OK {spec.name}.{name} f64-ops={len(F64_OPS.findall(ptx))}")
    return 0


if __name__ == "__main__":
    assert not numba.config.ENABLE_CUDASIM, "run without NUMBA_ENABLE_CUDASIM"
    sys.exit(main())
