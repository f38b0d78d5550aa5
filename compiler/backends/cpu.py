"""The CPU backend: `ir.Kernel`s to a module of Numba kernels and their host code."""

from __future__ import annotations

from dataclasses import dataclass

from optforge.compiler.ir import Kernel
from optforge.compiler.printers import ElementPrinter, HostPrinter
from optforge.compiler.render import render
from optforge.compiler.spec import Spec

DTYPES = ("float32", "float64")
# Elements per chunk-table entry: large enough to amortise the per-chunk
# prologue, small enough that 1,000 mixed tensors still balance across threads.
CHUNK = 1 << 16


@dataclass(frozen=True)
class Line:
    target: str
    expr: str


def kernel_name(kernel: Kernel, dtype: str) -> str:
    parts = [kernel.spec_name, kernel.suffix, "f32" if dtype == "float32" else "f64"]
    return "_".join(p for p in parts if p)


def scalars_name(kernel: Kernel) -> str:
    return "_".join(p for p in ("scalars", kernel.suffix) if p)


def array_list(symbol) -> str:
    return f"{symbol}_tensors"


def host_context(kernel: Kernel) -> dict:
    printer = HostPrinter()
    return {
        "name": scalars_name(kernel),
        "inputs": [s.name for s in kernel.host_inputs],
        "lines": [Line(a.target.name, printer.doprint(a.expr)) for a in kernel.host],
        "returns": [s.name for s in kernel.scalars],
        "variant": describe_variant(kernel),
    }


def kernel_context(kernel: Kernel, dtype: str) -> dict:
    printer = ElementPrinter(dtype)
    return {
        "name": kernel_name(kernel, dtype),
        "dtype": dtype,
        "variant": describe_variant(kernel),
        "arrays": [(array_list(a.symbol), a.symbol.name) for a in kernel.arrays],
        "loads": [a.symbol.name for a in kernel.loads],
        "per_tensor": [s.name for s in kernel.tensor_inputs],
        "scalars": [s.name for s in kernel.scalars],
        "tensor_lines": [Line(a.target.name, printer.doprint(a.expr)) for a in kernel.tensor],
        "lines": [Line(a.target.name, printer.doprint(a.expr)) for a in kernel.element],
        "stores": [(s.array.symbol.name, s.value.name) for s in kernel.stores],
    }


def describe_variant(kernel: Kernel) -> str:
    if not kernel.variant:
        return "the only variant"
    return ", ".join(f"{name}={value}" for name, value in kernel.variant)


def render_host_module(spec: Spec, kernels: list[Kernel]) -> str:
    return render(
        "host_scalars.py.j2",
        source=spec.where,
        spec=spec,
        functions=_unique(host_context(k) for k in kernels),
    )


def render_cpu_module(spec: Spec, kernels: list[Kernel]) -> str:
    return render(
        "cpu_kernels.py.j2",
        source=spec.where,
        spec=spec,
        chunk=CHUNK,
        dtypes=DTYPES,
        host_names=sorted({scalars_name(k) for k in kernels}),
        kernels=[kernel_context(k, dtype) for k in kernels for dtype in DTYPES],
        variants=[
            {
                "key": tuple(value for _, value in k.variant),
                "state": repr(tuple(a.name for a in k.arrays[2:])),
                "per_tensor": repr(tuple(s.name for s in k.tensor_inputs)),
                "scalars": scalars_name(k),
                "kernels": {dtype: kernel_name(k, dtype) for dtype in DTYPES},
            }
            for k in kernels
        ],
    )


def _unique(contexts):
    seen, result = set(), []
    for c in contexts:
        if c["name"] not in seen:
            seen.add(c["name"])
            result.append(c)
    return result
