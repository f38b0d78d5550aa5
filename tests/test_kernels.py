"""Every generated CPU kernel against the float64 reference evaluated from its spec.

This checks the compiler (specialisation, hoisting, CSE, printing, chunking)
independently of any dialect's argument handling.
"""

import importlib

import numpy as np
import pytest
from numba.typed import List

from optforge.compiler.build import load_specs
from optforge.compiler.reference import reference_step
from optforge.runtime.kernels import chunk_table

CASES = [
    (spec, variant, dtype)
    for spec in load_specs()
    for variant in spec.variants()
    for dtype in ("float32", "float64")
]


def case_id(case):
    spec, variant, dtype = case
    flags = "-".join(f"{k}" for k, v in variant.items() if v) or "plain"
    return f"{spec.name}-{flags}-{dtype}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_kernel_matches_spec_reference_over_several_steps(case, rng):
    spec, variant, dtype = case
    module = importlib.import_module(f"optforge.generated.cpu.{spec.name}")
    compiled = module.VARIANTS[tuple(variant.values())]
    kernel = compiled.kernels[dtype]
    sizes = [1, 7, 33, 70001]  # several tensors, odd sizes, one over a chunk
    chunk = 4096  # a small chunk so every tensor but the tiny ones spans several
    symbol_of = {s.name: s.symbol.name for s in spec.state}
    names = ["w", "g"] + [symbol_of[n] for n in compiled.state]
    arrays = {n: [rng.uniform(0.1, 1.0, size).astype(dtype) for size in sizes] for n in names}
    hypers = {h.name: h.default for h in spec.hypers}
    per_tensor = {"weight_decay": rng.uniform(0, 0.2, len(sizes)), "grad_scale": rng.uniform(0.5, 2, len(sizes))}
    chunks = chunk_table(sizes, chunk)
    for t in (1, 2, 3):
        lr = 0.01 * t
        expected = []
        for i in range(len(sizes)):
            scalars = {"t": t, "lr": lr, **hypers, **{k: v[i] for k, v in per_tensor.items()}}
            expected.append(
                reference_step(spec, variant, {n: arrays[n][i] for n in names}, scalars)
            )
        scalar = np.dtype(dtype).type
        kernel(
            *chunks,
            *(List(arrays[n]) for n in names),
            *(per_tensor[p].astype(dtype) for p in compiled.per_tensor),
            *(scalar(s) for s in compiled.scalars(t, lr, *hypers.values())),
        )
        tol = dict(rtol=2e-6, atol=1e-7) if dtype == "float32" else dict(rtol=1e-13, atol=1e-15)
        for i in range(len(sizes)):
            for n, value in expected[i].items():
                np.testing.assert_allclose(arrays[n][i], value, **tol, err_msg=f"{n}[{i}] t={t}")
                arrays[n][i][...] = value.astype(dtype)  # continue from the reference's state
        arrays["g"] = [rng.uniform(-1, 1, size).astype(dtype) for size in sizes]
