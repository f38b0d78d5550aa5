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
    the smallest, whichever brings the elements placed so far nearer to their share
    (ties: the largest, then the lowest tensor). Two heaps of the offers, so
    O(chunks log tensors)."""
    sizes = [int(s) for s in sizes]
    count = sum(-(-s // chunk) for s in sizes)
    total = sum(sizes)
    start = [0] * len(sizes)  # each tensor's next chunk starts here

    def offer(i: int) -> int:
        return min(chunk, sizes[i] - start[i])

    largest = [(-offer(i), i) for i in range(len(sizes)) if sizes[i] > 0]
    smallest = [(-size, i) for size, i in largest]
    heapq.heapify(largest)
    heapq.heapify(smallest)

    def top(heap: list, sign: int) -> tuple[int, int]:
        """The heap's first offer that is still a tensor's next chunk (stale ones dropped)."""
        while sign * heap[0][0] != offer(heap[0][1]) or start[heap[0][1]] >= sizes[heap[0][1]]:
            heapq.heappop(heap)
        return sign * heap[0][0], heap[0][1]

    tensor, first, last = [], [], []
    placed = 0
    for k in range(count):
        share = (k + 1) * total / count
        (big, i), (little, j) = top(largest, -1), top(smallest, 1)
        pick, size = (i, big) if abs(placed + big - share) <= abs(placed + little - share) else (j, little)
        tensor.append(pick)
        first.append(start[pick])
        last.append(start[pick] + size)
        placed += size
        start[pick] += size
        if start[pick] < sizes[pick]:
            heapq.heappush(largest, (-offer(pick), pick))
            heapq.heappush(smallest, (offer(pick), pick))
    return ChunkTable(*(np.array(xs, dtype=np.int64) for xs in (tensor, first, last)))
