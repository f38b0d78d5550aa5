"""Bytes an optimizer step moves per element, from the compiled IR (loads + stores of every stage)."""

from __future__ import annotations

import numpy as np

from optforge.compiler.build import load_specs
from optforge.compiler.lower import lower


def bytes_per_element(spec_name: str, dtype=np.float32, flags: dict | None = None) -> int:
    (spec,) = load_specs([spec_name])
    variant = {f.symbol: bool((flags or {}).get(f.name, False)) for f in spec.flags}
    kernel = lower(spec, variant)[0]  # every branch moves the same arrays
    accesses = sum(len(stage.loads) + len(stage.stores) for stage in kernel.stages)
    return accesses * np.dtype(dtype).itemsize
