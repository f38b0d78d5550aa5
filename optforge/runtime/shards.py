"""Tensors split across ranks: the sums of a step that are added up over the ranks.

A parameter may be one rank's part of a larger tensor, split along its first
dimension (FSDP2's ``Shard(0)``; `Parameter(..., split=whole_shape)`). An
elementwise update needs nothing from the other ranks. A per-tensor reduction
(Lamb's norms, Adafactor's RMS) does: between the stages, the run-time combines
each tensor's partial sums (optforge.runtime.combine), and here the other ranks'
parts are added to them before the next stage reads them. So are a factored
kernel's column sums, row counts and sums over rows for a matrix whose rows are
split (a 2-D tensor split along dim 0); a tensor of more dimensions split along
dim 0 holds whole matrices, which stay local.

The batches of a step run in lockstep: each reduction round carries the values of
every batch that reaches it in one flat float64 buffer, summed by one call of the
dialect's `all_reduce` (torch.distributed's, over the tensors' process group).
Every rank has the same tensors in the same batches, so every rank makes the same
calls with buffers of the same size. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np


class Gather(NamedTuple):
    """The values of one combined buffer that the ranks add up: `buffer[index]`."""

    buffer: str  # a Scratch field
    index: tuple  # NumPy index into it


class BatchShards:
    """Which tensors of a batch are parts of larger ones, and what each reduction round adds
    up over the ranks for them (made once per batch and kind)."""

    def __init__(self, split: list[bool], rows: list[bool]):
        self.split = np.asarray(split, dtype=bool).reshape(-1)  # its sums are added up
        self.rows = np.asarray(rows, dtype=bool).reshape(-1)  # 2-D: its one matrix's rows are split
        self._gathers: dict = {}

    @property
    def any(self) -> bool:
        return bool(self.split.any())

    def gathers(self, kind: str, chunks) -> list[Gather]:
        if kind not in self._gathers:
            self._gathers[kind] = self._make(kind, chunks)
        return self._gathers[kind]

    def _make(self, kind: str, chunks) -> list[Gather]:
        if kind == "sums":
            return [Gather("sums", (np.flatnonzero(self.split),))]
        matrices = np.flatnonzero(self.rows[chunks.matrix_tensor])
        if kind == "columns":
            widths = chunks.tensor_cols[chunks.matrix_tensor[matrices]]
            first = chunks.matrix_cols[matrices]
            cols = [np.arange(start, start + n) for start, n in zip(first, widths)]
            columns = np.concatenate(cols) if cols else np.zeros(0, np.int64)
            return [Gather("columns", (slice(None), columns)), Gather("matrix_rows", (matrices,))]
        return [Gather("matrix_sums", (slice(None), matrices))]


def run_lockstep(steps: list[tuple[object, Iterator]], all_reduce: Callable | None) -> None:
    """Run each batch's stages (`steps`: (batch, its stage_steps generator)); at each
    reduction round, add up over the ranks the values of its split tensors (`batch.shards`,
    a BatchShards) in one `all_reduce` call for all the batches that reach the round (none
    when none has a split tensor). Without `all_reduce`, each batch runs through alone."""
    if all_reduce is None:
        for _, gen in steps:
            for _ in gen:
                pass
        return
    active = list(steps)
    while active:
        reached, going = [], []
        for batch, gen in active:
            try:
                kind, scratch = next(gen)
            except StopIteration:
                continue
            going.append((batch, gen))
            reached.append((batch, kind, scratch))
        if reached:
            add_up(reached, all_reduce)
        active = going


def add_up(reached: list, all_reduce: Callable) -> None:
    """One all-reduce over the split values of every (batch, kind, scratch) in `reached`."""
    parts = []
    for batch, kind, scratch in reached:
        shards = getattr(batch, "shards", None)
        if shards is None or not shards.any:
            continue
        for g in shards.gathers(kind, batch.chunks):
            parts.append((getattr(scratch, g.buffer), g.index))
    values = [np.asarray(buffer[index], dtype=np.float64).reshape(-1) for buffer, index in parts]
    flat = np.concatenate(values) if values else np.zeros(0)
    if flat.size == 0:
        return
    all_reduce(flat)
    offset = 0
    for (buffer, index), value in zip(parts, values):
        buffer[index] = flat[offset : offset + value.size].reshape(buffer[index].shape)
        offset += value.size
