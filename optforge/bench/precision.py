"""`optforge bench --state-dtype`: Adam and AdamW under precision policies, interleaved.

For each optimizer and policy: optforge's whole step (`opt(grads)`, the same gradient
arrays every step) against a kernel that moves the same bytes (a same-traffic limit:
each array the step reads is read once per element, each it writes written once, in
its storage type), and torch.optim's fused step in float32 as a reference. torchao's
and bitsandbytes' 8-bit optimizers are tried where installed; a row says why one did
not run. Every contender of an optimizer is timed round by round in one process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from optforge.bench.cpu import measure
from optforge.bench.traffic import even_chunks, same_traffic_kernel
from optforge.compiler.build import load_specs
from optforge.compiler.lower import lower
from optforge.compiler.traffic import element_accesses

# (label, parameter dtype, options): the policies, each against its own limit.
POLICIES = {
    "float32": ("float32 parameters, float32 state", "float32", {}),
    "bfloat16": ("float32 parameters, bfloat16 state", "float32", {"state_dtype": "bfloat16"}),
    "float16": ("float32 parameters, float16 state", "float32", {"state_dtype": "float16"}),
    "int8": ("float32 parameters, int8 blockwise state", "float32", {"state_dtype": "int8"}),
    "sr": (
        "bfloat16 parameters and gradients, bfloat16 state, stochastic rounding",
        "bfloat16",
        {"stochastic_rounding": True},
    ),
    "master": (
        "bfloat16 parameters and gradients, float32 state, master weights",
        "bfloat16",
        {
            "master_weights": True,
            "state_dtype": "float32",
        },
    ),
    "sr-int8": (
        "bfloat16 parameters and gradients, int8 blockwise state, stochastic rounding",
        "bfloat16",
        {"stochastic_rounding": True, "state_dtype": "int8"},
    ),
}
OPTIMIZERS = {"Adam": "adam_torch", "AdamW": "adamw"}
LR = 1e-3


def _dtype(name: str) -> np.dtype:
    from optforge.runtime.precision import numpy_dtype

    return numpy_dtype(name)


def _limit(spec_name: str, n: int, param: str, state: str, master: bool):
    """A same-traffic step for one policy: arrays of the policy's storage, as many reads and
    writes per element as the spec's kernel makes (a master copy read and written in float32,
    the parameter written as itself). An int8 state's codes are one byte each; its absmax
    values (4 bytes per 256 elements, 1.6% of the codes' bytes) are left out: the limit is
    that much lower than the step's true traffic."""
    (spec,) = load_specs([spec_name])
    reads, writes = element_accesses(lower(spec, next(iter(spec.variants())))[0])
    storage = {"param": "float32" if master else param, "grad": param}
    read = list(reads)
    arrays = [
        np.ones(n, _dtype(storage.get(name, state))).view(_view(storage.get(name, state))) for name in read
    ]
    stores = [a for name, a in zip(read, arrays) if name in writes]
    others = [a for name, a in zip(read, arrays) if name not in writes]
    write_only = [np.zeros(n, np.uint16)] if master else []  # the parameter behind its copy
    kernel = same_traffic_kernel(len(arrays), len(stores), len(write_only))
    starts, stops = even_chunks(n)
    ordered = stores + others  # the first `stores` arrays are written back
    return lambda: kernel(starts, stops, *ordered, *write_only)


def _view(storage: str):
    """What the limit kernel indexes: 16-bit storage as its bits (a same-size integer)."""
    return np.uint16 if storage in ("bfloat16", "float16") else np.dtype(storage)


def contenders(name: str, n: int, policies: list[str], rng, notes: list[str]) -> dict:
    import optforge.optim
    from optforge import Parameter

    cls = getattr(optforge.optim, name)
    grads = rng.standard_normal(n).astype(np.float32)
    steps = {}
    for key in policies:
        label, param, options = POLICIES[key]
        p = Parameter(rng.standard_normal(n).astype(_dtype(param)), "w")
        opt = cls([p], lr=LR, **options)
        g = (grads.astype(_dtype(param)),)
        steps[f"optforge, {label}"] = lambda opt=opt, g=g: opt(g)
        state = options.get("state_dtype") or param
        steps[f"same-traffic limit, {label}"] = _limit(
            OPTIMIZERS[name], n, param, state, options.get("master_weights", False)
        )
    try:
        import torch

        tp = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(n).astype(np.float32)))
        tp.grad = torch.from_numpy(grads)
        topt = getattr(torch.optim, name)([tp], lr=LR, fused=True)
        steps["torch.optim fused, float32 parameters, float32 state"] = topt.step
    except ImportError:
        notes.append("torch.optim: not installed (`pip install torch==2.13.0`)")
    for package, why in _eight_bit_contenders():
        notes.append(f"{package}: {why}")
    return steps


def _eight_bit_contenders() -> list[tuple[str, str]]:
    """Why torchao's and bitsandbytes' 8-bit optimizers are not timed here."""
    reasons = []
    try:
        import torchao.optim  # noqa: F401

        reasons.append(("torchao AdamW8bit", "installed, but its 8-bit optimizers need a CUDA device"))
    except ImportError:
        reasons.append(
            ("torchao AdamW8bit", "not installed (`pip install torchao`); it runs on CUDA devices")
        )
    try:
        import bitsandbytes  # noqa: F401

        reasons.append(("bitsandbytes AdamW8bit", "installed, but its 8-bit optimizers need a CUDA device"))
    except ImportError:
        reasons.append(("bitsandbytes AdamW8bit", "not installed; its 8-bit optimizers run on CUDA devices"))
    return reasons


def run_precision(out_dir: Path, state_dtypes: list[str], sizes: list[float], repeat: int) -> dict:
    import numba

    policies = [d for d in ("float32", "bfloat16", "float16", "int8") if d in (state_dtypes or POLICIES)]
    policies += ["sr", "master"] + (["sr-int8"] if "int8" in policies else [])
    rng = np.random.default_rng(0)
    results, notes = {}, []
    for size in sizes:
        n = int(size)
        for name in OPTIMIZERS:
            figures = measure(contenders(name, n, policies, rng, notes), repeat)
            results[f"{name}, {n:,} elements"] = figures
    lines = [f"# {numba.get_num_threads()} threads; medians of {repeat} interleaved steps"]
    for suite, figures in results.items():
        lines.append(suite)
        for label, seconds in figures.items():
            limit = figures.get(label.replace("optforge, ", "same-traffic limit, "))
            ratio = f"{limit / seconds:6.2f} of its limit" if label.startswith("optforge") else ""
            plain = figures.get(f"optforge, {POLICIES['float32'][0]}")
            if label.startswith("optforge") and plain:  # the ratios: against float32 state
                ratio += f", {seconds / plain:5.2f}x the float32-state step"
            lines.append(f"  {label:86s} {seconds * 1e3:9.2f} ms  {ratio}")
    lines += [f"  {note}" for note in dict.fromkeys(notes)]
    text = "\n".join(lines)
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cpu-precision.json").write_text(
        json.dumps({"results": results, "notes": notes}, indent=1) + "\n"
    )
    (out_dir / "cpu-precision.txt").write_text(text + "\n")
    return results
