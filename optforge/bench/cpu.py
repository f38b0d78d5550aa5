"""CPU benchmark: optforge's fused kernels against the memory-bandwidth limit, torch.optim and DeepSpeed.

    optforge bench                                   # Adam at 1M, 10M, 100M fp32
    optforge bench adam radam lamb --sizes 1e6 1e7 --tensors 1000
    optforge bench all --sizes 1e8                   # every optimizer of the catalogue
    optforge bench --fsdp --repeat 40                # fully_shard on 2 gloo ranks (bench/fsdp.py)

For each optimizer and size, side by side in one process and interleaved (round-robin
repeats, so drift in the machine's speed hits every contender alike):
- optforge, one kernel call per step;
- the same-traffic kernel: a Numba loop over the same arrays that loads what the
  optimizer loads and stores what it stores, with one add per element (the limit);
- torch.optim (single-tensor, foreach, fused where torch has it), when torch is installed;
- DeepSpeed's DeepSpeedCPUAdam (AVX, hand-written C++) for Adam, when deepspeed is installed
  (with DS_ACCELERATOR=cpu it builds its CPU op on first use, about a minute, then cached);
- the reference packages of the optimizers torch.optim lacks (pytorch-optimizer's Lion,
  AdaBelief, Adan, ...; schedulefree), each in its default mode and single-tensor, when installed.
Step time is the median; GB/s counts the bytes the compiled kernels move per element
(benchmarks/traffic.py) times the elements. `--tensors N` splits the elements into N
tensors of mixed sizes. Writes a JSON file, the table and a PNG plot (with matplotlib)
into the output folder (benchmarks/results/ by default). A contender that is not
installed is skipped with a note.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np

import optforge
from optforge.bench import add_arguments
from optforge.bench.traffic import accesses, bytes_per_element, same_traffic_step
from optforge.runtime.optim_optimizer import hyper_values

LR = 1e-3  # every contender's learning rate
OPTFORGE = {
    "adam": lambda ps: optforge.nn.Adam(ps, learning_rate=LR),
    "adam_offload": lambda ps: optforge.nn.AdamOffload(ps, learning_rate=LR),
    "lamb": lambda ps: optforge.nn.Lamb(ps, learning_rate=LR),
    "proximal_adagrad": lambda ps: optforge.nn.ProximalAdagrad(ps, learning_rate=LR),
    "radam": lambda ps: optforge.optim.RAdam(ps, lr=LR),
    "adafactor": lambda ps: optforge.optim.Adafactor(ps, lr=LR),
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
    "adopt": "ADOPT",
    "stable_adamw": "StableAdamW",
    "ademamix": "AdEMAMix",
    "mars": "MARS",
    "schedulefree": "ScheduleFreeAdamW",
    "muon": "Muon",
    "prodigy": "Prodigy",
}
EXTRA = {"sgd": {"momentum": 0.9}}
for _spec, _cls in CATALOGUE.items():
    OPTFORGE[_spec] = lambda ps, _cls=_cls, _spec=_spec: getattr(optforge.optim, _cls)(
        ps, lr=LR, **EXTRA.get(_spec, {})
    )
TORCH = {"adam": "Adam", "radam": "RAdam", "adam_offload": "Adam", "adafactor": "Adafactor", "muon": "Muon"}
TORCH_FUSED = {"Adam", "AdamW", "SGD", "Adagrad"}
DEEPSPEED = {"adam", "adam_torch"}  # L2 (coupled) Adam, as DeepSpeedCPUAdam(adamw_mode=False)
# Spec -> (package, class, keyword arguments, whether the class takes `foreach`): the reference
# implementation of an optimizer torch.optim lacks, built on torch tensors with lr=LR.
REFERENCES = {
    "lion": ("pytorch_optimizer", "Lion", {}, True),
    "adabelief": ("pytorch_optimizer", "AdaBelief", {}, True),
    "adan": ("pytorch_optimizer", "Adan", {}, True),
    "adopt": ("pytorch_optimizer", "ADOPT", {}, True),
    "stable_adamw": ("pytorch_optimizer", "StableAdamW", {}, True),
    "ademamix": ("pytorch_optimizer", "AdEMAMix", {}, True),
    "mars": ("pytorch_optimizer", "MARS", {}, False),
    "schedulefree": ("schedulefree", "AdamWScheduleFree", {}, True),
    "prodigy": ("prodigyopt", "Prodigy", {}, False),
}
# torch.optim's classes of the catalogue: the others are in REFERENCES.
TORCH.update({spec: cls for spec, cls in CATALOGUE.items() if spec not in REFERENCES and cls != "Muon"})


# Optimizers whose kernels depend on the tensors' rank: their tensors are square matrices
# (each size rounded down to a square: 1e8 is 10,000 x 10,000), so the factored kernels
# run, as they do for a model's weights.
MATRICES = {"adafactor", "mars", "muon"}


def tensor_sizes(name: str, sizes: list[int]) -> list[int]:
    return [max(1, math.isqrt(n)) ** 2 for n in sizes] if name in MATRICES else sizes


def kernel_flags(name: str, opt) -> dict:
    """The flag values of the kernel `opt` steps, by name: those it was built with (Muon's
    nesterov=True by default), and for a matrix its rank flag set (Adafactor's `factored`,
    MARS's `is_2d`)."""
    from optforge.compiler.build import load_specs
    from optforge.compiler.spec import rank_flag

    (spec,) = load_specs([name])
    flags = {f.name: bool(v) for f, v in zip(spec.flags, opt._variant_key)}
    flag = rank_flag(spec)
    if flag is not None and name in MATRICES:
        flags[flag.name] = True
    return flags


def shape_of(name: str, n: int) -> tuple[int, ...]:
    if name not in MATRICES:
        return (n,)
    side = math.isqrt(n)
    return (side, side) if side * side == n else (1, n)


def mixed_sizes(total: int, tensors: int, rng) -> list[int]:
    """`tensors` sizes adding up to `total`, log-uniformly mixed (a model's layers)."""
    weights = np.exp(rng.uniform(0, np.log(1000), tensors))
    sizes = np.maximum(1, np.floor(weights / weights.sum() * total)).astype(int)
    sizes[0] += total - sizes.sum()
    return sizes.tolist()


def contenders(name: str, sizes: list[int], rng, notes: set[str], others: bool = True) -> tuple[dict, int]:
    """(name -> step function, all over fresh arrays of the same sizes; the bytes per element
    optforge's step moves). What cannot run is added to `notes`. Without `others`, only
    optforge and the same-traffic limit."""
    steps = {}
    shapes = [shape_of(name, n) for n in sizes]
    params = [
        optforge.Parameter(rng.standard_normal(s).astype(np.float32), f"w{i}") for i, s in enumerate(shapes)
    ]
    grads = tuple(rng.standard_normal(s).astype(np.float32) * 0.01 for s in shapes)
    opt = OPTFORGE[name](params)
    if hasattr(opt, "train"):  # a spec with modes (Schedule-Free) steps in train mode
        opt.train()
    steps["optforge"] = lambda: opt(grads)

    branch = steady_branch(opt)
    flags = kernel_flags(name, opt)
    loads, stores, write_only = accesses(name, flags, branch=branch)
    steps["same-traffic limit"] = same_traffic_step(loads, stores, write_only, sum(sizes))

    torch_name = TORCH.get(name) if others else None  # None: torch has no such optimizer
    if torch_name is not None:
        try:
            import torch
        except ImportError:
            torch = None
            notes.add("torch is not installed: no torch.optim rows (pip install torch==2.13.0)")
        if torch is not None:
            torch.set_num_threads(numba.get_num_threads())
            modes = {"torch single-tensor": {"foreach": False}, "torch foreach": {"foreach": True}}
            if "foreach" not in inspect.signature(getattr(torch.optim, torch_name)).parameters:
                modes = {"torch": {}}  # one implementation (Muon's)
            if torch_name in TORCH_FUSED:
                modes["torch fused"] = {"fused": True}
            for label, kwargs in modes.items():
                tp = [torch.zeros(s, requires_grad=True) for s in shapes]
                for p, g in zip(tp, grads):
                    p.grad = torch.from_numpy(g)
                topt = getattr(torch.optim, torch_name)(tp, lr=LR, **EXTRA.get(name, {}), **kwargs)
                steps[label] = topt.step
    if others and name in REFERENCES:
        steps.update(_reference_steps(name, shapes, grads, notes))
    if others and name in DEEPSPEED:
        step = _deepspeed_adam(sizes, grads, notes)
        if step is not None:
            steps["DeepSpeed CPUAdam"] = step
    return steps, bytes_per_element(name, flags=flags, branch=branch)


def _deepspeed_adam(sizes, grads, notes: set[str]):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import torch
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except ImportError:
        notes.add("deepspeed is not installed: no DeepSpeed row (pip install deepspeed ninja)")
        return None
    tp = [torch.zeros(n, requires_grad=True) for n in sizes]
    for p, g in zip(tp, grads):
        p.grad = torch.from_numpy(g)
    try:
        opt = DeepSpeedCPUAdam(tp, lr=LR, adamw_mode=False)
    except Exception as error:  # its C++ op failed to build: say so, keep the other rows
        notes.add(f"DeepSpeedCPUAdam could not be built: {error}")
        return None
    return opt.step


def _reference_steps(name: str, shapes, grads, notes: set[str]) -> dict:
    """The reference package's optimizer over torch tensors holding `grads`: label -> step."""
    import importlib

    package, class_name, kwargs, takes_foreach = REFERENCES[name]
    try:
        import torch

        cls = getattr(importlib.import_module(package), class_name)
    except ImportError:
        notes.add(f"{package} is not installed: no {package} rows (pip install -e '.[test]')")
        return {}
    modes = {"": {}}
    if takes_foreach:
        modes = {" foreach": {"foreach": True}, " single-tensor": {"foreach": False}}
    steps = {}
    for label, mode in modes.items():
        tp = [torch.zeros(s, requires_grad=True) for s in shapes]
        for p, g in zip(tp, grads):
            p.grad = torch.from_numpy(g)
        ropt = cls(tp, lr=LR, **kwargs, **mode)
        if hasattr(ropt, "train"):  # Schedule-Free: steps only in train mode
            ropt.train()
        steps[f"{class_name}{label} ({package})"] = ropt.step
    return steps


def steady_branch(opt) -> tuple:
    """The host-side branch the optimizer's kernels take at a late step (t = 1000); a spec
    with step state decides it from its step rules' values too (from the first group's)."""
    hypers = tuple(opt.hypers[name] for name in opt._HYPERS)
    step_values = ()
    if getattr(opt._kernel_module(), "STEP", None) is not None:
        groups = len(opt.param_groups)
        step_values = opt._advance(1000, [LR] * groups, [hyper_values(hypers)] * groups)[0]
    return tuple(bool(v) for v in opt._variant.branch_key(1000, LR, *hypers, *step_values))


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


def run(
    names: list[str], sizes: list[float], tensors: int, repeat: int, out_dir: Path, others: bool = True
) -> dict:
    """Measure, print the table, write JSON, table and plot into `out_dir`; return the result."""
    rng = np.random.default_rng(0)
    rows, notes = [], set()
    for name in names:
        for size in sizes:
            split = [int(size)] if tensors == 1 else mixed_sizes(int(size), tensors, rng)
            split = tensor_sizes(name, split)
            total = sum(split)
            steps, per_element = contenders(name, split, rng, notes, others)
            times = measure(steps, repeat)
            moved = per_element * total
            limit = times["same-traffic limit"]
            for label, seconds in times.items():
                rows.append(
                    {
                        "optimizer": name,
                        "elements": total,
                        "tensors": len(split),
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
        "notes": sorted(notes),
        "rows": rows,
    }
    stem = f"cpu-{'-'.join(names) if len(names) <= 4 else f'{len(names)}-optimizers'}-t{tensors}"
    stem += "" if others else "-limit"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
    text = table(result)
    (out_dir / f"{stem}.txt").write_text(text)
    print(text, end="")
    from optforge.bench.plot import plot

    png = plot(result, out_dir / f"{stem}.png")
    print(
        f"wrote {out_dir / stem}.json, .txt"
        + (", .png" if png else " (no plot: matplotlib is not installed)")
    )
    return result


def table(result: dict) -> str:
    header = ("optimizer", "elements", "tensors", "contender", "ms", "GB/s", "of limit", "optforge x")
    width = max([22] + [len(r["contender"]) + 2 for r in result["rows"]])
    lines = [
        f"# {result['machine']}, {result['threads']} threads, numba {result['numba']}; medians, interleaved",
        *(f"# note: {n}" for n in result["notes"]),
        ("{:<17}{:>12}{:>8}  {:<%d}{:>9}{:>8}{:>9}{:>11}" % width).format(*header),
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['optimizer']:<17}{r['elements']:>12,}{r['tensors']:>8}  {r['contender']:<{width}}"
            f"{r['ms']:>9.2f}{r['GB/s']:>8.1f}{r['fraction_of_limit']:>9.2f}{r['speedup_of_optforge']:>11.2f}"
        )
    return "\n".join(lines) + "\n"


def run_from_arguments(args) -> int:
    if args.state_dtype is not None:
        from optforge.bench.precision import run_precision

        sizes = args.sizes if args.sizes != [1e6, 1e7, 1e8] else [1e8]
        run_precision(args.out_dir, args.state_dtype, sizes, args.repeat)
        return 0
    if args.fsdp:
        from optforge.bench.fsdp import run_fsdp

        run_fsdp(args.out_dir, ranks=args.ranks, repeat=args.repeat)
        return 0
    if args.overhead:
        from optforge.bench.overhead import run_overhead

        run_overhead(args.out_dir)
        return 0
    if args.startup:
        from optforge.bench.startup import run_startup

        run_startup(args.out_dir)
        return 0
    names = list(OPTFORGE) if args.optimizers == ["all"] else args.optimizers or ["adam"]
    unknown = sorted(set(names) - set(OPTFORGE))
    if unknown:
        print(
            f"optforge bench: unknown optimizers {unknown}; choose from {sorted(OPTFORGE)}", file=sys.stderr
        )
        return 2
    run(names, args.sizes, args.tensors, args.repeat, args.out_dir, others=not args.limit_only)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_arguments(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
