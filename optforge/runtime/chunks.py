"""The chunk table of a flat kernel: its tensors cut into pieces, in an order that balances threads.

A flat kernel's parallel loop runs over the chunks of every tensor of a batch, at most
`chunk` (65536) elements each: `numba.prange` splits that loop into one contiguous, equal
run of chunks per thread (numba's static schedule). Listed tensor by tensor, a model's
chunks are uneven runs: ResNet-18's early layers and its batch-norm vectors are short
chunks, its last layers full ones, so the thread given the second half of the list gets
1.4 times the elements of the first (17 % more than an even split, measured as a step
1.14 times slower than the same bytes in even chunks). `chunk_table` orders the chunks
so that every prefix holds about its share of the elements (after k of n chunks, k / n of
them): any equal split into runs, for any thread count, then carries about equal work.

Each tensor's chunks stay in ascending order of their start, so the run-time's sums over a
tensor's chunks (optforge.runtime.combine, in table order) add the same partial sums in
the same order as a table listed tensor by tensor: reordering changes no bit of a step.
"""

from __future__ import annotations

import heapq

import numpy as np

from optforge.runtime.kernels import ChunkTable


def chunk_table(sizes: list[int], chunk: int) -> ChunkTable:
    """(tensor index, start, stop) of every chunk of at most `chunk` elements, balanced.

    Greedy: each tensor offers its next chunk; the next place takes the largest offer or
    the smallest, whichever brings the elements placed so far nearer to their share. Among
    equal largest offers (whole chunks), the tensor with the fewest chunks left goes first,
    so that the short last chunks behind whole ones are offered early rather than all at
    the end (then the lowest tensor). Two heaps of the offers: O(chunks log chunks)."""
    sizes = [int(s) for s in sizes]
    if chunk < 1 or (sizes and min(sizes) < 0):
        raise ValueError(
            f"chunk_table needs sizes >= 0 and a chunk >= 1, not {min(sizes, default=0)} and {chunk}"
        )
    count = sum(-(-s // chunk) for s in sizes)
    total = sum(sizes)
    start = [0] * len(sizes)  # each tensor's next chunk starts here

    def offer(i: int) -> tuple[int, int]:
        """Tensor i's next chunk's length, and its chunks left (0, 0 once it has none)."""
        rest = sizes[i] - start[i]
        return min(chunk, rest), -(-rest // chunk)

    largest: list[tuple[int, int, int]] = []  # (-length, chunks left, tensor)
    smallest: list[tuple[int, int]] = []  # (length, tensor)

    def push(i: int) -> None:
        size, left = offer(i)
        heapq.heappush(largest, (-size, left, i))
        heapq.heappush(smallest, (size, i))

    # An entry is stale once its tensor's offer has changed (a finished tensor offers (0, 0)).
    def top_largest() -> tuple[int, int]:
        while (-largest[0][0], largest[0][1]) != offer(largest[0][2]):
            heapq.heappop(largest)
        return -largest[0][0], largest[0][2]

    def top_smallest() -> tuple[int, int]:
        while smallest[0][0] != offer(smallest[0][1])[0]:
            heapq.heappop(smallest)
        return smallest[0]

    for i, size in enumerate(sizes):
        if size > 0:
            push(i)
    tensor, first, last = [], [], []
    placed = 0
    for k in range(count):
        share = (k + 1) * total / count
        (big, i), (little, j) = top_largest(), top_smallest()
        pick, size = (i, big) if abs(placed + big - share) <= abs(placed + little - share) else (j, little)
        tensor.append(pick)
        first.append(start[pick])
        last.append(start[pick] + size)
        placed += size
        start[pick] += size
        if start[pick] < sizes[pick]:
            push(pick)
    return ChunkTable(*(np.array(xs, dtype=np.int64) for xs in (tensor, first, last)))
