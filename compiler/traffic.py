"""What a step moves through memory, per element, under a precision policy: for the docs.

A step is memory-bound, so its cost is the bytes it moves: each element-shaped array a
stage loads is read once per element and each one it stores written once (a factored
kernel's row and column state are a vanishing part of a matrix's bytes). Counted from
the IR of a spec's kernel (the first flag variant, the first host-side branch), for
each precision a class can be given.
"""

from __future__ import annotations

from typing import NamedTuple

from optforge.compiler.ir import Kernel, Space
from optforge.compiler.lower import lower
from optforge.compiler.passes.int8 import int8_storage
from optforge.compiler.spec import Spec

# An 8-bit state: a one-byte code per element and a float32 absmax per block of 256.
BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2, "int8": 1 + 4 / 256}


class Policy(NamedTuple):
    label: str
    param: str  # the parameter's (and gradient's) dtype
    state: str  # every state's storage
    master: bool = False  # a float32 master copy in the state


# The policies each optimizer page lists.
POLICIES = (
    Policy("float32 parameters, float32 state", "float32", "float32"),
    Policy("float32 parameters, bfloat16 state", "float32", "bfloat16"),
    Policy("bfloat16 parameters, bfloat16 state (stochastic rounding)", "bfloat16", "bfloat16"),
    Policy("bfloat16 parameters, float32 state, master weights", "bfloat16", "float32", True),
    Policy("bfloat16 parameters, bfloat16 state, master weights", "bfloat16", "bfloat16", True),
    Policy("float32 parameters, int8 state (where sound, else float32)", "float32", "int8"),
    Policy("bfloat16 parameters, int8 state (where sound), stochastic rounding", "bfloat16", "int8"),
)


def element_accesses(kernel: Kernel) -> tuple[dict[str, int], dict[str, int]]:
    """(reads, writes) per element of each element-shaped array (by public name) in a step."""
    reads: dict[str, int] = {}
    writes: dict[str, int] = {}
    for region in kernel.regions:
        if region.space != Space.ELEMENT:
            continue
        for load in region.loads:
            if load.array.shape == "element":
                reads[load.array.name] = reads.get(load.array.name, 0) + 1
        for store in region.stores:
            if store.array.shape == "element":
                writes[store.array.name] = writes.get(store.array.name, 0) + 1
    return reads, writes


def step_bytes(kernel: Kernel, policy: Policy, int8: frozenset = frozenset()) -> tuple[float, float]:
    """(state bytes per parameter element, bytes moved per element per step) under `policy`;
    `int8`: the states that may be kept as 8-bit codes (an int8 policy keeps the others in
    float32)."""
    states = [a for a in kernel.arrays[2:] if a.shape == "element"]

    def storage(name: str) -> str:
        return "float32" if policy.state == "int8" and name not in int8 else policy.state

    state_bytes = sum(BYTES[storage(a.name)] for a in states) + (4 if policy.master else 0)
    size = {"param": BYTES[policy.param], "grad": BYTES[policy.param]}
    size |= {a.name: BYTES[storage(a.name)] for a in states}
    reads, writes = element_accesses(kernel)
    moved = sum(size[name] * n for accesses in (reads, writes) for name, n in accesses.items())
    if policy.master:  # the parameter is read and written as its float32 copy, and written as itself
        moved += (4 - size["param"]) * (reads.get("param", 0) + writes.get("param", 0))
        moved += size["param"] * writes.get("param", 0)
    return state_bytes, moved


def precision_rows(spec: Spec) -> list[tuple[str, str, str]]:
    """(policy, state bytes per parameter, bytes moved per element per step) for the page."""
    kernel = lower(spec, next(iter(spec.variants())))[0]
    int8 = frozenset(v.state for v in int8_storage(spec) if v.table)
    return [(p.label, *(f"{x:.4g}" for x in step_bytes(kernel, p, int8))) for p in POLICIES]
