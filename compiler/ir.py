"""The IR between the passes and the backends: regions over index spaces.

A `Kernel` is one flag variant and one host-side branch of one spec: the host
code that runs once per step, and an ordered list of `Region`s. A region is a
loop over one index space (once per tensor or chunk, per row, per column, per
element) in one phase; it loads arrays, computes its body, stores arrays and
accumulates reductions. Phases are ordered: a region reads only what earlier
phases stored or reduced, or what it computes itself (passes/schedule.py).

    flat kernel        PASS1 (chunk prologue, elements)
    two-stage kernel   PASS1, FINALIZE (per tensor, from PASS1's sums), PASS3
    offload            PASS1, APPLY (the parameter update on its own)
    factored kernel    PASS1, LINES (rows, columns), PASS2, FINALIZE, PASS3
    matrix stage       PASS1 (stores the argument), MATRIX (per tensor, in place), PASS3

Backends print the regions; they make no decisions about the math.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, IntEnum

import sympy as sp


class Space(IntEnum):
    """Where a value varies. A value computed from others lives in the largest of their
    spaces, except that a row value times a column value is per element (passes/factored.py)."""

    SCALAR = 0  # once per step, on the host
    TENSOR = 1  # once per tensor
    MATRIX = 2  # once per matrix of a factored tensor (a stack of matrices)
    ROW = 3
    COL = 4
    ELEMENT = 5


# Phases, in the order they run. A value's phase is the first one that can compute it.
PASS1 = 1  # the inputs; sums the norms' and the row and column means' arguments
LINES = 2  # per row and per column: the means of PASS1, row and column state; sums matrix means
PASS2 = 3  # element values reading row or column values; the matrix means are ready
MATRIX = 4  # per tensor: the matrix functions (passes/matrix.py), over scratch matrices
FINALIZE = 5  # per tensor, from the sums of the passes before
PASS3 = 6  # element values reading the finalize's values, or a matrix function's result
APPLY = 7  # a spec's separate parameter update (AdamOffload's `w += delta`)


class DType(Enum):
    """The float type a statement computes in."""

    HOST = "host"  # the spec's host dtype (spec.host_dtype), once per step
    KERNEL = "kernel"  # the dtype the kernel is compiled for (float32 or float64)
    FLOAT64 = "float64"  # per-tensor values from float64 sums (a finalize)


@dataclass(frozen=True)
class Assignment:
    """`target = expr`; once scheduled into a region, typed with its space and dtype."""

    target: sp.Symbol
    expr: sp.Expr
    space: Space | None = None  # None until the scheduler places it
    dtype: DType | None = None

    def __str__(self) -> str:
        return f"{self.target} = {self.expr}"


@dataclass(frozen=True)
class Array:
    """An array a region loads or stores: an argument (the parameter, its gradient, a state)
    or a per-tensor or per-matrix buffer between phases."""

    symbol: sp.Symbol  # the element value inside the loop, e.g. m
    name: str  # the public name, e.g. "moment1"; "param" and "grad" for w and g
    # "element", or "row"/"col" for a factored kernel's row- and column-shaped state;
    # "tensor" and "matrix" for the values handed between phases (u0, matrix_mean0);
    # "scratch" for a matrix function's scratch matrix, shaped like the parameter
    shape: str = "element"


@dataclass(frozen=True)
class Load:
    array: Array
    value: sp.Symbol  # the symbol the loaded element is bound to (m, or m_new in a later phase)


@dataclass(frozen=True)
class Store:
    array: Array
    value: sp.Symbol  # the symbol holding the array's new value


@dataclass(frozen=True)
class Reduction:
    """A sum over a region's loop, in float64. Per tensor (`space` TENSOR), the L2 norm
    `symbol = sqrt(sum(expr**2))`, with `mean` the root mean square `sqrt(sum(expr**2) / size)`,
    with `plain` (and `mean`) the mean `sum(expr) / size`; per row, column or matrix (ROW, COL,
    MATRIX), the mean `symbol = sum(expr) / count`."""

    symbol: sp.Symbol
    expr: sp.Expr
    mean: bool = False
    squared: bool = False  # `expr` is already the square (see passes/reductions.summand)
    space: Space = Space.TENSOR  # the space of the result
    plain: bool = False  # per tensor: sums `expr` itself, no square and no root (`mean`)
    # a group sum (spec.group_sum): summed per tensor like a plain mean, then added over the
    # step's tensors by the run-time for the sum rules, never divided nor read per tensor
    group: bool = False


@dataclass(frozen=True)
class Region:
    """One loop over `space` in `phase`: load, compute `body` in order, store, reduce."""

    space: Space
    phase: int
    loads: tuple[Load, ...] = ()
    body: tuple[Assignment, ...] = ()
    stores: tuple[Store, ...] = ()  # only arrays whose value changes
    reductions: tuple[Reduction, ...] = ()


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
    arrays: tuple[Array, ...]  # the argument arrays, in argument order
    regions: tuple[Region, ...]  # in phase order; within a phase, outer loops first
    matrices: bool = False  # a factored variant: tensors seen as stacks of matrices
    # computed by the matrix stage (region TENSOR, MATRIX), each over its scratch matrix
    matrix_functions: tuple[MatrixFunction, ...] = ()
    # (sum rule output, the per-tensor name the stage after the group sums reads it by), in the
    # order of Scratch.sum_values, which the run-time fills (passes/group_sums.py)
    late: tuple[tuple[sp.Symbol, sp.Symbol], ...] = ()

    def region(self, space: Space, phase: int) -> Region:
        """The region over `space` in `phase`, or an empty one."""
        for r in self.regions:
            if (r.space, r.phase) == (space, phase):
                return r
        return Region(space, phase)

    def phases(self, space: Space) -> tuple[int, ...]:
        """The phases that have a region over `space`, in order."""
        return tuple(r.phase for r in self.regions if r.space == space)

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
class MatrixFunction:
    """`symbol = function(argument, *parameters)` over one tensor's matrix (spec.MATRIX_FUNCTIONS):
    `argument` is stored into the scratch matrix `array` by the element pass before the
    matrix stage, which overwrites it with the result, `symbol` in the passes after it."""

    symbol: sp.Symbol
    argument: sp.Symbol
    function: type
    parameters: tuple[sp.Expr, ...]
    array: Array
