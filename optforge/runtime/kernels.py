"""How a generated kernel module describes its variants to the run-time."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np


class Plan(NamedTuple):
    """What a branch's stages hand each other, counted: the run-time allocates it once.

    `per_tensor` rows of per-tensor values (weight_decay, grad_scale, then what a
    finalize stage computes from the reductions); `reductions` partial sums per chunk;
    a factored kernel's row sums, column sums and per-matrix means.

    `combine` says, per stage, what the run-time combines before it runs
    (optforge.runtime.combine): "sums" (each tensor's partial sums, over its chunks),
    "columns" (each matrix's column sums, over its chunks), "matrices" (the per-matrix
    sums the line stage wrote), "group" (each tensor's sums, then the group sums' totals
    over the step's tensors and the sum rules: see `group_sums`), or "" (nothing). Those are
    the values a tensor split across ranks sums over them (optforge.runtime.shards) before
    the stage reads them.

    `matrices` scratch matrices (a matrix stage's, one per matrix function: each tensor's
    elements at its offset, see optforge.runtime.matrix); `shapes`: per-tensor rows 2 and 3
    hold each tensor's rows and columns (a spec of matrices).
    """

    per_tensor: int = 2
    reductions: int = 0
    row_sums: int = 0
    col_sums: int = 0
    matrix_means: int = 0
    combine: tuple[str, ...] = ()
    matrices: int = 0
    shapes: bool = False
    # Group sums (a spec's `group_sum`s): their columns of the per-tensor sums, which the
    # run-time adds over every tensor of the step at the "group" round, and how many values
    # the module's AFTER_SUMS returns from those totals (into Scratch.sum_values).
    group_sums: tuple[int, ...] = ()
    sum_values: int = 0


class Branch(NamedTuple):
    """The kernels of one host-side branch (e.g. RAdam rectified or not).

    ``stages[dtype]`` are its stages in order, each called as
    ``stage(chunks, arrays, per_tensor, scratch, *scalars)`` (see
    optforge.runtime.launch), where ``scalars`` are what ``scalars(t, lr, *hypers)``
    returns, cast to the dtype. A row-sparse kernel (``rows[dtype][0]``) takes
    ``(rows, row_len, arrays, per_tensor, *scalars)`` for one tensor. On CUDA, `grids`
    says what each stage's grid covers: "chunks" (a block each), "matrices", or
    "tensors" (a thread each); optforge.runtime.cuda launches them.
    """

    scalars: Callable[..., tuple]
    stages: Mapping[str, tuple[Callable, ...]]
    plan: Plan = Plan()
    rows: Mapping[str, tuple[Callable]] | None = None
    grids: tuple[str, ...] = ()


class per_dtype(Mapping):
    """dtype name, or Precision -> the stages `factories` make for it, in order: what
    `factory(np.float32)` or `factory(np.float64)` returns for a dtype name (every array in
    that type), and `factory(F, precision.storage())` for a batch's Precision (its compute
    type `F`, each array in its own storage; optforge.runtime.precision). Made on first use
    and once per factory, so branches that share a stage share its compiled code."""

    DTYPES = {"float32": np.float32, "float64": np.float64}

    def __init__(self, *factories: Callable):
        self.factories = factories

    def __getitem__(self, key) -> tuple:
        return tuple(self._make(factory, key) for factory in self.factories)

    def _make(self, factory: Callable, key):
        # Kept on the factory itself: the compiled stages of a user's spec go with its module
        # when the spec is rebuilt (optforge.compile_spec), not into a table that outlives it.
        made = factory.__dict__.setdefault("_stages_made", {})
        if key not in made:
            if isinstance(key, str):
                made[key] = factory(self.DTYPES[key])
            else:
                made[key] = factory(self.DTYPES[key.compute], key.storage())
        return made[key]

    def __iter__(self):
        return iter(self.DTYPES)

    def __len__(self) -> int:
        return len(self.DTYPES)


class Variant(NamedTuple):
    """One flag combination of a spec, compiled."""

    state: tuple[str, ...]
    branch: Callable[..., tuple] | None  # (t, lr, *hypers) -> the key of the branch to run
    branches: dict[tuple, Branch]
    chunk: int  # elements per chunk-table entry
    # Per state: "element" (shaped like the parameter), "row" or "col" (a factored kernel's
    # row and column factors); empty means all "element". A factored variant's kernels
    # take an optforge.runtime.factored.FactoredTable where the others take the chunk table.
    shapes: tuple[str, ...] = ()
    factored: bool = False

    def state_shapes(self, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of each state of a parameter of `shape`."""
        from optforge.runtime.factored import STATE_SHAPES

        kinds = self.shapes or ("element",) * len(self.state)
        return [(name, STATE_SHAPES[kind](tuple(shape))) for name, kind in zip(self.state, kinds)]

    def branch_key(self, t: int, lr: float, *hypers) -> tuple:
        """The key of the branch that runs at step `t` (its host-side conditions' values)."""
        return () if self.branch is None else self.branch(t, lr, *hypers)

    def step(self, t: int, lr: float, hypers: tuple, dtype: np.dtype) -> tuple[Branch, list]:
        """The branch this step takes and its step-level scalars, cast to `dtype`."""
        branch = self.branches[self.branch_key(t, lr, *hypers)]
        return branch, [dtype.type(s) for s in branch.scalars(t, lr, *hypers)]


class Modes(NamedTuple):
    """A spec's two modes (optforge.compiler.spec.Modes), for the run-time: the param group key
    that holds the mode, the methods that switch into the stepping mode (`enter`, True) and
    out of it (`leave`), the mode a group starts in, and what `step()` raises outside it."""

    key: str
    enter: str
    leave: str
    initial: bool
    error: type
    message: str


def tensor_variant_key(module, variant_key: tuple, ndim: int) -> tuple:
    """The variant that steps a tensor of `ndim` dimensions: `variant_key` with the module's
    rank flag (if it has one: Adafactor's `factored`) set by `ndim`."""
    rank = getattr(module, "RANK_FLAG", None)
    if rank is None:
        return variant_key
    index, min_ndim = rank
    return (*variant_key[:index], ndim >= min_ndim, *variant_key[index + 1 :])


class ChunkTable(NamedTuple):
    """Per chunk of a flat kernel's batch: its tensor, and its elements' range in it (made by
    optforge.runtime.chunks.chunk_table). Defined here, where numba's cache indexes name it."""

    tensor: np.ndarray
    start: np.ndarray
    stop: np.ndarray
