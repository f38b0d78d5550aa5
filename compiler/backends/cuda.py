"""The CUDA backend: `ir.Kernel`s to a module of Numba CUDA kernels.

The same IR as the CPU backend, the same element code (ElementPrinter), other
loops: blocks stride over a chunk table, threads over a chunk's elements.
A launch takes up to `SLOTS` tensors as tuples of device arrays (kernel
parameter space bounds the count, as in Apex's multi_tensor_apply); the
run-time splits larger groups into several launches. Reductions are
deterministic: each thread sums its elements in order, each block adds its
threads' sums in a fixed tree, and one thread per tensor adds the chunks'
partials in chunk order; no atomics.

Calling convention of a launcher (`stages[dtype].launch` of a branch):

    launch(launch, chunk_slot, chunk_start, chunk_stop, *arrays, weight_decay, grad_scale, *scalars)

`launch` (optforge.runtime.cuda.Launch) holds the grid, the stream and
reusable scratch buffers; `arrays` are tuples of SLOTS device arrays;
`weight_decay` and `grad_scale` tuples of SLOTS scalars.
"""

from __future__ import annotations

import sympy as sp

from optforge.compiler.backends.cpu import (
    CHUNK,
    host_names,
    rank_flag_source,
    step_context,
    transition_functions,
    transition_table,
    variant_table,
)
from optforge.compiler.backends.factories import FactoryPrinter
from optforge.compiler.ir import Kernel
from optforge.compiler.printers import ElementPrinter
from optforge.compiler.render import render_unformatted
from optforge.compiler.spec import Spec, SpecError, g, grad_scale, unfused, w, weight_decay

SLOTS = 8  # tensors per launch
THREADS = 256  # threads per block (the block reduction's shared array is this long)


def effective_gradient(spec: Spec) -> str | None:
    """The offload path's device-side piece, printed from the spec's coupled-decay rule
    (`g*grad_scale + weight_decay*w`, which the spec checks require of a coupled spec): the
    only part of the update that reads the parameter, formed before the gradient travels."""
    if not spec.separate_apply:
        return None
    plain = {f.symbol: sp.false for f in spec.flags}
    target = g * grad_scale + weight_decay * w
    for rule in spec.rules:
        expr = sp.sympify(rule.expr).subs(plain)
        if sp.expand(unfused(expr) - target) == 0:
            printer = ElementPrinter("element", {grad_scale, weight_decay}, "cuda.fma")
            return printer.doprint(expr)
    raise SpecError(f"{spec.where}: a spec that applies separately needs its effective gradient rule")


def device_refusal(spec: Spec, kernels: list[Kernel]) -> str | None:
    """Why a spec's kernels cannot step device arrays, or None: a matrix function's stage
    runs on the host only (its CUDA lowering, torch's matmuls on the tensors, is not written)."""
    from optforge.compiler.backends.cpu import MATRIX_FUNCTION_NAMES

    if spec.sum_rules:
        return "its sum rules run between its stages on the CPU only so far; step CPU tensors"
    names = sorted({MATRIX_FUNCTION_NAMES[mf.function] for k in kernels for mf in k.matrix_functions})
    if not names:
        return None
    return f"its matrix stage ({', '.join(names)}) runs on the CPU only; step CPU tensors"


def render_cuda_module(spec: Spec, kernels: list[Kernel], package: str) -> str:
    refused = device_refusal(spec, kernels)
    if refused is not None:
        return render_unformatted("cuda_refused.py.j2", source=spec.where, spec=spec, refused=refused)
    # The simulator swaps the `cuda` module in a kernel's globals, so the call names it.
    printer = FactoryPrinter(
        spec,
        "cuda_flat.py.j2",
        "cuda_factored.py.j2",
        "cuda.fma",
        effective_gradient=effective_gradient(spec),
    )
    printed = [printer.kernel(k) for k in kernels]
    transitions = transition_table(spec, printer, transition_functions(spec))
    return render_unformatted(
        "cuda_kernels.py.j2",
        transitions=transitions,
        step=step_context(spec),
        package=package,
        source=spec.where,
        spec=spec,
        rank_flag=rank_flag_source(spec),
        slots=SLOTS,
        threads=THREADS,
        chunk=CHUNK,
        host_names=host_names(spec, kernels),
        factories=printer.sources(),
        variants=variant_table(spec, kernels, printed),
    )
