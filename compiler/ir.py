"""The small IR between the passes and the backends.

A `Kernel` is one flag variant and one host-side branch of one spec, split by
binding time: host code (once per step), per-tensor code, and one or two
element stages (the fused loop bodies). A second stage appears when the
update needs a per-tensor reduction of the first (LAMB's norms) or when the
spec applies the parameter update separately (AdamOffload). Backends print
the IR; they make no decisions about the math.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy as sp


@dataclass(frozen=True)
class Assignment:
    target: sp.Symbol
    expr: sp.Expr

    def __str__(self) -> str:
        return f"{self.target} = {self.expr}"


@dataclass(frozen=True)
class Array:
    """A per-element array argument: the parameter, its gradient, or a state."""

    symbol: sp.Symbol  # the element value inside the loop, e.g. m
    name: str  # the public name, e.g. "moment1"; "param" and "grad" for w and g
    shape: str = "element"  # "row" or "col" for a factored kernel's row- and column-shaped state


@dataclass(frozen=True)
class Load:
    array: Array
    value: sp.Symbol  # the symbol the loaded element is bound to (m, or m_new in a later stage)


@dataclass(frozen=True)
class Store:
    array: Array
    value: sp.Symbol  # the element-level symbol holding the array's new value


@dataclass(frozen=True)
class Reduction:
    """A per-tensor L2 norm, `symbol = sqrt(sum(expr**2))`, summed in float64; with `mean`,
    the root mean square `sqrt(sum(expr**2) / size)`."""

    symbol: sp.Symbol
    expr: sp.Expr
    mean: bool = False
    squared: bool = False  # `expr` is already the square (see passes/reductions.summand)


@dataclass(frozen=True)
class Stage:
    per_tensor: tuple[sp.Symbol, ...]  # per-tensor values read (one array entry per tensor)
    tensor: tuple[Assignment, ...]  # once per chunk, before the loop
    loads: tuple[Load, ...]
    element: tuple[Assignment, ...]  # the fused loop body
    stores: tuple[Store, ...]  # only arrays whose value changes
    reductions: tuple[Reduction, ...] = ()  # partial sums of squares per chunk


@dataclass(frozen=True)
class Kernel:
    spec_name: str
    variant: tuple[tuple[str, bool], ...]  # (flag name, value) in spec order
    guards: tuple[sp.Expr, ...]  # step-level conditions chosen on the host
    branch: tuple[bool, ...]  # the value of each guard in this kernel
    host_inputs: tuple[sp.Symbol, ...]  # t, lr and the hyperparameters
    host: tuple[Assignment, ...]  # once per step, on the host
    guard_host: tuple[Assignment, ...]  # what the host computes to choose the branch
    scalars: tuple[sp.Symbol, ...]  # step-level values the kernels take as arguments
    arrays: tuple[Array, ...]  # per-element arrays in argument order
    stages: tuple[Stage, ...]
    finalize: tuple[Assignment, ...] = ()  # per tensor, between the stages
    finalize_outputs: tuple[sp.Symbol, ...] = ()  # per-tensor values it hands to stage 2

    @property
    def tensor_inputs(self) -> tuple[sp.Symbol, ...]:
        """The built-in per-tensor inputs (weight_decay, grad_scale) any stage reads."""
        from optforge.compiler.spec import BUILTIN_TENSOR

        used = set().union(*(s.per_tensor for s in self.stages))
        used |= set().union(*(a.expr.free_symbols for a in self.finalize)) if self.finalize else set()
        return tuple(s for s in BUILTIN_TENSOR if s in used)

    @property
    def suffix(self) -> str:
        """Names the flag values and branch, e.g. 'use_nesterov' or 'rho_t_gt_5'."""
        parts = [name for name, value in self.variant if value]
        parts += [condition_name(c, v) for c, v in zip(self.guards, self.branch)]
        return "__".join(parts)

    @property
    def flag_suffix(self) -> str:
        return "__".join(name for name, value in self.variant if value)


_OPERATORS = {">=": "ge", "<=": "le", "==": "eq", "!=": "ne", ">": "gt", "<": "lt", "&": "and", "|": "or"}


def condition_name(condition: sp.Expr, value: bool) -> str:
    """A Python identifier for `condition` being `value`, e.g. 'rho_t_gt_5' / 'not_rho_t_gt_5'."""
    text = re.sub(r"Eq\(([^,]+), ([^)]+)\)", r"\1 == \2", str(condition))
    for op, word in _OPERATORS.items():
        text = text.replace(f" {op} ", f" {word} ")
    text = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_")
    return text if value else f"not_{text}"


@dataclass(frozen=True)
class Mean:
    """A mean along an axis of a factored tensor: `symbol = mean(expr)` over the rows' or
    columns' elements (`row_mean`, `col_mean`) or over a matrix's rows (`matrix_mean`)."""

    symbol: sp.Symbol
    expr: sp.Symbol  # the value summed: per element, or per row for a matrix mean


@dataclass(frozen=True)
class LineStage:
    """Per-row (or per-column) code between a factored kernel's first and second pass."""

    means: tuple[Mean, ...]  # the row (column) means it reads, from pass 1's sums
    loads: tuple[Load, ...]
    lines: tuple[Assignment, ...]
    stores: tuple[Store, ...]


@dataclass(frozen=True)
class FactoredKernel(Kernel):
    """A kernel over tensors seen as stacks of matrices (..., rows, cols), in three passes.

    Pass 1 (`stages[0]`) sums the row and column means' arguments (and
    per-tensor reductions of what it computes); the line stages update the
    per-row and per-column values and sum the matrix means; pass 2
    (`stages[1]`) computes what reads them and its own reductions; after the
    per-tensor `finalize`, pass 3 (`stages[2]`) the rest. Element-level
    values a later pass needs are reloaded if stored and recomputed if local.
    A pass's loads of row- and column-shaped arrays read the element's row
    and column; its matrix-level lines run once per chunk, as tensor lines do.
    """

    row_stage: LineStage = LineStage((), (), (), ())
    col_stage: LineStage = LineStage((), (), (), ())
    matrix_means: tuple[Mean, ...] = ()
    matrix_reads: tuple[tuple[sp.Symbol, ...], ...] = ()  # per pass: the matrix means it reads
    row_lines: tuple[tuple[Assignment, ...], ...] = ()  # per pass: once per row, before its columns
