"""Each stage of a module's kernels printed once, as a factory of its element type `F`.

A kernel's stages (the fused step; or stage 1, the per-tensor finalize and stage 2; or a
factored kernel's three passes around its line stage and finalize), its row-sparse kernel
and its offload pieces are printed by the backend's template macros. Stages whose printed
code is the same (flag variants that differ only in a stage they do not share, such as
Adafactor's `maximize` in every stage but its finalize) are printed once, named after the
first kernel that has them, and the run-time shares their compiled code.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from optforge.compiler.backends.cpu import describe, factory_name, host_output, launch_context, plan_source
from optforge.compiler.ir import Kernel
from optforge.compiler.render import environment
from optforge.compiler.spec import Spec

# What each stage is, for its factory's docstring.
ROLES = {
    "step": "the fused step",
    "stage1": "stage 1",
    "stage2": "stage 2",
    "finalize": "the per-tensor values between the element stages",
    "matrix": "the matrix stage (per tensor, over its scratch matrices)",
    "pass1": "pass 1",
    "lines": "the row and column stage",
    "pass2": "pass 2",
    "pass3": "pass 3",
    "rows_kernel": "the row-sparse step",
    "effective_gradient": "the offload path's effective gradient",
    "apply": "the offload path's apply stage",
}


@dataclass(frozen=True)
class Printed:
    """The factories a kernel runs: its stages in order (and the grid each runs on, for a
    CUDA launch), its row-sparse kernel and its offload pieces, where it has them."""

    stages: tuple[str, ...]
    grids: tuple[str, ...]
    plan: str  # the source of its Plan
    rows: str | None = None
    offload: tuple[str, str] | None = None
    host_output: str | None = None  # a separately applied spec's: the state the host stage writes


def stage_roles(k: dict) -> list[tuple[str, str]]:
    """(role, grid) of each stage of a kernel (its launch_context `k`), in order: the fused
    step; or stage 1, the finalize (where the kernel has per-tensor values) and stage 2; or
    a factored kernel's passes around its line stage and finalize."""
    finalize = [("finalize", "tensors")] if k["finalize_lines"] else []
    if k["factored"]:
        passes = [("pass1", "chunks"), ("lines", "matrices"), ("pass2", "chunks")]
        return [*passes, *finalize, ("pass3", "chunks")]
    if k["fused"]:
        return [("step", "chunks")]
    matrix = [("matrix", "tensors")] if k.get("matrix_functions") else []
    return [("stage1", "chunks"), *matrix, *finalize, ("stage2", "chunks")]


def stage_code(macros, k: dict, role: str) -> str:
    """The code of the stage of `role`, printed by the template's macro for it."""
    if role == "lines":
        return macros.lines_kernel(k)
    if role == "finalize":
        return macros.finalize_kernel(k)
    if role == "matrix":
        return macros.matrix_kernel(k)
    if k["factored"]:
        n = ("pass1", "pass2", "pass3").index(role)
        return macros.pass_kernel(k, k["stages"][n], n)
    return macros.stage_kernel(k, k["stages"][0 if role in ("step", "stage1") else 1], role)


def combined_before(role: str, k: dict, previous: str = "") -> str:
    """What the run-time combines before a stage of `role` (Plan.combine): the per-tensor sums
    before a finalize, a factored kernel's column sums before its line stage and its sums
    over rows before the pass that reads their means; with group sums, before the stage after
    stage 1, "group": the per-tensor sums, their totals over the step's tensors and the sum
    rules (optforge.runtime.launch)."""
    if k.get("late") and previous == "stage1":
        return "group"
    if role == "finalize":
        return "sums"
    if role == "lines" and k["col_means"]:
        return "columns"
    if role == "pass2" and k["matrix_means"]:
        return "matrices"
    return ""


class FactoryPrinter:
    """Prints the stages of one module's kernels through `flat` and `factored` templates
    (their macros), each distinct stage once; `sources()` is the module's factories."""

    def __init__(
        self, spec: Spec, flat: str, factored: str, fma_name: str = "fma", blockwise: bool = False, **context
    ):
        # blockwise: the states a policy may keep as 8-bit codes are viewed through
        # optforge.runtime.blockwise (the CPU backend's; the CUDA one does not take int8 yet)
        self.spec, self.fma_name, self.blockwise = spec, fma_name, blockwise
        self.templates = {
            kind: environment.get_template(name).make_module({"spec": spec, **context})
            for kind, name in (("flat", flat), ("factored", factored))
        }
        self._names: dict[tuple[str, str], str] = {}  # (function, printed code) -> factory
        self._code: dict[str, tuple[str, str]] = {}  # factory -> (function, printed code)
        self._rows: dict[str, int] = {}  # factory -> the pointer-table rows its code may index
        self._users: dict[str, list[str]] = {}

    def kernel(self, kernel: Kernel) -> Printed:
        k = launch_context(self.spec, kernel, self.fma_name, self.blockwise)
        base = factory_name(kernel)
        macros = self.templates["factored" if k["factored"] else "flat"]
        stages = [(role, grid, stage_code(macros, k, role)) for role, grid in stage_roles(k)]
        user = describe(kernel)
        names = [
            self._add(base if role == "step" else f"{base}_{role}", role, code, user, len(kernel.arrays))
            for role, _, code in stages
        ]
        rows = offload = None
        if k["row_sparse"]:
            rows = self._add(f"{base}_rows", "rows_kernel", macros.rows_kernel(k), user, len(kernel.arrays))
        if self.spec.separate_apply and hasattr(macros, "apply_kernel"):
            offload = (
                self._add(
                    f"{base}_effective_gradient",
                    "effective_gradient",
                    macros.effective_gradient_kernel(k),
                    user,
                    len(kernel.arrays),
                ),
                self._add(f"{base}_apply", "apply", macros.apply_kernel(k), user, len(kernel.arrays)),
            )
        output = host_output(self.spec, kernel, k) if self.spec.separate_apply else None
        roles = [role for role, _, _ in stages]
        combine = tuple(combined_before(role, k, prev) for role, prev in zip(roles, ["", *roles]))
        return Printed(
            tuple(names), tuple(grid for _, grid, _ in stages), plan_source(k, combine), rows, offload, output
        )

    def _add(self, name: str, function: str, code: str, user: str, rows: int) -> str:
        key = (function, code.strip("\n"))
        if key not in self._names:
            self._names[key] = name
            self._code[name] = key
            self._rows[name] = rows
        name = self._names[key]
        self._users.setdefault(name, []).append(user)
        return name

    def sources(self) -> list[str]:
        texts = []
        for name, (function, code) in self._code.items():
            doc = (
                f"{self.spec.title}: {ROLES[function]} of {'; '.join(dict.fromkeys(self._users[name]))}. "
                "`F` is the type it computes in (np.float32 or np.float64), `S` how each array is "
                "stored (optforge.runtime.precision; by default, in `F`)."
            )
            doc = textwrap.fill(doc, 88, subsequent_indent="    ")
            header = f'def {name}(F, S=None):\n    """{doc}"""\n'
            storage = f"    S = S or plain_storage(F, {self._rows[name]})\n\n"
            texts.append(f"{header}{storage}{code}\n\n    return {function}\n")
        return texts
