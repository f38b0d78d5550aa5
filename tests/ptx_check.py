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
from optforge.runtime.factored import FactoredTable
from optforge.runtime.kernels import ChunkTable, per_dtype
from optforge.runtime.launch import Scratch

F64_OPS = re.compile(r"\b(add|sub|mul|div|fma|sqrt|max|min|abs|neg)(\.\w+)*\.f64\b")
INDEX = types.Array(types.int64, 1, "C")
SUMS = types.Array(types.float64, 2, "C")


def argument_type(name: str, dtype, slots: int, arrays: int, factored: bool):
    """The numba type of a kernel argument, from its name (the generated code's convention)."""
    array = types.Array(dtype, 1, "C")
    if name == "chunks" or name == "table":
        if factored:  # a FactoredTable: 14 index arrays, then its row and column totals
            return types.NamedTuple([INDEX] * 14 + [types.int64] * 3, FactoredTable)
        return types.NamedUniTuple(INDEX, 3, ChunkTable)
    if name == "arrays":  # per array argument, a tuple of `slots` device arrays (1 for rows)
        return types.UniTuple(types.UniTuple(array, slots), arrays)
    if name == "per_tensor":
        return types.Array(dtype, 2, "C")
    if name == "scratch":
        return types.NamedTuple([SUMS] * 5 + [types.Array(types.float64, 1, "C"), SUMS], Scratch)
    if name == "rows":
        return INDEX
    if name == "row_len":
        return types.int64
    if name.endswith("_c") or name == "out":
        return array
    return dtype


def kernels_of(module):
    """(name, dtype, CUDA dispatcher, array count, factored, slots) of every kernel a generated
    module's factories make, each once."""
    seen = set()
    made = []
    for variant in module.VARIANTS.values():
        arrays = 2 + len(variant.state)
        for branch in variant.branches.values():
            made.append((branch.stages, arrays, variant.factored, module.SLOTS))
            if branch.rows:
                made.append((branch.rows, arrays, False, 1))
    made += [(offload, 0, False, 1) for offload in getattr(module, "OFFLOAD", {}).values()]
    for stages, arrays, factored, slots in made:
        for factory in stages.factories:
            for dtype in ("float32", "float64"):
                (kernel,) = per_dtype(factory)[dtype]
                if id(kernel) not in seen:
                    seen.add(id(kernel))
                    yield factory.__name__, dtype, kernel, arrays, factored, slots


def combine_kernels():
    """optforge.runtime.cuda's combining kernels (optforge.runtime.combine on the device)."""
    from optforge.runtime import cuda as device

    flat = argument_type("chunks", types.float64, 1, 1, False)
    factored = argument_type("table", types.float64, 1, 1, True)
    yield "flat_sums", device._flat_sums, (flat, SUMS, SUMS)
    yield "factored_sums", device._factored_sums, (factored, SUMS, SUMS)
    yield "matrix_columns", device._matrix_columns, (factored, SUMS, SUMS, types.Array(types.float64, 1, "C"))


def main() -> int:
    for label, kernel, signature in combine_kernels():
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
        except Exception as error:  # noqa: BLE001 (report which kernel, then fail)
            print(f"FAIL {label}: {type(error).__name__}: {error}")
            return 1
        print(f"OK runtime.{label} f64-ops={len(F64_OPS.findall(ptx))}")
    for spec in load_specs():
        module = importlib.import_module(f"optforge.generated.cuda.{spec.name}")
        for name, dtype_name, kernel, arrays, factored, slots in kernels_of(module):
            if not isinstance(kernel, CUDADispatcher):
                continue
            dtype = types.float64 if dtype_name == "float64" else types.float32
            params = inspect.signature(kernel.py_func).parameters
            signature = tuple(argument_type(p, dtype, slots, arrays, factored) for p in params)
            label = f"{spec.name}.{name}_{'f64' if dtype_name == 'float64' else 'f32'}"
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
            except Exception as error:  # noqa: BLE001 (report which kernel, then fail)
                print(f"FAIL {label}: {type(error).__name__}: {error}")
                return 1
            print(f"OK {label} f64-ops={len(F64_OPS.findall(ptx))}")
    return 0


if __name__ == "__main__":
    assert not numba.config.ENABLE_CUDASIM, "run without NUMBA_ENABLE_CUDASIM"
    sys.exit(main())
