"""Parameters split across ranks (optforge.runtime.shards), in one process: each "rank" is
a thread with its own optimizer over its rows, and `all_reduce` adds the ranks' buffers
up in rank order. The whole tensors' single optimizer is the reference. The process
group version of the same (gloo, FSDP2) is tests/test_distributed_fsdp.py.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import optforge
import optforge.nn
import optforge.optim
from optforge.runtime.chunks import chunk_table
from optforge.runtime.combine import flat_sums, matrix_columns
from optforge.runtime.factored import factored_table

# Matrices whose rows split unevenly (and, over 4 ranks, leave a rank without a row), a
# stack of matrices, vectors (one shorter than the ranks), a one-row matrix.
SHAPES = [(7, 5), (3, 4), (4, 3, 6), (9,), (2,), (1, 6), (70_001,)]


class ThreadRanks:
    """`n` ranks as threads: all_reduce sums every rank's array, in rank order. One rank runs
    at a time (it holds `turn` but while it waits in all_reduce), so no two threads launch
    numba's parallel kernels at once (not every threading layer allows it)."""

    def __init__(self, n: int):
        self.n = n
        self.slots: list = [None] * n
        self.barrier = threading.Barrier(n, timeout=30)
        self.turn = threading.Lock()
        self.calls = [0] * n

    def all_reduce_for(self, rank: int):
        def all_reduce(values: np.ndarray) -> None:
            self.calls[rank] += 1
            self.slots[rank] = values.copy()
            self.turn.release()
            self.barrier.wait()
            total = self.slots[0].copy()
            for other in self.slots[1:]:
                assert other.shape == total.shape, "ranks reduce buffers of different sizes"
                total += other
            self.barrier.wait()  # every rank has read the slots before any writes again
            self.turn.acquire()
            values[:] = total

        return all_reduce

    def run(self, work) -> list:
        """work(rank) on every rank at once; their results."""
        results: list = [None] * self.n
        errors: list = []

        def main(rank):
            self.turn.acquire()
            try:
                results[rank] = work(rank)
            except BaseException as error:  # noqa: BLE001 (re-raised below)
                errors.append(error)
                self.barrier.abort()
            finally:
                self.turn.release()

        threads = [threading.Thread(target=main, args=(r,)) for r in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if errors:
            raise errors[0]
        return results


def rows_of(n_rows: int, ranks: int, rank: int) -> slice:
    """torch.chunk's split (FSDP2's Shard(0)): chunks of ceil(rows / ranks), the last ones short or empty."""
    size = -(-n_rows // ranks)
    return slice(min(rank * size, n_rows), min((rank + 1) * size, n_rows))


def make(cls, params, kwargs):
    return cls(params, **kwargs)


def run_whole(cls, kwargs, wholes, grads_per_step):
    params = [optforge.Parameter(w.copy(), f"p{i}") for i, w in enumerate(wholes)]
    opt = make(cls, params, kwargs)
    for grads in grads_per_step:
        opt(tuple(grads))
    return [p.data for p in params], opt


def run_split(cls, kwargs, wholes, grads_per_step, ranks: int):
    """The whole tensors after the steps of `ranks` optimizers over their rows, and each
    rank's count of all-reduce calls."""
    group = ThreadRanks(ranks)

    def work(rank):
        return run_split_rank(cls, kwargs, wholes, grads_per_step, ranks, rank, group.all_reduce_for(rank))

    results = group.run(work)
    return [np.concatenate([r[i] for r in results]) for i in range(len(wholes))], group.calls


def run_split_rank(cls, kwargs, wholes, grads_per_step, ranks, rank, all_reduce):
    """One rank's run: its rows of each tensor, its optimizer, the steps; its parts after."""
    parts = [rows_of(w.shape[0], ranks, rank) for w in wholes]
    params = [
        optforge.Parameter(w[part].copy(), f"p{i}", split=w.shape)
        for i, (w, part) in enumerate(zip(wholes, parts))
    ]
    opt = make(cls, params, kwargs)
    opt.all_reduce = all_reduce
    for grads in grads_per_step:
        opt(tuple(np.ascontiguousarray(g[part]) for g, part in zip(grads, parts)))
    return [p.data for p in params]


def lars(params, **kwargs):
    """nn.LARS around nn.Momentum: its norms are taken by the run-time, not a kernel."""
    return optforge.nn.LARS(optforge.nn.Momentum(params, learning_rate=0.1, momentum=0.9), **kwargs)


CASES = [
    (optforge.nn.Lamb, {"learning_rate": 1e-2, "weight_decay": 0.1}, 1),
    (optforge.optim.Adafactor, {"lr": 1e-2, "weight_decay": 0.01}, 3),
    (optforge.optim.Adafactor, {"lr": 1e-2, "maximize": True}, 3),
    (optforge.optim.AdamW, {"lr": 1e-2}, 0),  # elementwise: nothing to add up
    (lars, {"coefficient": 0.01}, 1),  # the norms of every parameter in one all-reduce
    # the group sums: every tensor's sums in one all-reduce, before the sum rules run
    (optforge.optim.Prodigy, {"weight_decay": 0.01}, 1),
]


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, kwargs, rounds", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_split_parameters_step_as_the_whole(cls, kwargs, rounds, dtype, ranks):
    rng = np.random.default_rng(7)
    wholes = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    steps = 4
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]
    expected, _ = run_whole(cls, kwargs, wholes, grads)
    got, calls = run_split(cls, kwargs, wholes, grads, ranks)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol)
    # One all-reduce per reduction round and step, for all the tensors at once.
    assert calls == [rounds * steps] * ranks


def test_without_the_sums_of_the_other_ranks_the_reductions_are_wrong():
    """The test above fails when the all-reduce adds nothing: this is its guard."""
    rng = np.random.default_rng(7)
    wholes = [rng.standard_normal(s).astype(np.float32) for s in SHAPES[:3]]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES[:3]] for _ in range(3)]
    for cls, kwargs, _ in CASES[:2]:
        expected, _ = run_whole(cls, kwargs, wholes, grads)
        group = ThreadRanks(2)
        got = group.run(lambda rank: run_split_rank(cls, kwargs, wholes, grads, 2, rank, lambda values: None))
        whole = [np.concatenate([r[i] for r in got]) for i in range(len(wholes))]
        assert max(np.abs(w - e).max() for w, e in zip(whole, expected)) > 1e-4


def test_split_without_all_reduce_is_refused_before_any_change():
    w = optforge.Parameter(np.ones((3, 4), np.float32), "w", split=(6, 4))
    opt = optforge.optim.Adafactor([w])
    with pytest.raises(RuntimeError, match="all_reduce"):
        opt((np.ones((3, 4), np.float32),))
    assert np.array_equal(w.data, np.ones((3, 4), np.float32))
    assert opt.global_step == 0 and all(np.all(a == 0) for a in opt.row_var)
    # An elementwise spec needs nothing from the other ranks.
    v = optforge.Parameter(np.ones((3, 4), np.float32), "v", split=(6, 4))
    optforge.optim.AdamW([v])((np.ones((3, 4), np.float32),))
    assert not np.array_equal(v.data, np.ones((3, 4), np.float32))


def test_split_with_grad_centralization_is_refused():
    w = optforge.Parameter(np.ones((3, 4), np.float32), "w", split=(6, 4))
    with pytest.raises(ValueError, match="grad_centralization"):
        optforge.nn.Adam([{"params": [w], "grad_centralization": True}], learning_rate=0.1)


@pytest.mark.parametrize(
    "split, error",
    [
        ((6, 5), ValueError),  # another trailing dimension
        ((2, 4), ValueError),  # shorter than the part
        ((6,), ValueError),  # another rank
        ("6x4", TypeError),
        ((6.0, 4), TypeError),
        ((-1, 4), TypeError),
    ],
)
def test_parameter_split_must_be_a_whole_shape_along_dim_0(split, error):
    with pytest.raises(error, match="split"):
        optforge.Parameter(np.ones((3, 4), np.float32), "w", split=split)


def test_parameter_split_survives_a_copy():
    import copy

    p = optforge.Parameter(np.ones((3, 4), np.float32), "w", split=(8, 4))
    assert copy.deepcopy(p).split == (8, 4)


def test_combine_adds_chunks_in_order():
    rng = np.random.default_rng(0)
    chunks = chunk_table([5, 0, 9], 4)
    partials = rng.standard_normal((chunks.tensor.size, 2))
    sums = np.full((3, 3), np.nan)
    flat_sums(chunks, partials, sums)
    for t in range(3):
        mine = chunks.tensor == t
        np.testing.assert_array_equal(sums[t, :2], partials[mine].sum(axis=0) if mine.any() else 0.0)
        assert sums[t, 2] == [5, 0, 9][t]


def test_matrix_columns_and_a_matrix_without_rows_here():
    shapes = [(5, 3), (0, 4), (2, 2, 2)]
    table = factored_table(shapes, chunk=3, split_rows=[True, True, False])
    # The (0, 4) matrix of a split tensor stays, without chunks; an unsplit empty one would not.
    assert table.matrix_tensor.tolist() == [0, 1, 2, 2]
    assert factored_table(shapes, chunk=3).matrix_tensor.tolist() == [0, 2, 2]
    rng = np.random.default_rng(1)
    col_sums = rng.standard_normal((1, table.total_cols))
    columns = np.full((1, table.total_matrix_cols), np.nan)
    rows = np.full(table.matrix_tensor.size, np.nan)
    matrix_columns(table, col_sums, columns, rows)
    assert rows.tolist() == [5, 0, 2, 2]
    for m in range(table.matrix_tensor.size):
        cols = table.tensor_cols[table.matrix_tensor[m]]
        mine = [
            col_sums[0, table.chunk_cols[c] : table.chunk_cols[c] + cols]
            for c in range(table.matrix_chunk0[m], table.matrix_chunk1[m])
        ]
        expected = np.sum(mine, axis=0) if mine else np.zeros(cols)
        got = columns[0, table.matrix_cols[m] : table.matrix_cols[m] + cols]
        np.testing.assert_allclose(got, expected, rtol=1e-15)


@pytest.mark.parametrize("cls, kwargs, rounds", CASES[::3], ids=lambda c: getattr(c, "__name__", ""))
def test_a_nonfinite_gradient_on_one_rank_skips_the_step_on_every_rank(cls, kwargs, rounds):
    """skip_nonfinite: a rank holds only its part of each gradient; the ranks decide together
    (else one would step alone, or wait in the step's all-reduce for ranks that skipped)."""
    rng = np.random.default_rng(3)
    wholes = [rng.standard_normal(s).astype(np.float32) for s in SHAPES[:3]]
    group = ThreadRanks(2)

    def work(rank):
        parts = [rows_of(w.shape[0], 2, rank) for w in wholes]
        params = [
            optforge.Parameter(w[p].copy(), f"p{i}", split=w.shape)
            for i, (w, p) in enumerate(zip(wholes, parts))
        ]
        opt = cls(params, **kwargs, skip_nonfinite=True)
        opt.all_reduce = group.all_reduce_for(rank)
        grads = [np.ones(p.shape, np.float32) for p in params]
        if rank == 1:
            grads[0][0, 0] = np.nan
        before = [p.data.copy() for p in params]
        opt(tuple(grads))
        return opt.skipped_steps, [np.array_equal(b, p.data) for b, p in zip(before, params)]

    for skipped, unchanged in group.run(work):
        assert skipped == 1 and all(unchanged)
    assert group.calls == [1, 1]  # the flag's all-reduce, and no step's


DEVICE_CASES = [
    (optforge.nn.Lamb, {"learning_rate": 1e-2, "weight_decay": 0.1}, 1),
    (optforge.optim.Adafactor, {"lr": 1e-2, "weight_decay": 0.01}, 3),
]


@pytest.mark.parametrize("cls, kwargs, rounds", DEVICE_CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_split_device_parameters_step_as_the_whole(cls, kwargs, rounds, monkeypatch):
    """On the device (the CUDA simulator here): each launch's sums go through the host to the
    all-reduce. More tensors than one launch takes (SLOTS), in chunks of 8 elements."""
    cuda = pytest.importorskip("numba.cuda")
    from optforge.runtime.device import DeviceStepper

    monkeypatch.setattr(DeviceStepper, "chunk", 8)
    shapes = [(7, 5), (3, 4), (4, 3, 2), (9,), (2,), (1, 6), (5, 3), (6,), (3, 3), (11,)]
    rng = np.random.default_rng(5)
    wholes = [rng.standard_normal(s) for s in shapes]  # float64: the sums' order barely shows
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(2)]
    expected, _ = run_whole(cls, kwargs, wholes, grads)
    group = ThreadRanks(2)

    def work(rank):
        parts = [rows_of(w.shape[0], 2, rank) for w in wholes]
        params = [
            optforge.Parameter(cuda.to_device(np.ascontiguousarray(w[p])), f"p{i}", split=w.shape)
            for i, (w, p) in enumerate(zip(wholes, parts))
        ]
        opt = cls(params, **kwargs)
        opt.all_reduce = group.all_reduce_for(rank)
        for step in grads:
            opt(tuple(cuda.to_device(np.ascontiguousarray(g[p])) for g, p in zip(step, parts)))
        return [p.asnumpy() for p in params]

    results = group.run(work)
    for i, e in enumerate(expected):
        np.testing.assert_allclose(np.concatenate([r[i] for r in results]), e, rtol=1e-12, atol=1e-13)
    assert group.calls == [rounds * len(grads)] * 2
