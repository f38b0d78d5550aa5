"""The CPU backend: `ir.Kernel`s to a module of Numba kernels, and their host code.

Calling convention of every step function (kernel or launcher):

    step(chunk_tensor, chunk_start, chunk_stop, *arrays, weight_decay_per_tensor,
         grad_scale_per_tensor, *scalars)

and of every row-sparse kernel (one tensor, only the rows a gradient names):

    rows(rows, row_len, *arrays, weight_decay, grad_scale, *scalars)
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from optforge.compiler.ir import FactoredKernel, Kernel, LineStage, Stage
from optforge.compiler.printers import ElementPrinter, HostPrinter
from optforge.compiler.render import render_unformatted
from optforge.compiler.spec import BUILTIN_TENSOR, Spec, fma, rank_flag

DTYPES = ("float32", "float64")
SHORT = {"float32": "f32", "float64": "f64"}
# Elements per chunk-table entry: large enough to amortise the per-chunk
# prologue, small enough that 1,000 mixed tensors still balance across threads.
CHUNK = 1 << 16


@dataclass(frozen=True)
class Line:
    target: str
    expr: str


def _name(*parts: str) -> str:
    return "_".join(p for p in parts if p)


def step_name(kernel: Kernel, dtype: str) -> str:
    return _name(kernel.spec_name, kernel.suffix, SHORT[dtype])


def rows_name(kernel: Kernel, dtype: str) -> str:
    return _name(kernel.spec_name, kernel.suffix, "rows", SHORT[dtype])


def scalars_name(kernel: Kernel) -> str:
    return _name("scalars", kernel.suffix)


def branch_name(kernel: Kernel) -> str:
    return _name("branch", kernel.flag_suffix)


def describe(kernel: Kernel) -> str:
    parts = [f"{name}={value}" for name, value in kernel.variant]
    parts += [f"{c} is {v}" for c, v in zip(kernel.guards, kernel.branch)]
    return ", ".join(parts) or "the only variant"


def _lines(printer, assignments) -> list[Line]:
    return [Line(a.target.name, printer.doprint(a.expr)) for a in assignments]


def host_contexts(spec: Spec, kernels: list[Kernel]) -> tuple[list[dict], list[dict]]:
    """(branch functions, one per flag variant; scalar functions, one per kernel)."""
    printer = HostPrinter(spec.host_dtype)
    inputs = [s.name for s in kernels[0].host_inputs]
    branch_functions, seen = [], set()
    for k in kernels:
        if branch_name(k) in seen:
            continue
        seen.add(branch_name(k))
        branch_functions.append(
            {
                "name": branch_name(k),
                "inputs": inputs,
                "lines": _lines(printer, k.guard_host),
                "guards": [printer.doprint(g) for g in k.guards],
                "variant": ", ".join(f"{n}={v}" for n, v in k.variant) or "the only variant",
            }
        )
    scalar_functions = [
        {
            "name": scalars_name(k),
            "inputs": inputs,
            "lines": _lines(printer, k.host),
            "returns": [s.name for s in k.scalars],
            "variant": describe(k),
        }
        for k in kernels
    ]
    return branch_functions, scalar_functions


def stage_context(stage: Stage, printer: ElementPrinter) -> dict:
    return {
        "per_tensor": [s.name for s in stage.per_tensor],
        "tensor_lines": _lines(printer, stage.tensor),
        "loads": [(load.array.symbol.name, load.value.name) for load in stage.loads],
        "lines": _lines(printer, stage.element),
        "stores": [(s.array.symbol.name, s.value.name) for s in stage.stores],
        "reductions": [r.expr.name for r in stage.reductions],
        "squared": [r.squared for r in stage.reductions],
        "views": {load.array.symbol.name for load in stage.loads}
        | {s.array.symbol.name for s in stage.stores},
    }


def _loads(loads, shape: str) -> list[tuple[str, str]]:
    return [(load.array.symbol.name, load.value.name) for load in loads if load.array.shape == shape]


def line_stage_context(stage: LineStage, printer: ElementPrinter) -> dict:
    return {
        "means": [(m.symbol.name, m.expr.name) for m in stage.means],
        "loads": [(load.array.symbol.name, load.value.name) for load in stage.loads],
        "lines": _lines(printer, stage.lines),
        "stores": [(s.array.symbol.name, s.value.name) for s in stage.stores],
    }


def factored_context(kernel: FactoredKernel, context: dict, printer: ElementPrinter) -> dict:
    """What the factored templates add: each pass's loads by shape, its matrix means and sums,
    the line stages, and the index of each reduction in the partials (over all passes)."""
    offset = 0
    for n, (stage, ctx) in enumerate(zip(kernel.stages, context["stages"])):
        ctx["element_loads"] = _loads(stage.loads, "element")
        ctx["row_loads"] = _loads(stage.loads, "row")
        ctx["col_loads"] = _loads(stage.loads, "col")
        ctx["matrix_reads"] = [s.name for s in kernel.matrix_reads[n]]
        ctx["row_lines"] = _lines(printer, kernel.row_lines[n])
        ctx["reduction_slots"] = list(range(offset, offset + len(stage.reductions)))
        offset += len(stage.reductions)
        ctx["row_sums"] = [m.expr.name for m in kernel.row_stage.means] if n == 0 else []
        ctx["col_sums"] = [m.expr.name for m in kernel.col_stage.means] if n == 0 else []
    reductions = [r for stage in kernel.stages for r in stage.reductions]
    base = _name(kernel.spec_name, kernel.suffix)
    shaped = [a for a in kernel.arrays if a.shape != "element"]
    return context | {
        "factored": True,
        "fused": False,
        "pass_names": [_name(base, f"pass{n}", context["short"]) for n in (1, 2, 3)],
        "lines_name": _name(base, "lines", context["short"]),
        "rows": line_stage_context(kernel.row_stage, printer),
        "cols": line_stage_context(kernel.col_stage, printer),
        "row_arrays": [a.symbol.name for a in shaped if a.shape == "row"],
        "col_arrays": [a.symbol.name for a in shaped if a.shape == "col"],
        "matrix_means": [(m.symbol.name, m.expr.name) for m in kernel.matrix_means],
        "reductions": [r.symbol.name for r in reductions],
        "means": [r.mean for r in reductions],
        "row_means": [m.symbol.name for m in kernel.row_stage.means],
        "col_means": [m.symbol.name for m in kernel.col_stage.means],
    }


def invariant_symbols(kernel: Kernel) -> set[sp.Symbol]:
    """The symbols of `kernel` that do not vary per element: step-level scalars, per-tensor
    inputs and values, and a factored kernel's per-matrix means (products multiply them first)."""
    invariant = set(kernel.scalars) | set(BUILTIN_TENSOR) | set(kernel.finalize_outputs)
    for stage in kernel.stages:
        invariant |= set(stage.per_tensor) | {a.target for a in stage.tensor}
    invariant |= {a.target for a in kernel.finalize}
    if isinstance(kernel, FactoredKernel):
        invariant |= {m.symbol for m in kernel.matrix_means}
    return invariant


def states_fma(spec: Spec) -> bool:
    """Whether a rule of `spec` writes `fma`: then its kernels fuse there and nowhere else."""
    return any(sp.sympify(rule.expr).has(fma) for rule in spec.rules)


def kernel_context(spec: Spec, kernel: Kernel, dtype: str, fma_name: str = "fma") -> dict:
    context = _kernel_context(spec, kernel, dtype, fma_name)
    if isinstance(kernel, FactoredKernel):
        printer = ElementPrinter(dtype, invariant_symbols(kernel), fma_name)
        return factored_context(kernel, context, printer)
    return context | {"factored": False}


def _kernel_context(spec: Spec, kernel: Kernel, dtype: str, fma_name: str) -> dict:
    invariant = invariant_symbols(kernel)
    printer = ElementPrinter(dtype, invariant, fma_name)
    stages = [stage_context(s, printer) for s in kernel.stages]
    # per-tensor values from float64 sums
    finalize_printer = ElementPrinter("float64", invariant, fma_name)
    base = _name(kernel.spec_name, kernel.suffix)
    return {
        "name": step_name(kernel, dtype),
        "stage_names": [_name(base, f"stage{n}", SHORT[dtype]) for n in (1, 2)],
        "finalize_name": _name(base, "finalize", SHORT[dtype]),
        "rows_name": rows_name(kernel, dtype) if spec.sparse == "rows" else None,
        "dtype": dtype,
        "short": SHORT[dtype],
        "describe": describe(kernel),
        "arrays": [a.symbol.name for a in kernel.arrays],
        "builtins": [s.name for s in BUILTIN_TENSOR],
        "scalars": [s.name for s in kernel.scalars],
        "stages": stages,
        "fused": len(stages) == 1 and not stages[0]["reductions"],
        "reductions": [r.symbol.name for r in kernel.stages[0].reductions],
        # a root mean square divides its sum by the tensor's size, which the chunk table gives
        "means": [r.mean for r in kernel.stages[0].reductions],
        "counts": any(r.mean for r in kernel.stages[0].reductions),
        "finalize_reads": [s.name for s in _tensor_inputs(kernel.finalize)],
        "finalize_lines": _lines(finalize_printer, kernel.finalize),
        "finalize_outputs": [s.name for s in kernel.finalize_outputs],
    }


def _tensor_inputs(assignments) -> list[sp.Symbol]:
    used = set().union(*(a.expr.free_symbols for a in assignments)) if assignments else set()
    return [s for s in BUILTIN_TENSOR if s in used]


def _dict_source(mapping: dict[str, str]) -> str:
    """A dict display mapping strings to names: {"float32": adam_f32}."""
    return "{" + ", ".join(f'"{k}": {v}' for k, v in mapping.items()) + "}"


def render_host_module(spec: Spec, kernels: list[Kernel]) -> str:
    branch_functions, scalar_functions = host_contexts(spec, kernels)
    return render_unformatted(
        "host_scalars.py.j2",
        source=spec.where,
        spec=spec,
        branch_functions=branch_functions,
        scalar_functions=scalar_functions,
    )


def variant_table(spec: Spec, kernels: list[Kernel]) -> list[dict]:
    """The VARIANTS table both backends print: per flag variant, its state, branch function and
    branches (kernel names per dtype); the names are the same in the CPU and CUDA modules."""
    variants: dict[tuple, dict] = {}
    for k in kernels:
        key = tuple(value for _, value in k.variant)
        base = _name(k.spec_name, k.suffix)
        entry = variants.setdefault(
            key,
            {
                "key": repr(key),
                "state": repr(tuple(a.name for a in k.arrays[2:])),
                "factored": isinstance(k, FactoredKernel),
                "shapes": repr(tuple(a.shape for a in k.arrays[2:])),
                "branch": branch_name(k),
                "branches": [],
                # the offload path's pieces: the host stage (CPU) and the device ones (CUDA)
                "host_stage": _dict_source({d: _name(base, "stage1", SHORT[d]) for d in DTYPES}),
                "offload": {
                    d: (_name(base, "effective_gradient", SHORT[d]), _name(base, "apply", SHORT[d]))
                    for d in DTYPES
                },
            },
        )
        entry["branches"].append(
            {
                "key": repr(tuple(k.branch)),
                "scalars": scalars_name(k),
                "kernels": _dict_source({dtype: step_name(k, dtype) for dtype in DTYPES}),
                "rows": _dict_source(
                    {dtype: rows_name(k, dtype) for dtype in DTYPES} if spec.sparse == "rows" else {}
                ),
            }
        )
    return list(variants.values())


def host_names(kernels: list[Kernel]) -> list[str]:
    return sorted({scalars_name(k) for k in kernels} | {branch_name(k) for k in kernels})


def rank_flag_source(spec: Spec) -> str | None:
    """`RANK_FLAG` of a kernel module: (index of the flag among the spec's flags, its rank)."""
    flag = rank_flag(spec)
    return None if flag is None else repr((spec.flags.index(flag), flag.rank))


def render_cpu_module(spec: Spec, kernels: list[Kernel], package: str) -> str:
    return render_unformatted(
        "cpu_kernels.py.j2",
        package=package,
        source=spec.where,
        spec=spec,
        rank_flag=rank_flag_source(spec),
        states_fma=states_fma(spec),
        chunk=CHUNK,
        host_names=host_names(kernels),
        kernels=[kernel_context(spec, k, dtype) for k in kernels for dtype in DTYPES],
        variants=variant_table(spec, kernels),
    )
