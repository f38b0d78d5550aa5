"""The chunk table (optforge/runtime/chunks.py): every element once, each tensor's chunks in
order, threads' shares even under numba's static split, and a step's bits unchanged."""

import numpy as np
import pytest

import optforge
import optforge.nn
import optforge.optim
import optforge.runtime.optimizer
from optforge.bench.overhead import RESNET18
from optforge.runtime.chunks import chunk_table
from optforge.runtime.combine import flat_sums
from optforge.runtime.kernels import ChunkTable

CHUNK = 1 << 16
RESNET18_SIZES = [int(np.prod(s)) for s in RESNET18]


def tensor_by_tensor(sizes, chunk):
    """The table listed tensor by tensor, each tensor's chunks in order (the old table)."""
    rows = [
        (i, first, min(first + chunk, size))
        for i, size in enumerate(sizes)
        for first in range(0, size, chunk)
    ]
    return ChunkTable(*np.array(rows, dtype=np.int64).reshape(-1, 3).T.copy())


def heaviest_share(table: ChunkTable, threads: int) -> float:
    """The largest thread's elements over the mean, when the chunks are split into `threads`
    equal runs (numba's static schedule for a prange)."""
    work = [part.sum() for part in np.array_split(table.stop - table.start, threads)]
    return max(work) / np.mean(work)


def even_within_a_chunk(table: ChunkTable, threads: int) -> bool:
    """Whether the heaviest thread is at most one whole chunk over its mean share: the
    elements placed stay within a chunk of their share at every point of the table."""
    mean = (table.stop - table.start).sum() / threads
    return heaviest_share(table, threads) <= 1 + CHUNK / mean


SIZE_SETS = {
    "mixed": [0, 1, 7, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * CHUNK + 17, 0, 100],
    "resnet18": RESNET18_SIZES,
    "one": [CHUNK * 4 + 3],
    "none": [],
}


@pytest.mark.parametrize("name", SIZE_SETS)
def test_every_element_of_every_tensor_once_and_each_tensors_chunks_in_order(name):
    sizes = SIZE_SETS[name]
    table = chunk_table(sizes, CHUNK)
    assert all(column.dtype == np.int64 for column in table)
    assert np.all(table.stop - table.start > 0) and np.all(table.stop - table.start <= CHUNK)
    for i, size in enumerate(sizes):
        mine = table.tensor == i
        starts, stops = table.start[mine], table.stop[mine]
        # ascending, end to end, from 0 to the tensor's size: every element once, in order
        assert np.array_equal(starts, np.concatenate([[0], stops[:-1]])[: starts.size])
        assert (stops[-1] if stops.size else 0) == size
    # the same chunks as the tensor-by-tensor table, reordered
    old = tensor_by_tensor(sizes, CHUNK)
    assert sorted(zip(*table, strict=True)) == sorted(zip(*old, strict=True))


@pytest.mark.parametrize("threads", [2, 3, 4, 8])
def test_threads_get_even_shares_of_resnet18(threads):
    # Tensor by tensor, the second half of ResNet-18's chunks holds 1.43x the first's elements
    # (its last layers are whole chunks, its first layers and norms short ones).
    assert heaviest_share(tensor_by_tensor(RESNET18_SIZES, CHUNK), 2) > 1.15
    assert not even_within_a_chunk(tensor_by_tensor(RESNET18_SIZES, CHUNK), threads)
    assert even_within_a_chunk(chunk_table(RESNET18_SIZES, CHUNK), threads)


def test_threads_get_even_shares_of_many_small_tensors():
    rng = np.random.default_rng(0)
    sizes = rng.permutation([*([CHUNK] * 40), *rng.integers(1, 4096, 400).tolist()]).tolist()
    for threads in (2, 3, 4, 8, 16):
        assert even_within_a_chunk(chunk_table(sizes, CHUNK), threads)


@pytest.mark.parametrize(
    "sizes",
    [
        [1000 * CHUNK] + [CHUNK + 1] * 1000,  # short last chunks behind whole ones
        [300 * CHUNK] + [CHUNK + CHUNK // 8] * 60,  # an embedding before many layers
        [CHUNK + CHUNK // 8] * 60 + [300 * CHUNK],  # ... and after them
    ],
    ids=["tails-behind-whole-chunks", "large-first", "large-last"],
)
def test_short_last_chunks_behind_whole_ones_are_spread_too(sizes):
    assert not even_within_a_chunk(tensor_by_tensor(sizes, CHUNK), 2)
    for threads in (2, 4, 8):
        assert even_within_a_chunk(chunk_table(sizes, CHUNK), threads)


def test_negative_sizes_and_chunks_below_one_are_refused():
    with pytest.raises(ValueError, match="sizes >= 0 and a chunk >= 1"):
        chunk_table([-5, 10], 4)
    with pytest.raises(ValueError, match="sizes >= 0 and a chunk >= 1"):
        chunk_table([10], 0)


def test_the_table_is_deterministic():
    a, b = chunk_table(RESNET18_SIZES, CHUNK), chunk_table(list(RESNET18_SIZES), CHUNK)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


OPTIMIZERS = {
    "nn.Lamb": lambda params: optforge.nn.Lamb(params, learning_rate=1e-2, weight_decay=0.1),
    "optim.StableAdamW": lambda params: optforge.optim.StableAdamW(params, lr=1e-2, weight_decay=0.1),
    "optim.Prodigy": lambda params: optforge.optim.Prodigy(params, lr=1.0, weight_decay=0.1),
    "optim.AdamW": lambda params: optforge.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
}


def reversed_within_tensors(sizes, chunk):
    """A table whose tensors' chunks run backwards: the sums' order changed (the control)."""
    rows = [
        (i, first, min(first + chunk, size))
        for i, size in enumerate(sizes)
        for first in range(0, size, chunk)[::-1]
    ]
    return ChunkTable(*np.array(rows, dtype=np.int64).reshape(-1, 3).T.copy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", OPTIMIZERS)
def test_reordering_changes_no_bit_of_a_step(monkeypatch, make, dtype):
    # Lamb's and StableAdamW's per-tensor sums and Prodigy's group sums add each tensor's
    # partial sums over its chunks in table order: the same order as tensor by tensor, since
    # each tensor's chunks keep theirs. Chunk-wise magnitudes over 12 decades, so that adding
    # the partial sums in another order changes bits (the control below).
    rng = np.random.default_rng(1)
    shapes = [(7, 3 * CHUNK + 11), (17,), (11 * CHUNK + 3,), (4,), (CHUNK + 1,)]

    def spread(shape):
        x = rng.standard_normal(shape).reshape(-1)
        for first in range(0, x.size, CHUNK):
            x[first : first + CHUNK] *= 10.0 ** rng.uniform(-6, 6)
        return x.reshape(shape).astype(dtype)

    values = [spread(s) for s in shapes]
    grads = [[spread(s) for s in shapes] for _ in range(3)]

    def run(table):
        monkeypatch.setattr(optforge.runtime.optimizer, "chunk_table", table)
        params = [optforge.Parameter(v.copy(), f"p{i}") for i, v in enumerate(values)]
        opt = OPTIMIZERS[make](params)
        for g in grads:
            opt(tuple(g))
        return [p.data.copy() for p in params]

    balanced = run(chunk_table)
    assert all(np.array_equal(a, b) for a, b in zip(balanced, run(tensor_by_tensor), strict=True))
    if make == "nn.Lamb" and dtype == np.float64:  # the check can fail
        changed = run(reversed_within_tensors)
        assert not all(np.array_equal(a, b) for a, b in zip(balanced, changed, strict=True))


def test_each_tensors_sums_add_its_chunks_partial_sums_in_the_same_order():
    # What the order guarantees: combine's float64 sums (in table order) get the same bits as
    # over the tensor-by-tensor table. Partials of very different magnitudes, so that adding
    # them in another order changes the bits.
    sizes = [9 * CHUNK + 5, 17, 4 * CHUNK, 3]
    rng = np.random.default_rng(2)
    partial_of = {}

    def sums(table):
        partials = np.array(
            [
                partial_of.setdefault((t, s), rng.standard_normal() * 10 ** rng.uniform(-8, 8))
                for t, s in zip(table.tensor, table.start, strict=True)
            ]
        ).reshape(-1, 1)
        out = np.zeros((len(sizes), 2))
        flat_sums(table, partials, out)
        return out

    old = sums(tensor_by_tensor(sizes, CHUNK))
    assert np.array_equal(sums(chunk_table(sizes, CHUNK)), old)
    reversed_table = ChunkTable(*(column[::-1].copy() for column in tensor_by_tensor(sizes, CHUNK)))
    assert not np.array_equal(sums(reversed_table), old)  # the check can fail
