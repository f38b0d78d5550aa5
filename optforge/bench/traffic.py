"""What an optimizer step moves per element, from the compiled IR, and a kernel that moves the same.

`accesses` counts the loads and stores of every region of the compiled kernel of
one host-side branch (the one a long run takes: SGD's first step, which starts its
buffer from the gradient, moves less than every later one); `same_traffic_kernel`
is a Numba loop, shaped like the generated kernels (parallel chunks, views indexed
from 0), that loads as many arrays, stores into as many of those, and writes as many
arrays it never reads (ASGD's copy `ax = w`), with one add per element: the
memory-bandwidth limit for that traffic.
"""

from __future__ import annotations

import numba
import numpy as np

from optforge.compiler.build import load_specs
from optforge.compiler.lower import lower


def accesses(spec_name: str, flags: dict | None = None, branch: tuple | None = None) -> tuple[int, int, int]:
    """(loads, stores into loaded arrays, stores into arrays not loaded) per element of one
    step, over all regions, for the host-side `branch` (default: the most traffic)."""
    (spec,) = load_specs([spec_name])
    variant = {f.symbol: bool((flags or {}).get(f.name, False)) for f in spec.flags}
    counts = []
    for kernel in lower(spec, variant):
        if branch is not None and tuple(kernel.branch) != tuple(branch):
            continue
        loads = rw = wo = 0
        for region in kernel.regions:
            # A factored kernel's row and column state (one value per row or column) is noise,
            # and so are the per-tensor values handed between phases.
            loaded = {load.array.name for load in region.loads if load.array.shape == "element"}
            stored = {store.array.name for store in region.stores if store.array.shape == "element"}
            loads, rw, wo = loads + len(loaded), rw + len(stored & loaded), wo + len(stored - loaded)
        counts.append((loads, rw, wo))
    return max(counts, key=sum)


def bytes_per_element(spec_name: str, dtype=np.float32, flags: dict | None = None, branch=None) -> int:
    return sum(accesses(spec_name, flags, branch)) * np.dtype(dtype).itemsize


_KERNELS: dict = {}


def same_traffic_kernel(loads: int, stores: int, write_only: int = 0):
    """kernel(chunk_start, chunk_stop, *arrays): the first `loads` arrays read, the first
    `stores` of them written, and `write_only` more arrays written without being read."""
    key = (loads, stores, write_only)
    if key not in _KERNELS:
        names = [f"a{k}" for k in range(loads)]
        outs = [f"o{k}" for k in range(write_only)]
        lines = [
            f"def same_traffic(chunk_start, chunk_stop, {', '.join(names + outs)}):",
            "    for c in numba.prange(chunk_start.shape[0]):",
            "        start = chunk_start[c]",
            "        stop = chunk_stop[c]",
            *(f"        {n}_c = {n}[start:stop]" for n in names + outs),
            "        for j in range(stop - start):",
            f"            total = {' + '.join(f'{n}_c[j]' for n in names)}",
            *(f"            {n}_c[j] = total" for n in names[:stores] + outs),
        ]
        scope = {"numba": numba}
        exec("\n".join(lines), scope)  # noqa: S102 (our own source, built above)
        _KERNELS[key] = numba.njit(parallel=True, fastmath={"contract"})(scope["same_traffic"])
    return _KERNELS[key]


def even_chunks(n: int, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops) of `n` elements cut into chunks of `chunk`: a limit kernel's chunks."""
    starts = np.arange(0, n, chunk, dtype=np.int64)
    return starts, np.minimum(starts + chunk, n)


def same_traffic_step(loads: int, stores: int, write_only: int, n: int):
    """A call of `same_traffic_kernel(loads, stores, write_only)` over `n` float32 elements
    per array (its own arrays, made here), in even chunks: the limit a step is measured by."""
    starts, stops = even_chunks(n)
    arrays = [np.ones(n, np.float32) for _ in range(loads + write_only)]
    kernel = same_traffic_kernel(loads, stores, write_only)
    return lambda: kernel(starts, stops, *arrays)
