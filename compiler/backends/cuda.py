"""The CUDA backend: `ir.Kernel`s to a module of Numba CUDA kernels.

The same IR as the CPU backend, the same element code (ElementPrinter), other
loops: blocks stride over a chunk table, threads over a chunk's elements.
A launch takes up to `SLOTS` tensors as tuples of device arrays (kernel
parameter space bounds the count, as in Apex's multi_tensor_apply); the
run-time splits larger groups into several launches. Reductions are
deterministic: each thread sums its elements in order, each block adds its
threads' sums in a fixed tree, and one thread per tensor adds the chunks'
partials in chunk order; no atomics.

Calling convention of a step launcher (generated for every kernel):

    step(launch, chunk_slot, chunk_start, chunk_stop, *arrays, weight_decay, grad_scale, *scalars)

`launch` (optforge.runtime.cuda.Launch) holds the grid, the stream and
reusable scratch buffers; `arrays` are tuples of SLOTS device arrays;
`weight_decay` and `grad_scale` tuples of SLOTS scalars.
"""

from __future__ import annotations

from optforge.compiler.backends.cpu import DTYPES, SHORT, _name, host_names, rank_flag_source, variant_table
from optforge.compiler.backends.cpu import kernel_context as cpu_kernel_context
from optforge.compiler.ir import Kernel
from optforge.compiler.render import render_unformatted
from optforge.compiler.spec import Spec

SLOTS = 8  # tensors per launch
THREADS = 256  # threads per block (the block reduction's shared array is this long)


def kernel_context(spec: Spec, kernel: Kernel, dtype: str) -> dict:
    # The simulator swaps the `cuda` module in a kernel's globals, so the call names it.
    context = cpu_kernel_context(spec, kernel, dtype, fma_name="cuda.fma")
    base = _name(kernel.spec_name, kernel.suffix)
    context["effective_gradient_name"] = _name(base, "effective_gradient", SHORT[dtype])
    context["apply_name"] = _name(base, "apply", SHORT[dtype])
    return context


def render_cuda_module(spec: Spec, kernels: list[Kernel], package: str) -> str:
    return render_unformatted(
        "cuda_kernels.py.j2",
        package=package,
        source=spec.where,
        spec=spec,
        rank_flag=rank_flag_source(spec),
        slots=SLOTS,
        threads=THREADS,
        host_names=host_names(kernels),
        kernels=[kernel_context(spec, k, dtype) for k in kernels for dtype in DTYPES],
        variants=variant_table(spec, kernels),
    )
