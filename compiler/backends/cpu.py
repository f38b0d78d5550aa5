"""The CPU backend: `ir.Kernel`s to a module of Numba kernels, and their host code.

The functions below derive the templates' dicts from a kernel's regions (one
element pass per stage, its prologue and per-row lines; the line stages; the
finalize): the only place that knows both. Each kernel is printed once, as a
factory of its element type `F`, returning its stages; kernels whose printed
code is the same (flag variants that compute the same thing) are printed once
and shared. Calling convention of every stage:

    stage(chunks, arrays, per_tensor, scratch, *scalars)

(chunks: a ChunkTable or FactoredTable; arrays: a PointerTable; per_tensor:
F[plan.per_tensor, tensors]; scratch: optforge.runtime.launch.Scratch), and of
every row-sparse kernel (one tensor, only the rows a gradient names):

    rows(rows, row_len, arrays, per_tensor, *scalars)
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from optforge.compiler.ir import FINALIZE, LINES, PASS1, DType, Kernel, Reduction, Region, Space
from optforge.compiler.passes.int8 import int8_storage
from optforge.compiler.printers import ElementPrinter, HostPrinter
from optforge.compiler.render import render_unformatted
from optforge.compiler.spec import (
    BUILTIN_TENSOR,
    MATRIX_TENSOR,
    NewtonSchulz,
    Spec,
    SpecError,
    fma,
    group_sum_targets,
    numel,
    rank_flag,
    step_inputs,
    sum_outputs,
)

# Each matrix function's run-time implementation (optforge.runtime.matrix), which the
# matrix stage calls once per tensor on its scratch matrix.
MATRIX_FUNCTION_NAMES = {NewtonSchulz: "newton_schulz"}

# Elements per chunk-table entry: large enough to amortise the per-chunk
# prologue, small enough that 1,000 mixed tensors still balance across threads.
CHUNK = 1 << 16


@dataclass(frozen=True)
class Line:
    target: str
    expr: str


def _name(*parts: str) -> str:
    return "_".join(p for p in parts if p)


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
        if branch_name(k) in seen or not k.guards:  # one branch: nothing to choose each step
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
    functions: dict[str, dict] = {}
    for k, name in zip(kernels, scalar_function_names(spec, kernels)):
        if name in functions:
            functions[name]["variant"] += "; " + describe(k)
            continue
        functions[name] = {
            "name": name,
            "inputs": inputs,
            "lines": _lines(printer, k.host),
            "returns": [s.name for s in k.scalars],
            "variant": describe(k),
        }
    return branch_functions, list(functions.values())


def scalar_function_names(spec: Spec, kernels: list[Kernel]) -> list[str]:
    """The scalars function of each kernel: kernels whose step-level code is the same
    share one, named after the first (Adam's AMSGrad variants with and without Nesterov)."""
    printer = HostPrinter(spec.host_dtype)
    first: dict[tuple, str] = {}
    names = []
    for k in kernels:
        code = (tuple(_lines(printer, k.host)), tuple(s.name for s in k.scalars))
        names.append(first.setdefault(code, scalars_name(k)))
    return names


def _pass(kernel: Kernel, phase: int) -> tuple[Region, Region]:
    """(the prologue, the element loop) of the element pass in `phase`."""
    prologue = kernel.region(Space.MATRIX if kernel.matrices else Space.TENSOR, phase)
    return prologue, kernel.region(Space.ELEMENT, phase)


def _sums(region: Region, space: Space = Space.TENSOR) -> list[Reduction]:
    return [r for r in region.reductions if r.space == space]


def _scratch(region: Region, shape: str) -> list[sp.Symbol]:
    """The per-tensor ("tensor") or per-matrix ("matrix") values a region loads."""
    return [load.value for load in region.loads if load.array.shape == shape]


def stage_context(prologue: Region, element: Region, printer: ElementPrinter) -> dict:
    sums = _sums(element)
    return {
        "per_tensor": [s.name for s in _scratch(prologue, "tensor")],
        "tensor_lines": _lines(printer, prologue.body),
        "loads": [(load.array.symbol.name, load.value.name) for load in element.loads],
        "lines": _lines(printer, element.body),
        "stores": [(s.array.symbol.name, s.value.name) for s in element.stores],
        "reductions": [r.expr.name for r in sums],
        # summed as they are: a norm's argument already squared, or a mean's
        "squared": [r.squared or r.plain for r in sums],
        "views": {load.array.symbol.name for load in element.loads}
        | {s.array.symbol.name for s in element.stores},
        "stored": {s.array.symbol.name for s in element.stores},
    }


def _loads(loads, shape: str) -> list[tuple[str, str]]:
    return [(load.array.symbol.name, load.value.name) for load in loads if load.array.shape == shape]


def line_stage_context(kernel: Kernel, space: Space, printer: ElementPrinter) -> dict:
    """The per-row (ROW) or per-column (COL) lines between the first and second pass."""
    region = kernel.region(space, LINES)
    read = set().union(*(a.expr.free_symbols for a in region.body))
    means = [m for m in _sums(kernel.region(Space.ELEMENT, PASS1), space) if m.symbol in read]
    return {
        "means": [(m.symbol.name, m.expr.name) for m in means],
        "loads": [(load.array.symbol.name, load.value.name) for load in region.loads],
        "lines": _lines(printer, region.body),
        "stores": [(s.array.symbol.name, s.value.name) for s in region.stores],
    }


def factored_context(kernel: Kernel, context: dict, printer: ElementPrinter) -> dict:
    """What the factored templates add: each pass's loads by shape, its matrix means and sums,
    the line stages, and the index of each reduction in the partials (over all passes)."""
    offset = 0
    for n, (phase, ctx) in enumerate(zip(kernel.phases(Space.ELEMENT), context["stages"])):
        prologue, element = _pass(kernel, phase)
        ctx["element_loads"] = _loads(element.loads, "element")
        ctx["row_loads"] = _loads(element.loads, "row")
        ctx["col_loads"] = _loads(element.loads, "col")
        ctx["matrix_reads"] = [s.name for s in _scratch(prologue, "matrix")]
        ctx["row_lines"] = _lines(printer, kernel.region(Space.ROW, phase).body)
        ctx["reduction_slots"] = list(range(offset, offset + len(_sums(element))))
        offset += len(_sums(element))
        ctx["row_sums"] = [m.expr.name for m in _sums(element, Space.ROW)]
        ctx["col_sums"] = [m.expr.name for m in _sums(element, Space.COL)]
    reductions = [r for region in kernel.regions for r in _sums(region)]
    shaped = [a for a in kernel.arrays if a.shape != "element"]
    rows = line_stage_context(kernel, Space.ROW, printer)
    cols = line_stage_context(kernel, Space.COL, printer)
    return context | {
        "factored": True,
        "fused": False,
        "rows": rows,
        "cols": cols,
        "row_arrays": [a.symbol.name for a in shaped if a.shape == "row"],
        "col_arrays": [a.symbol.name for a in shaped if a.shape == "col"],
        "matrix_means": [
            (m.symbol.name, m.expr.name) for m in _sums(kernel.region(Space.ROW, LINES), Space.MATRIX)
        ],
        "reductions": [r.symbol.name for r in reductions],
        "means": [r.mean for r in reductions],
        "plain": [r.plain for r in reductions],
        "row_means": [name for name, _ in rows["means"]],
        "col_means": [name for name, _ in cols["means"]],
    }


def invariant_symbols(kernel: Kernel) -> set[sp.Symbol]:
    """The symbols of `kernel` that do not vary per element: step-level scalars, per-tensor
    inputs and values, and a factored kernel's per-matrix means (products multiply them first)."""
    invariant = set(kernel.scalars) | set(BUILTIN_TENSOR)
    for region in kernel.regions:
        if region.space <= Space.MATRIX:  # the prologues and the finalize
            invariant |= {a.target for a in region.body} | {load.value for load in region.loads}
            invariant |= {s.value for s in region.stores}
        invariant |= {r.symbol for r in _sums(region, Space.MATRIX)}
    return invariant


def states_fma(spec: Spec) -> bool:
    """Whether a rule of `spec` writes `fma`: then its kernels fuse there and nowhere else."""
    return any(sp.sympify(rule.expr).has(fma) for rule in spec.rules)


def kernel_context(spec: Spec, kernel: Kernel, dtype: str, fma_name: str = "fma") -> dict:
    context = _kernel_context(spec, kernel, dtype, fma_name)
    if kernel.matrices:
        printer = ElementPrinter(dtype, invariant_symbols(kernel), fma_name)
        return factored_context(kernel, context, printer)
    return context | {"factored": False}


def _typed_lines(assignments, dtype: str, invariant, fma_name: str) -> list[Line]:
    """Each statement printed in its own dtype: the kernel's (`dtype`), or float64 for the
    per-tensor values a finalize computes from float64 sums."""
    lines = []
    for a in assignments:
        printer = ElementPrinter(dtype if a.dtype == DType.KERNEL else a.dtype.value, invariant, fma_name)
        lines += _lines(printer, [a])
    return lines


def matrix_context(kernel: Kernel) -> dict:
    """The matrix stage's functions (run-time name, scratch matrix, parameters printed as
    the step-level scalars or numbers they are) and the scratch matrices by name."""
    functions = [
        {
            "function": MATRIX_FUNCTION_NAMES[mf.function],
            "index": i,
            "parameters": [p.name if isinstance(p, sp.Symbol) else repr(float(p)) for p in mf.parameters],
        }
        for i, mf in enumerate(kernel.matrix_functions)
    ]
    names = [mf.array.symbol.name for mf in kernel.matrix_functions]
    return {
        "matrix_functions": functions,
        "scratch_arrays": names,
        "scratch_index": {n: i for i, n in enumerate(names)},
    }


def _kernel_context(spec: Spec, kernel: Kernel, dtype: str, fma_name: str) -> dict:
    invariant = invariant_symbols(kernel)
    printer = ElementPrinter(dtype, invariant, fma_name)
    phases = kernel.phases(Space.ELEMENT)
    stages = [stage_context(*_pass(kernel, p), printer) for p in phases]
    first = _sums(kernel.region(Space.ELEMENT, phases[0]))
    finalize = kernel.region(Space.TENSOR, FINALIZE)
    return matrix_context(kernel) | {
        "shaped": spec.tensor_rank == 2,  # per_tensor rows 2 and 3: each matrix's rows and columns
        "row_sparse": spec.sparse == "rows",  # the kernel has a row-sparse variant
        "arrays": [a.symbol.name for a in kernel.arrays],
        "builtins": [s.name for s in BUILTIN_TENSOR],
        "scalars": [s.name for s in kernel.scalars],
        "stages": stages,
        "fused": len(stages) == 1 and not stages[0]["reductions"],
        "reductions": [r.symbol.name for r in first],
        # a root mean square divides its sum by the tensor's size, which the chunk table gives
        "means": [r.mean for r in first],
        "plain": [r.plain for r in first],
        # group sums: added over the step's tensors by the run-time, never read per tensor
        "group": [r.group for r in first],
        # the sum rules' outputs the stages after the group sums read (Scratch.sum_values)
        "late": [name.name for _, name in kernel.late],
        "counts": any(r.mean for r in first),
        # the finalize reads the element count, which the sums carry in their last column
        "numel": any(numel in a.expr.free_symbols for a in finalize.body)
        or any(s.value == numel for s in finalize.stores),
        "finalize_reads": [load.value.name for load in finalize.loads],
        "finalize_lines": _typed_lines(finalize.body, dtype, invariant, fma_name),
        "finalize_outputs": [s.value.name for s in finalize.stores],
    }


def step_context(spec: Spec) -> dict | None:
    """The `advance` function of a spec with step state: its step rules, once per step and
    group, from the state before the step to (each step state's new value, the locals)."""
    if not spec.step_state and not spec.step_rules:
        return None
    printer = HostPrinter(spec.host_dtype)
    inputs = ["t", "lr", *(h.name for h in spec.hypers), *(s.symbol.name for s in spec.step_state)]
    return {
        "inputs": inputs,
        "lines": [Line(r.target.name, printer.doprint(sp.sympify(r.expr))) for r in spec.step_rules],
        "returns": [s.name for s in step_inputs(spec)],
        # a hyperparameter's initial value by its name (the run-time reads the optimizer's)
        "states": [
            (s.name, repr(s.init.name) if isinstance(s.init, sp.Symbol) else s.init) for s in spec.step_state
        ],
        "sums": sums_context(spec, printer),
    }


def sums_context(spec: Spec, printer: HostPrinter) -> dict | None:
    """The `after_sums` function of a spec with group sums: its sum rules, once per step and
    param group between the element stages, from the step rules' values and the group sums'
    totals to (each step state's value after them, their locals)."""
    if not spec.sum_rules:
        return None
    inputs = ["t", "lr", *(h.name for h in spec.hypers), *(s.name for s in step_inputs(spec))]
    return {
        "inputs": inputs + [s.name for s in group_sum_targets(spec)],
        "lines": [Line(r.target.name, printer.doprint(sp.sympify(r.expr))) for r in spec.sum_rules],
        "returns": [s.name for s in sum_outputs(spec)],
    }


def transition_functions(spec: Spec) -> list[tuple[str, list[Kernel], list[str], list[dict]]]:
    """Per mode transition: (method, its kernels, each kernel's scalars function name, the
    host functions), the names prefixed by the method (`eval_scalars`)."""
    from optforge.compiler.lower import transitions

    result = []
    for method, derived, kernels in transitions(spec):
        _, functions = host_contexts(derived, kernels)
        for f in functions:
            f["name"] = f"{method}_{f['name']}"
            f["variant"] = f"`{method}()`, " + f["variant"]
        names = [f"{method}_{n}" for n in scalar_function_names(derived, kernels)]
        result.append((method, kernels, names, functions))
    return result


def transition_table(spec: Spec, printer, package_functions) -> list[dict]:
    """The TRANSITIONS table both backends print: per method, per flag variant, its Branch."""
    table = []
    for method, kernels, names, _ in package_functions:
        entries = []
        for k, name in zip(kernels, names):
            stages = printer.kernel(k)
            entries.append(
                {
                    "key": repr(tuple(value for _, value in k.variant)),
                    "scalars": name,
                    "stages": ", ".join(stages.stages),
                    "plan": stages.plan,
                    "grids": repr(stages.grids),
                }
            )
        table.append({"method": method, "variants": entries})
    return table


def string_pieces(text: str, width: int = 72) -> list[str]:
    """`text` as the reprs of pieces of at most about `width` characters that add up to it
    (a long message in generated code, within the line length)."""
    import textwrap

    pieces = textwrap.wrap(text, width, drop_whitespace=False, break_on_hyphens=False) or [text]
    assert "".join(pieces) == text
    return [repr(p) for p in pieces]


def render_host_module(spec: Spec, kernels: list[Kernel]) -> str:
    branch_functions, scalar_functions = host_contexts(spec, kernels)
    for _, _, _, functions in transition_functions(spec):
        scalar_functions += functions
    return render_unformatted(
        "host_scalars.py.j2",
        source=spec.where,
        spec=spec,
        branch_functions=branch_functions,
        scalar_functions=scalar_functions,
        step=step_context(spec),
    )


def factory_name(kernel: Kernel) -> str:
    return _name(kernel.spec_name, kernel.suffix)


def plan_source(context: dict, combine: tuple[str, ...] = ()) -> str:
    """The branch's `Plan` (optforge.runtime.kernels): the sizes of what its stages share, and
    what is combined before each stage (factories.combined_before)."""
    fields = {
        "per_tensor": 2 + 2 * context["shaped"] + len(context["finalize_outputs"]),
        "reductions": len(context["reductions"]),
        "matrices": len(context["scratch_arrays"]),
        "shapes": context["shaped"],
    }
    if context["factored"]:
        fields["row_sums"] = len(context["row_means"])
        fields["col_sums"] = len(context["col_means"])
        fields["matrix_means"] = len(context["matrix_means"])
    if any(combine):
        fields["combine"] = repr(combine)
    if context["late"]:  # the group sums' columns, and how many values the sum rules return
        fields["group_sums"] = repr(tuple(i for i, group in enumerate(context["group"]) if group))
        fields["sum_values"] = len(context["late"])
    return "Plan(" + ", ".join(f"{k}={v}" for k, v in fields.items() if v) + ")"


def int8_states(spec: Spec) -> dict[str, str | None]:
    """Per state (its public name): the 8-bit code table it may be kept in, or None where it
    may not (passes/int8.py); what the CPU module's INT8_TABLES prints."""
    return {v.state: v.table for v in int8_storage(spec)}


def int8_refusals(spec: Spec) -> dict[str, str]:
    """Per state that may not be kept as 8-bit codes, why (the module's INT8_REFUSED)."""
    return {v.state: "; ".join(v.reasons) for v in int8_storage(spec) if v.table is None}


def blockwise_arrays(spec: Spec, kernel: Kernel) -> list[str]:
    """The states of `kernel` whose views its CPU stages take through
    optforge.runtime.blockwise, so a policy may keep them as 8-bit codes: those the int8 pass
    admits, in a flat kernel (a factored kernel's passes index rows and columns, not blocks)."""
    if kernel.matrices:
        return []
    tables = int8_states(spec)
    return [a.symbol.name for a in kernel.arrays[2:] if tables.get(a.name)]


def launch_context(spec: Spec, kernel: Kernel, fma_name: str = "fma", blockwise: bool = False) -> dict:
    """The kernel's context for a template printing it once for both float types: where each
    array is in the pointer table and each per-tensor value in the per-tensor table.
    `blockwise`: the states a policy may keep as 8-bit codes go through blockwise views (CPU)."""
    context = kernel_context(spec, kernel, "element", fma_name)
    blocked = blockwise_arrays(spec, kernel) if blockwise else []
    shape = [s.name for s in MATRIX_TENSOR] if context["shaped"] else []
    names = [s.name for s in BUILTIN_TENSOR] + shape + context["finalize_outputs"]
    context["array_index"] = {a: i for i, a in enumerate(context["arrays"])}
    param = context["arrays"][0]
    for stage in context["stages"]:
        # The views an element loop is bounded by: those it indexes, with the parameter's
        # mirror where it stores the parameter (optforge.runtime.precision).
        stage["bounds"] = [a for a in context["arrays"] if a in stage["views"]]
        stage["bounds"] += [a for a in context["scratch_arrays"] if a in stage["views"]]
        stage["scratch"] = any(a in stage["views"] for a in context["scratch_arrays"])
        stage["bounds"] += ["mirror"] if param in stage["stored"] else []
        # The states it views blockwise, and of those the ones it stores: their blocks are
        # written after each block of the element loop (optforge.runtime.blockwise).
        stage["blocked"] = [a for a in blocked if a in stage["views"]]
        stage["flushed"] = [a for a in stage["blocked"] if a in stage["stored"]]
    context["per_tensor_row"] = {p: i for i, p in enumerate(names)}
    # the sum rules' outputs, read from Scratch.sum_values (in float64) instead
    context["sum_value_index"] = {p: i for i, p in enumerate(context["late"])}
    if context["factored"]:
        context["matrix_mean_index"] = {name: i for i, (name, _) in enumerate(context["matrix_means"])}
    return context


def host_output(spec: Spec, kernel: Kernel, context: dict) -> str:
    """For a spec that applies its update separately (on the device, after the host stage):
    the one state its apply stage reads besides the parameter, which the host stage
    writes and the run-time ships to the device (AdamOffload's delta)."""
    apply = context["stages"][-1]
    name_of = {a.symbol.name: a.name for a in kernel.arrays}
    read = {name_of[array] for array, _ in apply["loads"]} - {"param"}
    if len(read) != 1:
        raise SpecError(
            f"{spec.where}: the separate apply stage must read the parameter and one state, "
            f"but reads {sorted(read)}"
        )
    return read.pop()


def variant_table(spec: Spec, kernels: list[Kernel], printed: list) -> list[dict]:
    """The VARIANTS table both backends print: per flag variant, its state, branch function and
    branches (each with its scalars function, the factories of its stages, their plan and
    grids; see factories.Printed); the names are the same in the CPU and CUDA modules."""
    variants: dict[tuple, dict] = {}
    for k, stages, scalars in zip(kernels, printed, scalar_function_names(spec, kernels)):
        key = tuple(value for _, value in k.variant)
        entry = variants.setdefault(
            key,
            {
                "key": repr(key),
                "state": repr(tuple(a.name for a in k.arrays[2:])),
                "factored": k.matrices,
                "shapes": repr(tuple(a.shape for a in k.arrays[2:])),
                "branch": branch_name(k) if k.guards else None,
                "branches": [],
                # the offload path's pieces: the host stage and the device's
                "host_stage": stages.stages[0],
                "host_output": repr(stages.host_output),
                "offload": ", ".join(stages.offload) if stages.offload else None,
            },
        )
        entry["branches"].append(
            {
                "key": repr(tuple(k.branch)),
                "scalars": scalars,
                "stages": ", ".join(stages.stages),
                "grids": repr(stages.grids),
                "plan": stages.plan,
                "rows": stages.rows,
            }
        )
    return list(variants.values())


def host_names(spec: Spec, kernels: list[Kernel]) -> list[str]:
    scalars = set(scalar_function_names(spec, kernels))
    scalars |= {name for _, _, names, _ in transition_functions(spec) for name in names}
    scalars |= {"advance"} if step_context(spec) else set()
    scalars |= {"after_sums"} if spec.sum_rules else set()
    return sorted(scalars | {branch_name(k) for k in kernels if k.guards})


def rank_flag_source(spec: Spec) -> str | None:
    """`RANK_FLAG` of a kernel module: (index of the flag among the spec's flags, its rank)."""
    flag = rank_flag(spec)
    return None if flag is None else repr((spec.flags.index(flag), flag.rank))


def none_values_source(spec: Spec) -> str | None:
    """`NONE_VALUES` of a kernel module: per hyperparameter, what None stands for (None: the
    dtype's machine epsilon), or None when every hyperparameter leaves it at that."""
    values = tuple(None if h.none is None else float(h.none) for h in spec.hypers)
    return None if all(v is None for v in values) else repr(values)


def render_cpu_module(spec: Spec, kernels: list[Kernel], package: str) -> str:
    from optforge.compiler.backends.cuda import device_refusal
    from optforge.compiler.backends.factories import FactoryPrinter

    printer = FactoryPrinter(spec, "cpu_flat.py.j2", "cpu_factored.py.j2", blockwise=True)
    printed = [printer.kernel(k) for k in kernels]
    transitions = transition_table(spec, printer, transition_functions(spec))
    return render_unformatted(
        "cpu_kernels.py.j2",
        mode_message=string_pieces(spec.modes.message) if spec.modes else None,
        transitions=transitions,
        step=step_context(spec),
        package=package,
        source=spec.where,
        spec=spec,
        rank_flag=rank_flag_source(spec),
        none_values=none_values_source(spec),
        states_fma=states_fma(spec),
        matrix_functions=sorted(
            {MATRIX_FUNCTION_NAMES[mf.function] for k in kernels for mf in k.matrix_functions}
        ),
        device_refused=device_refusal(spec, kernels),
        chunk=CHUNK,
        int8_tables=int8_states(spec),
        int8_refused={name: string_pieces(why) for name, why in int8_refusals(spec).items()},
        host_names=host_names(spec, kernels),
        factories=printer.sources(),
        variants=variant_table(spec, kernels, printed),
    )
