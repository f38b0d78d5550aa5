"""What an optimizer step moves per element, from the compiled IR, and a kernel that moves the same.

`accesses` counts the loads and stores of every stage of the compiled kernel;
`same_traffic_kernel(loads, stores)` is a Numba loop, shaped like the generated
kernels (parallel chunks, views indexed from 0), that loads `loads` arrays and
stores into the first `stores` of them with one add per element: the
memory-bandwidth limit for that traffic.
"""

from __future__ import annotations

import numba
import numpy as np

from optforge.compiler.build import load_specs
from optforge.compiler.lower import lower


def accesses(spec_name: str, flags: dict | None = None) -> tuple[int, int]:
    """(loads, stores) per element of one step, over all stages."""
    (spec,) = load_specs([spec_name])
    variant = {f.symbol: bool((flags or {}).get(f.name, False)) for f in spec.flags}
    kernel = lower(spec, variant)[0]  # every branch moves the same arrays
    return (sum(len(s.loads) for s in kernel.stages), sum(len(s.stores) for s in kernel.stages))


def bytes_per_element(spec_name: str, dtype=np.float32, flags: dict | None = None) -> int:
    return sum(accesses(spec_name, flags)) * np.dtype(dtype).itemsize


_KERNELS: dict = {}


def same_traffic_kernel(loads: int, stores: int):
    """kernel(chunk_start, chunk_stop, *arrays): `loads` arrays read, the first `stores` written."""
    key = (loads, stores)
    if key not in _KERNELS:
        names = [f"a{k}" for k in range(loads)]
        lines = [
            f"def same_traffic(chunk_start, chunk_stop, {', '.join(names)}):",
            "    for c in numba.prange(chunk_start.shape[0]):",
            "        start = chunk_start[c]",
            "        stop = chunk_stop[c]",
            *(f"        {n}_c = {n}[start:stop]" for n in names),
            "        for j in range(stop - start):",
            f"            total = {' + '.join(f'{n}_c[j]' for n in names)}",
            *(f"            {n}_c[j] = total" for n in names[:stores]),
        ]
        scope = {"numba": numba}
        exec("\n".join(lines), scope)  # noqa: S102 (our own source, built above)
        _KERNELS[key] = numba.njit(parallel=True, fastmath={"contract"})(scope["same_traffic"])
    return _KERNELS[key]
