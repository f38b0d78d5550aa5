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

import math
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

    def subset(self, positions: list[int]) -> BatchShards | None:
        """The shards of the tensors at `positions` (a device launch's), or None if none is split."""
        split, rows = self.split[positions], self.rows[positions]
        return BatchShards(list(split), list(rows)) if split.any() else None

    def gathers(self, kind: str, chunks) -> list[Gather]:
        if kind not in self._gathers:
            self._gathers[kind] = self._make(kind, chunks)
        return self._gathers[kind]

    def _make(self, kind: str, chunks) -> list[Gather]:
        if kind in ("sums", "group"):
            return [Gather("sums", (np.flatnonzero(self.split),))]
        matrices = np.flatnonzero(self.rows[chunks.matrix_tensor])
        if kind == "columns":
            widths = chunks.tensor_cols[chunks.matrix_tensor[matrices]]
            first = chunks.matrix_cols[matrices]
            cols = [np.arange(start, start + n) for start, n in zip(first, widths)]
            columns = np.concatenate(cols) if cols else np.zeros(0, np.int64)
            return [Gather("columns", (slice(None), columns)), Gather("matrix_rows", (matrices,))]
        return [Gather("matrix_sums", (slice(None), matrices))]


def batch_shards(params: list) -> BatchShards | None:
    """Which of a batch's Parameters are split (a part of a larger, non-empty tensor) and which
    are 2-D (their matrix's rows split); None when none is."""
    split = [p.split is not None and math.prod(p.split) > 0 for p in params]
    if not any(split):
        return None
    return BatchShards(split, [sp and p.ndim == 2 for sp, p in zip(split, params)])


class Part(NamedTuple):
    """What a batch (or a device launch of one) yields at a reduction round."""

    kind: str  # Plan.combine's
    scratch: object  # its Scratch: host arrays, or device arrays
    shards: BatchShards | None  # its split tensors (None: none)
    chunks: object  # the host chunk table its gathers index
    # At a "group" round: what the sum rules need of the batch (optforge.runtime.optimizer)
    group: object = None


def rounds(steps: list[Iterator[list[Part]]]) -> Iterator[list[Part]]:
    """The reduction rounds of generators that each yield a list of Parts per round: per
    round, the parts of every one that reaches it (a generator that is done drops out)."""
    active = list(steps)
    while active:
        parts, going = [], []
        for gen in active:
            try:
                parts += next(gen)
            except StopIteration:
                continue
            going.append(gen)
        if going:
            yield parts
        active = going


def run_lockstep(
    steps: list[Iterator[list[Part]]], all_reduce: Callable | None, on_group: Callable | None = None
) -> None:
    """Run each batch's stages (`steps`: one generator per batch, see `rounds`); at each
    reduction round, add up over the ranks the values of the split tensors of every part
    that reaches it, in one `all_reduce` call (none when no part has a split tensor), then,
    at a "group" round, hand its parts to `on_group` (the group sums over every batch).
    Without either, each batch runs through alone."""
    if all_reduce is None and on_group is None:
        for gen in steps:
            for _ in gen:
                pass
        return
    for parts in rounds(steps):
        if all_reduce is not None:
            add_up(parts, all_reduce)
        grouped = [part for part in parts if part.kind == "group"]
        if grouped and on_group is not None:
            on_group(grouped)


def add_up(parts: list[Part], all_reduce: Callable) -> None:
    """One all-reduce over the split values of every part (device buffers through the host:
    they are a few values per tensor)."""
    gathered, hosts = [], {}
    for part in parts:
        if part.shards is None or not part.shards.any:
            continue
        for g in part.shards.gathers(part.kind, part.chunks):
            buffer = getattr(part.scratch, g.buffer)
            if id(buffer) not in hosts:
                hosts[id(buffer)] = (
                    buffer,
                    buffer.copy_to_host() if hasattr(buffer, "copy_to_host") else buffer,
                )
            gathered.append((hosts[id(buffer)][1], g.index))
    values = [np.asarray(host[index], dtype=np.float64).reshape(-1) for host, index in gathered]
    flat = np.concatenate(values) if values else np.zeros(0)
    if flat.size == 0:
        return
    all_reduce(flat)
    offset = 0
    for (host, index), value in zip(gathered, values):
        host[index] = flat[offset : offset + value.size].reshape(host[index].shape)
        offset += value.size
    for buffer, host in hosts.values():
        if host is not buffer:
            buffer.copy_to_device(host)
