"""CPU benchmark: optforge's fused kernels against the memory-bandwidth limit and torch.optim.

    python benchmarks/cpu.py                                   # Adam at 1M, 10M, 100M fp32
    python benchmarks/cpu.py --optimizers adam radam lamb --sizes 1e6 1e7 --tensors 1000

For each optimizer and size, side by side in one process and interleaved (round-robin
repeats, so drift in the machine's speed hits every contender alike):
- optforge, one kernel call per step;
- the same-traffic kernel: a Numba loop over the same arrays that loads what the
  optimizer loads and stores what it stores, with one add per element (the limit);
- torch.optim (single-tensor, foreach, fused where torch has it), when torch is installed.
Step time is the median; GB/s counts the bytes the compiled kernels move per element
(benchmarks/traffic.py) times the elements. `--tensors N` splits the elements into N
tensors of mixed sizes. Writes JSON and a table into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from traffic import accesses, bytes_per_element, same_traffic_kernel  # noqa: E402

import optforge  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OPTFORGE = {
    "adam": lambda ps: optforge.nn.Adam(ps, learning_rate=1e-3),
    "adam_offload": lambda ps: optforge.nn.AdamOffload(ps, learning_rate=1e-3),
    "lamb": lambda ps: optforge.nn.Lamb(ps, learning_rate=1e-3),
    "proximal_adagrad": lambda ps: optforge.nn.ProximalAdagrad(ps, learning_rate=1e-3),
    "radam": lambda ps: optforge.optim.RAdam(ps, lr=1e-3),
}
# The PyTorch-like catalogue: spec module -> class (same constructor arguments as torch.optim).
CATALOGUE = {
    "adam_torch": "Adam",
    "adamw": "AdamW",
    "adamax": "Adamax",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "rmsprop": "RMSprop",
    "sgd": "SGD",
    "nadam": "NAdam",
    "rprop": "Rprop",
    "asgd": "ASGD",
    "lion": "Lion",
    "adabelief": "AdaBelief",
    "adan": "Adan",
}
EXTRA = {"sgd": {"momentum": 0.9}}
for _spec, _cls in CATALOGUE.items():
    OPTFORGE[_spec] = lambda ps, _cls=_cls, _spec=_spec: getattr(optforge.optim, _cls)(
        ps, lr=1e-3, **EXTRA.get(_spec, {})
    )
TORCH = {"adam": "Adam", "radam": "RAdam", "adam_offload": "Adam"}
TORCH.update({spec: cls for spec, cls in CATALOGUE.items() if cls not in ("Lion", "AdaBelief", "Adan")})
TORCH_FUSED = {"Adam", "AdamW", "SGD", "Adagrad"}


def mixed_sizes(total: int, tensors: int, rng) -> list[int]:
    """`tensors` sizes adding up to `total`, log-uniformly mixed (a model's layers)."""
    weights = np.exp(rng.uniform(0, np.log(1000), tensors))
    sizes = np.maximum(1, np.floor(weights / weights.sum() * total)).astype(int)
    sizes[0] += total - sizes.sum()
    return sizes.tolist()


def contenders(name: str, sizes: list[int], rng) -> dict:
    """name -> step function, all over fresh arrays of the same sizes."""
    steps = {}
    params = [
        optforge.Parameter(rng.standard_normal(n).astype(np.float32), f"w{i}") for i, n in enumerate(sizes)
    ]
    grads = tuple(rng.standard_normal(n).astype(np.float32) * 0.01 for n in sizes)
    opt = OPTFORGE[name](params)
    steps["optforge"] = lambda: opt(grads)

    loads, stores = accesses(name)
    total = sum(sizes)
    chunk = 1 << 16
    starts = np.arange(0, total, chunk, dtype=np.int64)
    stops = np.minimum(starts + chunk, total)
    arrays = [np.ones(total, np.float32) for _ in range(loads)]
    kernel = same_traffic_kernel(loads, stores)
    steps["same-traffic limit"] = lambda: kernel(starts, stops, *arrays)

    torch_name = TORCH.get(name)  # None: torch has no such optimizer
    if torch_name is not None:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            torch.set_num_threads(numba.get_num_threads())
            modes = {"torch single-tensor": {"foreach": False}, "torch foreach": {"foreach": True}}
            if torch_name in TORCH_FUSED:
                modes["torch fused"] = {"fused": True}
            for label, kwargs in modes.items():
                tp = [torch.zeros(n, requires_grad=True) for n in sizes]
                for p, g in zip(tp, grads):
                    p.grad = torch.from_numpy(g)
                topt = getattr(torch.optim, torch_name)(tp, lr=1e-3, **EXTRA.get(name, {}), **kwargs)
                steps[label] = topt.step
    return steps


def measure(steps: dict, repeat: int) -> dict:
    for step in steps.values():  # compile and warm the caches
        step()
        step()
    times = {label: [] for label in steps}
    for _ in range(repeat):  # interleaved
        for label, step in steps.items():
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(ts) for label, ts in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=["adam"], choices=sorted(OPTFORGE))
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--tensors", type=int, default=1, help="split each size into this many tensors")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for name in args.optimizers:
        for size in args.sizes:
            total = int(size)
            sizes = [total] if args.tensors == 1 else mixed_sizes(total, args.tensors, rng)
            times = measure(contenders(name, sizes, rng), args.repeat)
            moved = bytes_per_element(name) * total
            limit = times["same-traffic limit"]
            for label, seconds in times.items():
                rows.append(
                    {
                        "optimizer": name,
                        "elements": total,
                        "tensors": len(sizes),
                        "contender": label,
                        "ms": seconds * 1e3,
                        "GB/s": moved / seconds / 1e9,
                        "fraction_of_limit": limit / seconds,
                        "speedup_of_optforge": seconds / times["optforge"],
                    }
                )
            del times
    result = {
        "machine": platform.processor() or platform.machine(),
        "threads": numba.get_num_threads(),
        "numba": numba.__version__,
        "rows": rows,
    }
    out = args.out or RESULTS / f"cpu-{'-'.join(args.optimizers)}-t{args.tensors}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    header = ("optimizer", "elements", "tensors", "contender", "ms", "GB/s", "of limit", "optforge x")
    print("{:<17}{:>12}{:>8}  {:<22}{:>9}{:>8}{:>9}{:>11}".format(*header))
    for r in rows:
        print(
            f"{r['optimizer']:<17}{r['elements']:>12,}{r['tensors']:>8}  {r['contender']:<22}{r['ms']:>9.2f}"
            f"{r['GB/s']:>8.1f}{r['fraction_of_limit']:>9.2f}{r['speedup_of_optforge']:>11.2f}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
